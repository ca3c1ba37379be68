//! What the loops of one app read outside the cluster, read once for all of them: the queue
//! backlog from the broker (or from Flower, for an app whose broker only Flower knows) and the
//! tasks in progress from Flower.
//!
//! An app with worker groups runs one loop per autoscaled group ([`super::scaler`]), and every
//! loop of an app shares one [`AppReader`] behind a lock. The loops of an app tick at the same
//! phase ([`next_tick`]); the first to take the lock reads the broker for the queues of every
//! loop at once, in one round trip, and the others take their queues from that read, made at
//! or after their tick. Flower is read at most every [`progress::READ_EVERY`] for all of them, and a broker
//! that does not answer is backed off once for the app, not once per group.
//!
//! Where the broker says at once that a message landed (Redis whose `notify-keyspace-events`
//! already publishes list events: it is read, never set), the reader follows the pushes to the
//! app's queues on a connection of its own. A push to queues the last read found empty wakes
//! the app's loops at once ([`AppReader::pushes`]) instead of at their next tick: the first
//! message of a burst is acted on within milliseconds whatever the interval. It wakes them once
//! per empty read, so a steady stream of pushes costs no extra ticks.
//!
//! It touches the broker, Flower and the app's Secrets (the broker URL, Flower's credentials),
//! nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::progress::{self, Progress};
use crate::crd::{Celery, CelerySpec, SecretKeyRef, TransportOptions};
use crate::metrics::{self, Broker, BrokerError, BrokerOptions, QueueStats, RedisLayout};
use crate::spec::names;

/// The longest pause between two reads of a broker (or Flower) that does not answer.
pub const BROKER_RETRY_MAX: Duration = Duration::from_secs(60);
/// A Secret holding the broker URL is read again at most this often after a failed read.
const SECRET_RETRY: Duration = Duration::from_secs(10);
/// How often a broker that does not publish pushes is asked again (its owner may turn them on),
/// and the pause before following them again after the connection that did ended.
const PUSHES_RECHECK: Duration = Duration::from_secs(300);

/// The broker and Flower of one app, and what they last said.
pub struct AppReader {
    client: Client,
    namespace: String,
    options: BrokerOptions,
    source: Option<BrokerSource>,
    broker: Option<Broker>,
    /// When the broker Secret was last read, and why that read failed if it did.
    last_secret_read: Option<(Instant, Option<String>)>,
    /// After a failed broker read: when to try again, the pause, and the failure.
    retry: Option<Retry>,
    progress: Progress,
    /// The queues each loop reads, by worker group (`None` for `workerSpec`'s workers).
    wanted: BTreeMap<Option<String>, Vec<String>>,
    /// Every queue of `wanted` once: what one read asks the broker for.
    union: Vec<String>,
    /// The last good read of `union`, and when it was made.
    last: Option<(Instant, Vec<QueueStats>)>,
    /// The loops of the app tick at this phase of their interval.
    epoch: Instant,
    /// Bumped when a push lands on queues the last read found empty (see the module's docs).
    pushes: Arc<watch::Sender<u64>>,
    /// Whether the last read found every queue empty, so that a push wakes the loops.
    armed: Arc<AtomicBool>,
    /// Following the pushes to these queues, or when it was last found impossible.
    following: Option<Following>,
}

/// The task following a broker's pushes to `names` (`None`: the broker publishes none, or could
/// not say), started or found impossible at `since`.
struct Following {
    names: Vec<String>,
    task: Option<JoinHandle<()>>,
    since: Instant,
}

impl Drop for AppReader {
    fn drop(&mut self) {
        self.stop_following();
    }
}

/// Where the loops find the broker: `spec.broker`, or else a `CELERY_BROKER_URL` set in
/// `spec.common.env` (inline or from a Secret), which Celery in the pods reads just the same.
#[derive(Clone, Debug, PartialEq)]
struct BrokerSource {
    url: Option<String>,
    secret: Option<SecretKeyRef>,
    /// The spec field it comes from, for messages.
    field: String,
    transport_options: Option<TransportOptions>,
    management_url: Option<String>,
}

/// The backoff of an unreachable broker (or Flower standing in for one): the pause doubles
/// from the sampling interval up to [`BROKER_RETRY_MAX`], with a tenth of jitter so that many
/// apps on one dead broker do not knock together, and resets on the first good read.
#[derive(Clone, Debug)]
struct Retry {
    at: Instant,
    pause: Duration,
    error: String,
}

