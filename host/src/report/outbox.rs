//! Status writes taken off the autoscaling loops' path.
//!
//! A loop that decides does not wait for the API server to store what it decided: it posts
//! its part of the status to its [`Slot`] and goes on to its next tick. A few senders
//! ([`SENDERS`] tasks) apply what the slots hold:
//! - one write per slot at a time, and a post replaces the one still waiting in its slot: a
//!   field manager's part is applied whole (server-side apply), so the newest post says all
//!   an older one did. A slow API server sees fewer writes, never a queue of stale ones; at
//!   10,000 apps the loops no longer fall behind their interval while the first statuses of
//!   a new leader drain (each loop awaited its write before).
//! - posts that record a decision, a scale or a condition change ([`Urgency::Change`]) go
//!   ahead of those that only refresh figures.
//! - a write the API server refuses is logged and reported back to its slot
//!   ([`Slot::take_failure`]), so the loop posts again at its next tick.
//!
//! Hand-written rather than a channel per loop: what the slots need (latest wins, one write
//! in flight per slot, two priorities) is the whole of it, and no queue crate keeps a key's
//! place while replacing its value.

use std::collections::VecDeque;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::warn;

use super::{WriteError, Writer};
use crate::crd::Celery;

/// Writes in flight at most, all slots together: half of what an API client of the operator
/// may have in flight ([`crate::operator::MAX_IN_FLIGHT`]), so the loops' scales and reads
/// never wait behind more than this many status writes.
pub const SENDERS: usize = crate::operator::MAX_IN_FLIGHT / 2;

/// Whether a post records something new, or only refreshes what the status already says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urgency {
    /// A decision, a scale or a condition change: written before any refresh.
    Change,
    /// Figures that moved, or a periodic refresh.
    Refresh,
}

/// The slots with something to write, in the order they are written.
pub struct Outbox {
    queues: Mutex<Queues>,
    ready: Notify,
    /// Slots with a post not yet taken by a sender (`status_writes_pending`).
    pending: Gauge<i64, AtomicI64>,
}

#[derive(Default)]
struct Queues {
    changes: VecDeque<Arc<Slot>>,
    refreshes: VecDeque<Arc<Slot>>,
}

/// The sender tasks of an outbox; dropping this stops them.
pub struct Senders(Vec<JoinHandle<()>>);

impl Drop for Senders {
    fn drop(&mut self) {
        self.0.iter().for_each(JoinHandle::abort);
    }
}

/// One writer's part of one object's status: the latest post not yet written.
pub struct Slot {
    writer: Writer,
    /// The pool, for the log line of a failed write.
    label: String,
    state: Mutex<SlotState>,
    /// Woken when the slot has nothing pending and nothing in flight.
    settled: Notify,
}

#[derive(Default)]
struct SlotState {
    pending: Option<Post>,
    /// The queue the slot waits in (the more urgent, when it waits in both).
    queued: Option<Urgency>,
    writing: bool,
    /// The last write failed and nothing newer was posted since.
    failed: bool,
    /// The loop ended: nothing more is posted, and what waited is dropped.
    closed: bool,
}

struct Post {
    celery: Arc<Celery>,
    body: serde_json::Value,
    urgency: Urgency,
}

impl Outbox {
    /// An outbox counting the slots with a post waiting in `pending`.
    pub fn new(pending: Gauge<i64, AtomicI64>) -> Arc<Self> {
        Arc::new(Self { queues: Mutex::new(Queues::default()), ready: Notify::new(), pending })
    }

    /// Starts the [`SENDERS`] sender tasks, which run as long as what is returned is kept.
    pub fn start(self: &Arc<Self>) -> Senders {
        Senders((0..SENDERS).map(|_| tokio::spawn(Arc::clone(self).send())).collect())
    }

    /// A slot for the part of a status `writer` owns; `label` names the pool in logs.
    pub fn slot(self: &Arc<Self>, writer: Writer, label: String) -> Outgoing {
        Outgoing {
            slot: Arc::new(Slot { writer, label, state: Mutex::new(SlotState::default()), settled: Notify::new() }),
            outbox: Arc::clone(self),
        }
    }

    fn enqueue(&self, slot: Arc<Slot>, urgency: Urgency) {
        let mut queues = self.queues.lock().expect("outbox lock");
        match urgency {
            Urgency::Change => queues.changes.push_back(slot),
            Urgency::Refresh => queues.refreshes.push_back(slot),
        }
        drop(queues);
        self.ready.notify_one();
    }

