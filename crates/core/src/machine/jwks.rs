//! Fetching an issuer's JWKS once per Envoy: a lease per issuer picks the worker that
//! fetches; a good document is shared (`<fetched_at_ms>\n<document>`) and every worker loads
//! it when its version moves; a bad answer keeps the keys already loaded. A refetch (for an
//! unknown `kid`) happens at most once per `min_refetch` interval, counted from the last
//! successful fetch by any worker and the last attempt by this one.

use std::time::Duration;

use crate::config::RemoteJwks;
use crate::host::{Event, Host, LogLevel};
use crate::jwt::KeySet;
use crate::machine::callouts::{Callout, Callouts};
use crate::machine::lease::{Reentry, SharedLease, Take};

/// Largest JWKS document read.
pub const MAX_JWKS_BODY: usize = 256 * 1024;

/// The shared-data key of issuer `index`'s JWKS.
pub fn jwks_key(index: usize) -> String {
    format!("keygate.jwks.{index}")
}

/// The shared-data key of issuer `index`'s fetch lease.
pub fn jwks_lease_key(index: usize) -> String {
    format!("keygate.jwks.lease.{index}")
}

/// Shared-data value of a fetched JWKS: `<fetched_at_ms>\n<document>`.
pub fn encode_jwks(fetched_at_ms: u64, document: &[u8]) -> Vec<u8> {
    let mut value = format!("{fetched_at_ms}\n").into_bytes();
    value.extend_from_slice(document);
    value
}

pub fn decode_jwks(value: &[u8]) -> Option<(u64, &[u8])> {
    let split = value.iter().position(|b| *b == b'\n')?;
    let fetched_at = std::str::from_utf8(&value[..split]).ok()?.parse().ok()?;
    Some((fetched_at, &value[split + 1..]))
}

/// One issuer's remote JWKS, as seen from one worker.
#[derive(Clone, Copy, Debug)]
pub struct JwksFetcher<'a> {
    pub index: usize,
    pub remote: &'a RemoteJwks,
}

