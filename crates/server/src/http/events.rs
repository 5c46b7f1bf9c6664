//! `GET /api/v1/events` (admin, management key or session): the live events of
//! [`crate::service::events`] as server-sent events, an owner's filtered to its own keys. A
//! keep-alive comment every 15 seconds; a subscriber that fell too far behind gets a `lagged`
//! event `{"missed": N}` (reload what you show) and the stream goes on; the stream ends when
//! the service shuts down.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use tokio::sync::broadcast::error::RecvError;

use crate::http::extract::Access;
use crate::http::state::AppState;
use crate::service::error::ApiError;
use crate::service::events::Subscription;

/// How often an idle stream sends a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

struct Listener {
    subscription: Subscription,
    access: Access,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Listener {
    /// The next event this listener may see, `None` at shutdown.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if *self.shutdown.borrow() {
                return None;
            }
            let received = tokio::select! {
                received = self.subscription.receiver.recv() => received,
                _ = self.shutdown.changed() => return None,
            };
            match received {
                Ok(event) if self.access.may_manage_owner(&event.owner) => {
                    return Some(
                        Event::default()
                            .event(event.name)
                            .data(event.data.to_string()),
                    );
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    let data = serde_json::json!({ "missed": missed }).to_string();
                    return Some(Event::default().event("lagged").data(data));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// `GET /api/v1/events`: 503 `too-many-subscribers` past the configured number.
pub async fn events(
    State(state): State<AppState>,
    access: Access,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let service = state.service();
    let max = service.sessions().settings().event_subscribers;
    let subscription = service
        .events()
        .subscribe(max)
        .ok_or(ApiError::TooManySubscribers)?;
    let listener = Listener {
        subscription,
        access,
        shutdown: service.shutdown_signal(),
    };
    let stream = stream::unfold(listener, |mut listener| async move {
        let event = listener.next().await?;
        Some((Ok(event), listener))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
