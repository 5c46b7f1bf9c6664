//! One lease protocol for every "one worker per Envoy does this" job: looking a key record
//! up, fetching a JWKS, following the revocation feed, flushing usage.
//!
//! A lease is a shared-data value `<owner>:<until_ms>` (see [`Lease`]). It is created
//! released at start ([`SharedLease::create`]), so that taking it is always a
//! compare-and-swap against a value that exists; a worker that loses the race learns it
//! ([`Take::Lost`]) instead of overwriting the winner. A holder that dies stops renewing: the
//! lease lapses at `until_ms` and anyone may take it.

use crate::cache::Lease;
use crate::host::Host;

/// What a lease held under the taker's own owner name means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reentry {
    /// The owner is a worker: its own lease is renewed (feed follower, usage flusher).
    Renew,
    /// The owner names the job (a key id, an issuer): a lease under that name is another
    /// worker doing the same job, to be waited for (lookups, JWKS fetches).
    Wait,
}

/// What [`SharedLease::take`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Take {
    /// The lease is ours until the given time.
    Taken,
    /// Someone holds it (see [`Reentry`] for a lease under the taker's own name).
    Held(Lease),
    /// Another worker wrote it between our read and our write.
    Lost,
}

/// A lease in shared data, by its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedLease<'a> {
    key: &'a str,
}

impl<'a> SharedLease<'a> {
    pub fn new(key: &'a str) -> Self {
        Self { key }
    }

    /// Writes a released lease unless one exists, so every later take is a compare-and-swap.
    pub fn create(&self, host: &impl Host) {
        if host.get_shared(self.key).1.is_none() {
            let _ = host.set_shared(self.key, &Lease::released().encode(), None);
        }
    }

    /// The lease as it stands, if it is held right now.
    pub fn holder(&self, host: &impl Host, now_ms: u64) -> Option<Lease> {
        host.get_shared(self.key)
            .0
            .as_deref()
            .and_then(Lease::decode)
            .filter(|lease| lease.is_held(now_ms))
    }

    /// Is the lease held right now (by anyone)?
    pub fn is_held(&self, host: &impl Host, now_ms: u64) -> bool {
        self.holder(host, now_ms).is_some()
    }

    /// Reads the lease once, to look at its holder before deciding to take it.
    pub fn read(&self, host: &impl Host) -> Current<'a> {
        let (value, cas) = host.get_shared(self.key);
        Current {
            key: self.key,
            lease: value.as_deref().and_then(Lease::decode),
            cas,
        }
    }

    /// Takes the lease for `owner` until `until_ms`, unless someone holds it.
    pub fn take(
        &self,
        host: &impl Host,
        owner: &str,
        until_ms: u64,
        now_ms: u64,
        reentry: Reentry,
    ) -> Take {
        self.read(host).take(host, owner, until_ms, now_ms, reentry)
    }

    /// Extends a lease this worker holds (no compare-and-swap: it is ours).
    pub fn renew(&self, host: &impl Host, owner: &str, until_ms: u64) {
        let mine = Lease {
            id: owner.to_owned(),
            until_ms,
        };
        let _ = host.set_shared(self.key, &mine.encode(), None);
    }

    /// Gives the lease up at once (the job is done or could not start).
    pub fn release(&self, host: &impl Host) {
        let _ = host.set_shared(self.key, &Lease::released().encode(), None);
    }
}

/// A lease as read, with the version a take must find unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current<'a> {
    key: &'a str,
    lease: Option<Lease>,
    cas: Option<u32>,
}

