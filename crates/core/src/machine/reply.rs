//! Answering a decision through the host, in enforce and in shadow mode. In shadow mode no
//! request is refused: the decision goes upstream in the decision header (and denials to the
//! log), so Keygate can be switched on over live traffic and its verdicts compared first.

use crate::decision::DenyReason;
use crate::host::{Host, LogLevel};
use crate::route::Mode;

/// How denials are answered (from the filter's configuration).
#[derive(Clone, Copy, Debug)]
pub struct Replies<'a> {
    /// The request header that carries the decision in shadow mode.
    pub decision_header: &'a str,
    /// `retry-after` on a 503.
    pub retry_after_seconds: u32,
}

impl Replies<'_> {
    /// Denies the current request: in enforce mode answers it (returns false: the request
    /// stops here); in shadow mode only tells upstream and the log (returns true: the request
    /// goes on). `key_label` names the key in the log; `extra_headers` go on the answer.
    pub fn deny(
        &self,
        host: &impl Host,
        reason: &DenyReason,
        key_label: Option<&str>,
        mode: Mode,
        extra_headers: &[(&str, String)],
    ) -> bool {
        let verdict = format!(
            "status={} reason={} key_id={}",
            reason.status(),
            reason.metric_name(),
            key_label.unwrap_or("-")
        );
        if mode == Mode::Shadow {
            host.log(LogLevel::Info, &format!("shadow: would deny {verdict}"));
            let decision = format!(
                "deny; status={}; reason={}",
                reason.status(),
                reason.metric_name()
            );
            host.set_request_header(self.decision_header, &decision);
            return true;
        }
        host.log(LogLevel::Info, &format!("denied {verdict}"));
        let challenge = reason.www_authenticate();
        let retry_after = self.retry_after_seconds.to_string();
        let mut headers = vec![
            ("content-type", "application/problem+json"),
            ("cache-control", "no-store"),
        ];
        if let Some(challenge) = &challenge {
            headers.push(("www-authenticate", challenge.as_str()));
        }
        if reason.status() == 503 {
            headers.push(("retry-after", retry_after.as_str()));
        }
        let blocked_retry = match reason {
            DenyReason::Blocked { retry_after_s } => Some(retry_after_s.to_string()),
            _ => None,
        };
        if let Some(retry) = &blocked_retry {
            headers.push(("retry-after", retry.as_str()));
        }
        for (name, value) in extra_headers {
            headers.push((name, value.as_str()));
        }
        host.send_local_reply(reason.status(), &headers, reason.problem_json().as_bytes());
        false
    }

    /// Marks an allowed request in shadow mode (`public`: on a route that checks nothing).
    pub fn shadow_allow(&self, host: &impl Host, public: bool) {
        let value = if public { "allow; public" } else { "allow" };
        host.set_request_header(self.decision_header, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{Effect, FakeHost};

    const REPLIES: Replies<'static> = Replies {
        decision_header: "x-keygate-decision",
        retry_after_seconds: 7,
    };

    fn header(name: &str, value: &str) -> (String, String) {
        (name.to_owned(), value.to_owned())
    }

    #[test]
    fn enforce_mode_answers_the_request() {
        let host = FakeHost::at(0);
        let goes_on = REPLIES.deny(
            &host,
            &DenyReason::UnknownKey,
            Some("abc"),
            Mode::Enforce,
            &[],
        );
        assert!(!goes_on);
        let effects = host.take_effects();
        assert_eq!(
            effects[0],
            Effect::Log(
                LogLevel::Info,
                "denied status=401 reason=unknown_key key_id=abc".into()
            )
        );
        let Effect::LocalReply {
            status,
            headers,
            body,
        } = &effects[1]
        else {
            panic!("{effects:?}");
        };
        assert_eq!(*status, 401);
        assert!(headers.contains(&header("content-type", "application/problem+json")));
        assert!(headers.contains(&header("cache-control", "no-store")));
        assert!(headers.iter().any(|(n, _)| n == "www-authenticate"));
        assert!(!headers.iter().any(|(n, _)| n == "retry-after"));
        assert_eq!(body, DenyReason::UnknownKey.problem_json().as_bytes());
        assert_eq!(effects.len(), 2);
    }

    #[test]
    fn unavailable_says_when_to_retry_and_extra_headers_follow() {
        let host = FakeHost::at(0);
        REPLIES.deny(
            &host,
            &DenyReason::ServiceUnavailable,
            None,
            Mode::Enforce,
            &[("x-extra", "1".into())],
        );
        let effects = host.take_effects();
        let Some(Effect::LocalReply {
            status, headers, ..
        }) = effects.last()
        else {
            panic!("{effects:?}");
        };
        assert_eq!(*status, 503);
        assert!(headers.contains(&header("retry-after", "7")));
        assert_eq!(headers.last(), Some(&header("x-extra", "1")));
    }

    #[test]
    fn shadow_mode_lets_the_request_through_with_the_verdict() {
        let host = FakeHost::at(0);
        let goes_on = REPLIES.deny(
            &host,
            &DenyReason::Revoked,
            Some("abc"),
            Mode::Shadow,
            &[("retry-after", "1".into())],
        );
        assert!(goes_on);
        let effects = host.take_effects();
        assert_eq!(
            effects,
            vec![
                Effect::Log(
                    LogLevel::Info,
                    "shadow: would deny status=401 reason=revoked key_id=abc".into()
                ),
                Effect::SetRequestHeader(
                    "x-keygate-decision".into(),
                    "deny; status=401; reason=revoked".into()
                ),
            ]
        );
        REPLIES.shadow_allow(&host, false);
        REPLIES.shadow_allow(&host, true);
        assert_eq!(
            host.take_effects(),
            vec![
                Effect::SetRequestHeader("x-keygate-decision".into(), "allow".into()),
                Effect::SetRequestHeader("x-keygate-decision".into(), "allow; public".into()),
            ]
        );
    }
}
