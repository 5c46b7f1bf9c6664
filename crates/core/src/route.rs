//! The route table: method + path (prefix or template) or Envoy route name → the scopes a
//! request needs; and the same policy read from Envoy route metadata.
//!
//! Routes are tried in order; the first match wins; a request that matches no route is
//! denied. Paths are matched after the query string is cut off, and a path with `.` or `..`
//! segments never matches (Envoy should normalise paths first; this is the second lock).
//!
//! Paths that servers behind Keygate read differently from the route table are refused or
//! never matched, so no spelling of a protected path can pass as a public one:
//! - a `;` path parameter (`/public/..;/v1/x`, which Java servlet containers serve as
//!   `/v1/x`), raw or percent-encoded once or more, on any segment: refused with 400
//!   ([`has_path_parameter`], checked by the filter before any route is matched);
//! - `.`/`..` segments, a doubled slash, a backslash, a percent-encoded `.`, `/` or `\` or
//!   character that needs no encoding (`%76` for `v`), also behind more than one layer of
//!   percent-encoding (`%252e`): never matched, so denied (403);
//! - a path that matches a public route, but a protected one when letters are compared in
//!   any case (Express routes case-insensitively): the protected route's policy.

use serde::Deserialize;

use crate::binding::{
    decode_bound_value, is_scope_value, Attribute, BindError, Binding, Requirement,
};
use crate::principal::PrincipalMode;
use crate::scope::{parse_scopes, Scope, ScopeError};
use crate::wire::RateLimit;

/// Most routes a table may hold.
pub const MAX_ROUTES: usize = 10_000;
const MAX_PATTERN_LEN: usize = 1024;

/// A route as written in the plugin configuration.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Optional label, used in logs.
    #[serde(default)]
    pub name: Option<String>,
    /// HTTP methods this route covers; absent means all.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// A plain string prefix of the path (`/v1/`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// A path template: literal segments, `{name}` or `*` for one segment, a final `**` for the rest.
    #[serde(default)]
    pub path: Option<String>,
    /// The name of the Envoy route (`xds.route_name`) this entry applies to.
    #[serde(default)]
    pub route_name: Option<String>,
    /// `enforce` or `shadow` for this route; absent: the filter's global mode.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Default rate limit for keys without one of their own.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// No key needed.
    #[serde(default)]
    pub public: bool,
    /// Scopes required, all of them. On a `path` template, a scope may name a parameter as
    /// one whole `:`-segment (`datasets:{dataset}:read`): the request needs the scope for the
    /// path's value.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Path parameters bound to an attribute of the key (`{"tenant": "owner"}`;
    /// `metadata.<field>`, `claim.<name>`): the request passes only when they are equal.
    #[serde(default)]
    pub bind: std::collections::BTreeMap<String, String>,
    /// Forward the client's Keygate credential to the upstream (default: removed on every
    /// route, public ones included, so keys do not land in upstream logs).
    #[serde(default)]
    pub forward_credential: bool,
    /// Whether the route takes workload identities: `none` (key only, the default),
    /// `accept` (a mapped principal instead of a key) or `require` (a mapped principal and a
    /// key). See [`crate::principal`].
    #[serde(default)]
    pub principal: PrincipalMode,
    /// What one request costs from a key's quota (credits); absent: 1. Rate limits count
    /// requests, whatever the cost.
    #[serde(default)]
    pub cost: Option<u32>,
    /// `"required"`: a request must carry an HTTP message signature (RFC 9421) made with
    /// the key's signing material (see [`crate::signature`]); absent or `"none"`: not checked.
    #[serde(default)]
    pub signature: Option<String>,
    /// Components the signature must cover besides `@method`, `@authority`, `@path` and
    /// `@query` (and `content-digest` when the request has a body).
    #[serde(default)]
    pub signature_components: Vec<String>,
}

/// Most a route's `cost` may be.
pub const MAX_ROUTE_COST: u32 = 1_000_000;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    #[error("give exactly one of `prefix`, `path` or `route_name`")]
    NeedsOnePathMatcher,
    #[error("a path pattern must start with '/' and be at most 1024 characters")]
    BadPattern,
    #[error("`**` may only be the last segment of a path template")]
    RestNotLast,
    #[error("a method is an upper-case token such as GET")]
    BadMethod,
    #[error("a public route cannot require scopes")]
    PublicWithScopes,
    #[error("a route needs `scopes` or `public: true` (use a scope list to protect it)")]
    NoPolicy,
    #[error("{0}")]
    Scope(#[from] ScopeError),
    #[error("at most 10000 routes are allowed")]
    TooMany,
    #[error("`rate_limit` needs requests_per_second in (0, 1000000] and burst in 1..=1000000")]
    BadRateLimit,
    #[error("`bind` and parameters in scopes need a `path` template")]
    BindNeedsTemplate,
    #[error("a public route cannot bind parameters")]
    PublicWithBind,
    #[error("`{0}` is not a `{{name}}` parameter of the path template (or it appears twice)")]
    UnknownParameter(String),
    #[error("`{0}`: bind a parameter to `owner`, `metadata.<field>` or `claim.<name>`")]
    BadAttribute(String),
    #[error(
        "`{0}`: a parameter in a scope is a whole `:`-segment such as `datasets:{{dataset}}:read`"
    )]
    BadScopeTemplate(String),
    #[error("a public route cannot take principals (`principal` needs `scopes`)")]
    PublicWithPrincipal,
    #[error("`cost` must be in 1..=1000000")]
    BadCost,
    #[error("{0}")]
    BadSignature(&'static str),
    #[error("a public route cannot require a signature (it checks no key)")]
    PublicWithSignature,
}

/// Whether decisions are enforced or only reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Denied requests are refused.
    #[default]
    Enforce,
    /// Every request is evaluated as in enforce mode but forwarded, with the decision in a
    /// header: for switching Keygate on over live traffic.
    Shadow,
}

impl Mode {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "enforce" => Some(Self::Enforce),
            "shadow" => Some(Self::Shadow),
            _ => None,
        }
    }
}

/// What a matched route demands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Policy {
    Public,
    /// Shared, so a request takes the route's scopes without copying them.
    Scopes(std::sync::Arc<[Scope]>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    /// A `{name}` segment: one segment, its value named.
    Param(String),
    Rest,
}

