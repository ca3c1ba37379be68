//! The operator as users install it, running as a real container on the real node.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

use crate::support::eventually;
use crate::{Node, TestCase};

pub const TESTS: &[TestCase] = &[
    ("operator::runs_in_cluster_as_deployed_read_only_non_root_probes_passing", |n| Box::pin(runs_in_cluster_as_deployed(n))),
    ("operator::a_hundred_apps_in_cluster_figures", |n| Box::pin(a_hundred_apps(n))),
];

pub const NAMESPACE: &str = "celery-operator";

/// `kubectl apply -k deploy/`, word for word the README's quick start (the image it names,
/// `celery-operator:latest`, is the one hack/build-images.sh imported), once per run: every test
/// that needs the operator in the cluster calls this.
pub async fn install(node: &Node) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let deploy = crate::support::repo_root().join("deploy");
        // The CRD is established a moment after it is created: no Celery object is in deploy/'s
        // kustomization, so one apply is enough.
        node.kubectl_ok(&["apply", "-k", deploy.to_str().expect("a UTF-8 path")]);
        node.kubectl_ok(&["-n", NAMESPACE, "rollout", "status", "deployment/celery-operator", "--timeout=240s"]);
    })
    .await;
}

/// The operator's pod, once it is Ready.
pub async fn operator_pod(node: &Node) -> Pod {
    let pods: Api<Pod> = Api::namespaced(node.admin.clone(), NAMESPACE);
    eventually("the operator's pod Ready", Duration::from_secs(120), || async {
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=celery-operator"))
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .find(|p| ready(p) && p.metadata.deletion_timestamp.is_none())
            .ok_or_else(|| "no Ready pod".to_string())
    })
    .await
}

pub fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A host process whose command line starts with `argv`: containers are processes of this
/// machine, in their own namespaces.
pub fn process_with_argv(argv: &[&str]) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        (args.len() >= argv.len() && argv.iter().zip(&args).all(|(a, b)| a.as_bytes() == *b)).then_some(pid)
    })
}

/// A field of /proc/PID/status (`Uid`, `NoNewPrivs`, `CapEff`...).
pub fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

/// The mount options of `/` as the process sees it.
fn root_mount_options(pid: u32) -> String {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    // Fields: id parent major:minor root mount-point options ...; the last mount on / wins.
    info.lines().rfind(|l| l.split(' ').nth(4) == Some("/")).and_then(|l| l.split(' ').nth(5)).unwrap_or_default().to_string()
}

/// A plain HTTP GET to a pod's address from the node (the host reaches the pod network).
pub async fn http_get_at(addr: &str, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr} timed out"))?
        .map_err(|e| format!("{addr}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.map_err(|e| e.to_string())?;
    let code =
        response.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status line: {response:.80}"))?;
    Ok((code, response))
}

async fn runs_in_cluster_as_deployed(node: Arc<Node>) {
    install(&node).await;
    let pod = operator_pod(&node).await;
    let spec = pod.spec.as_ref().expect("a pod spec");
    let status = pod.status.as_ref().expect("a pod status");
    assert_eq!(spec.node_name.as_deref(), Some("real-0"), "scheduled on the real node");
    let image = spec.containers[0].image.as_deref();
    assert_eq!(image, Some("celery-operator:latest"), "deploy/operator.yaml's image, as kustomized");
    let container = &status.container_statuses.as_ref().expect("container statuses")[0];
    // containerd names the image by one of its tags: hack/build-images.sh imported it as both.
    assert!(
        ["docker.io/library/celery-operator:latest", "docker.io/library/celery-operator:dev"].contains(&container.image.as_str()),
        "the built image: {}",
        container.image
    );
    assert_eq!(container.restart_count, 0, "never restarted (probes pass, nothing crashed)");
    let pod_ip = status.pod_ip.clone().expect("a pod IP");
    let subnet_prefix = crate::node_ip().rsplit_once('.').map(|(p, _)| format!("{p}.")).unwrap_or_default();
    assert!(pod_ip.starts_with(&subnet_prefix), "a pod network address: {pod_ip}");

    // The container as the kernel sees it: the operator's binary, its user, no privileges, a
    // read-only root.
    let pid = process_with_argv(&["/usr/bin/celery-operator", "run"]).expect("the operator's process runs on this machine");
    let uids = proc_status(pid, "Uid");
    assert!(uids.split_whitespace().all(|u| u == "65532"), "runs as 65532: Uid {uids}");
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1", "allowPrivilegeEscalation: false");
    assert_eq!(proc_status(pid, "CapEff"), "0000000000000000", "capabilities dropped");
    let root = root_mount_options(pid);
    assert!(root.split(',').any(|o| o == "ro"), "readOnlyRootFilesystem: / is mounted {root}");

    // No shell in the image (distroless, as the Dockerfile's base).
    let pod_name = pod.metadata.name.as_deref().expect("a name");
    let shell =
        node.kubectl().args(["-n", NAMESPACE, "exec", pod_name, "--", "/bin/sh", "-c", "true"]).output().expect("kubectl");
    assert!(!shell.status.success(), "the operator's image has no shell");

    // Its endpoints, from the pod network, as a Prometheus scraping the pod would.
    let addr = format!("{pod_ip}:8080");
    let (code, _) = http_get_at(&addr, "/readyz").await.expect("/readyz answers");
    assert_eq!(code, 200, "/readyz");
    let (code, metrics) = http_get_at(&addr, "/metrics").await.expect("/metrics answers");
    assert_eq!(code, 200, "/metrics");
    assert!(metrics.contains("celery_operator_leader 1"), "it holds the Lease, in-cluster:\n{metrics:.2000}");

    // In-cluster configuration: it found the API server through the `kubernetes` Service with
    // its ServiceAccount token, and says it leads.
    let logs = node.kubectl_ok(&["-n", NAMESPACE, "logs", pod.metadata.name.as_deref().expect("a name")]);
    assert!(logs.contains("became leader"), "its log:\n{logs}");
    assert!(!logs.contains("\"level\":\"ERROR\""), "no error in its log:\n{logs}");
}

/// The resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let kib: f64 = proc_status(pid, "VmRSS").trim_end_matches("kB").trim().parse().unwrap_or(f64::NAN);
    kib / 1024.0
}

