//! Work in progress of one app, from its Flower: which Flower ([`source`]), how often it is
//! read, and how its workers map onto the worker pods a policy sees.
//!
//! Flower is optional. Without it (or while it cannot be read) the pods' `active-tasks` are
//! unknown, which policies handle; it never holds the replica count by itself. Flower is read
//! at most every [`READ_EVERY`] (workers report their running tasks in heartbeats every 2 s),
//! and after a failure not again for [`RETRY_AFTER`], so a Flower that is down costs its app's
//! loop one timeout per retry, not one per tick.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::crd::{Celery, SecretKeyRef};
use crate::decide::scalein;
use crate::metrics::flower::{Flower, FlowerError, hostname};
use crate::metrics::{self, QueueStats};
use crate::policy::PodSample;
use crate::spec::names;

/// Flower's figures are read again after this long.
pub const READ_EVERY: Duration = Duration::from_secs(2);
/// After a failed read, Flower is asked again after this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);
/// A Flower that has never answered is not reported unavailable for this long after the loop
/// starts following it: a new app's Flower pod starts beside its workers (seconds on a real node),
/// and its Service refuses connections until it is Ready.
pub const STARTING: Duration = Duration::from_secs(60);
/// Limit for one request to Flower. Shorter than the broker's: the loop waits for Flower before
/// it decides, and Flower in the app's namespace answers in milliseconds when it answers at all.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// Where an app's Flower is, and the Secret with its credentials.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub url: String,
    pub basic_auth: Option<SecretKeyRef>,
    /// What the URL comes from, for messages.
    pub field: &'static str,
}

/// The app's Flower: `spec.autoscaling.flowerUrl`, else the Flower Service the operator runs
/// for it (with Flower's `--url_prefix` from `flowerSpec.extraArgs`), else none.
pub fn source(celery: &Celery) -> Option<Source> {
    let spec = &celery.spec;
    let namespace = celery.metadata.namespace.as_deref().unwrap_or("default");
    let basic_auth = spec.flower_spec.basic_auth.clone();
    if let Some(url) = spec.autoscaling.as_ref().and_then(|a| a.flower_url.as_deref()) {
        let url = metrics::in_namespace(url, namespace);
        // The app's Flower credentials go to the app's own Flower Service only; a URL that
        // names another host carries its own credentials, if it needs any.
        let own = own_flower_host(&url, &names::flower_name(celery), namespace);
        return Some(Source { url, basic_auth: basic_auth.filter(|_| own), field: "spec.autoscaling.flowerUrl" });
    }
    let flower = &spec.flower_spec;
    if !flower.enabled || flower.replicas == 0 {
        return None;
    }
    let prefix = url_prefix(&flower.extra_args).map(|p| format!("/{p}")).unwrap_or_default();
    let url = format!("http://{}.{namespace}.svc:{}{prefix}", names::flower_name(celery), flower.service.port);
    Some(Source { url, basic_auth, field: "the Flower Service" })
}

/// Whether `url` names the app's own Flower Service (`<name>`, `<name>.<ns>`,
/// `<name>.<ns>.svc`, `<name>.<ns>.svc.cluster.local`).
fn own_flower_host(url: &str, service: &str, namespace: &str) -> bool {
    let Some(host) = url::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_ascii_lowercase)) else {
        return false;
    };
    let qualified = format!("{service}.{namespace}");
    [service.to_string(), qualified.clone(), format!("{qualified}.svc"), format!("{qualified}.svc.cluster.local")].contains(&host)
}

/// Flower's `--url_prefix` (or `--url-prefix`), `=value` or as the next argument, without
/// its slashes.
fn url_prefix(args: &[String]) -> Option<String> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let value = match arg.split_once('=') {
            Some(("--url_prefix" | "--url-prefix", value)) => Some(value.to_string()),
            None if matches!(arg.as_str(), "--url_prefix" | "--url-prefix") => args.next().cloned(),
            _ => None,
        };
        if let Some(value) = value {
            let trimmed = value.trim_matches('/');
            return (!trimmed.is_empty()).then(|| trimmed.to_string());
        }
    }
    None
}

/// What a read of Flower changed, for the loop to report once.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Flower could not be read (and could before, or never was): why.
    Failed(String),
    /// Flower answers again after a failure.
    Recovered,
}

/// Flower's online workers at one read.
#[derive(Debug, Default)]
struct Workers {
    /// Tasks in progress by worker hostname (its pod's name).
    active: HashMap<String, u32>,
    /// Tasks prefetched (received, not started) by worker hostname.
    reserved: HashMap<String, u32>,
}