impl Retry {
    /// The failure, and how it is retried. NB: not the pause of the moment, which doubles
    /// five times in the first two minutes: a message that stays the same is not written again.
    fn describe(&self) -> String {
        format!("{} (tried again after a pause that doubles up to {}s)", self.error, BROKER_RETRY_MAX.as_secs())
    }
}

impl AppReader {
    /// A reader for the app `celery`, dialling brokers with `options`.
    pub fn new(client: Client, celery: &Celery, options: BrokerOptions) -> Self {
        let mut reader = Self {
            client,
            namespace: celery.namespace().unwrap_or_default(),
            options,
            source: None,
            broker: None,
            last_secret_read: None,
            retry: None,
            progress: Progress::default(),
            wanted: BTreeMap::new(),
            union: Vec::new(),
            last: None,
            epoch: Instant::now(),
            pushes: Arc::new(watch::channel(0).0),
            armed: Arc::new(AtomicBool::new(false)),
            following: None,
        };
        reader.follow(celery);
        reader
    }

    /// Follows a change of the app's broker or Flower; a new one is read at the next tick.
    pub fn follow(&mut self, celery: &Celery) {
        let source = broker_source(&celery.spec);
        if self.source != source {
            self.source = source;
            self.broker = None;
            self.last_secret_read = None;
            self.retry = None;
            self.last = None;
            self.stop_following();
        }
        self.progress.reconfigure(progress::source(celery));
    }

    /// Changes each time a push lands on the app's queues after a read found them all empty:
    /// the loops tick at once then, with a new read (see the module's docs).
    pub fn pushes(&self) -> watch::Receiver<u64> {
        self.pushes.subscribe()
    }

    /// Sets the queues the loop of `group` reads (`None`: it reads none, or it has ended).
    pub fn want(&mut self, group: Option<&str>, queues: Option<&[String]>) {
        let key = group.map(str::to_string);
        match queues {
            Some(queues) => {
                self.wanted.insert(key, queues.to_vec());
            }
            None => {
                self.wanted.remove(&key);
            }
        }
        let mut seen = BTreeSet::new();
        let union: Vec<String> = self.wanted.values().flatten().filter(|q| seen.insert(q.as_str())).cloned().collect();
        if union != self.union {
            self.union = union;
            self.last = None;
        }
    }

    /// The phase every loop of the app ticks at (see [`next_tick`]).
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// The figures of `queues` from a read of every loop's queues made at or after `since` (the
    /// caller's tick, which the app's other loops share), or from a new read; while a failed
    /// read's backoff runs, the last failure without a request. `interval` is the caller's, from
    /// which the backoff's pause starts.
    ///
    /// NB: an instant, not an age: a read a push woke (see the module's docs) made just before a
    /// tick would be young enough to pass for that tick's, and the tick would decide on the
    /// first messages of the burst instead of all of them.
    pub async fn queues(&mut self, queues: &[String], since: Instant, interval: Duration) -> Result<Vec<QueueStats>, String> {
        if let Some(retry) = self.retry.as_ref().filter(|r| Instant::now() < r.at) {
            return Err(retry.describe());
        }
        if let Some((at, stats)) = &self.last
            && *at >= since
            && let Some(picked) = pick(stats, queues)
        {
            return Ok(picked);
        }
        // Normally the union of what every loop wants; a loop that has not said yet is read alone.
        let names = if queues.iter().all(|q| self.union.contains(q)) { self.union.clone() } else { queues.to_vec() };
        // NB: a read counts from when it was asked for: what landed before may be in it, what
        // landed after may not, and a tick after that instant must read again.
        let asked = Instant::now();
        match self.read(&names).await {
            Ok(stats) => {
                self.retry = None;
                let picked = pick(&stats, queues).unwrap_or_else(|| queues.iter().map(QueueStats::unknown).collect());
                self.armed.store(stats.iter().all(|q| q.backlog == Some(0)), Ordering::Relaxed);
                self.follow_pushes(&names).await;
                self.last = Some((asked, stats));
                Ok(picked)
            }
            Err(error) => {
                let pause = next_pause(self.retry.as_ref().map(|r| r.pause), interval);
                let jitter = pause.mul_f64(jitter_fraction() / 10.0);
                let retry = Retry { at: Instant::now() + pause + jitter, pause, error };
                let message = retry.describe();
                self.retry = Some(retry);
                self.last = None;
                Err(message)
            }
        }
    }