/// A route's path-dependent demands: parameters in scopes and bindings. Parameters are
/// path segment indexes (the template matched, so they are there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    scopes: Vec<Vec<ScopePart>>,
    binds: Vec<(usize, std::sync::Arc<str>, Attribute)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ScopePart {
    Literal(String),
    Param(usize, std::sync::Arc<str>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PathMatcher {
    Prefix(String),
    Template(Vec<Segment>),
    RouteName(String),
}

/// One compiled route.
#[derive(Clone, Debug)]
pub struct Route {
    pub name: String,
    methods: Option<Vec<String>>,
    matcher: PathMatcher,
    pub policy: Policy,
    /// Parameters in scopes and bindings, if the route has any.
    pub guard: Option<std::sync::Arc<Guard>>,
    pub mode: Option<Mode>,
    pub rate_limit: Option<RateLimit>,
    /// Keep the client's credential on the forwarded request.
    pub forward_credential: bool,
    /// Whether the route takes workload identities.
    pub principal: PrincipalMode,
    /// What one request costs from a key's quota (1 unless configured).
    pub cost: u32,
    /// `name`, shared: the route usage counts under when the entry was given a name.
    pub label: std::sync::Arc<str>,
    /// The entry was given a `name` (else `name` is `route[<index>]`).
    pub named: bool,
    /// The route requires request signatures.
    pub signature: Option<std::sync::Arc<crate::signature::RouteSignature>>,
}

impl Route {
    fn compile(index: usize, spec: &RouteSpec) -> Result<Self, RouteError> {
        let matcher = match (&spec.prefix, &spec.path, &spec.route_name) {
            (Some(prefix), None, None) => {
                check_pattern(prefix)?;
                PathMatcher::Prefix(prefix.clone())
            }
            (None, Some(template), None) => PathMatcher::Template(compile_template(template)?),
            (None, None, Some(name)) if !name.is_empty() && name.len() <= MAX_PATTERN_LEN => {
                PathMatcher::RouteName(name.clone())
            }
            (None, None, Some(_)) => return Err(RouteError::BadPattern),
            _ => return Err(RouteError::NeedsOnePathMatcher),
        };
        let methods = match &spec.methods {
            None => None,
            Some(list) => {
                let ok = !list.is_empty()
                    && list.iter().all(|m| {
                        (1..=16).contains(&m.len()) && m.bytes().all(|b| b.is_ascii_uppercase())
                    });
                if !ok {
                    return Err(RouteError::BadMethod);
                }
                Some(list.clone())
            }
        };
        if spec.scopes.len() > crate::scope::MAX_SCOPES {
            return Err(RouteError::Scope(ScopeError::TooMany));
        }
        let (plain, templates): (Vec<&String>, Vec<&String>) =
            spec.scopes.iter().partition(|s| !s.contains(['{', '}']));
        let guard = compile_guard(&matcher, &templates, &spec.bind)?;
        let policy = match (spec.public, spec.scopes.is_empty() && guard.is_none()) {
            (true, true) => Policy::Public,
            (true, false) if spec.scopes.is_empty() => return Err(RouteError::PublicWithBind),
            (true, false) => return Err(RouteError::PublicWithScopes),
            (false, true) => return Err(RouteError::NoPolicy),
            (false, false) => Policy::Scopes(parse_scopes(&plain)?.into()),
        };
        if policy == Policy::Public && spec.principal != PrincipalMode::None {
            return Err(RouteError::PublicWithPrincipal);
        }
        let signature = crate::signature::RouteSignature::compile(
            spec.signature.as_deref(),
            &spec.signature_components,
        )
        .map_err(RouteError::BadSignature)?;
        if policy == Policy::Public && signature.is_some() {
            return Err(RouteError::PublicWithSignature);
        }
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("route[{index}]"));
        Ok(Self {
            label: std::sync::Arc::from(name.as_str()),
            named: spec.name.is_some(),
            name,
            methods,
            matcher,
            policy,
            guard: guard.map(std::sync::Arc::new),
            mode: spec.mode,
            rate_limit: match spec.rate_limit {
                Some(limit) if !limit.is_valid() => return Err(RouteError::BadRateLimit),
                limit => limit,
            },
            forward_credential: spec.forward_credential,
            principal: spec.principal,
            cost: match spec.cost {
                None => 1,
                Some(cost) if (1..=MAX_ROUTE_COST).contains(&cost) => cost,
                Some(_) => return Err(RouteError::BadCost),
            },
            signature: signature.map(std::sync::Arc::new),
        })
    }

    /// `any_case`: letters compared ASCII case-insensitively, as servers that route
    /// case-insensitively (Express) read the path.
    fn matches(&self, method: &str, path: &str, route_name: Option<&str>, any_case: bool) -> bool {
        if let Some(methods) = &self.methods {
            if !methods.iter().any(|m| m == method) {
                return false;
            }
        }
        match &self.matcher {
            PathMatcher::Prefix(prefix) if any_case => path
                .as_bytes()
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes())),
            PathMatcher::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatcher::Template(segments) => template_matches(segments, path, any_case),
            PathMatcher::RouteName(name) => route_name == Some(name.as_str()),
        }
    }

    /// What a request on `path` (which this route matched) must satisfy: `None` on a public
    /// route; else the route's scopes with the path's parameters filled in and its bindings.
    pub fn requirement(&self, path: &str) -> Result<Option<Requirement>, BindError> {
        let scopes = match &self.policy {
            Policy::Public => return Ok(None),
            Policy::Scopes(scopes) => scopes,
        };
        let Some(guard) = &self.guard else {
            return Ok(Some(Requirement::from(std::sync::Arc::clone(scopes))));
        };
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
        let value = |index: usize, param: &std::sync::Arc<str>| {
            segments
                .get(index)
                .and_then(|segment| decode_bound_value(segment))
                .ok_or_else(|| BindError::BadParameter {
                    param: std::sync::Arc::clone(param),
                })
        };
        let mut all: Vec<Scope> = scopes.to_vec();
        for parts in &guard.scopes {
            let mut text = String::new();
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    text.push(':');
                }
                match part {
                    ScopePart::Literal(literal) => text.push_str(literal),
                    ScopePart::Param(index, param) => {
                        let filled = value(*index, param)?;
                        if !is_scope_value(&filled) {
                            return Err(BindError::BadParameter {
                                param: std::sync::Arc::clone(param),
                            });
                        }
                        text.push_str(&filled);
                    }
                }
            }
            let scope = Scope::parse(&text).map_err(|_| BindError::BadParameter {
                param: parts
                    .iter()
                    .find_map(|p| match p {
                        ScopePart::Param(_, name) => Some(std::sync::Arc::clone(name)),
                        ScopePart::Literal(_) => None,
                    })
                    .unwrap_or_else(|| "parameter".into()),
            })?;
            all.push(scope);
        }
        all.sort();
        all.dedup();
        let bindings = guard
            .binds
            .iter()
            .map(|(index, param, attribute)| {
                Ok(Binding {
                    param: std::sync::Arc::clone(param),
                    attribute: attribute.clone(),
                    value: value(*index, param)?,
                })
            })
            .collect::<Result<Vec<_>, BindError>>()?;
        Ok(Some(Requirement {
            scopes: all.into(),
            bindings,
        }))
    }

    /// The claim names this route binds (the JWT verifier keeps those claims).
    pub fn bound_claims(&self) -> impl Iterator<Item = &str> {
        self.guard.iter().flat_map(|guard| {
            guard
                .binds
                .iter()
                .filter_map(|(_, _, attribute)| match attribute {
                    Attribute::Claim(name) => Some(name.as_str()),
                    _ => None,
                })
        })
    }
}