/// What Flower said at its last read, as one loop uses it through a tick (cheap to take: the
/// figures are shared, not copied).
#[derive(Debug)]
pub struct View {
    workers: Arc<Workers>,
    figures: Result<(), String>,
}

impl View {
    /// Sets each pod's tasks in progress: unknown for a pod Flower has no online worker for.
    pub fn fill(&self, pods: &mut [PodSample]) {
        for pod in pods {
            pod.active_tasks = self.workers.active.get(&pod.name).copied();
        }
    }

    /// Whether the read gave per-worker figures, or why not (for a scale-down's reason: without
    /// them Kubernetes chooses which workers go).
    pub fn figures(&self) -> Result<(), &str> {
        self.figures.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// A worker pod's running and prefetched tasks, when Flower has an online worker for it.
    pub fn load(&self, pod: &str) -> Option<scalein::Load> {
        let running = *self.workers.active.get(pod)?;
        Some(scalein::Load { running, reserved: self.workers.reserved.get(pod).copied().unwrap_or(0) })
    }
}

/// One app's Flower and what it last said.
#[derive(Default)]
pub struct Progress {
    source: Option<Source>,
    client: Option<Flower>,
    /// The online workers as last read, shared with the loops' [`View`]s.
    workers: Arc<Workers>,
    last_read: Option<Instant>,
    failing: Option<String>,
    /// The failure last reported, so it is reported once.
    reported: Option<String>,
    /// When this Flower was first asked, and whether it has ever answered (see [`STARTING`]).
    first_asked: Option<Instant>,
    answered: bool,
    /// When the client was made (its credentials read), or why it could not be, and when.
    client_made: Option<Instant>,
    client_failed: Option<(Instant, String)>,
}

impl Progress {
    /// Follows a change of the app's Flower; a new source is read at the next tick.
    pub fn reconfigure(&mut self, source: Option<Source>) {
        if self.source != source {
            *self = Self { source, ..Self::default() };
        }
    }

    pub fn source(&self) -> Option<&Source> {
        self.source.as_ref()
    }

    /// Reads Flower's workers when due. `credentials` reads the basic-auth Secret.
    pub async fn refresh(&mut self, credentials: impl AsyncFnOnce(&SecretKeyRef) -> Result<String, String>) -> Option<Change> {
        self.source.as_ref()?;
        let wait = if self.failing.is_some() { RETRY_AFTER } else { READ_EVERY };
        if self.last_read.is_some_and(|at| at.elapsed() < wait) {
            return None;
        }
        self.last_read = Some(Instant::now());
        self.first_asked.get_or_insert_with(Instant::now);
        let read = match self.client(credentials).await {
            Ok(flower) => flower.workers().await.map_err(|e| self.describe(&e)),
            Err(message) => Err(message),
        };
        match read {
            Ok(workers) => {
                let mut online = Workers::default();
                for w in workers.iter().filter(|w| w.online) {
                    if let Some(active) = w.active {
                        online.active.insert(hostname(&w.name).to_string(), active);
                        online.reserved.insert(hostname(&w.name).to_string(), w.prefetched.unwrap_or(0));
                    }
                }
                self.workers = Arc::new(online);
                self.answered = true;
                self.failing = None;
                self.reported.take().map(|_| Change::Recovered)
            }
            Err(message) => {
                self.workers = Arc::default();
                self.failing = Some(message.clone());
                let starting = !self.answered && self.first_asked.is_some_and(|at| at.elapsed() < STARTING);
                if starting || self.reported.as_ref() == Some(&message) {
                    return None;
                }
                self.reported = Some(message.clone());
                Some(Change::Failed(message))
            }
        }
    }

    /// What the last read said, for one tick of a loop.
    pub fn view(&self) -> View {
        View { workers: Arc::clone(&self.workers), figures: self.figures() }
    }

    /// Whether the last read of Flower gave per-worker figures, or why not.
    fn figures(&self) -> Result<(), String> {
        match (&self.source, &self.failing) {
            (None, _) => Err("no Flower: flowerSpec is off and spec.autoscaling.flowerUrl is not set".into()),
            (Some(_), Some(failing)) => Err(failing.clone()),
            (Some(_), None) if !self.answered => Err("Flower has not answered yet".into()),
            (Some(_), None) => Ok(()),
        }
    }

