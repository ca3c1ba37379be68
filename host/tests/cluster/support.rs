//! The harness of the cluster tests: a real control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok's simulated node) started on loopback by
//! `hack/control-plane.sh`, the project's CRD and RBAC installed from `deploy/`, and helpers
//! to run the operator in-process as the ServiceAccount `deploy/rbac.yaml` binds.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use celery_operator::crd::Celery;
use celery_operator::leader::LeaseConfig;
use celery_operator::operator::{self, RunError, RunOptions};
use celery_operator::policy::check::PolicyCheck;
use celery_operator::policy::registry::RegistrySettings;
use celery_operator::scope::Scope;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope as DiscoveryScope};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Sends every DNS lookup of the operators under test (in this process and in the binaries
/// it starts) to a loopback port where nothing answers, so no test asks a server off this
/// machine for an app's `.svc` names. Call before any other thread starts.
pub fn keep_lookups_on_loopback() {
    const NOWHERE: &str = "127.0.0.1:9";
    // SAFETY: the caller runs before other threads exist.
    unsafe { std::env::set_var("CELERY_OPERATOR_DNS_SERVER", NOWHERE) };
    celery_operator::metrics::dns::use_server(NOWHERE.parse().expect("an address"));
}

/// The repository root (tests run with the crate directory as working directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_path_buf()
}

/// A running control plane, stopped on drop.
pub struct ControlPlane {
    pub state: PathBuf,
    /// Started with its real node (`REAL_NODE=1`).
    pub real_node: bool,
}

impl ControlPlane {
    /// Starts the control plane (building its binaries on the first run).
    pub fn start() -> Result<Self, String> {
        Self::start_in("celery-operator-tests", false)
    }

    /// Starts it with its real node, real-0 (hack/node/real-node.sh), beside kwok's.
    pub fn start_with_real_node() -> Result<Self, String> {
        Self::start_in("celery-operator-real-node", true)
    }