    /// Follows the broker's pushes to `names` when it publishes them, unless it already does or
    /// was found not to lately.
    async fn follow_pushes(&mut self, names: &[String]) {
        if let Some(f) = &self.following {
            let running = f.task.as_ref().is_some_and(|t| !t.is_finished());
            if f.names == names && (running || f.since.elapsed() < PUSHES_RECHECK) {
                return;
            }
        }
        self.stop_following();
        let (pushes, armed) = (Arc::clone(&self.pushes), Arc::clone(&self.armed));
        let pushed = move || {
            // Once per empty read: the tick it wakes reads again and re-arms only if empty.
            if armed.swap(false, Ordering::Relaxed) {
                pushes.send_modify(|n| *n = n.wrapping_add(1));
            }
        };
        let Some(broker) = &self.broker else { return };
        let task = match broker.push_follower(names, pushed).await {
            Ok(Some(follow)) => {
                let url = broker.display_url().to_string();
                info!(broker = %url, "the broker publishes keyspace events: a message on an empty queue is acted on at once");
                Some(tokio::spawn(async move {
                    match follow.await {
                        Ok(()) => debug!(broker = %url, "the connection following pushes ended"),
                        Err(error) => {
                            info!(broker = %url, error = %crate::telemetry::chain(&error), "cannot follow pushes; reading at each tick only")
                        }
                    }
                }))
            }
            Ok(None) => None,
            Err(error) => {
                debug!(error = %crate::telemetry::chain(&error), "cannot tell whether the broker publishes pushes");
                None
            }
        };
        self.following = Some(Following { names: names.to_vec(), task, since: Instant::now() });
    }

    fn stop_following(&mut self) {
        if let Some(task) = self.following.take().and_then(|f| f.task) {
            task.abort();
        }
    }

    /// When the broker is tried again after a failed read, while its backoff runs.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry.as_ref().map(|r| r.at).filter(|at| *at > Instant::now())
    }

    /// Reads Flower's workers when due (see [`Progress::refresh`]).
    pub async fn refresh_flower(&mut self) -> Option<progress::Change> {
        let Self { client, namespace, progress, .. } = self;
        progress.refresh(async |secret| read_secret(client, namespace, secret).await).await
    }

    /// What Flower said last.
    pub fn flower(&self) -> progress::View {
        self.progress.view()
    }

    /// The app's broker, connected, for Celery remote-control commands.
    pub async fn broker(&mut self) -> Result<&Broker, String> {
        if self.broker.is_none() {
            self.broker = Some(self.connect().await?);
        }
        Ok(self.broker.as_ref().expect("connected above"))
    }

    /// The queues as the broker reports them, or why not.
    async fn read(&mut self, names: &[String]) -> Result<Vec<QueueStats>, String> {
        if self.source.is_none() && self.progress.source().is_some() {
            // As the Python operator did: Flower knows the broker from the app's own config.
            let Self { client, namespace, progress, .. } = self;
            return progress.queues(names, async |secret| read_secret(client, namespace, secret).await).await;
        }
        let broker = self.broker().await?;
        match broker.queues(names).await {
            Ok(stats) => Ok(stats),
            Err(error) => {
                // New credentials may have been put in the Secret: read it again next time.
                if matches!(error, BrokerError::Unauthorized { .. }) && self.source.as_ref().is_some_and(|b| b.secret.is_some()) {
                    self.broker = None;
                }
                let field = self.source.as_ref().map_or("spec.broker", |s| s.field.as_str());
                Err(format!("{field}: {}", crate::telemetry::chain(&error)))
            }
        }
    }

    async fn connect(&mut self) -> Result<Broker, String> {
        let Some(source) = &self.source else {
            return Err("spec.broker is not set (nor CELERY_BROKER_URL in spec.common.env) and Flower is off, so the queue \
                 backlog cannot be measured; set spec.broker.url or spec.broker.secretRef"
                .into());
        };
        let field = &source.field;
        let url = match (&source.url, &source.secret) {
            (_, Some(secret)) => {
                if let Some((at, Some(error))) = &self.last_secret_read
                    && at.elapsed() < SECRET_RETRY
                {
                    return Err(format!("{field}: {error} (read again every {}s)", SECRET_RETRY.as_secs()));
                }
                let read = read_secret(&self.client, &self.namespace, secret).await;
                self.last_secret_read = Some((Instant::now(), read.as_ref().err().cloned()));
                let url = read.map_err(|e| format!("{field}: {e}"))?;
                // NB: a Secret's value is never quoted back, even when it is not a URL at all:
                // it may be a bare password put in the wrong key.
                if let Err(error) = url::Url::parse(&url) {
                    return Err(format!(
                        "{field}: key {} of Secret {} does not hold a URL ({error}); the value is not shown",
                        secret.key, secret.name
                    ));
                }
                url
            }
            (Some(url), None) => url.clone(),
            (None, None) => return Err(format!("{field}: give url or secretRef")),
        };
        let url = metrics::in_namespace(&url, &self.namespace);
        if let Some(why) = metrics::forbidden_destination(&url) {
            return Err(format!("{field}: {why}"));
        }
        if let Some(why) = source.management_url.as_deref().and_then(metrics::forbidden_destination) {
            return Err(format!("spec.broker.managementUrl: {why}"));
        }
        let options = BrokerOptions {
            redis: RedisLayout::with(source.transport_options.as_ref()),
            management_url: source.management_url.as_deref().map(|m| metrics::in_namespace(m, &self.namespace)),
            ..self.options.clone()
        };
        metrics::connect(&url, &options).map_err(|e| format!("{field}: {e}"))
    }
}