    /// The next slot to write: changes first.
    async fn next(&self) -> Arc<Slot> {
        loop {
            let ready = self.ready.notified();
            {
                let mut queues = self.queues.lock().expect("outbox lock");
                if let Some(slot) = queues.changes.pop_front().or_else(|| queues.refreshes.pop_front()) {
                    if !queues.changes.is_empty() || !queues.refreshes.is_empty() {
                        // More waits: another sender may take it.
                        self.ready.notify_one();
                    }
                    return slot;
                }
            }
            ready.await;
        }
    }

    /// One sender: takes the next slot, writes its post, reports back.
    async fn send(self: Arc<Self>) {
        loop {
            let slot = self.next().await;
            let Some(post) = slot.begin() else { continue };
            self.pending.dec();
            let result = slot.writer.status(&post.celery, &post.body).await;
            if let Err(WriteError::Api(error)) = &result {
                warn!(app = %slot.label, error = %crate::telemetry::chain(error), "cannot write the autoscaler status");
            }
            if let Some(again) = slot.finish(matches!(result, Err(WriteError::Api(_)))) {
                self.enqueue(slot, again);
            }
        }
    }
}

impl Slot {
    /// Takes the pending post for writing, unless the slot is written already (it also
    /// waited in the other queue) or has nothing pending (the post was dropped).
    fn begin(&self) -> Option<Post> {
        let mut state = self.state.lock().expect("slot lock");
        if state.writing {
            return None;
        }
        let post = state.pending.take()?;
        state.queued = None;
        state.writing = true;
        Some(post)
    }

    /// Ends a write; the urgency to queue the slot again with, when a post came meanwhile.
    fn finish(&self, failed: bool) -> Option<Urgency> {
        let mut state = self.state.lock().expect("slot lock");
        state.writing = false;
        let again = state.pending.as_ref().map(|p| p.urgency);
        // A post that came meanwhile is written next, and says more than the one that failed.
        state.failed = failed && again.is_none();
        state.queued = again;
        if again.is_none() {
            self.settled.notify_waiters();
        }
        again
    }

    /// Whether the last write failed (and nothing was posted since); the report is taken.
    pub fn take_failure(&self) -> bool {
        std::mem::take(&mut self.state.lock().expect("slot lock").failed)
    }
}

/// A loop's slot, which it posts to; dropping it (the loop ended or was aborted) drops what
/// it had not written yet.
pub struct Outgoing {
    slot: Arc<Slot>,
    outbox: Arc<Outbox>,
}

impl Outgoing {
    /// Posts `body` (the writer's whole part of the status of `celery`) to be written; it
    /// replaces the post still waiting, if any.
    pub fn post(&self, celery: &Arc<Celery>, body: serde_json::Value, urgency: Urgency) {
        let mut state = self.slot.state.lock().expect("slot lock");
        if state.closed {
            return;
        }
        // A post carries the urgency of any it replaces: a change not written yet is still new.
        let urgency = match state.pending.as_ref().map(|p| p.urgency) {
            Some(Urgency::Change) => Urgency::Change,
            _ => urgency,
        };
        if state.pending.replace(Post { celery: Arc::clone(celery), body, urgency }).is_none() {
            self.outbox.pending.inc();
        }
        state.failed = false;
        if state.writing {
            // `finish` queues it.
            return;
        }
        let enqueue = match state.queued {
            None => true,
            // It waits among the refreshes: a change also joins the changes' queue.
            Some(Urgency::Refresh) => urgency == Urgency::Change,
            Some(Urgency::Change) => false,
        };
        if enqueue {
            state.queued = Some(urgency);
            drop(state);
            self.outbox.enqueue(Arc::clone(&self.slot), urgency);
        }
    }

    /// See [`Slot::take_failure`].
    pub fn take_failure(&self) -> bool {
        self.slot.take_failure()
    }

    /// The writer of this slot.
    pub fn writer(&self) -> &Writer {
        &self.slot.writer
    }