    fn start_in(prefix: &str, real_node: bool) -> Result<Self, String> {
        let state = std::env::var_os("CONTROL_PLANE_STATE")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join(format!("{prefix}-{}", std::process::id())));
        let cp = Self { state, real_node };
        cp.script("start")?;
        Ok(cp)
    }

    pub fn restart_apiserver(&self) -> Result<(), String> {
        self.script("restart-apiserver")
    }

    /// An API server outage: stopped until [`start_apiserver`](Self::start_apiserver).
    pub fn stop_apiserver(&self) -> Result<(), String> {
        self.script("stop-apiserver")
    }

    pub fn start_apiserver(&self) -> Result<(), String> {
        self.script("start-apiserver")
    }

    /// Writes (create, update, patch, delete) the operator's ServiceAccount made, from the API
    /// server's audit log.
    pub fn audited_writes(&self) -> Vec<AuditedRequest> {
        const WRITES: [&str; 4] = ["create", "update", "patch", "delete"];
        self.audited().into_iter().filter(|w| w.user == OPERATOR_USER && WRITES.contains(&w.verb.as_str())).collect()
    }

    /// Every request in the API server's audit log: the operator's ServiceAccount's (watches
    /// aside), and anyone's read of a Celery object (see hack/control-plane.sh).
    pub fn audited(&self) -> Vec<AuditedRequest> {
        let text = std::fs::read_to_string(self.state.join("logs/audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|e| {
                let received = e.get("requestReceivedTimestamp")?.as_str()?.parse::<jiff::Timestamp>().ok()?;
                let object = e.get("objectRef").cloned().unwrap_or_default();
                let field = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or_default().to_string();
                Some(AuditedRequest {
                    received,
                    user: e.get("user").map(|u| field(u, "username")).unwrap_or_default(),
                    user_agent: field(&e, "userAgent"),
                    verb: field(&e, "verb"),
                    resource: field(&object, "resource"),
                    subresource: field(&object, "subresource"),
                    namespace: field(&object, "namespace"),
                    name: field(&object, "name"),
                    code: e.get("responseStatus").and_then(|r| r.get("code")).and_then(|c| c.as_i64()).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// KEDA beside it (its operator, metrics adapter and an HPA controller syncing every
    /// `hpa_sync`, e.g. "15s"), for the peer benchmark; built on first use (hack/build-keda.sh).
    pub fn start_keda(&self, hpa_sync: &str) -> Result<(), String> {
        self.script_with("start-keda", &[("HPA_SYNC_PERIOD", hpa_sync)])
    }

    /// The HPA controller started again, syncing every `hpa_sync`.
    pub fn restart_hpa(&self, hpa_sync: &str) -> Result<(), String> {
        self.script_with("restart-hpa", &[("HPA_SYNC_PERIOD", hpa_sync)])
    }

    /// The process id of a component the script started (`keda-operator`, `kube-apiserver`, …).
    pub fn pid_of(&self, component: &str) -> Option<u32> {
        std::fs::read_to_string(self.state.join("pids").join(format!("{component}.pid"))).ok()?.trim().parse().ok()
    }

    fn script(&self, verb: &str) -> Result<(), String> {
        self.script_with(verb, &[])
    }

    fn script_with(&self, verb: &str, env: &[(&str, &str)]) -> Result<(), String> {
        let status = Command::new(repo_root().join("hack/control-plane.sh"))
            .arg(verb)
            .arg(&self.state)
            .envs(env.iter().copied())
            .env("REAL_NODE", if self.real_node { "1" } else { "0" })
            .status()
            .map_err(|e| format!("cannot run hack/control-plane.sh: {e}"))?;
        status.success().then_some(()).ok_or_else(|| format!("hack/control-plane.sh {verb} failed: {status}"))
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.state.join("admin.kubeconfig")
    }

    pub fn operator_kubeconfig(&self) -> PathBuf {
        self.state.join("operator.kubeconfig")
    }

    /// Prints the pods and ReplicaSets of every namespace and the tail of every component's
    /// log, for a failed run.
    pub fn dump_logs(&self) {
        let listed = std::process::Command::new("kubectl")
            .arg(format!("--kubeconfig={}", self.admin_kubeconfig().display()))
            .args(["get", "replicasets,pods", "--all-namespaces", "-o", "wide"])
            .output();
        match listed {
            Ok(out) => eprintln!(
                "===== kubectl get replicasets,pods -A =====\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("kubectl get pods: {e}"),
        }
        let Ok(entries) = std::fs::read_dir(self.state.join("logs")) else {
            return;
        };
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("===== {} (last {} lines) =====", entry.path().display(), tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

impl ControlPlane {
    /// Stops everything it runs now (also when something still holds it): stopping is
    /// idempotent, so its drop later does nothing more.
    pub fn stop_now(&self) {
        if let Err(e) = self.script("stop") {
            eprintln!("{e}");
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Err(e) = self.script("stop") {
            eprintln!("{e}");
        }
    }
}

/// The user the operator runs as in the test control plane (hack/control-plane.sh).
pub const OPERATOR_USER: &str = "system:serviceaccount:celery-operator:celery-operator";

/// One request, as the API server's audit log recorded it.
#[derive(Clone, Debug)]
pub struct AuditedRequest {
    pub received: jiff::Timestamp,
    pub user: String,
    pub user_agent: String,
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub code: i64,
}

/// A user policy installed for the tests: `tests/fixtures/trap_message.wat`, which traps with
/// "boom: the queue exploded" on every decision.
pub const TRAP_POLICY: &str = "trap-policy";

/// Clients for a test: `admin` plays the user, `operator` has only the operator's RBAC.
#[derive(Clone)]
pub struct Env {
    pub admin: Client,
    pub operator: Client,
    /// One policy runtime shared by every in-process operator, as a process has one.
    pub policies: Arc<PolicyCheck>,
    /// The user policy directory of that runtime (holds [`TRAP_POLICY`]).
    pub user_policies: Arc<tempfile::TempDir>,
}

impl Env {
    pub async fn connect(cp: &ControlPlane) -> Self {
        let admin = operator::client(Some(&cp.admin_kubeconfig())).await.expect("admin client");
        let operator = operator::client(Some(&cp.operator_kubeconfig())).await.expect("operator client");
        let user_policies = tempfile::tempdir().expect("a user policy directory");
        let trap = wat::parse_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trap_message.wat"))
            .expect("the trap fixture compiles");
        std::fs::write(user_policies.path().join(format!("{TRAP_POLICY}.wasm")), trap).expect("installs the trap policy");
        let settings = RegistrySettings {
            builtin_dir: Some(repo_root().join("target/policies")),
            user_dir: Some(user_policies.path().to_path_buf()),
            cache_dir: Some(RegistrySettings::default_cache_dir()),
        };
        let policies = PolicyCheck::start(settings, Duration::from_secs(5)).expect("policy runtime");
        Self { admin, operator, policies, user_policies: Arc::new(user_policies) }
    }

    /// A fresh namespace for one test.
    pub async fn namespace(&self, prefix: &str) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}-{}", COUNTER.fetch_add(1, Ordering::Relaxed));
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(self.admin.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        name
    }

    /// Starts the operator in-process, as the ServiceAccount of `deploy/rbac.yaml`.
    pub fn start_operator(&self, namespaces: &[&str], lease: Option<LeaseConfig>) -> OperatorHandle {
        self.start_operator_serving(namespaces, lease, None)
    }

    /// Like [`start_operator`](Self::start_operator), serving `/metrics` on `listen`.
    pub fn start_operator_serving(
        &self,
        namespaces: &[&str],
        lease: Option<LeaseConfig>,
        listen: Option<std::net::SocketAddr>,
    ) -> OperatorHandle {
        self.start_operator_with(namespaces, lease, listen, self.operator.clone(), None)
    }

    /// Like [`start_operator_serving`](Self::start_operator_serving), sending its requests
    /// through `client`, and the Lease's through the client `lease_client` makes (`None`: `client`).
    pub fn start_operator_with(
        &self,
        namespaces: &[&str],
        lease: Option<LeaseConfig>,
        listen: Option<std::net::SocketAddr>,
        client: Client,
        lease_client: Option<operator::LeaseClient>,
    ) -> OperatorHandle {
        let (stop, shutdown) = watch::channel(false);
        let options = RunOptions {
            scope: Scope { namespaces: namespaces.iter().map(|s| s.to_string()).collect() },
            listen,
            leader_election: lease,
            lease_client,
            policies: Some(self.policies.clone()),
            trace_window: Duration::from_secs(900),
            trace_listen: None,
        };
        let task = tokio::spawn(operator::run(client, options, shutdown));
        OperatorHandle { stop, task }
    }
}

/// An operator running inside the test process.
pub struct OperatorHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), RunError>>,
}

impl OperatorHandle {
    /// Kills it, as a crash or `kill -9` would: no Lease released, nothing finished.
    pub fn kill(self) {
        self.task.abort();
    }

    /// Whether it has stopped on its own, and how.
    pub fn finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops it and waits until it has.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        match tokio::time::timeout(Duration::from_secs(30), self.task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("the operator did not stop cleanly: {other:?}"),
        }
    }
}

/// Applies every object of a multi-document YAML file with server-side apply, as `client`.
pub async fn apply_yaml(client: &Client, yaml: &str, namespace: Option<&str>) -> Result<(), String> {
    apply_yaml_with(client, yaml, namespace, false).await
}

/// Like [`apply_yaml`]; with `dry_run` the API server validates and admits without storing.
pub async fn apply_yaml_with(client: &Client, yaml: &str, namespace: Option<&str>, dry_run: bool) -> Result<(), String> {
    let discovery = Discovery::new(client.clone()).run().await.map_err(|e| format!("discovery: {e}"))?;
    // Parsed up front: the YAML deserializer must not live across an await (it is not Send).
    let mut objects = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(doc);
        let obj: DynamicObject = match value {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => serde_yaml::from_value(v).map_err(|e| format!("not a Kubernetes object: {e}"))?,
            Err(e) => return Err(format!("bad YAML: {e}")),
        };
        objects.push(obj);
    }
    for obj in objects {
        let gvk = obj.types.as_ref().ok_or("object without apiVersion/kind")?;
        let gvk = kube::core::GroupVersionKind::try_from(gvk).map_err(|e| e.to_string())?;
        let (ar, caps) = discovery.resolve_gvk(&gvk).ok_or_else(|| format!("unknown kind {gvk:?}"))?;
        let api = dynamic_api(client, &ar, &caps, obj.namespace().as_deref().or(namespace));
        let name = obj.name_any();
        let mut params = PatchParams::apply("celery-operator-tests").force();
        params.dry_run = dry_run;
        api.patch(&name, &params, &Patch::Apply(&obj)).await.map_err(|e| format!("applying {} {name}: {e}", gvk.kind))?;
    }
    Ok(())
}

fn dynamic_api(client: &Client, ar: &ApiResource, caps: &ApiCapabilities, ns: Option<&str>) -> Api<DynamicObject> {
    match (&caps.scope, ns) {
        (DiscoveryScope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, ar),
        (DiscoveryScope::Namespaced, None) => Api::default_namespaced_with(client.clone(), ar),
        (DiscoveryScope::Cluster, _) => Api::all_with(client.clone(), ar),
    }
}

/// Waits until `probe` returns `Some`, polling; on timeout panics with the last state seen.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(state) => state,
        };
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last state: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A minimal HTTP/1.1 GET, enough for the operator's own endpoints.
pub async fn http_get(port: u16, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.map_err(|e| e.to_string())?;
    Ok(response)
}

/// The default deadline of a wait: only a hang should reach it. Generous, because the machines
/// are shared and slow: with the tier's tests side by side on 2 cores, kwok once took over a
/// minute to mark a new app's pods Ready after another test restarted the API server.
pub const WAIT: Duration = Duration::from_secs(180);

/// Installs what `kubectl apply -k deploy/` would, but the operator Deployment: the tests run
/// the operator in-process instead, with the same ServiceAccount.
pub async fn install(env: &Env) {
    for file in ["namespace.yaml", "crd.yaml", "rbac.yaml", "flowschema.yaml"] {
        let yaml = std::fs::read_to_string(repo_root().join("deploy").join(file)).expect("deploy/ file");
        // Discovery can briefly 404 while a just-created CRD is being registered: retry.
        eventually(&format!("deploy/{file} applied"), WAIT, || apply_yaml(&env.admin, &yaml, None)).await;
    }
    // The CRD is served a moment after it is created.
    let api: Api<Celery> = Api::all(env.admin.clone());
    eventually("the Celery CRD to be served", WAIT, || async {
        api.list(&ListParams::default().limit(1)).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
}