impl JwksFetcher<'_> {
    /// At configure: creates the fetch lease, so that taking it is a compare-and-swap.
    pub fn create_lease(&self, host: &impl Host) {
        SharedLease::new(&jwks_lease_key(self.index)).create(host);
    }

    /// Is some worker fetching this JWKS right now?
    pub fn lease_held(&self, host: &impl Host, now_ms: u64) -> bool {
        SharedLease::new(&jwks_lease_key(self.index)).is_held(host, now_ms)
    }

    /// When the shared document was fetched, if there is one.
    pub fn fetched_at(&self, host: &impl Host) -> Option<u64> {
        host.get_shared(&jwks_key(self.index))
            .0
            .as_deref()
            .and_then(decode_jwks)
            .map(|(at, _)| at)
    }

    /// May an unknown `kid` trigger a refetch now?
    pub fn may_refetch(&self, host: &impl Host, last_attempt_ms: u64, now_ms: u64) -> bool {
        let fetched_at = self.fetched_at(host).unwrap_or(0);
        now_ms.saturating_sub(fetched_at) >= self.remote.min_refetch_ms
            && now_ms.saturating_sub(last_attempt_ms) >= self.remote.min_refetch_ms
    }

    /// Is the periodic refresh due? Without a document, a fetch is tried every second.
    pub fn refresh_due(&self, host: &impl Host, last_attempt_ms: u64, now_ms: u64) -> bool {
        match self.fetched_at(host) {
            None => now_ms.saturating_sub(last_attempt_ms) >= 1000,
            Some(at) => {
                now_ms.saturating_sub(at) >= self.remote.refresh_ms
                    && now_ms.saturating_sub(last_attempt_ms) >= self.remote.min_refetch_ms
            }
        }
    }

    /// Takes the fetch lease and sends the request; the token of the callout, or `None` when
    /// another worker fetches (its result arrives through shared data) or the call failed.
    pub fn start(&self, host: &impl Host, now_ms: u64) -> Option<u32> {
        let lease_key = jwks_lease_key(self.index);
        let lease = SharedLease::new(&lease_key);
        let owner = format!("jwks{}", self.index);
        let until = now_ms + self.remote.timeout_ms + 500;
        if lease.take(host, &owner, until, now_ms, Reentry::Wait) != Take::Taken {
            return None;
        }
        let remote = self.remote;
        let headers = [
            (":method", "GET"),
            (":path", remote.path.as_str()),
            (":authority", remote.authority.as_str()),
            ("accept", "application/json"),
        ];
        match host.dispatch_http_call(
            &remote.cluster,
            &headers,
            None,
            Duration::from_millis(remote.timeout_ms),
        ) {
            Ok(token) => Some(token),
            Err(err) => {
                lease.release(host);
                host.count(Event::JwksFetchFailure, 1);
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "cannot fetch the JWKS of issuer {} from cluster '{}': {err:?}",
                        self.index, remote.cluster
                    ),
                );
                None
            }
        }
    }

    /// The fetch answered: releases the lease; a document with usable keys is shared (true),
    /// anything else keeps the keys already loaded (false).
    pub fn on_response(&self, host: &impl Host, body_size: usize, now_ms: u64) -> bool {
        let index = self.index;
        SharedLease::new(&jwks_lease_key(index)).release(host);
        let status = host.call_response_status();
        let body = match status {
            Some(200) => host.call_response_body(body_size, MAX_JWKS_BODY),
            _ => None,
        };
        let parsed = body.as_deref().and_then(|doc| {
            KeySet::from_jwks_json(doc)
                .ok()
                .map(|(keys, skipped)| (doc, keys, skipped))
        });
        match parsed {
            Some((document, keys, skipped)) if !keys.is_empty() => {
                for skip in &skipped {
                    host.log(
                        LogLevel::Warn,
                        &format!(
                            "JWKS of issuer {index}: skipped key {}: {}",
                            skip.kid.as_deref().unwrap_or("(no kid)"),
                            skip.reason
                        ),
                    );
                }
                let _ = host.set_shared(&jwks_key(index), &encode_jwks(now_ms, document), None);
                host.count(Event::JwksRefreshed, 1);
                host.log(
                    LogLevel::Info,
                    &format!("JWKS of issuer {index} loaded: {} key(s)", keys.len()),
                );
                true
            }
            _ => {
                host.count(Event::JwksFetchFailure, 1);
                host.log(
                    LogLevel::Warn,
                    &format!(
                        "JWKS fetch for issuer {index} failed (status {}); keeping the previous keys",
                        status.map_or_else(|| "none".to_owned(), |s| s.to_string())
                    ),
                );
                false
            }
        }
    }
}

/// Issuer `index`'s shared keys, with their version, when they differ from version `loaded`.
pub fn load_shared(host: &impl Host, index: usize, loaded: Option<u32>) -> Option<(KeySet, u32)> {
    let (value, cas) = host.get_shared(&jwks_key(index));
    let (value, cas) = (value?, cas?);
    if loaded == Some(cas) {
        return None;
    }
    let (_, document) = decode_jwks(&value)?;
    let (keys, _) = KeySet::from_jwks_json(document).ok()?;
    Some((keys, cas))
}

/// The requests of one worker that wait for an issuer's keys after presenting an unknown
/// `kid`, and when this worker last started (or saw the start of) a fetch. The first such
/// request starts a refetch, unless one is under way (by this worker or another) or one was
/// done too recently (then the token is refused); the others wait on it. Waiters are given
/// up `timeout + 1 s` after the first one parked.
#[derive(Debug)]
pub struct KeyWait<W> {
    waiters: Vec<W>,
    waiting_since_ms: u64,
    last_attempt_ms: u64,
}