/// The parameters in scopes and the bindings of a route, checked against its template.
fn compile_guard(
    matcher: &PathMatcher,
    templates: &[&String],
    bind: &std::collections::BTreeMap<String, String>,
) -> Result<Option<Guard>, RouteError> {
    if templates.is_empty() && bind.is_empty() {
        return Ok(None);
    }
    let PathMatcher::Template(segments) = matcher else {
        return Err(RouteError::BindNeedsTemplate);
    };
    // The segment index of a parameter named once in the template.
    let index_of = |name: &str| -> Result<usize, RouteError> {
        let mut found = segments
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, Segment::Param(p) if p == name));
        match (found.next(), found.next()) {
            (Some((index, _)), None) => Ok(index),
            _ => Err(RouteError::UnknownParameter(name.to_owned())),
        }
    };
    let mut scopes = Vec::with_capacity(templates.len());
    for template in templates {
        let bad = || RouteError::BadScopeTemplate((*template).clone());
        if template.len() > crate::scope::MAX_SCOPE_LEN {
            return Err(RouteError::Scope(ScopeError::BadSyntax));
        }
        let mut parts = Vec::new();
        for segment in template.split(':') {
            match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) if !name.is_empty() && !name.contains(['{', '}']) => {
                    parts.push(ScopePart::Param(index_of(name)?, name.into()));
                }
                Some(_) => return Err(bad()),
                None if segment.contains(['{', '}']) => return Err(bad()),
                None if segment.is_empty() => return Err(bad()),
                None => {
                    Scope::parse(segment)?;
                    parts.push(ScopePart::Literal(segment.to_owned()));
                }
            }
        }
        scopes.push(parts);
    }
    let binds = bind
        .iter()
        .map(|(param, attribute)| {
            let attribute = Attribute::parse(attribute)
                .ok_or_else(|| RouteError::BadAttribute(attribute.clone()))?;
            Ok((index_of(param)?, param.as_str().into(), attribute))
        })
        .collect::<Result<Vec<_>, RouteError>>()?;
    Ok(Some(Guard { scopes, binds }))
}

fn check_pattern(pattern: &str) -> Result<(), RouteError> {
    if pattern.starts_with('/') && pattern.len() <= MAX_PATTERN_LEN {
        Ok(())
    } else {
        Err(RouteError::BadPattern)
    }
}

fn compile_template(template: &str) -> Result<Vec<Segment>, RouteError> {
    check_pattern(template)?;
    let parts: Vec<&str> = template[1..].split('/').collect();
    let last = parts.len() - 1;
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| match *part {
            "**" if i == last => Ok(Segment::Rest),
            "**" => Err(RouteError::RestNotLast),
            "*" => Ok(Segment::One),
            p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                Ok(Segment::Param(p[1..p.len() - 1].to_owned()))
            }
            p if p.contains(['{', '}', '*']) => Err(RouteError::BadPattern),
            p => Ok(Segment::Literal(p.to_owned())),
        })
        .collect()
}

fn template_matches(segments: &[Segment], path: &str, any_case: bool) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let mut parts = rest.split('/');
    for segment in segments {
        match segment {
            Segment::Rest => return true,
            Segment::One | Segment::Param(_) => match parts.next() {
                Some(part) if !part.is_empty() => {}
                _ => return false,
            },
            Segment::Literal(literal) => {
                let same = |part: &str| {
                    part == literal || (any_case && part.eq_ignore_ascii_case(literal))
                };
                if !parts.next().is_some_and(same) {
                    return false;
                }
            }
        }
    }
    parts.next().is_none()
}

/// How many layers of percent-encoding are looked through (`%25252e` is three).
const DECODE_ROUNDS: usize = 4;

/// `path` and what it becomes when percent-decoded once, twice, ... (while it changes), so a
/// character hidden behind several layers of encoding is still seen.
fn decodings(path: &str) -> impl Iterator<Item = std::borrow::Cow<'_, str>> {
    let mut next = Some(std::borrow::Cow::Borrowed(path));
    std::iter::from_fn(move || {
        let current = next.take()?;
        if current.contains('%') {
            let decoded = percent_decode_lossy(&current);
            if decoded != current.as_ref() {
                next = Some(std::borrow::Cow::Owned(decoded));
            }
        }
        Some(current)
    })
    .take(DECODE_ROUNDS + 1)
}