    /// The backlog of `queues` as Flower measures it, for an app whose broker only Flower
    /// knows.
    pub async fn queues(
        &mut self,
        names: &[String],
        credentials: impl AsyncFnOnce(&SecretKeyRef) -> Result<String, String>,
    ) -> Result<Vec<QueueStats>, String> {
        let flower = self.client(credentials).await?;
        let read = flower.queues(names).await;
        read.map_err(|e| {
            // New credentials may be in the Secret: read it again, at most every RETRY_AFTER.
            if e.unauthorized && self.client_made.is_none_or(|at| at.elapsed() >= RETRY_AFTER) {
                self.client = None;
            }
            self.describe(&e)
        })
    }

    async fn client(
        &mut self,
        credentials: impl AsyncFnOnce(&SecretKeyRef) -> Result<String, String>,
    ) -> Result<&Flower, String> {
        let source = self.source.as_ref().ok_or("no Flower")?;
        if self.client.is_none() {
            // A Secret that could not be read is asked for again only after RETRY_AFTER.
            if let Some((at, error)) = &self.client_failed
                && at.elapsed() < RETRY_AFTER
            {
                return Err(error.clone());
            }
            if let Some(why) = metrics::forbidden_destination(&source.url) {
                let error = format!("{}: {why}", source.field);
                self.client_failed = Some((Instant::now(), error.clone()));
                return Err(error);
            }
            let made = match &source.basic_auth {
                Some(secret) => credentials(secret).await.map(Some).map_err(|e| format!("flowerSpec.basicAuth: {e}")),
                None => Ok(None),
            }
            .and_then(|auth| Flower::new(&source.url, auth.as_deref(), TIMEOUT).map_err(|e| format!("{}: {e}", source.field)));
            match made {
                Ok(flower) => {
                    self.client = Some(flower);
                    self.client_made = Some(Instant::now());
                    self.client_failed = None;
                }
                Err(error) => {
                    self.client_failed = Some((Instant::now(), error.clone()));
                    return Err(error);
                }
            }
        }
        Ok(self.client.as_ref().expect("made above"))
    }