/// The figures of `queues` in that order, when `stats` has every one.
fn pick(stats: &[QueueStats], queues: &[String]) -> Option<Vec<QueueStats>> {
    queues.iter().map(|q| stats.iter().find(|s| &s.name == q).cloned()).collect()
}

/// The first tick after `now` of a loop ticking every `interval` at the phase of `epoch`: the
/// loops of one app meet at the same instants, so the first to read serves the others.
pub fn next_tick(epoch: Instant, interval: Duration, now: Instant) -> Instant {
    let step = interval.as_nanos().max(1);
    let periods = now.saturating_duration_since(epoch).as_nanos() / step + 1;
    let offset = u64::try_from(periods.saturating_mul(step)).unwrap_or(u64::MAX);
    epoch.checked_add(Duration::from_nanos(offset)).unwrap_or(now + interval)
}

fn broker_source(spec: &CelerySpec) -> Option<BrokerSource> {
    if let Some(b) = &spec.broker {
        return Some(BrokerSource {
            url: b.url.clone(),
            secret: b.secret_ref.clone(),
            field: "spec.broker".into(),
            transport_options: b.transport_options.clone(),
            management_url: b.management_url.clone(),
        });
    }
    let var = spec.common.env.iter().find(|v| v.name == names::BROKER_ENV)?;
    let secret = var
        .value_from
        .as_ref()
        .and_then(|f| f.secret_key_ref.as_ref())
        .map(|s| SecretKeyRef { name: s.name.clone(), key: s.key.clone() });
    Some(BrokerSource {
        url: var.value.clone(),
        secret,
        field: format!("spec.common.env[{}]", names::BROKER_ENV),
        transport_options: None,
        management_url: None,
    })
}

/// The value of one key of a Secret in `namespace`, trimmed. The error says which of the three
/// it is: no such Secret, no such key, or not allowed to read it; never the value.
async fn read_secret(client: &Client, namespace: &str, secret: &SecretKeyRef) -> Result<String, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let found = match api.get_opt(&secret.name).await {
        Ok(found) => found,
        Err(kube::Error::Api(status)) if status.code == 403 => {
            return Err(format!(
                "the operator may not read Secret {namespace}/{} (forbidden: is {namespace} a namespace the operator's RBAC covers?)",
                secret.name
            ));
        }
        Err(e) => return Err(format!("cannot read Secret {}: {}", secret.name, crate::telemetry::chain(&e))),
    };
    let Some(found) = found else {
        return Err(format!("there is no Secret {} in namespace {namespace}", secret.name));
    };
    let mut data = found.data.unwrap_or_default();
    let Some(data) = data.remove(&secret.key) else {
        // Key names are not secret; they help spot a typo.
        let keys: Vec<&str> = data.keys().map(String::as_str).collect();
        let keys = if keys.is_empty() { "none".into() } else { keys.join(", ") };
        return Err(format!("Secret {} has no key {} (its keys: {keys})", secret.name, secret.key));
    };
    let text = String::from_utf8(data.0).map_err(|_| format!("key {} of Secret {} is not UTF-8", secret.key, secret.name))?;
    Ok(text.trim().to_string())
}