/// Decodes every `%XX` (hex) once; anything else, invalid sequences included, stays as is.
/// Bytes that are not UTF-8 after decoding become U+FFFD.
fn percent_decode_lossy(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(value as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True when the path (query string and fragment cut off) has a `;` path parameter on any
/// segment, raw or percent-encoded once or more (`;`, `%3b`, `%253b`). Servlet containers
/// strip parameters before routing (`/public/..;/v1/x` is served as `/v1/x`), other servers
/// do not: the filter refuses such paths (400) rather than guess which reading the upstream
/// takes.
pub fn has_path_parameter(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    // Without `%` a path decodes to itself (the usual request: checked in one pass).
    if !path.contains('%') {
        return path.contains(';');
    }
    decodings(path).any(|p| p.contains(';'))
}

/// True when a path, or what it becomes after one or more rounds of percent-decoding, has `.`
/// or `..` segments (raw or percent-encoded), a backslash, an encoded slash or a `;` path
/// parameter: shapes that can make one route look like another.
fn is_ambiguous(path: &str) -> bool {
    if !path.contains('%') {
        return is_ambiguous_plain(path.as_bytes());
    }
    decodings(path).any(|p| is_ambiguous_once(&p))
}

/// [`is_ambiguous_once`] for a path without `%`, which decodes to itself and encodes
/// nothing: a backslash, a `;`, `//`, or a `.` or `..` segment, found in one pass over its
/// bytes (every cached request's path goes through here).
fn is_ambiguous_plain(bytes: &[u8]) -> bool {
    let dot_segment = |segment: &[u8]| segment == b"." || segment == b"..";
    let mut segment_start = 0;
    let mut previous = 0u8;
    for (i, &byte) in bytes.iter().enumerate() {
        match byte {
            b'\\' | b';' => return true,
            b'/' if previous == b'/' => return true,
            b'/' => {
                if dot_segment(bytes.get(segment_start..i).unwrap_or_default()) {
                    return true;
                }
                segment_start = i + 1;
            }
            _ => {}
        }
        previous = byte;
    }
    dot_segment(bytes.get(segment_start..).unwrap_or_default())
}

fn is_ambiguous_once(path: &str) -> bool {
    let bytes = path.as_bytes();
    let encoded = bytes.windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'f' | b'e') | (b'5', b'c')
            )
    });
    encoded
        || encodes_unreserved(bytes)
        || path.contains(['\\', ';'])
        || path.contains("//")
        || path.split('/').any(|s| s == "." || s == "..")
}

/// True when the path percent-encodes a character that needs no encoding (a letter, a digit,
/// `-`, `.`, `_`, `~`): Go `net/http` and servlet containers decode `/%76%31/` to `/v1/`, the
/// route table would not, so such a path never matches.
fn encodes_unreserved(bytes: &[u8]) -> bool {
    let hex = |b: u8| char::from(b).to_digit(16);
    bytes
        .windows(3)
        .any(|w| match (w[0], hex(w[1]), hex(w[2])) {
            (b'%', Some(high), Some(low)) => {
                let decoded = (high * 16 + low) as u8;
                decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~')
            }
            _ => false,
        })
}

/// Why route metadata could not be read as a policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    #[error("`scopes` must be a string of space-separated scopes or a list of strings")]
    BadScopes,
    #[error("`public` must be a boolean")]
    BadPublic,
    #[error("`mode` must be \"enforce\" or \"shadow\"")]
    BadMode,
    #[error("{0}")]
    Route(#[from] RouteError),
}

/// A policy read from Envoy route metadata (`filter_metadata.keygate`), as the host returns
/// its leaves: strings as bytes, booleans as one byte, lists in the proxy-wasm pairs format.
/// `Ok(None)` when the route carries neither `scopes` nor `public`.
pub fn policy_from_metadata(
    scopes: Option<&[u8]>,
    public: Option<&[u8]>,
    mode: Option<&[u8]>,
) -> Result<Option<(Policy, Option<Mode>)>, MetadataError> {
    let mode = match mode {
        None => None,
        Some(bytes) => Some(
            std::str::from_utf8(bytes)
                .ok()
                .and_then(Mode::parse)
                .ok_or(MetadataError::BadMode)?,
        ),
    };
    let public = match public {
        None => false,
        Some([0]) | Some(b"false") => false,
        Some([1]) | Some(b"true") => true,
        Some(_) => return Err(MetadataError::BadPublic),
    };
    let scopes = match scopes {
        None => Vec::new(),
        Some(bytes) => metadata_strings(bytes).ok_or(MetadataError::BadScopes)?,
    };
    let policy = match (public, scopes.is_empty()) {
        (false, true) => return Ok(None),
        (true, true) => Policy::Public,
        (true, false) => return Err(RouteError::PublicWithScopes.into()),
        (false, false) => Policy::Scopes(parse_scopes(&scopes).map_err(RouteError::from)?.into()),
    };
    Ok(Some((policy, mode)))
}

/// A route's signature demand read from Envoy route metadata (`signature`,
/// `signature_components`, as the host returns the leaves).
pub fn signature_from_metadata(
    signature: Option<&[u8]>,
    components: Option<&[u8]>,
) -> Result<Option<crate::signature::RouteSignature>, RouteError> {
    let signature = match signature {
        None => None,
        Some(bytes) => Some(
            std::str::from_utf8(bytes)
                .map_err(|_| RouteError::BadSignature("`signature` must be a string"))?,
        ),
    };
    let components = match components {
        None => Vec::new(),
        Some(bytes) => metadata_strings(bytes).ok_or(RouteError::BadSignature(
            "`signature_components` must be a list of strings",
        ))?,
    };
    crate::signature::RouteSignature::compile(signature, &components)
        .map_err(RouteError::BadSignature)
}