    /// Drops what waits, waits for the write in flight, and removes everything this slot's
    /// writer wrote in the status of `celery`: what ends the loop's part of the status.
    pub async fn clear(self, celery: &Celery) {
        loop {
            let settled = self.slot.settled.notified();
            {
                let mut state = self.slot.state.lock().expect("slot lock");
                state.closed = true;
                if state.pending.take().is_some() {
                    self.outbox.pending.dec();
                }
                if !state.writing {
                    break;
                }
            }
            settled.await;
        }
        self.slot.writer.clear(celery).await;
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        let mut state = self.slot.state.lock().expect("slot lock");
        state.closed = true;
        if state.pending.take().is_some() {
            self.outbox.pending.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;

    use super::*;
    use crate::leader::Leadership;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn celery(name: &str) -> Arc<Celery> {
        let spec = json!({
            "common": { "appName": name, "celeryApp": "app:celery_app", "image": "app:1" },
            "workerSpec": { "numOfWorkers": 1 },
        });
        let mut celery = Celery::new(name, serde_json::from_value(spec).expect("a spec"));
        celery.metadata.namespace = Some("ns".into());
        Arc::new(celery)
    }

    /// An outbox whose writers' requests come to the returned handle.
    fn outbox() -> (Arc<Outbox>, Senders, Writer, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let leadership = Arc::new(Leadership::unconditional());
        let writer = Writer::new(client, "test-scaler", leadership);
        let outbox = Outbox::new(Gauge::default());
        let senders = outbox.start();
        (outbox, senders, writer, handle)
    }

    /// The next write: the object's name and the status body it applies, and its reply.
    async fn next_write(handle: &mut Handle) -> (String, serde_json::Value, tower_test::mock::SendResponse<Response<Body>>) {
        let (request, reply) =
            tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await.expect("a write").expect("the client");
        let name = request.uri().path().trim_end_matches("/status").rsplit('/').next().unwrap().to_string();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        (name, body["status"].clone(), reply)
    }

    /// Gives every sender a write to wait on: the replies that free them, and the slots.
    async fn occupy_senders(
        outbox: &Arc<Outbox>,
        writer: &Writer,
        handle: &mut Handle,
    ) -> (Vec<tower_test::mock::SendResponse<Response<Body>>>, Vec<Outgoing>) {
        let slots: Vec<_> = (0..SENDERS).map(|i| outbox.slot(writer.clone(), format!("ns/busy-{i}"))).collect();
        let mut replies = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            slot.post(&celery(&format!("busy-{i}")), json!({}), Urgency::Refresh);
            replies.push(next_write(handle).await.2);
        }
        (replies, slots)
    }

    fn stored(name: &str) -> Response<Body> {
        let object = serde_json::to_vec(&*celery(name)).unwrap();
        Response::builder().status(200).body(Body::from(object)).unwrap()
    }

    fn refused() -> Response<Body> {
        let status = json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "busy", "reason": "TooManyRequests", "code": 429 });
        Response::builder().status(429).body(Body::from(serde_json::to_vec(&status).unwrap())).unwrap()
    }

    async fn no_write(handle: &mut Handle) {
        if let Ok(Some((request, _))) = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await {
            panic!("no further write, but {} {}", request.method(), request.uri());
        }
    }

    #[tokio::test]
    async fn a_post_waiting_behind_a_write_is_replaced_by_the_newest() {
        let (outbox, senders, writer, mut handle) = outbox();
        let app = celery("a");
        let slot = outbox.slot(writer, "ns/a".into());
        slot.post(&app, json!({ "n": 1 }), Urgency::Refresh);
        let (name, body, reply) = next_write(&mut handle).await;
        assert_eq!((name.as_str(), body), ("a", json!({ "n": 1 })));
        // While the first is in flight, two more: only the newest is written, once.
        slot.post(&app, json!({ "n": 2 }), Urgency::Refresh);
        slot.post(&app, json!({ "n": 3 }), Urgency::Refresh);
        assert_eq!(outbox.pending.get(), 1, "one post waits");
        no_write(&mut handle).await;
        reply.send_response(stored("a"));
        let (_, body, reply) = next_write(&mut handle).await;
        assert_eq!(body, json!({ "n": 3 }));
        assert_eq!(outbox.pending.get(), 0, "taken");
        reply.send_response(stored("a"));
        no_write(&mut handle).await;
        assert!(!slot.take_failure());
        drop(senders);
    }

    #[tokio::test]
    async fn changes_are_written_before_refreshes_and_a_replaced_change_stays_urgent() {
        let (outbox, senders, writer, mut handle) = outbox();
        // Every sender busy with a write of its own, so the rest queue.
        let (mut busy, _holders) = occupy_senders(&outbox, &writer, &mut handle).await;
        let refresh = outbox.slot(writer.clone(), "ns/r".into());
        let change = outbox.slot(writer.clone(), "ns/c".into());
        let promoted = outbox.slot(writer, "ns/p".into());
        refresh.post(&celery("r"), json!({ "n": 1 }), Urgency::Refresh);
        change.post(&celery("c"), json!({ "n": 1 }), Urgency::Change);
        // A refresh that replaces a change not written yet keeps its place among the changes.
        change.post(&celery("c"), json!({ "n": 2 }), Urgency::Refresh);
        // A slot waiting among the refreshes that gets a change joins the changes.
        promoted.post(&celery("p"), json!({ "n": 1 }), Urgency::Refresh);
        promoted.post(&celery("p"), json!({ "n": 2 }), Urgency::Change);
        let waiting = {
            let queues = outbox.queues.lock().unwrap();
            queues.changes.len() + queues.refreshes.len()
        };
        assert_eq!(waiting, 4, "r and p among the refreshes, c and p among the changes");
        busy.remove(0).send_response(stored("busy-0"));
        let mut order = Vec::new();
        for _ in 0..3 {
            let (name, body, reply) = next_write(&mut handle).await;
            order.push((name, body));
            reply.send_response(stored("x"));
        }
        assert_eq!(
            order,
            vec![
                ("c".to_string(), json!({ "n": 2 })),
                ("p".to_string(), json!({ "n": 2 })),
                ("r".to_string(), json!({ "n": 1 }))
            ]
        );
        no_write(&mut handle).await;
        for reply in busy {
            reply.send_response(stored("busy"));
        }
        drop(senders);
    }

    #[tokio::test]
    async fn a_refused_write_is_reported_to_its_slot_unless_a_newer_post_follows() {
        let (outbox, senders, writer, mut handle) = outbox();
        let app = celery("a");
        let slot = outbox.slot(writer, "ns/a".into());
        slot.post(&app, json!({ "n": 1 }), Urgency::Change);
        next_write(&mut handle).await.2.send_response(refused());
        // The failure comes back once.
        let reported = async {
            while !slot.take_failure() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), reported).await.expect("the failure reported");
        assert!(!slot.take_failure(), "taken");
        // Refused while a newer post waits: that one is written, and nothing is reported.
        slot.post(&app, json!({ "n": 2 }), Urgency::Change);
        let (_, _, reply) = next_write(&mut handle).await;
        slot.post(&app, json!({ "n": 3 }), Urgency::Change);
        reply.send_response(refused());
        let (_, body, reply) = next_write(&mut handle).await;
        assert_eq!(body, json!({ "n": 3 }));
        assert!(!slot.take_failure());
        reply.send_response(stored("a"));
        drop(senders);
    }

    #[tokio::test]
    async fn clearing_drops_what_waits_and_lands_after_the_write_in_flight() {
        let (outbox, senders, writer, mut handle) = outbox();
        let app = celery("a");
        let slot = outbox.slot(writer, "ns/a".into());
        slot.post(&app, json!({ "n": 1 }), Urgency::Change);
        let (_, _, in_flight) = next_write(&mut handle).await;
        slot.post(&app, json!({ "n": 2 }), Urgency::Change);
        let clearing = tokio::spawn({
            let app = Arc::clone(&app);
            async move { slot.clear(&app).await }
        });
        // The clear waits for the write in flight.
        no_write(&mut handle).await;
        in_flight.send_response(stored("a"));
        let (_, body, reply) = next_write(&mut handle).await;
        assert_eq!(body, json!({}), "the clear, not the post it dropped");
        reply.send_response(stored("a"));
        tokio::time::timeout(Duration::from_secs(5), clearing).await.unwrap().unwrap();
        no_write(&mut handle).await;
        drop(senders);
    }

    #[tokio::test]
    async fn a_dropped_slot_writes_nothing_more() {
        let (outbox, senders, writer, mut handle) = outbox();
        let (replies, _holders) = occupy_senders(&outbox, &writer, &mut handle).await;
        let gone = outbox.slot(writer, "ns/gone".into());
        gone.post(&celery("gone"), json!({ "n": 1 }), Urgency::Change);
        assert_eq!(outbox.pending.get(), 1);
        drop(gone);
        assert_eq!(outbox.pending.get(), 0, "dropped with its slot");
        for reply in replies {
            reply.send_response(stored("busy"));
        }
        no_write(&mut handle).await;
        drop(senders);
    }
}
