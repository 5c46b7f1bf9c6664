//! Waiting for something to become true: one polling loop, [`eventually_every`], usable from
//! async tests (it sleeps without blocking the runtime, on any executor) and, through
//! [`poll`], from blocking ones.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

/// How often [`eventually`] checks.
pub const EVENTUALLY_EVERY: Duration = Duration::from_millis(20);
/// How often [`wait_until`] checks.
pub const WAIT_UNTIL_EVERY: Duration = Duration::from_millis(50);

/// Calls `check` every `every` until it yields `Some` (answered) or `limit` has passed since
/// the first call (`None`; the last call is at or after the deadline).
pub async fn eventually_every<T>(
    limit: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        sleep(every.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// Polls `condition` every 20 ms for up to `limit`; whether it held.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    eventually_every(limit, EVENTUALLY_EVERY, || condition().then_some(()))
        .await
        .is_some()
}

/// [`eventually_every`], blocking the calling thread.
pub fn poll<T>(limit: Duration, every: Duration, check: impl FnMut() -> Option<T>) -> Option<T> {
    block_on(eventually_every(limit, every, check))
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes; whether it held.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    poll(timeout, WAIT_UNTIL_EVERY, || check().then_some(())).is_some()
}

/// Polls `check` until true or `timeout`; panics with `what` otherwise.
pub fn must(timeout: Duration, what: &str, check: impl FnMut() -> bool) {
    assert!(
        wait_until(timeout, check),
        "timed out ({timeout:?}): {what}"
    );
}

/// Calls `send` every `every` until its reply has `status` or `timeout` passes; the last reply.
pub fn poll_reply(
    timeout: Duration,
    every: Duration,
    status: u16,
    mut send: impl FnMut() -> crate::Reply,
) -> crate::Reply {
    let mut last = None;
    let matched = poll(timeout, every, || {
        let reply = send();
        if reply.status == status {
            Some(reply)
        } else {
            last = Some(reply);
            None
        }
    });
    matched.or(last).unwrap_or_else(send)
}

/// A sleep that any executor can await: a thread wakes the task when the time is up.
fn sleep(duration: Duration) -> Sleep {
    Sleep {
        until: Instant::now() + duration,
        waker: None,
    }
}

struct Sleep {
    until: Instant,
    /// Where the timer thread finds the waker to wake; set on the first pending poll.
    waker: Option<Arc<Mutex<Option<Waker>>>>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.until {
            return Poll::Ready(());
        }
        match &self.waker {
            Some(slot) => {
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            }
            None => {
                let slot = Arc::new(Mutex::new(Some(cx.waker().clone())));
                let timer = slot.clone();
                let until = self.until;
                thread::spawn(move || {
                    thread::sleep(until.saturating_duration_since(Instant::now()));
                    let waker = timer.lock().unwrap_or_else(PoisonError::into_inner).take();
                    if let Some(waker) = waker {
                        waker.wake();
                    }
                });
                self.waker = Some(slot);
            }
        }
        Poll::Pending
    }
}

struct Unpark(thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to completion on the calling thread.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_until_the_check_answers_or_the_time_is_up() {
        let mut calls = 0;
        let answer = poll(Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(answer, Some(3));
        let started = Instant::now();
        assert!(!wait_until(Duration::from_millis(120), || false));
        assert!(started.elapsed() >= Duration::from_millis(120));
    }
}