/// A list in the proxy-wasm pairs format (elements are the keys), or a plain string split
/// on spaces and commas.
fn metadata_strings(bytes: &[u8]) -> Option<Vec<String>> {
    if let Some(list) = decode_pairs_keys(bytes) {
        return Some(list);
    }
    let text = std::str::from_utf8(bytes).ok()?;
    Some(
        text.split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

fn decode_pairs_keys(bytes: &[u8]) -> Option<Vec<String>> {
    let read_u32 = |at: usize| -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(raw) as usize)
    };
    let count = read_u32(0)?;
    if count == 0 || count > crate::scope::MAX_SCOPES {
        return None;
    }
    let mut sizes = Vec::with_capacity(count);
    for i in 0..count {
        sizes.push((read_u32(4 + i * 8)?, read_u32(8 + i * 8)?));
    }
    let mut at = 4 + count * 8;
    let mut keys = Vec::with_capacity(count);
    // Lengths come from the host: checked arithmetic, so a hostile length cannot wrap
    // around (usize is 32 bits on wasm32).
    for (key_len, value_len) in sizes {
        let key_end = at.checked_add(key_len)?;
        let key = bytes.get(at..key_end)?;
        if bytes.get(key_end) != Some(&0) {
            return None;
        }
        at = key_end
            .checked_add(1)?
            .checked_add(value_len)?
            .checked_add(1)?;
        keys.push(std::str::from_utf8(key).ok()?.to_owned());
    }
    (at == bytes.len()).then_some(keys)
}

/// The compiled, ordered route table.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Some path pattern holds an upper-case letter: a lower-case path may then match a route
    /// in another case, so the any-case check cannot be skipped for it.
    upper_case_patterns: bool,
}

