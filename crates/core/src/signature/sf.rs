//! The part of RFC 8941 structured fields that `Signature-Input`, `Signature`,
//! `Content-Digest` and `Accept-Signature` use: dictionaries whose members are items or inner
//! lists, with parameters. Bounded (members, items, parameters, lengths); decimals and
//! dates are refused (no field here uses them). Never panics on any input.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// The most members a dictionary may have.
pub const MAX_MEMBERS: usize = 8;
/// The most items in one inner list.
pub const MAX_ITEMS: usize = 32;
/// The most parameters on one item or inner list.
pub const MAX_PARAMS: usize = 16;

/// A bare item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bare {
    Int(i64),
    Str(String),
    Token(String),
    Bytes(Vec<u8>),
    Bool(bool),
}

/// Parameters, in order; a repeated key keeps its place and takes the last value.
pub type Params = Vec<(String, Bare)>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub bare: Bare,
    pub params: Params,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Member {
    Item(Item),
    Inner(Vec<Item>, Params),
}

/// Why a field could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SfError(pub &'static str);

/// Parses a dictionary. A repeated key keeps its first place and takes the last value.
pub fn parse_dictionary(input: &str) -> Result<Vec<(String, Member)>, SfError> {
    let mut p = Parser {
        s: input.as_bytes(),
        at: 0,
    };
    let mut out: Vec<(String, Member)> = Vec::new();
    p.skip_sp();
    if p.done() {
        return Ok(out);
    }
    loop {
        let key = p.key()?;
        let member = if p.eat(b'=') {
            if p.peek() == Some(b'(') {
                let (items, params) = p.inner_list()?;
                Member::Inner(items, params)
            } else {
                Member::Item(p.item()?)
            }
        } else {
            Member::Item(Item {
                bare: Bare::Bool(true),
                params: p.params()?,
            })
        };
        let full = out.len() >= MAX_MEMBERS;
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = member,
            None if !full => out.push((key, member)),
            None => return Err(SfError("too many members")),
        }
        p.skip_ows();
        if p.done() {
            return Ok(out);
        }
        if !p.eat(b',') {
            return Err(SfError("expected a comma between members"));
        }
        p.skip_ows();
        if p.done() {
            return Err(SfError("trailing comma"));
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn done(&self) -> bool {
        self.at >= self.s.len()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn skip_sp(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn key(&mut self) -> Result<String, SfError> {
        let start = self.at;
        match self.peek() {
            Some(b'a'..=b'z' | b'*') => self.at += 1,
            _ => return Err(SfError("a key must start with a lowercase letter or *")),
        }
        while let Some(b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b'*') = self.peek() {
            self.at += 1;
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    fn inner_list(&mut self) -> Result<(Vec<Item>, Params), SfError> {
        if !self.eat(b'(') {
            return Err(SfError("expected an inner list"));
        }
        let mut items = Vec::new();
        loop {
            self.skip_sp();
            if self.eat(b')') {
                return Ok((items, self.params()?));
            }
            if items.len() >= MAX_ITEMS {
                return Err(SfError("too many items in an inner list"));
            }
            items.push(self.item()?);
            match self.peek() {
                Some(b' ' | b')') => {}
                _ => return Err(SfError("expected a space or ) in an inner list")),
            }
        }
    }

    fn item(&mut self) -> Result<Item, SfError> {
        let bare = self.bare()?;
        Ok(Item {
            bare,
            params: self.params()?,
        })
    }

    fn params(&mut self) -> Result<Params, SfError> {
        let mut params: Params = Vec::new();
        while self.eat(b';') {
            self.skip_sp();
            let key = self.key()?;
            let value = if self.eat(b'=') {
                self.bare()?
            } else {
                Bare::Bool(true)
            };
            let full = params.len() >= MAX_PARAMS;
            match params.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None if !full => params.push((key, value)),
                None => return Err(SfError("too many parameters")),
            }
        }
        Ok(params)
    }

    fn bare(&mut self) -> Result<Bare, SfError> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.integer(),
            Some(b'"') => self.string(),
            Some(b':') => self.bytes(),
            Some(b'?') => self.boolean(),
            Some(b'a'..=b'z' | b'A'..=b'Z' | b'*') => Ok(self.token()),
            _ => Err(SfError("unsupported or missing value")),
        }
    }

    fn integer(&mut self) -> Result<Bare, SfError> {
        let negative = self.eat(b'-');
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
        let digits = &self.s[start..self.at];
        if digits.is_empty() || digits.len() > 15 {
            return Err(SfError("an integer has 1 to 15 digits"));
        }
        if self.peek() == Some(b'.') {
            return Err(SfError("decimals are not accepted"));
        }
        let value = digits
            .iter()
            .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'));
        Ok(Bare::Int(if negative { -value } else { value }))
    }

    fn string(&mut self) -> Result<Bare, SfError> {
        self.at += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(SfError("unterminated string")),
                Some(b'"') => {
                    self.at += 1;
                    return Ok(Bare::Str(out));
                }
                Some(b'\\') => {
                    self.at += 1;
                    match self.peek() {
                        Some(c @ (b'"' | b'\\')) => {
                            out.push(char::from(c));
                            self.at += 1;
                        }
                        _ => return Err(SfError("bad escape in a string")),
                    }
                }
                Some(c @ 0x20..=0x7e) => {
                    out.push(char::from(c));
                    self.at += 1;
                }
                Some(_) => return Err(SfError("a string holds printable ASCII only")),
            }
        }
    }

    fn token(&mut self) -> Bare {
        let start = self.at;
        self.at += 1;
        while let Some(c) = self.peek() {
            let tchar = c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c);
            if !tchar {
                break;
            }
            self.at += 1;
        }
        Bare::Token(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    fn bytes(&mut self) -> Result<Bare, SfError> {
        self.at += 1;
        let start = self.at;
        while let Some(c) = self.peek() {
            if c == b':' {
                let encoded = &self.s[start..self.at];
                self.at += 1;
                return STANDARD
                    .decode(encoded)
                    .map(Bare::Bytes)
                    .map_err(|_| SfError("a byte sequence is not base64"));
            }
            if !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=')) {
                return Err(SfError("a byte sequence is not base64"));
            }
            self.at += 1;
        }
        Err(SfError("unterminated byte sequence"))
    }

    fn boolean(&mut self) -> Result<Bare, SfError> {
        self.at += 1;
        let value = match self.peek() {
            Some(b'1') => true,
            Some(b'0') => false,
            _ => return Err(SfError("a boolean is ?0 or ?1")),
        };
        self.at += 1;
        Ok(Bare::Bool(value))
    }
}

