//! Flags and in-memory state of management-page sessions and live events: the session TTL,
//! the failed-login limit and its per-address counts, the most event subscribers. (The
//! sessions themselves are [`crate::service::sessions`].)

use std::collections::HashMap;
use std::sync::Mutex;

use clap::Args;

use crate::service::validate::parse_duration;

/// Default session lifetime: eight hours.
pub const DEFAULT_SESSION_TTL_S: i64 = 8 * 3600;
/// Shortest and longest session lifetime accepted.
pub const SESSION_TTL_RANGE_S: (i64, i64) = (60, 7 * 86_400);
/// Default failed logins allowed per client address and minute.
pub const DEFAULT_LOGIN_FAILURES_PER_MINUTE: u32 = 10;
/// Default most live event subscribers at once.
pub const DEFAULT_EVENT_SUBSCRIBERS: usize = 64;
/// Client addresses whose failed logins are counted at once; past it, new addresses share one
/// count (so a flood from many addresses is limited as one).
const MAX_COUNTED_ADDRESSES: usize = 10_000;
/// The shared count's address.
const OTHER_ADDRESS: &str = "other";
/// Flags of `keygate serve` for management-page sessions and live events.
#[derive(Clone, Debug, Args)]
pub struct AccessArgs {
    /// Lifetime of a login session of the management page: seconds or a duration such as
    /// 90m, 8h or 1d (60 seconds to 7 days).
    #[arg(
        long,
        env = "KEYGATE_SESSION_TTL",
        default_value = "8h",
        value_name = "DURATION"
    )]
    pub session_ttl: String,
    /// Failed logins allowed per client address and minute (1 to 10000); past it, logins from
    /// that address answer 429 until the minute is over.
    #[arg(
        long,
        env = "KEYGATE_LOGIN_FAILURES_PER_MINUTE",
        default_value_t = DEFAULT_LOGIN_FAILURES_PER_MINUTE,
        value_name = "N"
    )]
    pub login_failures_per_minute: u32,
    /// Most live event subscribers (`GET /api/v1/events`) at once (1 to 10000); more answer 503.
    #[arg(
        long,
        env = "KEYGATE_EVENT_SUBSCRIBERS",
        default_value_t = DEFAULT_EVENT_SUBSCRIBERS,
        value_name = "N"
    )]
    pub event_subscribers: usize,
}

impl Default for AccessArgs {
    fn default() -> Self {
        Self {
            session_ttl: "8h".into(),
            login_failures_per_minute: DEFAULT_LOGIN_FAILURES_PER_MINUTE,
            event_subscribers: DEFAULT_EVENT_SUBSCRIBERS,
        }
    }
}

/// Why the session flags are refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AccessConfigError {
    #[error("--session-ttl / KEYGATE_SESSION_TTL must be a duration from 60 seconds to 7 days, such as 8h")]
    BadSessionTtl,
    #[error("--login-failures-per-minute / KEYGATE_LOGIN_FAILURES_PER_MINUTE must be 1 to 10000")]
    BadLoginFailures,
    #[error("--event-subscribers / KEYGATE_EVENT_SUBSCRIBERS must be 1 to 10000")]
    BadEventSubscribers,
}

/// Session and live-event settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessSettings {
    pub session_ttl_s: i64,
    pub login_failures_per_minute: u32,
    pub event_subscribers: usize,
    /// Whether the session cookie is marked `Secure` (the service serves TLS).
    pub secure_cookie: bool,
}

impl Default for AccessSettings {
    fn default() -> Self {
        Self {
            session_ttl_s: DEFAULT_SESSION_TTL_S,
            login_failures_per_minute: DEFAULT_LOGIN_FAILURES_PER_MINUTE,
            event_subscribers: DEFAULT_EVENT_SUBSCRIBERS,
            secure_cookie: false,
        }
    }
}

impl AccessSettings {
    pub fn from_args(args: &AccessArgs, secure_cookie: bool) -> Result<Self, AccessConfigError> {
        let ttl = parse_duration(&args.session_ttl)
            .filter(|s| (SESSION_TTL_RANGE_S.0..=SESSION_TTL_RANGE_S.1).contains(s))
            .ok_or(AccessConfigError::BadSessionTtl)?;
        if !(1..=10_000).contains(&args.login_failures_per_minute) {
            return Err(AccessConfigError::BadLoginFailures);
        }
        if !(1..=10_000).contains(&args.event_subscribers) {
            return Err(AccessConfigError::BadEventSubscribers);
        }
        Ok(Self {
            session_ttl_s: ttl,
            login_failures_per_minute: args.login_failures_per_minute,
            event_subscribers: args.event_subscribers,
            secure_cookie,
        })
    }
}

