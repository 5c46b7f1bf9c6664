//! A fake [`Host`] for unit tests: shared data in memory (shared by every fake worker made
//! from one host, as Envoy's workers share theirs), a clock the test moves, scripted callout
//! answers and compare-and-swap conflicts, and a record of every effect.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use super::{Event, Host, HostError, LogLevel, Versioned};

/// Something the code under test did to the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Log(LogLevel, String),
    Dispatch {
        token: u32,
        cluster: String,
        headers: Vec<(String, String)>,
        body: Option<Vec<u8>>,
        timeout: Duration,
    },
    SetRequestHeader(String, String),
    RemoveRequestHeader(String),
    LocalReply {
        status: u32,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    Count(Event, u64),
    Gauge(Event, u64),
    /// A denial counted: shadow mode, the reason's metric name, by how much.
    CountDenial(bool, &'static str, u64),
    SetEffectiveContext(u32),
    ResumeRequest,
    SetResponseHeader(String, String),
    /// The upstream response's `:status` was read.
    ResponseStatus,
    ForeignFunction(String),
    SetTickPeriod(Duration),
    /// A message posted to the queue of that name.
    PostToQueue(String),
}

#[derive(Default)]
struct Store {
    values: HashMap<String, (Vec<u8>, u32)>,
    /// Compare-and-swap writes still to fail as if another worker had written first.
    conflicts: usize,
    /// Every write that went through, in order: (key, value).
    writes: Vec<(String, Vec<u8>)>,
}

/// What every fake worker of one fake Envoy shares: shared data, the clock, callout tokens
/// and the workers' queues.
#[derive(Default)]
struct Process {
    store: RefCell<Store>,
    now_ms: Cell<u64>,
    next_token: Cell<u32>,
    /// Registered queues by name.
    queues: RefCell<HashMap<String, Queue>>,
}

/// A registered queue: its id and the messages waiting in it.
type Queue = (u32, VecDeque<Vec<u8>>);

/// One fake worker.
#[derive(Default)]
pub struct FakeHost {
    process: Rc<Process>,
    effects: RefCell<Vec<Effect>>,
    /// Answers to the next dispatches (`Err` refuses one); when empty, every dispatch is taken.
    dispatches: RefCell<VecDeque<Result<(), HostError>>>,
    /// The callout answer being handled: `:status` and body.
    answer: RefCell<(Option<u32>, Option<Vec<u8>>)>,
    properties: RefCell<HashMap<Vec<String>, Vec<u8>>>,
    /// The upstream response's `:status` (`None`: absent).
    status: Cell<Option<u32>>,
    /// Contexts that are gone: making one effective fails.
    gone: RefCell<Vec<u32>>,
    /// The name of every host call made, in order (reads included).
    calls: RefCell<Vec<&'static str>>,
    /// The answer of foreign functions (`Err`: the host has none).
    foreign: RefCell<Option<Result<Vec<u8>, HostError>>>,
    /// This worker's host refuses to register queues.
    no_queues: Cell<bool>,
}

/// The request headers an upstream would get: `initial` (as the request arrived) with the
/// header edits among `effects` made in order, as Envoy makes them (a set replaces the first
/// header of that name in place, or appends one, and drops any other of that name; a removal
/// drops every one).
pub fn forwarded(initial: &[(&str, &[u8])], effects: &[Effect]) -> Vec<(String, String)> {
    let mut map: Vec<(String, String)> = initial
        .iter()
        .map(|(n, v)| ((*n).to_owned(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    for effect in effects {
        match effect {
            Effect::SetRequestHeader(name, value) => {
                match map.iter().position(|(n, _)| n.eq_ignore_ascii_case(name)) {
                    Some(at) => {
                        map[at].1.clone_from(value);
                        let mut index = 0;
                        map.retain(|(n, _)| {
                            index += 1;
                            index - 1 == at || !n.eq_ignore_ascii_case(name)
                        });
                    }
                    None => map.push((name.clone(), value.clone())),
                }
            }
            Effect::RemoveRequestHeader(name) => map.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
            _ => {}
        }
    }
    map
}

impl FakeHost {
    /// A worker of a new fake Envoy whose clock reads `now_ms`.
    pub fn at(now_ms: u64) -> Self {
        let host = Self::default();
        host.process.now_ms.set(now_ms);
        host
    }

    /// Another worker of the same fake Envoy: same shared data, clock and token counter, its
    /// own effects.
    pub fn worker(&self) -> Self {
        Self {
            process: Rc::clone(&self.process),
            ..Self::default()
        }
    }

    pub fn set_now(&self, now_ms: u64) {
        self.process.now_ms.set(now_ms);
    }

    pub fn advance(&self, ms: u64) {
        self.process.now_ms.set(self.process.now_ms.get() + ms);
    }

    /// The next `count` compare-and-swap writes (by any worker) fail as lost races.
    pub fn conflict_next_writes(&self, count: usize) {
        self.process.store.borrow_mut().conflicts = count;
    }

    /// The next dispatch is refused with `err`.
    pub fn refuse_next_dispatch(&self, err: HostError) {
        self.dispatches.borrow_mut().push_back(Err(err));
    }

    /// Sets the callout answer the next response callback reads.
    pub fn answer(&self, status: Option<u32>, body: Option<&[u8]>) {
        *self.answer.borrow_mut() = (status, body.map(<[u8]>::to_vec));
    }

    pub fn set_property(&self, path: &[&str], value: &[u8]) {
        let path = path.iter().map(|p| (*p).to_owned()).collect();
        self.properties.borrow_mut().insert(path, value.to_vec());
    }

    /// Sets the upstream response's `:status` the filter reads.
    pub fn set_response_status(&self, status: Option<u32>) {
        self.status.set(status);
    }

    /// The request `context_id` ended: making it effective fails.
    pub fn end_context(&self, context_id: u32) {
        self.gone.borrow_mut().push(context_id);
    }

    /// What foreign functions answer (by default the host has none: `NotFound`).
    pub fn answer_foreign(&self, answer: Result<Vec<u8>, HostError>) {
        *self.foreign.borrow_mut() = Some(answer);
    }

    /// A shared-data value, without its version.
    pub fn shared(&self, key: &str) -> Option<Vec<u8>> {
        self.get_shared(key).0
    }

    /// Writes shared data as another party would (bumps the version).
    pub fn put_shared(&self, key: &str, value: &[u8]) {
        let _ = self.set_shared(key, value, None);
    }

    /// Every write to shared data so far (by every worker), in order.
    pub fn writes(&self) -> Vec<(String, Vec<u8>)> {
        self.process.store.borrow().writes.clone()
    }

    /// Takes the names of the host calls this worker made so far (the trait's method names),
    /// in order.
    /// Makes this worker's host refuse to register queues.
    pub fn refuse_queues(&self) {
        self.no_queues.set(true);
    }

    /// Drops the queue registered as `name`, as Envoy does with a VM that is gone.
    pub fn drop_queue(&self, name: &str) {
        self.process.queues.borrow_mut().remove(name);
    }

    /// How many messages wait in the queue registered as `name` (`None`: no such queue).
    pub fn queued(&self, name: &str) -> Option<usize> {
        self.process
            .queues
            .borrow()
            .get(name)
            .map(|(_, messages)| messages.len())
    }

    pub fn take_calls(&self) -> Vec<&'static str> {
        std::mem::take(&mut self.calls.borrow_mut())
    }

    fn call(&self, name: &'static str) {
        self.calls.borrow_mut().push(name);
    }

    /// Takes this worker's effects so far.
    pub fn take_effects(&self) -> Vec<Effect> {
        std::mem::take(&mut self.effects.borrow_mut())
    }

    /// The dispatches among this worker's effects so far (left in place).
    pub fn dispatched(&self) -> Vec<Effect> {
        self.effects
            .borrow()
            .iter()
            .filter(|e| matches!(e, Effect::Dispatch { .. }))
            .cloned()
            .collect()
    }

    /// How much `event` was counted so far on this worker.
    pub fn counted(&self, event: Event) -> u64 {
        self.effects
            .borrow()
            .iter()
            .map(|e| match e {
                Effect::Count(counted, by) if *counted == event => *by,
                _ => 0,
            })
            .sum()
    }

    /// Whether this worker set `event`'s gauge to `value` at some point.
    pub fn effects_contain_gauge(&self, event: Event, value: u64) -> bool {
        self.effects.borrow().contains(&Effect::Gauge(event, value))
    }

    /// The messages logged at `level` or above so far (left in place).
    pub fn logged(&self, level: LogLevel) -> Vec<String> {
        self.effects
            .borrow()
            .iter()
            .filter_map(|e| match e {
                Effect::Log(l, m) if *l >= level => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    fn push(&self, effect: Effect) {
        self.effects.borrow_mut().push(effect);
    }
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect()
}

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        self.call("now_ms");
        self.process.now_ms.get()
    }

    fn log(&self, level: LogLevel, message: &str) {
        self.call("log");
        self.push(Effect::Log(level, message.to_owned()));
    }

    fn get_shared(&self, key: &str) -> Versioned {
        self.call("get_shared");
        match self.process.store.borrow().values.get(key) {
            Some((value, version)) => (Some(value.clone()), Some(*version)),
            None => (None, None),
        }
    }

    fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        self.call("set_shared");
        let mut store = self.process.store.borrow_mut();
        let current = store.values.get(key).map(|(_, v)| *v);
        if let Some(cas) = cas {
            if store.conflicts > 0 {
                store.conflicts -= 1;
                return Err(HostError::CasMismatch);
            }
            // As in Envoy: a write to a missing key always succeeds (which is why the filter
            // creates its leases and slots up front), a CAS of 0 is no CAS.
            if cas != 0 && current.is_some_and(|current| current != cas) {
                return Err(HostError::CasMismatch);
            }
        }
        let version = current.map_or(1, |v| v.wrapping_add(1).max(1));
        store
            .values
            .insert(key.to_owned(), (value.to_vec(), version));
        store.writes.push((key.to_owned(), value.to_vec()));
        Ok(())
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        self.call("dispatch_http_call");
        if let Some(Err(err)) = self.dispatches.borrow_mut().pop_front() {
            return Err(err);
        }
        let token = self.process.next_token.get() + 1;
        self.process.next_token.set(token);
        self.push(Effect::Dispatch {
            token,
            cluster: cluster.to_owned(),
            headers: owned(headers),
            body: body.map(<[u8]>::to_vec),
            timeout,
        });
        Ok(token)
    }

    fn call_response_status(&self) -> Option<u32> {
        self.call("call_response_status");
        self.answer.borrow().0
    }

    fn call_response_body(&self, size: usize, max: usize) -> Option<Vec<u8>> {
        self.call("call_response_body");
        let answer = self.answer.borrow();
        let body = answer.1.as_ref()?;
        // As in Envoy: no bytes to read is no buffer (`None`), never an empty one.
        let body = &body[..body.len().min(size).min(max)];
        (!body.is_empty()).then(|| body.to_vec())
    }

    fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.call("property");
        let path: Vec<String> = path.iter().map(|p| (*p).to_owned()).collect();
        self.properties.borrow().get(&path).cloned()
    }

    fn set_request_header(&self, name: &str, value: &str) {
        self.call("set_request_header");
        self.push(Effect::SetRequestHeader(name.to_owned(), value.to_owned()));
    }

    fn remove_request_header(&self, name: &str) {
        self.call("remove_request_header");
        self.push(Effect::RemoveRequestHeader(name.to_owned()));
    }

    fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        self.call("send_local_reply");
        self.push(Effect::LocalReply {
            status,
            headers: owned(headers),
            body: body.to_vec(),
        });
    }

    fn count(&self, event: Event, by: u64) {
        self.call("count");
        self.push(Effect::Count(event, by));
    }

    fn gauge(&self, event: Event, value: u64) {
        self.call("gauge");
        self.push(Effect::Gauge(event, value));
    }

    fn count_denial(&self, shadow: bool, reason: &'static str, by: u64) {
        self.call("count_denial");
        self.push(Effect::CountDenial(shadow, reason, by));
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), HostError> {
        self.call("set_effective_context");
        self.push(Effect::SetEffectiveContext(context_id));
        if self.gone.borrow().contains(&context_id) {
            return Err(HostError::Refused("NotFound"));
        }
        Ok(())
    }

    fn resume_request(&self) {
        self.call("resume_request");
        self.push(Effect::ResumeRequest);
    }

    fn set_response_header(&self, name: &str, value: &str) {
        self.call("set_response_header");
        self.push(Effect::SetResponseHeader(name.to_owned(), value.to_owned()));
    }

    fn response_status(&self) -> Option<u32> {
        self.call("response_status");
        self.push(Effect::ResponseStatus);
        self.status.get()
    }

    fn call_foreign_function(&self, name: &str, _arguments: &[u8]) -> Result<Vec<u8>, HostError> {
        self.call("call_foreign_function");
        self.push(Effect::ForeignFunction(name.to_owned()));
        self.foreign
            .borrow()
            .clone()
            .unwrap_or(Err(HostError::Refused("NotFound")))
    }

    fn set_tick_period(&self, period: Duration) {
        self.call("set_tick_period");
        self.push(Effect::SetTickPeriod(period));
    }

    fn register_queue(&self, name: &str) -> Option<u32> {
        self.call("register_queue");
        if self.no_queues.get() {
            return None;
        }
        let mut queues = self.process.queues.borrow_mut();
        let id = queues.len() as u32 + 1;
        Some(
            queues
                .entry(name.to_owned())
                .or_insert_with(|| (id, VecDeque::new()))
                .0,
        )
    }

    fn post_to_queue(&self, name: &str, message: &[u8]) -> bool {
        self.call("post_to_queue");
        self.push(Effect::PostToQueue(name.to_owned()));
        match self.process.queues.borrow_mut().get_mut(name) {
            Some((_, messages)) => {
                messages.push_back(message.to_vec());
                true
            }
            None => false,
        }
    }

    fn take_from_queue(&self, queue: u32) -> Option<Vec<u8>> {
        self.call("take_from_queue");
        self.process
            .queues
            .borrow_mut()
            .values_mut()
            .find(|(id, _)| *id == queue)
            .and_then(|(_, messages)| messages.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_share_data_and_clock_but_not_effects() {
        let one = FakeHost::at(1_000);
        let two = one.worker();
        one.put_shared("k", b"v");
        assert_eq!(two.shared("k"), Some(b"v".to_vec()));
        two.advance(5);
        assert_eq!(one.now_ms(), 1_005);
        two.log(LogLevel::Info, "hello");
        assert!(one.take_effects().is_empty());
        assert_eq!(two.logged(LogLevel::Info), vec!["hello".to_owned()]);
    }

    #[test]
    fn compare_and_swap_follows_envoy() {
        let host = FakeHost::at(0);
        assert_eq!(
            host.set_shared("k", b"a", Some(7)),
            Ok(()),
            "a CAS on a missing key, as in Envoy"
        );
        let (_, version) = host.get_shared("k");
        host.put_shared("k", b"b");
        assert_eq!(
            host.set_shared("k", b"c", version),
            Err(HostError::CasMismatch),
            "stale version"
        );
        let (_, version) = host.get_shared("k");
        host.conflict_next_writes(1);
        assert_eq!(
            host.set_shared("k", b"c", version),
            Err(HostError::CasMismatch)
        );
        assert_eq!(host.set_shared("k", b"c", version), Ok(()));
        assert_eq!(host.shared("k"), Some(b"c".to_vec()));
    }

    #[test]
    fn dispatches_are_numbered_or_refused_as_scripted() {
        let host = FakeHost::at(0);
        let other = host.worker();
        host.refuse_next_dispatch(HostError::Refused("BadArgument"));
        let call = |h: &FakeHost| h.dispatch_http_call("c", &[], None, Duration::ZERO);
        assert_eq!(call(&host), Err(HostError::Refused("BadArgument")));
        assert_eq!(call(&host), Ok(1));
        assert_eq!(call(&other), Ok(2), "tokens are unique per process");
        host.answer(Some(200), Some(b"body"));
        assert_eq!(host.call_response_status(), Some(200));
        assert_eq!(host.call_response_body(4, 2), Some(b"bo".to_vec()));
        assert_eq!(
            host.call_response_body(0, 2),
            None,
            "nothing to read, as Envoy"
        );
        host.answer(Some(200), Some(b""));
        assert_eq!(
            host.call_response_body(0, 64),
            None,
            "an empty body, as Envoy"
        );
    }
}