/// 100 apps (each a worker Deployment with one pod on the simulated node, which has room for
/// 110, and a Flower Deployment at 0 replicas and its Service) handled by the operator pod: all
/// become Ready; prints the pod's memory before and after.
async fn a_hundred_apps(node: Arc<Node>) {
    install(&node).await;
    let pod = operator_pod(&node).await;
    let pod_name = pod.metadata.name.clone().expect("a name");
    // Idle: once every built-in policy is loaded (compiled, at the pod's first start).
    let builtins = std::fs::read_dir(crate::support::repo_root().join("target/policies"))
        .expect("target/policies")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "wasm")))
        .count();
    eventually("the operator to load the built-in policies", Duration::from_secs(180), || async {
        let logs = node.kubectl_ok(&["-n", NAMESPACE, "logs", &pod_name]);
        let loaded = logs.lines().filter(|l| l.contains("\"policy loaded\"")).count();
        if loaded >= builtins { Ok(()) } else { Err(format!("{loaded} of {builtins} loaded")) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = process_with_argv(&["/usr/bin/celery-operator", "run"]).expect("the operator's process");
    let idle = rss_mib(pid);

    let ns = "real-hundred";
    node.kubectl_ok(&["create", "namespace", ns]);
    let apps: String = (0..100)
        .map(|i| {
            format!(
                "apiVersion: celeryproject.org/v1alpha1\nkind: Celery\nmetadata: {{name: app-{i}}}\nspec:\n  common:\n    \
                 appName: app-{i}\n    celeryApp: app:celery_app\n    image: example-image:dev\n    nodeSelector: {{type: kwok}}\n    tolerations:\n      - \
                 {{key: kwok.x-k8s.io/node, operator: Exists, effect: NoSchedule}}\n  broker: {{url: \"redis://127.0.0.1:1/0\"}}\n  \
                 flowerSpec: {{replicas: 0}}\n---\n"
            )
        })
        .collect();
    let mut apply =
        node.kubectl().args(["-n", ns, "apply", "-f", "-"]).stdin(std::process::Stdio::piped()).spawn().expect("kubectl");
    {
        use std::io::Write;
        apply.stdin.take().expect("stdin").write_all(apps.as_bytes()).expect("writes the apps");
    }
    assert!(apply.wait().expect("kubectl apply").success(), "the 100 apps apply");
    let celery: Api<celery_operator::crd::Celery> = Api::namespaced(node.admin.clone(), ns);
    eventually("100 apps Ready", Duration::from_secs(300), || async {
        let list = celery.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let ready = list
            .items
            .iter()
            .filter(|c| c.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
            .count();
        if ready == 100 { Ok(()) } else { Err(format!("{ready} of 100 Ready")) }
    })
    .await;
    // Settled: what the process keeps, not what a burst of work briefly took.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let loaded = rss_mib(pid);
    assert!(loaded.is_finite() && idle.is_finite(), "VmRSS of {pid}");
    eprintln!("figures: the operator pod's RSS: {idle:.1} MiB idle, {loaded:.1} MiB with 100 apps (300 children, 100 pods)");
    node.kubectl_ok(&["delete", "namespace", ns, "--wait=false"]);
}
