//! Request headers the upstream must only ever get from Keygate, and headers no client may
//! send through it.
//!
//! Upstream frameworks read header names loosely: HTTP makes them case-insensitive, and CGI,
//! WSGI, PHP and Rack turn both `x-keygate-subject` and `x_keygate_subject` into the same
//! variable (`HTTP_X_KEYGATE_SUBJECT`). So a name is compared *folded*: ASCII lower case with
//! `_` read as `-`. Every client-sent header whose folded name is a Keygate identity or
//! decision header, or starts with `x-keygate-`, is removed from every request, public ones
//! included, before Keygate adds its own.
//!
//! Method-override headers (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`)
//! make frameworks that honour them run another method than the one Keygate checked the
//! scopes for (a read-scoped key doing a `DELETE`): they are removed too, unless the
//! configuration says otherwise.

/// Every header whose folded name starts with this is Keygate's to set.
pub const RESERVED_PREFIX: &str = "x-keygate-";

/// Method-override headers, folded.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// A byte of a header name as upstream frameworks read it.
fn fold(byte: u8) -> u8 {
    match byte {
        b'_' => b'-',
        other => other.to_ascii_lowercase(),
    }
}

/// True when `name`, folded, equals `folded` (which must already be folded: lower case, no `_`).
pub fn folds_to(name: &str, folded: &str) -> bool {
    name.len() == folded.len()
        && name
            .bytes()
            .zip(folded.bytes())
            .all(|(have, want)| fold(have) == want)
}

/// True when `name`, folded, starts with `folded_prefix` (lower case, no `_`).
pub fn folds_with_prefix(name: &str, folded_prefix: &str) -> bool {
    name.len() >= folded_prefix.len()
        && name
            .bytes()
            .zip(folded_prefix.bytes())
            .all(|(have, want)| fold(have) == want)
}

/// Which client-sent request headers the filter removes before anything else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderRules {
    /// The identity and decision headers, folded.
    reserved: Vec<String>,
    strip_method_override: bool,
}

impl HeaderRules {
    /// Rules for these header names (identity headers and the shadow decision header; names
    /// the configuration checked to be lower case) and the method-override choice.
    pub fn new<'a>(
        reserved: impl IntoIterator<Item = &'a str>,
        strip_method_override: bool,
    ) -> Self {
        let reserved = reserved
            .into_iter()
            .map(|name| name.bytes().map(|b| char::from(fold(b))).collect())
            .collect();
        Self {
            reserved,
            strip_method_override,
        }
    }

    /// True for a request header a client must not get to the upstream: any spelling of an
    /// identity or decision header or of an `x-keygate-` header, and (when configured) any
    /// spelling of a method-override header.
    pub fn removes(&self, name: &str) -> bool {
        folds_with_prefix(name, RESERVED_PREFIX)
            || self.reserved.iter().any(|r| folds_to(name, r))
            || (self.strip_method_override
                && METHOD_OVERRIDE_HEADERS.iter().any(|m| folds_to(name, m)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(strip_method_override: bool) -> HeaderRules {
        HeaderRules::new(
            [
                "x-keygate-subject",
                "x-user",
                "x-keygate-scopes",
                "authz-decision",
            ],
            strip_method_override,
        )
    }

    #[test]
    fn every_spelling_a_framework_folds_together_is_removed() {
        let r = rules(true);
        for name in [
            "x-keygate-subject",
            "x_keygate_subject",
            "X_KEYGATE_SUBJECT",
            "X-Keygate-Subject",
            "x-keygate_subject",
            "x_keygate-anything",
            "x-keygate-",
            "x-user",
            "X_User",
            "authz-decision",
            "authz_decision",
            "AUTHZ_DECISION",
            "x-http-method-override",
            "X_HTTP_METHOD_OVERRIDE",
            "x-http-method",
            "x_http_method",
            "X-Method-Override",
            "x_method_override",
        ] {
            assert!(r.removes(name), "{name}");
        }
        for name in [
            "x-keygate",
            "xkeygate-subject",
            "x-users",
            "x-use",
            "authz-decisions",
            "x-http-methods",
            "x-api-key",
            "authorization",
            ":path",
            "",
        ] {
            assert!(!r.removes(name), "{name}");
        }
    }

    #[test]
    fn method_override_headers_stay_when_configured_so() {
        let r = rules(false);
        assert!(!r.removes("x-http-method-override"));
        assert!(!r.removes("X_HTTP_METHOD"));
        assert!(r.removes("x_keygate_subject"));
    }

    #[test]
    fn folding_compares_lengths_first() {
        assert!(folds_to("A_B", "a-b"));
        assert!(!folds_to("a-bc", "a-b"));
        assert!(folds_with_prefix("A_Bc", "a-b"));
        assert!(!folds_with_prefix("a", "a-b"));
    }
}
