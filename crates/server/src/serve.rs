//! `keygate serve`: open the store, make sure an admin key exists, serve until a signal.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use keygate_core::base32;
use keygate_core::key::KeyDigest;

use crate::clock::{Clock, SystemClock};
use crate::config::ServeConfig;
use crate::http::app;
use crate::http::state::AppState;
use crate::service::feed::{compact_periodically, COMPACTION_PERIOD};
use crate::service::signing::{JwtIssuer, SigningError, SIGNING_SECRET_ENV};
use crate::store::{KeyStore, StoreError};
use crate::tls::ServerTls;
use crate::transport;

/// Why the service stopped or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot write the admin key file {path}: {source}")]
    AdminKeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the OS random number generator failed: {0}")]
    Random(getrandom::Error),
    #[error("JWT signing cannot start: {0}")]
    Signing(#[from] SigningError),
}

/// What the admin bootstrap did.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminBootstrap {
    /// Admin keys already existed; `env_key_known` says whether `KEYGATE_ADMIN_KEY` (if set) is
    /// one of them.
    AlreadyPresent { env_key_known: Option<bool> },
    /// The admin key from `KEYGATE_ADMIN_KEY` was installed.
    InstalledFromEnv,
    /// A new admin key was minted; the caller shows it once.
    Minted(String),
}

/// Makes sure the management API has at least one admin key.
pub async fn bootstrap_admin(
    store: &KeyStore,
    env_admin_key: Option<&str>,
    key_file: Option<&Path>,
    now: i64,
) -> Result<AdminBootstrap, ServeError> {
    if store.count_admin_keys().await? > 0 {
        let env_key_known = match env_admin_key {
            None => None,
            Some(key) => {
                let digest = KeyDigest::of(key.as_bytes());
                let known = store
                    .active_admin_digests()
                    .await?
                    .iter()
                    .fold(false, |found, d| d.ct_eq(&digest) | found);
                Some(known)
            }
        };
        return Ok(AdminBootstrap::AlreadyPresent { env_key_known });
    }
    let mut id = [0u8; 10];
    getrandom::getrandom(&mut id).map_err(ServeError::Random)?;
    let id = base32::encode(&id);
    if let Some(key) = env_admin_key {
        store
            .insert_admin_key(&id, &KeyDigest::of(key.as_bytes()), now)
            .await?;
        return Ok(AdminBootstrap::InstalledFromEnv);
    }
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(ServeError::Random)?;
    let key = format!("kga_{}", base32::encode(&secret));
    if let Some(path) = key_file {
        write_secret_file(path, &key).map_err(|source| ServeError::AdminKeyFile {
            path: path.display().to_string(),
            source,
        })?;
    }
    store
        .insert_admin_key(&id, &KeyDigest::of(key.as_bytes()), now)
        .await?;
    Ok(AdminBootstrap::Minted(key))
}

/// Writes `secret` to `path` readable by its owner only (0600), creating parent directories.
pub fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let mut file = options.open(path)?;
        // The file may have existed with wider permissions.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        writeln!(file, "{secret}")?;
    }
    #[cfg(not(unix))]
    {
        let mut file = options.open(path)?;
        writeln!(file, "{secret}")?;
    }
    Ok(())
}