/// Serializes a bare item (RFC 8941 §4.1).
pub fn write_bare(out: &mut String, bare: &Bare) {
    match bare {
        Bare::Int(value) => out.push_str(&value.to_string()),
        Bare::Str(value) => {
            out.push('"');
            for c in value.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        Bare::Token(value) => out.push_str(value),
        Bare::Bytes(value) => {
            out.push(':');
            out.push_str(&STANDARD.encode(value));
            out.push(':');
        }
        Bare::Bool(true) => out.push_str("?1"),
        Bare::Bool(false) => out.push_str("?0"),
    }
}

/// Serializes parameters: `;key` for true, else `;key=value`.
pub fn write_params(out: &mut String, params: &Params) {
    for (key, value) in params {
        out.push(';');
        out.push_str(key);
        if *value != Bare::Bool(true) {
            out.push('=');
            write_bare(out, value);
        }
    }
}

/// Serializes an inner list with its parameters.
pub fn write_inner_list(out: &mut String, items: &[Item], params: &Params) {
    out.push('(');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        write_bare(out, &item.bare);
        write_params(out, &item.params);
    }
    out.push(')');
    write_params(out, params);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_signature_input() {
        let dict = parse_dictionary(
            r#"sig1=("@method" "@path";req);created=1618884473;keyid="k\"1", sig2=:AQI=:"#,
        )
        .unwrap();
        assert_eq!(dict.len(), 2);
        let Member::Inner(items, params) = &dict[0].1 else {
            panic!("inner list")
        };
        assert_eq!(items[0].bare, Bare::Str("@method".into()));
        assert_eq!(items[1].params, vec![("req".into(), Bare::Bool(true))]);
        assert_eq!(params[0], ("created".into(), Bare::Int(1618884473)));
        assert_eq!(params[1], ("keyid".into(), Bare::Str("k\"1".into())));
        assert_eq!(
            dict[1].1,
            Member::Item(Item {
                bare: Bare::Bytes(vec![1, 2]),
                params: vec![]
            })
        );
        let mut out = String::new();
        write_inner_list(&mut out, items, params);
        assert_eq!(
            out,
            r#"("@method" "@path";req);created=1618884473;keyid="k\"1""#
        );
    }

    #[test]
    fn refuses_what_it_does_not_read() {
        for bad in [
            "sig1=(",
            "sig1=(\"a\"",
            "sig1=(\"a\"\"b\")",
            "Sig1=:AQI=:",
            "sig1=:AQI",
            "sig1=:A*I=:",
            "sig1=1.5",
            "sig1=1234567890123456",
            "sig1=\"\u{7f}\"",
            "sig1=\"a\\b\"",
            "sig1=?2",
            "sig1=@1",
            "sig1=1,",
            "sig1=1 sig2=2",
            "sig1=();",
        ] {
            assert!(parse_dictionary(bad).is_err(), "{bad}");
        }
        let many = (0..=MAX_MEMBERS)
            .map(|i| format!("s{i}=1"))
            .collect::<Vec<_>>()
            .join(", ");
        assert!(parse_dictionary(&many).is_err());
        let items = format!("s=({})", vec!["a"; MAX_ITEMS + 1].join(" "));
        assert!(parse_dictionary(&items).is_err());
        let params = format!(
            "s=1{}",
            (0..=MAX_PARAMS)
                .map(|i| format!(";p{i}"))
                .collect::<String>()
        );
        assert!(parse_dictionary(&params).is_err());
    }

    #[test]
    fn later_duplicates_win_and_empty_is_empty() {
        let dict = parse_dictionary("a=1, b, a=2").unwrap();
        assert_eq!(dict.len(), 2);
        assert_eq!(dict[0].0, "a");
        assert!(matches!(
            &dict[0].1,
            Member::Item(Item {
                bare: Bare::Int(2),
                ..
            })
        ));
        assert_eq!(
            dict[1].1,
            Member::Item(Item {
                bare: Bare::Bool(true),
                params: vec![]
            })
        );
        assert!(parse_dictionary("").unwrap().is_empty());
        assert!(parse_dictionary("   ").unwrap().is_empty());
    }

    #[test]
    fn never_panics_on_junk() {
        let alphabet = b"a=(\"):;?1-.,* \\\t@AZ9+/";
        let mut seed = 0x2545_f491_u32;
        for _ in 0..20_000 {
            let len = (seed % 24) as usize;
            let mut s = String::new();
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                s.push(char::from(alphabet[(seed as usize) % alphabet.len()]));
            }
            let _ = parse_dictionary(&s);
        }
    }
}