impl<W> Default for KeyWait<W> {
    fn default() -> Self {
        Self {
            waiters: Vec::new(),
            waiting_since_ms: 0,
            last_attempt_ms: 0,
        }
    }
}

impl<W> KeyWait<W> {
    /// Parks the request `waiter` makes while the keys are refetched; false (and `waiter`
    /// is not called) when no refetch may happen now: the token is refused.
    pub fn park(
        &mut self,
        host: &impl Host,
        fetcher: JwksFetcher<'_>,
        callouts: &mut Callouts,
        now_ms: u64,
        waiter: impl FnOnce() -> W,
    ) -> bool {
        let already_waiting = !self.waiters.is_empty();
        // A fetch already under way (by this worker or another) will bring the keys: wait
        // for it rather than refuse, whatever the refetch interval says.
        let in_flight = callouts.any(|c| *c == Callout::Jwks(fetcher.index))
            || fetcher.lease_held(host, now_ms);
        if !already_waiting
            && !in_flight
            && !fetcher.may_refetch(host, self.last_attempt_ms, now_ms)
        {
            return false;
        }
        if self.waiters.is_empty() {
            self.waiting_since_ms = now_ms;
        }
        self.waiters.push(waiter());
        if !already_waiting && !in_flight {
            self.fetch(host, fetcher, callouts, now_ms);
        }
        true
    }

    /// Takes the fetch lease and dispatches the JWKS request. If another worker holds the
    /// lease, its result will reach us through shared data.
    pub fn fetch(
        &mut self,
        host: &impl Host,
        fetcher: JwksFetcher<'_>,
        callouts: &mut Callouts,
        now_ms: u64,
    ) {
        self.last_attempt_ms = now_ms;
        if let Some(token) = fetcher.start(host, now_ms) {
            callouts.insert(token, Callout::Jwks(fetcher.index));
        }
    }

    /// On the tick: fetches when the periodic refresh is due.
    pub fn refresh(
        &mut self,
        host: &impl Host,
        fetcher: JwksFetcher<'_>,
        callouts: &mut Callouts,
        now_ms: u64,
    ) {
        if fetcher.refresh_due(host, self.last_attempt_ms, now_ms) {
            self.fetch(host, fetcher, callouts, now_ms);
        }
    }

    /// Have the waiters waited past the fetch timeout (+1 s)? Then they are retried (and
    /// refused if the keys still lack their `kid`).
    pub fn overdue(&self, remote: &RemoteJwks, now_ms: u64) -> bool {
        !self.waiters.is_empty() && now_ms >= self.waiting_since_ms + remote.timeout_ms + 1000
    }

    /// The waiters, taken out to be retried.
    pub fn take(&mut self) -> Vec<W> {
        std::mem::take(&mut self.waiters)
    }

    pub fn has_waiters(&self) -> bool {
        !self.waiters.is_empty()
    }