/// The failed logins of one address in its current minute.
#[derive(Clone, Copy, Debug)]
struct Failures {
    minute: i64,
    count: u32,
    /// Whether a refusal was audited in this minute already.
    refusal_audited: bool,
}

/// The settings and the failed-login counts.
#[derive(Debug, Default)]
pub struct Sessions {
    settings: AccessSettings,
    failures: Mutex<HashMap<String, Failures>>,
}

impl Sessions {
    pub fn new(settings: AccessSettings) -> Self {
        Self {
            settings,
            failures: Mutex::default(),
        }
    }

    pub fn settings(&self) -> &AccessSettings {
        &self.settings
    }

    /// Refuses a login from `address` at `now` when it failed too often this minute: the
    /// seconds to wait, and whether this is the first refusal of the minute (to audit).
    pub(crate) fn limited(&self, address: &str, now: i64) -> Option<(u64, bool)> {
        let minute = now.div_euclid(60);
        let mut failures = self.failures.lock().ok()?;
        let entry = failures.get_mut(address)?;
        if entry.minute != minute || entry.count < self.settings.login_failures_per_minute {
            return None;
        }
        let first = !entry.refusal_audited;
        entry.refusal_audited = true;
        let wait = (minute + 1) * 60 - now;
        Some((u64::try_from(wait).unwrap_or(1).max(1), first))
    }

    /// Counts a failed login from `address` at `now`.
    pub(crate) fn count_failure(&self, address: &str, now: i64) {
        let minute = now.div_euclid(60);
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        if !failures.contains_key(address) && failures.len() >= MAX_COUNTED_ADDRESSES {
            failures.retain(|_, f| f.minute == minute);
        }
        let address = if failures.contains_key(address) || failures.len() < MAX_COUNTED_ADDRESSES {
            address
        } else {
            OTHER_ADDRESS
        };
        let entry = failures.entry(address.to_owned()).or_insert(Failures {
            minute,
            count: 0,
            refusal_audited: false,
        });
        if entry.minute != minute {
            *entry = Failures {
                minute,
                count: 0,
                refusal_audited: false,
            };
        }
        entry.count = entry.count.saturating_add(1);
    }

    /// The address a login from `address` is counted under (its own, or the shared one once
    /// too many addresses are counted).
    pub(crate) fn counted_address<'a>(&self, address: &'a str) -> &'a str {
        match self.failures.lock() {
            Ok(failures)
                if !failures.contains_key(address) && failures.len() >= MAX_COUNTED_ADDRESSES =>
            {
                OTHER_ADDRESS
            }
            _ => address,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_bounded() {
        let ok = AccessSettings::from_args(&AccessArgs::default(), true).unwrap();
        assert_eq!(ok.session_ttl_s, DEFAULT_SESSION_TTL_S);
        assert!(ok.secure_cookie);
        for ttl in ["59", "8d", "soon", ""] {
            let args = AccessArgs {
                session_ttl: ttl.into(),
                ..AccessArgs::default()
            };
            assert_eq!(
                AccessSettings::from_args(&args, false),
                Err(AccessConfigError::BadSessionTtl),
                "{ttl}"
            );
        }
        let args = AccessArgs {
            login_failures_per_minute: 0,
            ..AccessArgs::default()
        };
        assert!(AccessSettings::from_args(&args, false).is_err());
    }

    #[test]
    fn failures_are_limited_per_address_and_minute() {
        let sessions = Sessions::new(AccessSettings {
            login_failures_per_minute: 2,
            ..AccessSettings::default()
        });
        let now = 6000; // the start of a minute
        assert_eq!(sessions.limited("a", now), None);
        sessions.count_failure("a", now);
        sessions.count_failure("a", now + 1);
        assert_eq!(sessions.limited("a", now + 10), Some((50, true)));
        assert_eq!(sessions.limited("a", now + 20), Some((40, false)));
        assert_eq!(sessions.limited("b", now + 20), None);
        assert_eq!(sessions.limited("a", now + 60), None);
    }
}
