//! `keygate serve` configuration: flags and environment variables, parsed once at start.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::Args;
use keygate_core::key::{GatewayKey, KeyPrefix};

use crate::service::retention::{RetentionArgs, RetentionError, RetentionSettings};
use crate::service::signing::{
    JwtSettings, SigningSecret, DEFAULT_AUDIENCE, DEFAULT_ISSUER, SIGNING_SECRET_ENV,
};
use crate::tls::{ServerTls, TlsError};

/// Environment variable holding the gateway key (hex, at least 64 digits). Required.
pub const GATEWAY_KEY_ENV: &str = "KEYGATE_GATEWAY_KEY";
/// Environment variable holding the filter's service token (at least 32 characters). Required.
pub const SERVICE_TOKEN_ENV: &str = "KEYGATE_SERVICE_TOKEN";
/// Environment variable holding an admin key to install on first start (at least 32 characters).
pub const ADMIN_KEY_ENV: &str = "KEYGATE_ADMIN_KEY";
/// The old name of `KEYGATE_SAVE_ADMIN_KEY` for `serve`, still read when the new one is unset.
pub const DEPRECATED_ADMIN_KEY_FILE_ENV: &str = "KEYGATE_ADMIN_KEY_FILE";
/// The shortest service token and admin key accepted.
pub const MIN_SECRET_CHARS: usize = 32;
/// Default database.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://.keygate/keygate.db";

/// Flags of `keygate serve`. Secrets are read from the environment only, never from flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "KEYGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Database URL (SQLite: sqlite://PATH; the file and its directory are created if missing).
    #[arg(long, env = "KEYGATE_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database: String,
    /// Prefix of minted keys: 3-24 characters of a-z 0-9 _, starting with a letter, ending in _.
    #[arg(long, env = "KEYGATE_KEY_PREFIX", default_value = "kg_live_")]
    pub key_prefix: String,
    /// Where to save the admin key minted on first start (mode 0600). `--admin-key-file` and
    /// KEYGATE_ADMIN_KEY_FILE are deprecated names of this (for the CLI they name the file to
    /// read the admin key from).
    #[arg(
        long = "save-admin-key",
        alias = "admin-key-file",
        env = "KEYGATE_SAVE_ADMIN_KEY",
        value_name = "FILE"
    )]
    pub admin_key_file: Option<PathBuf>,
    /// The `iss` claim of JWT API keys (1-256 characters).
    #[arg(long, env = "KEYGATE_ISSUER", default_value = DEFAULT_ISSUER)]
    pub issuer: String,
    /// The `aud` claim of JWT API keys (1-256 characters).
    #[arg(long, env = "KEYGATE_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    pub audience: String,
    /// Allow JWT API keys without expiry (such a token is valid until revoked, and only a
    /// filter that checks revocation with the key service can refuse it).
    #[arg(
        long,
        env = "KEYGATE_ALLOW_JWT_WITHOUT_EXPIRY",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::SetTrue
    )]
    pub allow_jwt_without_expiry: bool,
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-key.
    #[arg(long, env = "KEYGATE_TLS_CERT", value_name = "PEM FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "KEYGATE_TLS_KEY", value_name = "PEM FILE")]
    pub tls_key: Option<PathBuf>,
    /// Largest usage batch body in bytes (4096 to 16777216). The filter's
    /// `usage.max_batch_bytes` must stay below it.
    #[arg(
        long,
        env = "KEYGATE_USAGE_MAX_BODY_BYTES",
        default_value_t = crate::service::usage::MAX_USAGE_BODY_BYTES
    )]
    pub usage_max_body_bytes: usize,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub fleet: crate::service::fleet_config::FleetArgs,
    #[command(flatten)]
    pub access: crate::service::sessions::AccessArgs,
    #[command(flatten)]
    pub alerts: crate::service::alerts::AlertArgs,
    /// GitHub's secret-scanning public keys, saved from
    /// https://api.github.com/meta/public_keys/secret_scanning (JSON): turns on
    /// POST /api/v1/secret-scanning. Unset: that endpoint answers 503.
    #[arg(long, env = "KEYGATE_SECRET_SCANNING_KEYS", value_name = "JSON FILE")]
    pub secret_scanning_keys: Option<PathBuf>,
    /// Seconds a new JWT signing key is published in the JWKS before it signs: more than the
    /// filters' `min_refetch_seconds` + `timeout_ms` of the JWKS (0-3660).
    #[arg(
        long,
        env = "KEYGATE_SIGNING_KEY_PUBLISH_DELAY",
        default_value_t = crate::service::signing::DEFAULT_PUBLISH_DELAY_S,
        value_name = "SECONDS"
    )]
    pub signing_key_publish_delay: i64,
}