/// The pause after a failed broker read: twice the interval after the first failure, then
/// doubling, up to [`BROKER_RETRY_MAX`].
fn next_pause(previous: Option<Duration>, interval: Duration) -> Duration {
    previous.map_or(interval * 2, |p| p * 2).min(BROKER_RETRY_MAX)
}

/// A number in [0, 1) that differs between calls and processes (std's randomly keyed hasher;
/// jitter needs no better randomness).
fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(u64::from(std::process::id()));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spec from YAML; without a `common` of its own it gets a minimal one.
    fn spec(yaml: &str) -> CelerySpec {
        let base = if yaml.contains("common:") { "" } else { "common: {appName: a, celeryApp: 'app:celery_app', image: i}\n" };
        serde_yaml::from_str(&format!("{base}{yaml}")).expect("test spec parses")
    }

    #[test]
    fn an_unreachable_broker_is_tried_less_and_less_often() {
        let mut pauses = Vec::new();
        let mut pause = None;
        for _ in 0..8 {
            let next = next_pause(pause, Duration::from_secs(1));
            pauses.push(next.as_secs());
            pause = Some(next);
        }
        assert_eq!(pauses, [2, 4, 8, 16, 32, 60, 60, 60]);
        let j = jitter_fraction();
        assert!((0.0..1.0).contains(&j));
    }

    #[test]
    fn the_broker_comes_from_spec_broker_then_from_the_env_celery_reads() {
        let s = spec("broker: {url: 'redis://r/0', transportOptions: {globalKeyprefix: 'p:'}}");
        let b = broker_source(&s).expect("from spec.broker");
        assert_eq!((b.url.as_deref(), b.field.as_str()), (Some("redis://r/0"), "spec.broker"));
        assert!(b.transport_options.is_some());

        let s = spec("common: {appName: a, celeryApp: x, image: i, env: [{name: CELERY_BROKER_URL, value: 'amqp://mq//'}]}");
        let b = broker_source(&s).expect("from the env");
        assert_eq!((b.url.as_deref(), b.field.as_str()), (Some("amqp://mq//"), "spec.common.env[CELERY_BROKER_URL]"));

        let s = spec(
            "common: {appName: a, celeryApp: x, image: i, env: [{name: CELERY_BROKER_URL, valueFrom: {secretKeyRef: {name: s, key: k}}}]}",
        );
        assert_eq!(broker_source(&s).and_then(|b| b.secret), Some(SecretKeyRef { name: "s".into(), key: "k".into() }));

        assert_eq!(broker_source(&spec("")), None);
    }

    #[test]
    fn loops_of_one_app_tick_at_one_phase() {
        let epoch = Instant::now();
        let second = Duration::from_secs(1);
        assert_eq!(next_tick(epoch, second, epoch), epoch + second);
        assert_eq!(next_tick(epoch, second, epoch + Duration::from_millis(1300)), epoch + 2 * second);
        assert_eq!(next_tick(epoch, second, epoch + 2 * second), epoch + 3 * second, "always after now");
        // A loop every 2 s meets the one every second at every other tick.
        assert_eq!(next_tick(epoch, 2 * second, epoch + Duration::from_millis(2500)), epoch + 4 * second);
        assert!(next_tick(epoch, Duration::ZERO, epoch) > epoch, "a zero interval does not divide by zero");
    }

    #[test]
    fn queues_are_picked_in_the_order_asked() {
        let stats = |n: &str, b| QueueStats { name: n.into(), backlog: Some(b), reserved: None, consumers: None };
        let read = [stats("a", 1), stats("b", 2), stats("c", 3)];
        let picked = pick(&read, &["c".into(), "a".into()]).expect("both read");
        assert_eq!(picked.iter().map(|q| (q.name.as_str(), q.backlog)).collect::<Vec<_>>(), [("c", Some(3)), ("a", Some(1))]);
        assert!(pick(&read, &["d".into()]).is_none(), "a queue the read did not cover");
    }
}