/// Runs the key service until SIGTERM or Ctrl-C.
pub async fn run(config: ServeConfig) -> Result<(), ServeError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = KeyStore::connect(&config.database).await?;
    match bootstrap_admin(
        &store,
        config.admin_key.as_deref(),
        config.admin_key_file.as_deref(),
        clock.now(),
    )
    .await?
    {
        AdminBootstrap::Minted(key) => {
            announce_admin_key(&key, config.admin_key_file.as_deref());
            tracing::info!("minted the first admin key");
        }
        AdminBootstrap::InstalledFromEnv => {
            tracing::info!("installed the admin key from KEYGATE_ADMIN_KEY");
        }
        AdminBootstrap::AlreadyPresent {
            env_key_known: Some(false),
        } => {
            tracing::warn!(
                "KEYGATE_ADMIN_KEY is set but is not one of the stored admin keys; it is ignored"
            );
        }
        AdminBootstrap::AlreadyPresent { .. } => {}
    }
    let jwt = JwtIssuer::new(config.jwt);
    jwt.prepare(&store, clock.now()).await?;
    if jwt.is_configured() {
        tracing::info!(
            issuer = %jwt.settings().issuer,
            audience = %jwt.settings().audience,
            allow_without_expiry = jwt.settings().allow_without_expiry,
            "JWT API keys enabled"
        );
    } else {
        tracing::info!("JWT API keys disabled: {SIGNING_SECRET_ENV} is not set");
    }
    // Compacts now and every minute; dropped with the runtime when the service stops.
    let compaction = tokio::spawn(compact_periodically(
        store.clone(),
        clock.clone(),
        COMPACTION_PERIOD,
        config.retention.feed,
    ));
    // Prunes old audit rows and usage counts now and every interval.
    let retention = tokio::spawn(crate::service::retention::prune_periodically(
        store.clone(),
        clock.clone(),
        crate::service::retention::steps(&config.retention),
        config.retention.interval,
    ));
    let state = AppState::new(
        store,
        clock,
        config.gateway_key,
        config.prefix.clone(),
        &config.service_token,
    )
    .with_jwt_issuer(jwt)
    .with_usage_body_limit(config.usage_max_body_bytes)
    .with_access_settings(config.access)
    .with_counters(config.fleet.counters.clone(), config.fleet.lease)
    .with_alert_settings(config.alerts)
    .with_report_keys(config.report_keys);
    tracing::info!(
        counters = config.fleet.counters.kind(),
        "fleet-wide limits counted"
    );
    let flushed = state.service().clone();
    let refused_flush = tokio::spawn(async move {
        crate::service::audit::flush_refused_periodically(
            flushed.refused_admin(),
            flushed.store(),
            flushed.clock().as_ref(),
            crate::service::audit::REFUSED_FLUSH_PERIOD,
        )
        .await;
    });
    // Delivers webhooks (and announces expiring keys) until the service stops.
    let webhooks = tokio::spawn(crate::service::alerts::run_worker(
        state.service().clone(),
        crate::service::alerts::POLL_PERIOD,
    ));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen.to_string(),
            source,
        })?;
    let local = listener.local_addr().unwrap_or(config.listen);
    tracing::info!(
        listen = %local,
        tls = config.tls.is_some(),
        prefix = %config.prefix,
        database = state.store().backend(),
        "keygate key service ready"
    );
    if config.tls.is_none() && !local.ip().is_loopback() {
        tracing::warn!(
            listen = %local,
            "serving plain HTTP beyond loopback: admin keys and the service token cross the network unencrypted; give --tls-cert and --tls-key"
        );
    }
    let feed = state.clone();
    let audit = state.clone();
    transport::serve(
        listener,
        app(state),
        config.tls.as_ref().map(ServerTls::config),
        async move {
            shutdown_signal().await;
            // Held long-polls answer now, so they do not delay the shutdown.
            feed.begin_shutdown();
        },
    )
    .await;
    compaction.abort();
    retention.abort();
    refused_flush.abort();
    webhooks.abort();
    // Refusals counted since the last flush.
    let service = audit.service();
    service
        .refused_admin()
        .flush(service.store(), service.clock().as_ref(), true)
        .await;
    tracing::info!("keygate key service stopped");
    Ok(())
}

fn announce_admin_key(key: &str, file: Option<&Path>) {
    let rule = "=".repeat(key.len() + 4);
    let mut err = std::io::stderr().lock();
    // Best effort: if stderr is gone there is nobody to show it to anyway.
    let _ = writeln!(err, "\n{rule}\n  Admin key (shown once):\n\n  {key}\n");
    if let Some(path) = file {
        let _ = writeln!(err, "  Also written to {} (mode 0600)", path.display());
    }
    let _ = writeln!(
        err,
        "  Use it as: Authorization: Bearer <admin key>, or KEYGATE_ADMIN_KEY for the CLI\n{rule}\n"
    );
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
