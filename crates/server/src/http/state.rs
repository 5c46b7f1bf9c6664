//! [`AppState`]: everything a request handler needs. Cloning is cheap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keygate_core::key::{GatewayKey, KeyDigest, KeyPrefix};

use crate::clock::Clock;
use crate::service::audit::RefusedAdmin;
use crate::service::context::Service;
use crate::service::feed::FeedCounters;
use crate::service::metrics::Metrics;
use crate::service::signing::{JwtIssuer, JwtSettings};
use crate::store::KeyStore;

/// The [`Service`] the handlers call, plus what only HTTP needs: the service token the
/// filter presents, the lookup counter and the usage body limit.
#[derive(Clone)]
pub struct AppState {
    service: Service,
    service_token: KeyDigest,
    lookups: Arc<AtomicU64>,
    /// Largest `POST /v1/usage` body.
    usage_body_limit: usize,
}

impl AppState {
    /// `service_token` is the shared secret the filter presents on lookups.
    pub fn new(
        store: KeyStore,
        clock: Arc<dyn Clock>,
        gateway_key: GatewayKey,
        prefix: KeyPrefix,
        service_token: &str,
    ) -> Self {
        Self {
            service: Service::new(store, clock, gateway_key, prefix),
            service_token: KeyDigest::of(service_token.as_bytes()),
            lookups: Arc::new(AtomicU64::new(0)),
            usage_body_limit: crate::service::usage::MAX_USAGE_BODY_BYTES,
        }
    }

    /// Keeps the counts of fleet-wide limits in `counters` (default: in memory).
    #[must_use]
    pub fn with_counters(
        mut self,
        counters: Arc<dyn crate::service::counters::Counters>,
        settings: crate::service::counters::LeaseSettings,
    ) -> Self {
        self.service = self
            .service
            .with_counters(counters)
            .with_lease_settings(settings);
        self
    }

    /// Sets how management-page sessions and live events behave.
    #[must_use]
    pub fn with_access_settings(
        mut self,
        settings: crate::service::sessions::AccessSettings,
    ) -> Self {
        self.service = self.service.with_access_settings(settings);
        self
    }

    /// Sets how webhooks are delivered.
    #[must_use]
    pub fn with_alert_settings(mut self, settings: crate::service::alerts::AlertSettings) -> Self {
        self.service = self.service.with_alert_settings(settings);
        self
    }

    /// Accepts leaked-key reports signed by these keys (`None`: the endpoint answers 503).
    #[must_use]
    pub fn with_report_keys(
        mut self,
        keys: Option<crate::service::secret_scanning::ReportKeys>,
    ) -> Self {
        self.service = self.service.with_report_keys(keys);
        self
    }

    /// The operations' context.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Refused admin authentications not written to the audit log yet.
    pub fn refused_admin(&self) -> &RefusedAdmin {
        self.service.refused_admin()
    }

    /// Sets the largest usage batch body (default
    /// [`crate::service::usage::MAX_USAGE_BODY_BYTES`]).
    #[must_use]
    pub fn with_usage_body_limit(mut self, bytes: usize) -> Self {
        self.usage_body_limit = bytes;
        self
    }

    /// The largest usage batch body.
    pub fn usage_body_limit(&self) -> usize {
        self.usage_body_limit
    }

    /// The Prometheus counters (see [`crate::service::metrics`]).
    pub fn metrics(&self) -> &Metrics {
        self.service.metrics()
    }

    /// Sets how JWT API keys are minted (without this: default issuer and audience, and no
    /// signing secret, so JWT keys are refused).
    #[must_use]
    pub fn with_jwt(self, settings: JwtSettings) -> Self {
        self.with_jwt_issuer(JwtIssuer::new(settings))
    }

    /// Like [`with_jwt`](Self::with_jwt), with an issuer already prepared.
    #[must_use]
    pub fn with_jwt_issuer(mut self, issuer: JwtIssuer) -> Self {
        self.service = self.service.with_jwt_issuer(issuer);
        self
    }

    pub fn store(&self) -> &KeyStore {
        self.service.store()
    }

    pub fn jwt(&self) -> &JwtIssuer {
        self.service.jwt()
    }

    /// The current time in Unix seconds, from the service's clock.
    pub fn now(&self) -> i64 {
        self.service.now()
    }

    /// Whether `presented` is the service token (compared in constant time).
    pub fn is_service_token(&self, presented: &KeyDigest) -> bool {
        presented.ct_eq(&self.service_token)
    }

    /// Counts one lookup request.
    pub fn count_lookup(&self) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
    }

    /// Lookup requests received so far (`GET /v1/keys/{id}`, whatever their outcome).
    pub fn lookups_served(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// Revocation feed requests received so far, and long-polls held right now.
    pub fn feed_counters(&self) -> &FeedCounters {
        self.service.feed_counters()
    }

    /// Answers every held long-poll now, and later ones without waiting: call it when the
    /// service starts to shut down so it is not held up by followers.
    pub fn begin_shutdown(&self) {
        self.service.begin_shutdown();
    }
}
