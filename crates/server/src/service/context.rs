//! [`Service`]: what every operation of the key service works with. Cloning is cheap.

use std::sync::Arc;

use keygate_core::key::{GatewayKey, KeyPrefix};

use crate::clock::Clock;
use crate::service::alert_config::{AlertSettings, Alerts};
use crate::service::audit::RefusedAdmin;
use crate::service::counters::{Counters, LeaseSettings, MemoryCounters};
use crate::service::events::Events;
use crate::service::feed::FeedCounters;
use crate::service::metrics::Metrics;
use crate::service::report_keys::ReportKeys;
use crate::service::session_config::{AccessSettings, Sessions};
use crate::service::signing::{JwtIssuer, JwtSettings};
use crate::store::KeyStore;

/// The store, the clock, how keys are minted, and the counters the operations keep.
#[derive(Clone)]
pub struct Service {
    store: KeyStore,
    clock: Arc<dyn Clock>,
    gateway_key: GatewayKey,
    prefix: KeyPrefix,
    feed: Arc<FeedCounters>,
    /// Turns true when the service shuts down: held long-polls answer at once.
    shutdown: Arc<tokio::sync::watch::Sender<bool>>,
    jwt: JwtIssuer,
    metrics: Arc<Metrics>,
    /// Refused admin authentications waiting to be written to the audit log.
    refused_admin: Arc<RefusedAdmin>,
    /// The global counts of fleet-wide limits (in memory unless Redis is configured).
    counters: Arc<dyn Counters>,
    lease_settings: LeaseSettings,
    /// Management-page sessions: their settings and the failed-login counts.
    sessions: Arc<Sessions>,
    /// Live events for the management page.
    events: Arc<Events>,
    /// Wakes feed long-polls when operator blocks change.
    blocks: Arc<crate::service::blocks_signal::BlocksSignal>,
    /// Webhook settings and the delivery worker's wake-up.
    alerts: Arc<Alerts>,
    /// The keys that may sign leaked-key reports (`None`: the endpoint is off).
    report_keys: Option<Arc<ReportKeys>>,
}

impl Service {
    /// Opaque keys are minted with `gateway_key` under `prefix`; JWT keys are refused until
    /// [`with_jwt_issuer`](Self::with_jwt_issuer) gives a configured issuer.
    pub fn new(
        store: KeyStore,
        clock: Arc<dyn Clock>,
        gateway_key: GatewayKey,
        prefix: KeyPrefix,
    ) -> Self {
        Self {
            store,
            clock,
            gateway_key,
            prefix,
            feed: Arc::default(),
            shutdown: Arc::new(tokio::sync::watch::Sender::new(false)),
            jwt: JwtIssuer::new(JwtSettings::default()),
            metrics: Arc::default(),
            refused_admin: Arc::default(),
            counters: Arc::new(MemoryCounters::new()),
            lease_settings: LeaseSettings::default(),
            sessions: Arc::default(),
            events: Arc::default(),
            blocks: Arc::default(),
            alerts: Arc::default(),
            report_keys: None,
        }
    }

    /// Operator-block changes, for the feed's long-polls.
    pub fn blocks(&self) -> &crate::service::blocks_signal::BlocksSignal {
        &self.blocks
    }

    /// Keeps the counts of fleet-wide limits in `counters` (default: in memory).
    #[must_use]
    pub fn with_counters(mut self, counters: Arc<dyn Counters>) -> Self {
        self.counters = counters;
        self
    }

    /// Sets how management-page sessions and live events behave.
    #[must_use]
    pub fn with_access_settings(mut self, settings: AccessSettings) -> Self {
        self.sessions = Arc::new(Sessions::new(settings));
        self
    }

    /// Management-page sessions: their settings and the failed-login counts.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Live events for the management page.
    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Sets how webhooks are delivered (see [`crate::service::alerts`]).
    #[must_use]
    pub fn with_alert_settings(mut self, settings: AlertSettings) -> Self {
        self.alerts = Arc::new(Alerts::new(settings));
        self
    }

    /// Webhook settings and the delivery worker's wake-up.
    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    /// The same, shared (for the delivery worker).
    pub fn alerts_handle(&self) -> Arc<Alerts> {
        self.alerts.clone()
    }

    /// Accepts leaked-key reports signed by these keys (see
    /// [`crate::service::secret_scanning`]).
    #[must_use]
    pub fn with_report_keys(mut self, keys: Option<ReportKeys>) -> Self {
        self.report_keys = keys.map(Arc::new);
        self
    }

    pub fn report_keys(&self) -> Option<&ReportKeys> {
        self.report_keys.as_deref()
    }

    /// Sets how leases are sized.
    #[must_use]
    pub fn with_lease_settings(mut self, settings: LeaseSettings) -> Self {
        self.lease_settings = settings;
        self
    }

    pub fn counters(&self) -> &dyn Counters {
        self.counters.as_ref()
    }

    pub fn lease_settings(&self) -> LeaseSettings {
        self.lease_settings
    }

    /// Sets how JWT API keys are minted.
    #[must_use]
    pub fn with_jwt_issuer(mut self, issuer: JwtIssuer) -> Self {
        self.jwt = issuer;
        self
    }

    pub fn store(&self) -> &KeyStore {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The current time in Unix seconds, from the service's clock.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    pub fn gateway_key(&self) -> &GatewayKey {
        &self.gateway_key
    }

    pub fn prefix(&self) -> &KeyPrefix {
        &self.prefix
    }

    pub fn jwt(&self) -> &JwtIssuer {
        &self.jwt
    }

    /// The Prometheus counters (see [`crate::service::metrics`]).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Refused admin authentications not written to the audit log yet.
    pub fn refused_admin(&self) -> &RefusedAdmin {
        &self.refused_admin
    }

    /// Revocation feed requests received so far, and long-polls held right now.
    pub fn feed_counters(&self) -> &FeedCounters {
        &self.feed
    }

    /// Turns true when the service starts to shut down.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Answers every held long-poll now, and later ones without waiting: call it when the
    /// service starts to shut down so it is not held up by followers.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}