/// A validated serve configuration.
#[derive(Debug)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub database: String,
    pub prefix: KeyPrefix,
    pub admin_key_file: Option<PathBuf>,
    pub gateway_key: GatewayKey,
    pub service_token: String,
    pub admin_key: Option<String>,
    pub jwt: JwtSettings,
    /// HTTPS (TLS 1.2 and 1.3); `None` serves plain HTTP.
    pub tls: Option<ServerTls>,
    pub usage_max_body_bytes: usize,
    pub retention: RetentionSettings,
    pub fleet: crate::service::fleet_config::FleetSettings,
    /// Management-page sessions and live events.
    pub access: crate::service::sessions::AccessSettings,
    /// Webhook delivery.
    pub alerts: crate::service::alerts::AlertSettings,
    /// The keys that may sign leaked-key reports (`None`: the endpoint is off).
    pub report_keys: Option<crate::service::secret_scanning::ReportKeys>,
}

/// Why the service refuses to start. Messages name the setting, never its value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("{GATEWAY_KEY_ENV} is not set: set it to at least 64 hex digits (for example the output of `openssl rand -hex 32`), the same value the filter uses")]
    MissingGatewayKey,
    #[error("{GATEWAY_KEY_ENV} is not valid: it must be at least 64 hex digits (32 bytes)")]
    BadGatewayKey,
    #[error("{SERVICE_TOKEN_ENV} is not set: set it to a random string of at least 32 characters, the same value the filter presents")]
    MissingServiceToken,
    #[error("{SERVICE_TOKEN_ENV} is too short: it must be at least 32 characters")]
    ShortServiceToken,
    #[error("{ADMIN_KEY_ENV} is too short: it must be at least 32 characters")]
    ShortAdminKey,
    #[error("--key-prefix / KEYGATE_KEY_PREFIX is not valid: 3 to 24 characters of a-z, 0-9 and '_', starting with a letter and ending with '_'")]
    BadPrefix,
    #[error("--listen / KEYGATE_LISTEN is not an address such as 127.0.0.1:8080")]
    BadListen,
    #[error("{SIGNING_SECRET_ENV} is not valid: it must be exactly 64 hex digits (for example the output of `openssl rand -hex 32`)")]
    BadSigningSecret,
    #[error("--signing-key-publish-delay / KEYGATE_SIGNING_KEY_PUBLISH_DELAY must be from 0 to 3660 seconds")]
    BadPublishDelay,
    #[error("--issuer / KEYGATE_ISSUER must be 1 to 256 characters with no control characters")]
    BadIssuer,
    #[error(
        "--audience / KEYGATE_AUDIENCE must be 1 to 256 characters with no control characters"
    )]
    BadAudience,
    #[error("--tls-cert / KEYGATE_TLS_CERT and --tls-key / KEYGATE_TLS_KEY go together: give both PEM files, or neither for plain HTTP")]
    TlsIncomplete,
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("--usage-max-body-bytes / KEYGATE_USAGE_MAX_BODY_BYTES must be 4096 to 16777216")]
    BadUsageBodyLimit,
    #[error("{0}")]
    Retention(#[from] RetentionError),
    #[error("{0}")]
    Fleet(#[from] crate::service::fleet_config::FleetError),
    #[error("{0}")]
    Access(#[from] crate::service::sessions::AccessConfigError),
    #[error("{0}")]
    Alerts(#[from] crate::service::alerts::AlertConfigError),
    #[error("--secret-scanning-keys / KEYGATE_SECRET_SCANNING_KEYS: cannot read {0}")]
    UnreadableReportKeys(String),
    #[error("--secret-scanning-keys / KEYGATE_SECRET_SCANNING_KEYS: {0}")]
    BadReportKeys(#[from] crate::service::secret_scanning::ReportKeysError),
}

const MAX_CLAIM_CHARS: usize = 256;

fn valid_claim(text: &str) -> bool {
    !text.is_empty()
        && text.chars().count() <= MAX_CLAIM_CHARS
        && !text.chars().any(char::is_control)
}

impl ServeConfig {
    /// Builds the configuration from the flags and an environment lookup (`std::env::var` in
    /// production, a map in tests).
    pub fn from_args(
        args: ServeArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let listen = args
            .listen
            .to_socket_addrs()
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or(ConfigError::BadListen)?;
        let prefix = KeyPrefix::parse(&args.key_prefix).map_err(|_| ConfigError::BadPrefix)?;
        let gateway_key = env(GATEWAY_KEY_ENV)
            .filter(|v| !v.trim().is_empty())
            .ok_or(ConfigError::MissingGatewayKey)?;
        let gateway_key =
            GatewayKey::from_hex(&gateway_key).map_err(|_| ConfigError::BadGatewayKey)?;
        let service_token = env(SERVICE_TOKEN_ENV)
            .filter(|v| !v.is_empty())
            .ok_or(ConfigError::MissingServiceToken)?;
        if service_token.chars().count() < MIN_SECRET_CHARS {
            return Err(ConfigError::ShortServiceToken);
        }
        let admin_key = env(ADMIN_KEY_ENV).filter(|v| !v.is_empty());
        if admin_key
            .as_ref()
            .is_some_and(|key| key.chars().count() < MIN_SECRET_CHARS)
        {
            return Err(ConfigError::ShortAdminKey);
        }
        if !valid_claim(&args.issuer) {
            return Err(ConfigError::BadIssuer);
        }
        if !valid_claim(&args.audience) {
            return Err(ConfigError::BadAudience);
        }
        if !(0..=crate::service::signing::MAX_PUBLISH_DELAY_S)
            .contains(&args.signing_key_publish_delay)
        {
            return Err(ConfigError::BadPublishDelay);
        }
        let secret = env(SIGNING_SECRET_ENV)
            .filter(|v| !v.trim().is_empty())
            .map(|v| SigningSecret::from_hex(&v).ok_or(ConfigError::BadSigningSecret))
            .transpose()?;
        let tls = match (&args.tls_cert, &args.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(ServerTls::load(cert, key)?),
            _ => return Err(ConfigError::TlsIncomplete),
        };
        if !(4096..=16 * 1024 * 1024).contains(&args.usage_max_body_bytes) {
            return Err(ConfigError::BadUsageBodyLimit);
        }
        let retention = RetentionSettings::from_args(&args.retention)?;
        let fleet = crate::service::fleet_config::FleetSettings::from_args(&args.fleet)?;
        let access =
            crate::service::sessions::AccessSettings::from_args(&args.access, tls.is_some())?;
        let alerts = crate::service::alerts::AlertSettings::from_args(&args.alerts)?;
        let report_keys = match &args.secret_scanning_keys {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|_| ConfigError::UnreadableReportKeys(path.display().to_string()))?;
                Some(crate::service::secret_scanning::ReportKeys::from_json(
                    &text,
                )?)
            }
        };
        Ok(Self {
            listen,
            database: args.database,
            prefix,
            admin_key_file: args.admin_key_file.or_else(|| {
                env(DEPRECATED_ADMIN_KEY_FILE_ENV)
                    .filter(|path| !path.is_empty())
                    .map(PathBuf::from)
            }),
            gateway_key,
            service_token,
            admin_key,
            jwt: JwtSettings {
                issuer: args.issuer,
                audience: args.audience,
                allow_without_expiry: args.allow_jwt_without_expiry,
                secret,
                publish_delay_s: args.signing_key_publish_delay,
            },
            tls,
            usage_max_body_bytes: args.usage_max_body_bytes,
            retention,
            fleet,
            access,
            alerts,
            report_keys,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn args() -> ServeArgs {
        ServeArgs {
            listen: "127.0.0.1:8080".into(),
            database: DEFAULT_DATABASE_URL.into(),
            key_prefix: "kg_live_".into(),
            admin_key_file: None,
            issuer: DEFAULT_ISSUER.into(),
            audience: DEFAULT_AUDIENCE.into(),
            allow_jwt_without_expiry: false,
            tls_cert: None,
            tls_key: None,
            usage_max_body_bytes: crate::service::usage::MAX_USAGE_BODY_BYTES,
            retention: RetentionArgs::default(),
            fleet: crate::service::fleet_config::FleetArgs::default(),
            access: crate::service::sessions::AccessArgs::default(),
            alerts: crate::service::alerts::AlertArgs::default(),
            secret_scanning_keys: None,
            signing_key_publish_delay: crate::service::signing::DEFAULT_PUBLISH_DELAY_S,
        }
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    const GATEWAY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const TOKEN: &str = "a-service-token-of-at-least-32-chars";

    #[test]
    fn accepts_a_complete_environment() {
        let config = ServeConfig::from_args(
            args(),
            env(&[(GATEWAY_KEY_ENV, GATEWAY), (SERVICE_TOKEN_ENV, TOKEN)]),
        )
        .unwrap();
        assert_eq!(config.prefix.as_str(), "kg_live_");
        assert_eq!(config.admin_key, None);
        assert_eq!(config.jwt.issuer, "keygate");
        assert_eq!(config.jwt.audience, "keygate");
        assert!(!config.jwt.allow_without_expiry);
        assert!(
            config.jwt.secret.is_none(),
            "JWT signing is off without the secret"
        );
    }

    #[test]
    fn reads_the_signing_secret_and_refuses_a_bad_one() {
        let secret = "ab".repeat(32);
        let config = ServeConfig::from_args(
            args(),
            env(&[
                (GATEWAY_KEY_ENV, GATEWAY),
                (SERVICE_TOKEN_ENV, TOKEN),
                (SIGNING_SECRET_ENV, &secret),
            ]),
        )
        .unwrap();
        assert!(config.jwt.secret.is_some());
        assert!(!format!("{config:?}").contains(&secret));
        let error = ServeConfig::from_args(
            args(),
            env(&[
                (GATEWAY_KEY_ENV, GATEWAY),
                (SERVICE_TOKEN_ENV, TOKEN),
                (SIGNING_SECRET_ENV, "abcd"),
            ]),
        )
        .unwrap_err();
        assert_eq!(error, ConfigError::BadSigningSecret);
        assert!(error.to_string().contains(SIGNING_SECRET_ENV));
    }

    #[test]
    fn refuses_an_empty_issuer_or_audience() {
        let good = env(&[(GATEWAY_KEY_ENV, GATEWAY), (SERVICE_TOKEN_ENV, TOKEN)]);
        let mut no_issuer = args();
        no_issuer.issuer = String::new();
        assert_eq!(
            ServeConfig::from_args(no_issuer, &good).unwrap_err(),
            ConfigError::BadIssuer
        );
        let mut bad_audience = args();
        bad_audience.audience = "a\nb".into();
        assert_eq!(
            ServeConfig::from_args(bad_audience, &good).unwrap_err(),
            ConfigError::BadAudience
        );
    }

    #[test]
    fn refuses_missing_or_bad_secrets_naming_the_variable() {
        let cases = [
            (
                env(&[(SERVICE_TOKEN_ENV, TOKEN)]),
                ConfigError::MissingGatewayKey,
            ),
            (
                env(&[(GATEWAY_KEY_ENV, "abcd"), (SERVICE_TOKEN_ENV, TOKEN)]),
                ConfigError::BadGatewayKey,
            ),
            (
                env(&[(GATEWAY_KEY_ENV, GATEWAY)]),
                ConfigError::MissingServiceToken,
            ),
            (
                env(&[(GATEWAY_KEY_ENV, GATEWAY), (SERVICE_TOKEN_ENV, "short")]),
                ConfigError::ShortServiceToken,
            ),
            (
                env(&[
                    (GATEWAY_KEY_ENV, GATEWAY),
                    (SERVICE_TOKEN_ENV, TOKEN),
                    (ADMIN_KEY_ENV, "short"),
                ]),
                ConfigError::ShortAdminKey,
            ),
        ];
        for (env, expected) in cases {
            let error = ServeConfig::from_args(args(), env).unwrap_err();
            assert_eq!(error, expected);
            let message = error.to_string();
            assert!(message.contains("KEYGATE_"), "{message}");
            assert!(!message.contains(TOKEN) && !message.contains(GATEWAY));
        }
    }

    #[test]
    fn refuses_a_bad_prefix_and_listen_address() {
        let good = env(&[(GATEWAY_KEY_ENV, GATEWAY), (SERVICE_TOKEN_ENV, TOKEN)]);
        let mut bad_prefix = args();
        bad_prefix.key_prefix = "KG-".into();
        assert_eq!(
            ServeConfig::from_args(bad_prefix, &good).unwrap_err(),
            ConfigError::BadPrefix
        );
        let mut bad_listen = args();
        bad_listen.listen = "localhost".into();
        assert_eq!(
            ServeConfig::from_args(bad_listen, &good).unwrap_err(),
            ConfigError::BadListen
        );
    }

    #[test]
    fn tls_needs_both_files_and_names_a_bad_one() {
        let good = env(&[(GATEWAY_KEY_ENV, GATEWAY), (SERVICE_TOKEN_ENV, TOKEN)]);
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "not a certificate").unwrap();
        let mut only_cert = args();
        only_cert.tls_cert = Some(cert.clone());
        assert_eq!(
            ServeConfig::from_args(only_cert, &good).unwrap_err(),
            ConfigError::TlsIncomplete
        );
        let mut only_key = args();
        only_key.tls_key = Some(dir.path().join("key.pem"));
        assert_eq!(
            ServeConfig::from_args(only_key, &good).unwrap_err(),
            ConfigError::TlsIncomplete
        );
        let mut both = args();
        both.tls_cert = Some(cert.clone());
        both.tls_key = Some(dir.path().join("key.pem"));
        let message = ServeConfig::from_args(both, &good).unwrap_err().to_string();
        assert!(
            message.contains(&cert.display().to_string()),
            "the error does not name the certificate file: {message}"
        );
        let plain = ServeConfig::from_args(args(), &good).unwrap();
        assert!(plain.tls.is_none());
    }
}