    /// Drops a waiter that ended while it waited.
    pub fn forget(&mut self, gone: impl Fn(&W) -> bool) {
        if !self.waiters.is_empty() {
            self.waiters.retain(|w| !gone(w));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;
    use crate::host::HostError;

    const T0: u64 = 1_800_000_000_000;
    const JWKS: &[u8] = br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

    fn remote() -> RemoteJwks {
        RemoteJwks {
            cluster: "idp".into(),
            authority: "idp.example".into(),
            path: "/jwks".into(),
            refresh_ms: 300_000,
            min_refetch_ms: 30_000,
            timeout_ms: 2_000,
        }
    }

    #[test]
    fn one_worker_fetches_and_every_worker_loads_the_shared_keys() {
        let remote = remote();
        let fetcher = JwksFetcher {
            index: 0,
            remote: &remote,
        };
        let one = FakeHost::at(T0);
        let two = one.worker();
        fetcher.create_lease(&one);
        assert!(fetcher.refresh_due(&one, 0, T0), "nothing fetched yet");
        assert!(fetcher.start(&one, T0).is_some());
        assert!(fetcher.lease_held(&two, T0));
        assert_eq!(fetcher.start(&two, T0), None, "one fetch per Envoy");
        assert!(two.dispatched().is_empty());
        one.answer(Some(200), Some(JWKS));
        assert!(fetcher.on_response(&one, JWKS.len(), T0 + 10));
        assert!(!fetcher.lease_held(&two, T0 + 10), "released");
        assert_eq!(one.counted(Event::JwksRefreshed), 1);
        let (keys, version) = load_shared(&two, 0, None).unwrap();
        assert!(keys.get("k1").is_some());
        assert!(load_shared(&two, 0, Some(version)).is_none(), "unchanged");
        assert_eq!(fetcher.fetched_at(&two), Some(T0 + 10));
        assert!(!fetcher.refresh_due(&two, 0, T0 + 10));
        assert!(fetcher.refresh_due(&two, 0, T0 + 10 + 300_000));
    }

    #[test]
    fn a_bad_answer_keeps_the_previous_keys() {
        let remote = remote();
        let fetcher = JwksFetcher {
            index: 1,
            remote: &remote,
        };
        let host = FakeHost::at(T0);
        fetcher.create_lease(&host);
        host.put_shared(&jwks_key(1), &encode_jwks(T0 - 1, JWKS));
        let answers: [(Option<u32>, &[u8]); 4] = [
            (None, b""),
            (Some(503), JWKS),
            (Some(200), b"not json"),
            (Some(200), br#"{"keys":[]}"#),
        ];
        for (round, (status, body)) in answers.into_iter().enumerate() {
            assert!(fetcher.start(&host, T0).is_some());
            host.answer(status, Some(body));
            assert!(!fetcher.on_response(&host, body.len(), T0));
            assert_eq!(host.counted(Event::JwksFetchFailure), round as u64 + 1);
            assert_eq!(fetcher.fetched_at(&host), Some(T0 - 1), "kept");
            assert!(!fetcher.lease_held(&host, T0), "released");
        }
        assert!(load_shared(&host, 1, None).is_some());
    }

    #[test]
    fn a_refused_call_releases_the_lease() {
        let remote = remote();
        let fetcher = JwksFetcher {
            index: 0,
            remote: &remote,
        };
        let host = FakeHost::at(T0);
        fetcher.create_lease(&host);
        host.refuse_next_dispatch(HostError::Refused("BadArgument"));
        assert_eq!(fetcher.start(&host, T0), None);
        assert!(!fetcher.lease_held(&host, T0));
        assert_eq!(host.counted(Event::JwksFetchFailure), 1);
        assert!(host.logged(LogLevel::Warn)[0].contains("cluster 'idp'"));
    }

    #[test]
    fn refetches_are_spaced_by_min_refetch() {
        let remote = remote();
        let fetcher = JwksFetcher {
            index: 0,
            remote: &remote,
        };
        let host = FakeHost::at(T0);
        assert!(fetcher.may_refetch(&host, 0, T0));
        host.put_shared(&jwks_key(0), &encode_jwks(T0, JWKS));
        assert!(
            !fetcher.may_refetch(&host, 0, T0 + 29_999),
            "fetched recently"
        );
        assert!(fetcher.may_refetch(&host, 0, T0 + 30_000));
        assert!(
            !fetcher.may_refetch(&host, T0 + 20_000, T0 + 30_000),
            "this worker tried recently"
        );
        // A lapsed lease (the fetcher died) no longer counts as a fetch in flight.
        fetcher.create_lease(&host);
        assert!(fetcher.start(&host, T0).is_some());
        assert!(fetcher.lease_held(&host, T0 + 2_499));
        assert!(!fetcher.lease_held(&host, T0 + 2_500));
    }

    #[test]
    fn an_unknown_kid_parks_its_request_on_one_refetch() {
        let remote = remote();
        let fetcher = JwksFetcher {
            index: 0,
            remote: &remote,
        };
        let host = FakeHost::at(T0);
        fetcher.create_lease(&host);
        let mut callouts = Callouts::default();
        let mut wait = KeyWait::<u32>::default();
        assert!(wait.park(&host, fetcher, &mut callouts, T0, || 1));
        assert!(wait.park(&host, fetcher, &mut callouts, T0 + 5, || 2));
        assert_eq!(host.dispatched().len(), 1, "one refetch");
        assert!(callouts.any(|c| *c == Callout::Jwks(0)));
        assert!(wait.has_waiters());
        assert!(!wait.overdue(&remote, T0 + 2_999));
        assert!(
            wait.overdue(&remote, T0 + 3_000),
            "timeout + 1 s after the first"
        );
        wait.forget(|w| *w == 1);
        assert_eq!(wait.take(), vec![2]);
        assert!(!wait.has_waiters() && !wait.overdue(&remote, T0 + 10_000));
        // The fetch answered (nothing usable); the next unknown kid within `min_refetch` of
        // this worker's attempt is refused at once, without making its waiter.
        assert!(callouts.take(1).is_some());
        host.answer(Some(500), None);
        assert!(!fetcher.on_response(&host, 0, T0 + 10));
        assert!(!wait.park(&host, fetcher, &mut callouts, T0 + 20, || panic!("refused")));
        assert!(wait.park(&host, fetcher, &mut callouts, T0 + 30_000, || 3));
        assert_eq!(host.dispatched().len(), 2);
    }

    #[test]
    fn a_fetch_by_another_worker_is_waited_for_even_when_a_refetch_is_too_soon() {
        let remote = remote();
        let fetcher = JwksFetcher {
            index: 0,
            remote: &remote,
        };
        let one = FakeHost::at(T0);
        let two = one.worker();
        fetcher.create_lease(&one);
        one.put_shared(&jwks_key(0), &encode_jwks(T0, JWKS));
        let mut wait_one = KeyWait::<u32>::default();
        wait_one.fetch(&one, fetcher, &mut Callouts::default(), T0 + 10);
        let mut wait_two = KeyWait::<u32>::default();
        assert!(wait_two.park(&two, fetcher, &mut Callouts::default(), T0 + 20, || 7));
        assert!(
            two.dispatched().is_empty(),
            "worker one's fetch brings the keys"
        );
        // Once worker one's lease lapsed, nothing is in flight and the refetch is too soon.
        let _ = wait_two.take();
        assert!(!wait_two.park(&two, fetcher, &mut Callouts::default(), T0 + 2_510, || 8));
    }

    #[test]
    fn a_refused_refetch_still_parks_until_overdue_and_the_refresh_is_spaced() {
        let remote = remote();
        let fetcher = JwksFetcher {
            index: 0,
            remote: &remote,
        };
        let host = FakeHost::at(T0);
        fetcher.create_lease(&host);
        let mut callouts = Callouts::default();
        let mut wait = KeyWait::<u32>::default();
        host.refuse_next_dispatch(HostError::Refused("BadArgument"));
        assert!(wait.park(&host, fetcher, &mut callouts, T0, || 1));
        assert!(callouts.is_empty());
        assert_eq!(host.counted(Event::JwksFetchFailure), 1);
        assert!(wait.overdue(&remote, T0 + 3_000));
        // Without a document the refresh is tried once a second from the last attempt.
        wait.refresh(&host, fetcher, &mut callouts, T0 + 999);
        assert!(callouts.is_empty());
        wait.refresh(&host, fetcher, &mut callouts, T0 + 1_000);
        assert_eq!(callouts.len(), 1);
    }

    #[test]
    fn shared_values_read_back() {
        let value = encode_jwks(42, b"{}");
        assert_eq!(decode_jwks(&value), Some((42, b"{}".as_slice())));
        assert_eq!(decode_jwks(b"no newline"), None);
        assert_eq!(decode_jwks(b"x\n{}"), None);
    }
}