    fn describe(&self, error: &FlowerError) -> String {
        match &self.source {
            Some(source) => format!("{}: {error}", source.field),
            None => error.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn celery(yaml: &str) -> Celery {
        serde_yaml::from_str(yaml).expect("test YAML parses")
    }

    const APP: &str = "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {name: shop, namespace: web}
spec:
  common: {appName: shop, celeryApp: 'app:celery_app', image: img}
";

    #[test]
    fn the_flower_service_unless_a_url_is_given() {
        let s = source(&celery(APP)).expect("Flower runs by default");
        assert_eq!((s.url.as_str(), s.field), ("http://shop-flower.web.svc:5555", "the Flower Service"));

        let yaml = format!(
            "{APP}  flowerSpec: {{service: {{port: 80}}, extraArgs: ['--url_prefix', '/flower/'], basicAuth: {{name: f, key: k}}}}\n"
        );
        let s = source(&celery(&yaml)).expect("Flower runs");
        assert_eq!(s.url, "http://shop-flower.web.svc:80/flower");
        assert_eq!(s.basic_auth, Some(SecretKeyRef { name: "f".into(), key: "k".into() }));

        let off = format!("{APP}  flowerSpec: {{enabled: false}}\n");
        assert_eq!(source(&celery(&off)), None);
        let none = format!("{APP}  flowerSpec: {{replicas: 0}}\n");
        assert_eq!(source(&celery(&none)), None);

        let given = format!("{off}  autoscaling: {{policy: load, maxReplicas: 3, flowerUrl: 'http://monitor:5555'}}\n");
        let s = source(&celery(&given)).expect("given");
        assert_eq!((s.url.as_str(), s.field), ("http://monitor.web.svc:5555/", "spec.autoscaling.flowerUrl"));
    }

    #[test]
    fn flower_credentials_go_to_the_apps_own_flower_only() {
        let with_auth = |url: &str| {
            format!(
                "{APP}  flowerSpec: {{basicAuth: {{name: f, key: k}}}}\n  autoscaling: {{policy: load, maxReplicas: 3, flowerUrl: '{url}'}}\n"
            )
        };
        for own in
            ["http://shop-flower:5555", "http://shop-flower.web.svc:5555/flower", "http://shop-flower.web.svc.cluster.local"]
        {
            assert!(source(&celery(&with_auth(own))).unwrap().basic_auth.is_some(), "{own}");
        }
        for elsewhere in ["http://attacker.example:80", "http://shop-flower.other.svc:5555", "http://10.0.0.9:5555"] {
            assert_eq!(source(&celery(&with_auth(elsewhere))).unwrap().basic_auth, None, "{elsewhere}");
        }
    }

    #[test]
    fn url_prefix_in_both_spellings() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(url_prefix(&args(&["--url_prefix=flower"])).as_deref(), Some("flower"));
        assert_eq!(url_prefix(&args(&["--port=1", "--url-prefix", "/a/b/"])).as_deref(), Some("a/b"));
        assert_eq!(url_prefix(&args(&["--url_prefix=/"])), None);
        assert_eq!(url_prefix(&args(&["--persistent"])), None);
    }

    #[test]
    fn pods_get_the_tasks_of_their_online_worker_only() {
        let mut progress = Progress::default();
        let mut online = Workers::default();
        online.active.insert("shop-celery-worker-a".into(), 3);
        progress.workers = Arc::new(online);
        let pod = |name: &str| PodSample {
            name: name.into(),
            ready: true,
            cpu_millis: None,
            cpu_request_millis: None,
            memory_bytes: None,
            memory_request_bytes: None,
            active_tasks: Some(99),
        };
        let mut pods = vec![pod("shop-celery-worker-a"), pod("shop-celery-worker-b")];
        progress.view().fill(&mut pods);
        assert_eq!((pods[0].active_tasks, pods[1].active_tasks), (Some(3), None));
    }

    #[tokio::test]
    async fn a_failing_flower_is_reported_once_and_retried_later() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let mut progress = Progress::default();
        let source = Source { url: format!("http://127.0.0.1:{port}"), basic_auth: None, field: "spec.autoscaling.flowerUrl" };
        progress.reconfigure(Some(source));
        progress.workers = Arc::new(Workers { active: [("stale".to_string(), 1)].into(), reserved: HashMap::new() });
        let no_secret = async |_: &SecretKeyRef| -> Result<String, String> { unreachable!("no Secret named") };
        assert_eq!(progress.refresh(no_secret).await, None, "a Flower that never answered may still be starting");
        assert!(progress.workers.active.is_empty(), "figures from before the failure are dropped");
        progress.first_asked = Some(Instant::now() - STARTING);
        progress.last_read = Some(Instant::now() - RETRY_AFTER);
        let Some(Change::Failed(message)) = progress.refresh(no_secret).await else { panic!("nothing listens") };
        assert!(message.starts_with("spec.autoscaling.flowerUrl: Flower http://127.0.0.1"), "{message}");
        assert!(progress.workers.active.is_empty(), "figures from before the failure are dropped");
        assert_eq!(progress.refresh(no_secret).await, None, "not retried before RETRY_AFTER");
        progress.last_read = Some(Instant::now() - RETRY_AFTER);
        assert_eq!(progress.refresh(no_secret).await, None, "the same failure is not reported twice");
    }

    #[tokio::test]
    async fn a_flower_that_answered_once_is_reported_at_its_first_failure() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let mut progress = Progress::default();
        let source = Source { url: format!("http://127.0.0.1:{port}"), basic_auth: None, field: "spec.autoscaling.flowerUrl" };
        progress.reconfigure(Some(source));
        progress.answered = true;
        let no_secret = async |_: &SecretKeyRef| -> Result<String, String> { unreachable!("no Secret named") };
        assert!(matches!(progress.refresh(no_secret).await, Some(Change::Failed(_))), "no grace once it has answered");
    }

    #[tokio::test]
    async fn an_unreadable_secret_is_not_asked_for_every_tick() {
        let mut progress = Progress::default();
        let secret = SecretKeyRef { name: "auth".into(), key: "pair".into() };
        let source = Source { url: "http://127.0.0.1:9".into(), basic_auth: Some(secret), field: "the Flower Service" };
        progress.reconfigure(Some(source));
        let reads = std::cell::Cell::new(0);
        let missing = async |_: &SecretKeyRef| -> Result<String, String> {
            reads.set(reads.get() + 1);
            Err("Secret auth has no key pair".into())
        };
        let queues = ["celery".to_string()];
        for _ in 0..3 {
            let error = progress.queues(&queues, missing).await.unwrap_err();
            assert_eq!(error, "flowerSpec.basicAuth: Secret auth has no key pair");
        }
        assert_eq!(reads.get(), 1, "read once within RETRY_AFTER");
    }
}