impl RouteTable {
    /// Compiles specs; an error names the index of the offending route.
    pub fn compile(specs: &[RouteSpec]) -> Result<Self, (usize, RouteError)> {
        if specs.len() > MAX_ROUTES {
            return Err((MAX_ROUTES, RouteError::TooMany));
        }
        let routes = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| Route::compile(i, spec).map_err(|e| (i, e)))
            .collect::<Result<Vec<Route>, _>>()?;
        let upper_case_patterns = routes.iter().any(|r| {
            match &r.matcher {
            PathMatcher::Prefix(prefix) => prefix.bytes().any(|b| b.is_ascii_uppercase()),
            PathMatcher::Template(segments) => segments.iter().any(|s| {
                matches!(s, Segment::Literal(text) if text.bytes().any(|b| b.is_ascii_uppercase()))
            }),
            PathMatcher::RouteName(_) => false,
        }
        });
        Ok(Self {
            routes,
            upper_case_patterns,
        })
    }

    /// The index of the first route that takes principals, if any.
    pub fn first_taking_principals(&self) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.principal != PrincipalMode::None)
    }

    /// The first route matching `method`, `path` (query string ignored) and, for entries
    /// that name one, the Envoy route name.
    pub fn find(&self, method: &str, path: &str, route_name: Option<&str>) -> Option<&Route> {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        if is_ambiguous(path) {
            return None;
        }
        let found = self
            .routes
            .iter()
            .find(|r| r.matches(method, path, route_name, false))?;
        // Servers that route case-insensitively (Express) take `/V1/x` to the `/v1/` handler.
        // When every pattern and the path are lower case, matching in any case finds the same
        // route: nothing to check (the usual case, at no cost).
        if !self.upper_case_patterns && !path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Some(found);
        }
        match self
            .routes
            .iter()
            .find(|r| r.matches(method, path, route_name, true))
        {
            // An earlier route matches in another case and asks for something else.
            Some(any_case)
                if !std::ptr::eq(any_case, found)
                    && (any_case.policy != found.policy || any_case.guard != found.guard) =>
            {
                match (&found.policy, &any_case.policy) {
                    // A path that matches a protected route in another case is not public.
                    (Policy::Public, _) => Some(any_case),
                    // Never weaker than the exact match.
                    (_, Policy::Public) => Some(found),
                    // Two protected routes that differ only by case: the upstream may serve
                    // either, so neither scope set is enough on its own: refused (403).
                    _ => None,
                }
            }
            _ => Some(found),
        }
    }

    /// The claim names routes bind (`claim.<name>`), each once.
    pub fn bound_claims(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .routes
            .iter()
            .flat_map(Route::bound_claims)
            .map(str::to_owned)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Whether some route requires request signatures.
    pub fn any_signature(&self) -> bool {
        self.routes.iter().any(|r| r.signature.is_some())
    }

    /// True when some entry matches by Envoy route name (so the filter must read it).
    pub fn uses_route_names(&self) -> bool {
        self.routes
            .iter()
            .any(|r| matches!(r.matcher, PathMatcher::RouteName(_)))
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_routes_that_differ_only_by_case_never_lend_each_other_their_scopes() {
        let table = RouteTable::compile(&[
            spec(r#"{"prefix": "/v1/admin/", "scopes": ["admin"]}"#),
            spec(r#"{"path": "/v1/models/{id}", "scopes": ["models:admin"]}"#),
            spec(r#"{"prefix": "/v1/", "scopes": ["read"]}"#),
            spec(r#"{"prefix": "/", "public": true}"#),
        ])
        .unwrap();
        let scopes = |path: &str| match table.find("GET", path, None).map(|r| &r.policy) {
            Some(Policy::Scopes(s)) => Some(s.iter().map(|s| s.as_str().to_owned()).collect()),
            Some(Policy::Public) => Some(vec!["public".to_owned()]),
            None => None::<Vec<String>>,
        };
        assert_eq!(scopes("/v1/admin/users"), Some(vec!["admin".to_owned()]));
        assert_eq!(scopes("/v1/hello"), Some(vec!["read".to_owned()]));
        // Express serves these from the admin and models handlers: `read` is not enough.
        assert_eq!(scopes("/v1/ADMIN/users"), None);
        assert_eq!(scopes("/v1/MODELS/7"), None);
        // Another case of the same route, or of routes asking the same, decides as before.
        assert_eq!(scopes("/V1/hello"), Some(vec!["read".to_owned()]));
        assert_eq!(scopes("/V1/ADMIN/x"), Some(vec!["admin".to_owned()]));
        // A protected route in another case never makes a path public.
        assert_eq!(scopes("/PUBLIC"), Some(vec!["public".to_owned()]));
    }

    #[test]
    fn pairs_with_hostile_lengths_are_refused_not_wrapped() {
        // One pair whose key length is the largest u32: `at + key_len` would wrap on wasm32.
        let mut bytes = 1u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(b"a\0\0");
        assert_eq!(decode_pairs_keys(&bytes), None);
        // A value length that would wrap past the end.
        let mut bytes = 1u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(b"a\0\0");
        assert_eq!(decode_pairs_keys(&bytes), None);
        // And a well-formed one still decodes.
        let mut bytes = 1u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(b"a\0\0");
        assert_eq!(decode_pairs_keys(&bytes), Some(vec!["a".to_owned()]));
    }

    fn spec(json: &str) -> RouteSpec {
        serde_json::from_str(json).unwrap()
    }

    fn demo() -> RouteTable {
        RouteTable::compile(&[
            spec(r#"{"prefix": "/public/", "public": true}"#),
            spec(
                r#"{"path": "/v1/models/{id}", "methods": ["DELETE"], "scopes": ["models:admin"]}"#,
            ),
            spec(r#"{"methods": ["GET", "HEAD"], "prefix": "/v1/", "scopes": ["demo:read"]}"#),
            spec(r#"{"prefix": "/v1/", "scopes": ["demo:write"]}"#),
            spec(r#"{"path": "/files/**", "scopes": ["files"]}"#),
        ])
        .unwrap()
    }

    fn scopes_for(table: &RouteTable, method: &str, path: &str) -> Option<Vec<String>> {
        table.find(method, path, None).map(|r| match &r.policy {
            Policy::Public => vec!["<public>".to_owned()],
            Policy::Scopes(s) => s.iter().map(|s| s.as_str().to_owned()).collect(),
        })
    }

    #[test]
    fn a_route_costs_one_unless_configured() {
        let table = RouteTable::compile(&[
            spec(r#"{"prefix": "/cheap/", "scopes": ["a"]}"#),
            spec(r#"{"prefix": "/dear/", "scopes": ["a"], "cost": 25}"#),
        ])
        .unwrap();
        assert_eq!(table.find("GET", "/cheap/x", None).unwrap().cost, 1);
        assert_eq!(table.find("GET", "/dear/x", None).unwrap().cost, 25);
        for bad in [0, MAX_ROUTE_COST + 1] {
            let json = format!(r#"{{"prefix": "/", "scopes": ["a"], "cost": {bad}}}"#);
            assert!(RouteTable::compile(&[spec(&json)]).is_err(), "{bad}");
        }
    }

    #[test]
    fn first_match_wins_by_method_and_path() {
        let t = demo();
        assert_eq!(
            scopes_for(&t, "GET", "/public/x"),
            Some(vec!["<public>".into()])
        );
        assert_eq!(
            scopes_for(&t, "GET", "/v1/hello?x=1"),
            Some(vec!["demo:read".into()])
        );
        assert_eq!(
            scopes_for(&t, "POST", "/v1/hello"),
            Some(vec!["demo:write".into()])
        );
        assert_eq!(
            scopes_for(&t, "DELETE", "/v1/models/7"),
            Some(vec!["models:admin".into()])
        );
        assert_eq!(
            scopes_for(&t, "DELETE", "/v1/models/7/x"),
            Some(vec!["demo:write".into()])
        );
        assert_eq!(scopes_for(&t, "GET", "/files"), Some(vec!["files".into()]));
        assert_eq!(
            scopes_for(&t, "GET", "/files/a/b/c"),
            Some(vec!["files".into()])
        );
        assert_eq!(scopes_for(&t, "GET", "/admin"), None);
        assert_eq!(scopes_for(&t, "GET", "/"), None);
    }

    #[test]
    fn template_segment_must_be_non_empty() {
        let t = RouteTable::compile(&[spec(r#"{"path": "/m/{id}", "scopes": ["a"]}"#)]).unwrap();
        assert!(t.find("GET", "/m/1", None).is_some());
        assert!(t.find("GET", "/m/", None).is_none());
        assert!(t.find("GET", "/m", None).is_none());
    }

    #[test]
    fn dot_segments_and_encoded_slashes_never_match() {
        let t = demo();
        for path in [
            "/public/../v1/x",
            "/public/./x",
            "/public/%2e%2e/v1",
            "/public/a%2Fb",
            "/public\\x",
        ] {
            assert!(t.find("GET", path, None).is_none(), "{path}");
        }
    }

    /// Every path of up to seven bytes over the bytes that make a path ambiguous (and two that
    /// do not): the one-pass check agrees with the general one.
    #[test]
    fn the_one_pass_check_of_a_plain_path_agrees_with_the_general_one() {
        const BYTES: [u8; 6] = [b'/', b'.', b'a', b'\\', b';', b'V'];
        let mut paths = vec![Vec::new()];
        let mut checked = 0;
        for _ in 0..7 {
            let mut longer = Vec::with_capacity(paths.len() * BYTES.len());
            for path in &paths {
                for byte in BYTES {
                    let mut next = path.clone();
                    next.push(byte);
                    let text = std::str::from_utf8(&next).unwrap();
                    assert_eq!(
                        is_ambiguous_plain(&next),
                        is_ambiguous_once(text),
                        "{text:?}"
                    );
                    assert_eq!(is_ambiguous(text), is_ambiguous_once(text), "{text:?}");
                    checked += 1;
                    longer.push(next);
                }
            }
            paths = longer;
        }
        assert_eq!(checked, (1..=7).map(|n| BYTES.len().pow(n)).sum::<usize>());
    }

    #[test]
    fn path_parameters_are_found_raw_and_encoded_on_any_segment() {
        for path in [
            "/public/..;/v1/hello",
            "/public/..;a=b/v1/hello",
            "/public;/x",
            "/public/x;jsessionid=1",
            "/v1/hello;",
            "/public/%2e%2e;/v1/hello",
            "/public/..%3b/v1/hello",
            "/public/..%3B/v1/hello",
            "/public/..%253b/v1/hello",
            "/public/..%25253B/v1/hello",
            "/public/%2e%2e%3b/v1/hello",
            ";/v1",
        ] {
            assert!(has_path_parameter(path), "{path}");
            assert!(demo().find("GET", path, None).is_none(), "{path}");
        }
        for path in [
            "/public/x",
            "/public/x?a=1;b=2",
            "/public/x#frag;x",
            "/public/%3",
            "/public/%zz",
            "/v1/%33b",
            "",
        ] {
            assert!(!has_path_parameter(path), "{path}");
        }
    }

    #[test]
    fn layers_of_percent_encoding_hide_nothing() {
        let t = demo();
        for path in [
            "/public/%252e%252e/v1/hello",
            "/public/%252E%252E/v1/hello",
            "/public/%25252e%25252e/v1/hello",
            "/public/a%252fb",
            "/public/a%255cb",
            "/public/%2e%2e%2fv1",
        ] {
            assert!(t.find("GET", path, None).is_none(), "{path}");
        }
        assert!(t.find("GET", "/public/100%25", None).is_some());
        assert!(t.find("GET", "/public/a%20b", None).is_some());
    }

    #[test]
    fn a_catch_all_public_route_never_takes_another_spelling_of_a_protected_one() {
        let t = RouteTable::compile(&[
            spec(r#"{"path": "/v1/models/{id}", "scopes": ["models:admin"]}"#),
            spec(r#"{"prefix": "/Admin/", "scopes": ["admin"]}"#),
            spec(r#"{"prefix": "/", "public": true}"#),
        ])
        .unwrap();
        let policy = |path: &str| t.find("GET", path, None).map(|r| r.policy.clone());
        let admin = Some(Policy::Scopes(
            parse_scopes(&["admin".to_owned()]).unwrap().into(),
        ));
        let models = policy("/v1/models/7");
        assert!(models.is_some() && models != Some(Policy::Public));
        // Another case: the protected route's policy (Express routes it there).
        assert_eq!(policy("/V1/Models/7"), models);
        assert_eq!(policy("/admin/x"), admin);
        assert_eq!(policy("/ADMIN/x"), admin);
        // Encoded unreserved characters and doubled slashes match nothing.
        for path in [
            "/%76%31/models/7",
            "/%2561dmin/x",
            "//admin/x",
            "/v1//models/7",
            "/%7e",
        ] {
            assert_eq!(policy(path), None, "{path}");
        }
        // Anything else stays public, encoded reserved characters included.
        for path in ["/", "/other", "/v1/models", "/a%20b", "/100%25", "/%3f"] {
            assert_eq!(policy(path), Some(Policy::Public), "{path}");
        }
    }

    #[test]
    fn route_names_match_only_their_envoy_route() {
        let t = RouteTable::compile(&[
            spec(r#"{"route_name": "orders", "methods": ["GET"], "scopes": ["orders:read"], "mode": "shadow"}"#),
            spec(r#"{"prefix": "/", "scopes": ["any"]}"#),
        ])
        .unwrap();
        assert!(t.uses_route_names());
        let hit = t.find("GET", "/x", Some("orders")).unwrap();
        assert_eq!(hit.mode, Some(Mode::Shadow));
        assert_eq!(t.find("GET", "/x", Some("other")).unwrap().mode, None);
        assert_eq!(t.find("POST", "/x", Some("orders")).unwrap().mode, None);
        assert!(!demo().uses_route_names());
    }

    #[test]
    fn metadata_gives_a_policy_in_every_encoding() {
        let list = [
            2u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, b'a', 0, 0, b'b', 0, 0,
        ];
        let (policy, mode) = policy_from_metadata(Some(&list), None, Some(b"shadow"))
            .unwrap()
            .unwrap();
        assert_eq!(
            policy,
            Policy::Scopes(parse_scopes(&["a", "b"]).unwrap().into())
        );
        assert_eq!(mode, Some(Mode::Shadow));
        let (policy, _) = policy_from_metadata(Some(b"demo:read demo:write"), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            policy,
            Policy::Scopes(parse_scopes(&["demo:read", "demo:write"]).unwrap().into())
        );
        assert_eq!(
            policy_from_metadata(None, Some(&[1]), None)
                .unwrap()
                .unwrap()
                .0,
            Policy::Public
        );
        assert_eq!(policy_from_metadata(None, Some(&[0]), None), Ok(None));
        assert_eq!(policy_from_metadata(None, None, None), Ok(None));
        assert_eq!(
            policy_from_metadata(Some(b"a"), Some(&[1]), None),
            Err(MetadataError::Route(RouteError::PublicWithScopes))
        );
        assert!(policy_from_metadata(Some(b"bad scope!"), None, None).is_err());
        assert_eq!(
            policy_from_metadata(None, Some(b"yes"), None),
            Err(MetadataError::BadPublic)
        );
        assert_eq!(
            policy_from_metadata(Some(b"a"), None, Some(b"loud")),
            Err(MetadataError::BadMode)
        );
        // Truncated pairs fall back to the string reading, which then fails the scope syntax.
        assert!(policy_from_metadata(Some(&list[..10]), None, None).is_err());
    }

    fn bound() -> RouteTable {
        RouteTable::compile(&[
            spec(
                r#"{"path": "/v1/tenants/{tenant}/**", "scopes": ["datasets:read"], "bind": {"tenant": "owner"}}"#,
            ),
            spec(r#"{"path": "/v1/datasets/{dataset}", "scopes": ["datasets:{dataset}:read"]}"#),
            spec(
                r#"{"path": "/v1/orgs/{org}/{team}", "scopes": ["org:{org}:{team}"], "bind": {"org": "claim.org", "team": "metadata.team"}}"#,
            ),
            spec(r#"{"prefix": "/", "public": true}"#),
        ])
        .unwrap()
    }

    fn requirement(table: &RouteTable, path: &str) -> Result<Option<Requirement>, BindError> {
        table
            .find("GET", path, None)
            .unwrap_or_else(|| panic!("{path}: no route"))
            .requirement(path)
    }

    #[test]
    fn bound_routes_fill_in_their_parameters() {
        let t = bound();
        let r = requirement(&t, "/v1/tenants/acme/x/y?q=1")
            .unwrap()
            .unwrap();
        let scopes: Vec<&str> = r.scopes.iter().map(Scope::as_str).collect();
        assert_eq!(scopes, ["datasets:read"]);
        assert_eq!(r.bindings.len(), 1);
        assert_eq!(r.bindings[0].value, "acme");
        assert_eq!(r.bindings[0].attribute, Attribute::Owner);
        let r = requirement(&t, "/v1/tenants/a%20b/x").unwrap().unwrap();
        assert_eq!(r.bindings[0].value, "a b");
        let r = requirement(&t, "/v1/datasets/x").unwrap().unwrap();
        let scopes: Vec<&str> = r.scopes.iter().map(Scope::as_str).collect();
        assert_eq!(scopes, ["datasets:x:read"]);
        assert!(r.bindings.is_empty());
        let r = requirement(&t, "/v1/orgs/o1/t1").unwrap().unwrap();
        assert_eq!(r.scopes[0].as_str(), "org:o1:t1");
        assert_eq!(r.bindings.len(), 2);
        assert_eq!(t.routes[2].bound_claims().collect::<Vec<_>>(), ["org"]);
        // A public route demands nothing; a route without a guard its scopes.
        assert_eq!(requirement(&t, "/other"), Ok(None));
    }

    #[test]
    fn a_parameter_value_never_forges_scope_syntax() {
        let t = bound();
        for path in [
            "/v1/datasets/a%3Aread",
            "/v1/datasets/%2A",
            "/v1/datasets/a%2520b",
            "/v1/datasets/a%20b",
            "/v1/datasets/a%00",
            "/v1/datasets/x*",
            "/v1/datasets/x:y",
            &format!("/v1/datasets/{}", "x".repeat(60)),
        ] {
            match requirement(&t, path) {
                Err(BindError::BadParameter { param }) => assert_eq!(&*param, "dataset"),
                other => panic!("{path}: {other:?}"),
            }
        }
        assert!(matches!(
            requirement(&t, "/v1/tenants/a%2520b/x"),
            Err(BindError::BadParameter { .. })
        ));
    }

    #[test]
    fn another_spelling_of_a_bound_route_is_never_public() {
        let t = bound();
        // Case: Express would serve these from the bound handler: the bound route decides.
        let route = t.find("GET", "/V1/Tenants/acme/x", None).unwrap();
        assert!(route.guard.is_some());
        assert_eq!(
            route
                .requirement("/V1/Tenants/acme/x")
                .unwrap()
                .unwrap()
                .bindings[0]
                .value,
            "acme"
        );
        for path in [
            "/v1/tenants/%61cme/x",
            "/v1//tenants/acme/x",
            "/v1/tenants/../tenants/acme/x",
            "/v1/tenants/acme%2fx",
        ] {
            assert!(t.find("GET", path, None).is_none(), "{path}");
        }
    }

    #[test]
    fn bind_and_parameter_scopes_are_checked_at_load() {
        let cases = [
            (
                r#"{"prefix": "/t/", "scopes": ["a"], "bind": {"t": "owner"}}"#,
                RouteError::BindNeedsTemplate,
            ),
            (
                r#"{"prefix": "/t/", "scopes": ["a:{t}"]}"#,
                RouteError::BindNeedsTemplate,
            ),
            (
                r#"{"path": "/t/{t}", "public": true, "bind": {"t": "owner"}}"#,
                RouteError::PublicWithBind,
            ),
            (
                r#"{"path": "/t/{t}", "scopes": ["a"], "bind": {"x": "owner"}}"#,
                RouteError::UnknownParameter("x".into()),
            ),
            (
                r#"{"path": "/t/{t}/{t}", "scopes": ["a"], "bind": {"t": "owner"}}"#,
                RouteError::UnknownParameter("t".into()),
            ),
            (
                r#"{"path": "/t/*", "scopes": ["a"], "bind": {"*": "owner"}}"#,
                RouteError::UnknownParameter("*".into()),
            ),
            (
                r#"{"path": "/t/{t}", "scopes": ["a"], "bind": {"t": "subject"}}"#,
                RouteError::BadAttribute("subject".into()),
            ),
            (
                r#"{"path": "/t/{t}", "scopes": ["a"], "bind": {"t": "metadata.a.b"}}"#,
                RouteError::BadAttribute("metadata.a.b".into()),
            ),
            (
                r#"{"path": "/t/{t}", "scopes": ["a{t}"]}"#,
                RouteError::BadScopeTemplate("a{t}".into()),
            ),
            (
                r#"{"path": "/t/{t}", "scopes": ["a::{t}"]}"#,
                RouteError::BadScopeTemplate("a::{t}".into()),
            ),
            (
                r#"{"path": "/t/{t}", "scopes": ["a:{u}"]}"#,
                RouteError::UnknownParameter("u".into()),
            ),
            (
                r#"{"path": "/t/{t}", "scopes": ["a:*"]}"#,
                RouteError::Scope(ScopeError::BadSyntax),
            ),
            (
                r#"{"path": "/t/{t}", "scopes": ["a b:{t}"]}"#,
                RouteError::Scope(ScopeError::BadSyntax),
            ),
        ];
        for (json, expected) in cases {
            let err = RouteTable::compile(&[spec(json)]);
            assert_eq!(err.err(), Some((0, expected)), "{json}");
        }
        // Bind alone protects a route.
        let t =
            RouteTable::compile(&[spec(r#"{"path": "/t/{t}", "bind": {"t": "owner"}}"#)]).unwrap();
        let r = requirement(&t, "/t/x").unwrap().unwrap();
        assert!(r.scopes.is_empty() && r.bindings.len() == 1);
    }

    #[test]
    fn compile_errors_name_the_route() {
        let cases = [
            (r#"{"scopes": ["a"]}"#, RouteError::NeedsOnePathMatcher),
            (
                r#"{"prefix": "v1", "scopes": ["a"]}"#,
                RouteError::BadPattern,
            ),
            (
                r#"{"path": "/a/**/b", "scopes": ["a"]}"#,
                RouteError::RestNotLast,
            ),
            (
                r#"{"path": "/a/{x", "scopes": ["a"]}"#,
                RouteError::BadPattern,
            ),
            (
                r#"{"prefix": "/", "methods": ["get"], "scopes": ["a"]}"#,
                RouteError::BadMethod,
            ),
            (
                r#"{"prefix": "/", "public": true, "scopes": ["a"]}"#,
                RouteError::PublicWithScopes,
            ),
            (r#"{"prefix": "/"}"#, RouteError::NoPolicy),
            (
                r#"{"prefix": "/", "scopes": ["bad scope"]}"#,
                RouteError::Scope(ScopeError::BadSyntax),
            ),
        ];
        for (json, expected) in cases {
            let err =
                RouteTable::compile(&[spec(r#"{"prefix": "/ok", "public": true}"#), spec(json)]);
            assert_eq!(err.err(), Some((1, expected)), "{json}");
        }
    }
}