impl Current<'_> {
    /// Who holds the lease at `now_ms`, if anyone.
    pub fn holder(&self, now_ms: u64) -> Option<&Lease> {
        self.lease.as_ref().filter(|lease| lease.is_held(now_ms))
    }

    /// Takes the lease as read for `owner` until `until_ms`, unless someone holds it; a
    /// write by anyone since the read makes it [`Take::Lost`].
    pub fn take(
        self,
        host: &impl Host,
        owner: &str,
        until_ms: u64,
        now_ms: u64,
        reentry: Reentry,
    ) -> Take {
        if let Some(lease) = self.holder(now_ms) {
            if lease.id != owner || reentry == Reentry::Wait {
                return Take::Held(lease.clone());
            }
        }
        let mine = Lease {
            id: owner.to_owned(),
            until_ms,
        };
        match host.set_shared(self.key, &mine.encode(), self.cas) {
            Ok(()) => Take::Taken,
            Err(_) => Take::Lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::FakeHost;

    const KEY: &str = "lease";

    fn lease(id: &str, until_ms: u64) -> Lease {
        Lease {
            id: id.into(),
            until_ms,
        }
    }

    #[test]
    fn create_keeps_a_lease_that_exists() {
        let host = FakeHost::at(0);
        let lease_ = SharedLease::new(KEY);
        lease_.create(&host);
        assert_eq!(host.shared(KEY), Some(Lease::released().encode()));
        assert_eq!(
            lease_.take(&host, "w1", 100, 0, Reentry::Renew),
            Take::Taken
        );
        lease_.create(&host);
        assert_eq!(lease_.holder(&host, 0), Some(lease("w1", 100)));
    }

    #[test]
    fn one_of_two_workers_holds_it_until_it_lapses() {
        let one = FakeHost::at(1_000);
        let two = one.worker();
        let lease_ = SharedLease::new(KEY);
        lease_.create(&one);
        assert_eq!(
            lease_.take(&one, "w1", 2_000, 1_000, Reentry::Renew),
            Take::Taken
        );
        assert_eq!(
            lease_.take(&two, "w2", 3_000, 1_000, Reentry::Renew),
            Take::Held(lease("w1", 2_000))
        );
        assert!(lease_.is_held(&two, 1_999));
        // The holder died: at its deadline the lease is free for the other worker.
        assert!(!lease_.is_held(&two, 2_000));
        assert_eq!(
            lease_.take(&two, "w2", 3_000, 2_000, Reentry::Renew),
            Take::Taken
        );
        assert_eq!(
            lease_.take(&one, "w1", 4_000, 2_000, Reentry::Renew),
            Take::Held(lease("w2", 3_000))
        );
    }

    #[test]
    fn a_worker_renews_its_own_lease_but_a_job_waits_on_its_own_name() {
        let one = FakeHost::at(0);
        let two = one.worker();
        let lease_ = SharedLease::new(KEY);
        lease_.create(&one);
        assert_eq!(lease_.take(&one, "w1", 100, 0, Reentry::Renew), Take::Taken);
        assert_eq!(
            lease_.take(&one, "w1", 200, 50, Reentry::Renew),
            Take::Taken
        );
        assert_eq!(lease_.holder(&one, 150), Some(lease("w1", 200)));
        // A lookup of key id "k" on worker one; worker two wants the same id: it waits.
        assert_eq!(lease_.take(&one, "k", 300, 250, Reentry::Wait), Take::Taken);
        assert_eq!(
            lease_.take(&two, "k", 300, 250, Reentry::Wait),
            Take::Held(lease("k", 300))
        );
    }

    #[test]
    fn a_lost_race_is_told_and_the_winner_keeps_the_lease() {
        let one = FakeHost::at(0);
        let two = one.worker();
        let lease_ = SharedLease::new(KEY);
        lease_.create(&one);
        // Worker two writes between worker one's read and write.
        one.conflict_next_writes(1);
        assert_eq!(lease_.take(&one, "w1", 100, 0, Reentry::Renew), Take::Lost);
        assert_eq!(lease_.holder(&one, 0), None, "nothing was written");
        assert_eq!(lease_.take(&two, "w2", 100, 0, Reentry::Renew), Take::Taken);
        assert_eq!(
            lease_.take(&one, "w1", 100, 0, Reentry::Renew),
            Take::Held(lease("w2", 100))
        );
        // Read, then another worker writes: the take that follows loses.
        let read = lease_.read(&one);
        assert_eq!(read.holder(200), None, "lapsed at 200");
        assert_eq!(
            lease_.take(&two, "w2", 300, 200, Reentry::Renew),
            Take::Taken
        );
        assert_eq!(read.take(&one, "w1", 300, 200, Reentry::Renew), Take::Lost);
        assert_eq!(lease_.holder(&one, 200), Some(lease("w2", 300)));
    }

    #[test]
    fn renew_and_release() {
        let host = FakeHost::at(0);
        let lease_ = SharedLease::new(KEY);
        lease_.create(&host);
        assert_eq!(lease_.take(&host, "w1", 10, 0, Reentry::Renew), Take::Taken);
        lease_.renew(&host, "w1", 50);
        assert!(lease_.is_held(&host, 40));
        lease_.release(&host);
        assert!(!lease_.is_held(&host, 40));
        // An unreadable value is no lease.
        host.put_shared(KEY, b"garbage");
        assert!(!lease_.is_held(&host, 0));
        assert_eq!(lease_.take(&host, "w1", 10, 0, Reentry::Renew), Take::Taken);
    }
}
