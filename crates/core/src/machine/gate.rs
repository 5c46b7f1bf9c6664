//! A request's body and trailers while its decision is pending.
//!
//! Keygate's Envoy configurations set `allow_on_headers_stop_iteration`, so a pause on the
//! request headers is a plain StopIteration: the body is handed to the filter (which a signed
//! route needs, to check `Content-Digest`). It also means a request paused while its decision
//! is pending (a key lookup, a JWKS fetch, a fleet lease, ...) gets body and trailers
//! callbacks, and going on from one of them would send the request upstream undecided. So
//! each HTTP context keeps a [`Stage`], the worker records in [`Resumed`] every request it
//! resumes ([`resume`]), and a held request's body and trailers stay paused until its context
//! takes that record. Without the flag (an older configuration) Envoy holds the body itself
//! and hands it over after the resume: the record is taken then, and the body goes on.

use std::cell::RefCell;
use std::collections::BTreeSet;

use crate::host::Host;

/// Resumed requests whose context has not yet taken the record (one per request, forgotten
/// on its log): past this many, the oldest (lowest context id: Envoy numbers contexts in
/// increasing order) is dropped, and that request's body stays paused (closed, never open).
pub const MAX_RESUMED: usize = 16_384;

/// The context ids of requests the worker resumed after a pause.
#[derive(Debug, Default)]
pub struct Resumed {
    ids: BTreeSet<u32>,
}

impl Resumed {
    /// Notes that `context_id` was resumed.
    pub fn record(&mut self, context_id: u32) {
        if self.ids.len() >= MAX_RESUMED && !self.ids.contains(&context_id) {
            self.ids.pop_first();
        }
        self.ids.insert(context_id);
    }

    /// Whether `context_id` was resumed; forgets it.
    pub fn take(&mut self, context_id: u32) -> bool {
        self.ids.remove(&context_id)
    }

    /// Forgets `context_id` (its request ended).
    pub fn forget(&mut self, context_id: u32) {
        self.ids.remove(&context_id);
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Resumes the current request (the caller made `context_id` effective), recording it first
/// so the body callbacks that follow the resume go on.
pub fn resume(host: &impl Host, gate: Gate<'_>, context_id: u32) {
    gate.resumed.borrow_mut().record(context_id);
    host.resume_request();
}

/// What the body gate reads of the worker (`Shared::gate`): the requests it resumed, and the
/// largest body a signed route reads.
#[derive(Clone, Copy, Debug)]
pub struct Gate<'a> {
    pub resumed: &'a RefCell<Resumed>,
    pub max_body_bytes: usize,
}

/// Where one request stands, for its body and trailers callbacks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Stage {
    /// Decided and gone on (or not yet paused): the body and trailers pass.
    #[default]
    Open,
    /// A signed route's body is being read (this much buffered so far) before the request is
    /// decided.
    ReadingBody(usize),
    /// Paused: its decision is pending, or the filter answered it. Nothing passes until the
    /// worker resumes it.
    Held,
}

/// What a body or trailers callback does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyStep {
    /// Go on (`Action::Continue`).
    Continue,
    /// Stay paused, buffering (`Action::Pause`).
    Pause,
    /// A signed route's body is over `signatures.max_body_bytes`: refuse it (413), stay paused.
    TooLarge,
    /// A signed route's body is whole (this many bytes): decide the request with it. The
    /// stage is [`Stage::Held`] until [`Stage::decided`] says otherwise.
    Decide(usize),
}

impl Stage {
    /// The stage after a decision (on the headers, or on a signed route's whole body):
    /// `went_on` true when the request goes on now.
    pub fn decided(went_on: bool) -> Self {
        if went_on {
            Self::Open
        } else {
            Self::Held
        }
    }

    /// A body callback: `body_size` bytes buffered so far, `end_of_stream` when they are all.
    pub fn on_body(
        &mut self,
        gate: Gate<'_>,
        context_id: u32,
        body_size: usize,
        end_of_stream: bool,
    ) -> BodyStep {
        match *self {
            Self::Open => BodyStep::Continue,
            Self::Held => self.held(gate, context_id),
            Self::ReadingBody(_) if body_size > gate.max_body_bytes => {
                *self = Self::Held;
                BodyStep::TooLarge
            }
            Self::ReadingBody(_) if !end_of_stream => {
                // Envoy buffers the body until the stream ends.
                *self = Self::ReadingBody(body_size);
                BodyStep::Pause
            }
            Self::ReadingBody(_) => {
                *self = Self::Held;
                BodyStep::Decide(body_size)
            }
        }
    }

    /// A trailers callback: the body (if it was being read) is whole.
    pub fn on_trailers(&mut self, gate: Gate<'_>, context_id: u32) -> BodyStep {
        match *self {
            Self::Open => BodyStep::Continue,
            Self::Held => self.held(gate, context_id),
            Self::ReadingBody(size) => {
                *self = Self::Held;
                BodyStep::Decide(size)
            }
        }
    }

    fn held(&mut self, gate: Gate<'_>, context_id: u32) -> BodyStep {
        if gate.resumed.borrow_mut().take(context_id) {
            *self = Self::Open;
            BodyStep::Continue
        } else {
            BodyStep::Pause
        }
    }
}
