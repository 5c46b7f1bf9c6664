//! The request header block as the host serialises it (`src/host.rs`): its names and values
//! are the client's bytes, its framing is the host's.
//!
//! Calls `keygate::parse_header_block`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(pairs) = keygate::parse_header_block(data) else {
        return;
    };
    let count = data
        .get(..4)
        .and_then(|word| word.try_into().ok())
        .map_or(0, |word| u32::from_le_bytes(word) as usize);
    assert!(pairs.len() <= count);
    let block = data.as_ptr_range();
    let mut total = 0usize;
    for (name, value) in &pairs {
        for part in [name.as_bytes(), *value] {
            let range = part.as_ptr_range();
            assert!(block.start <= range.start && range.end <= block.end);
            total += part.len() + 1;
        }
    }
    // Every name and value is followed by a NUL, except that the last one's may be missing.
    assert!(4 + count * 8 + total <= data.len() + 1);
});
