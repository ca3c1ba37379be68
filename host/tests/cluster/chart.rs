//! The Helm chart under `deploy/helm/celery-operator`: `helm lint` passes, `helm template`
//! renders the objects `kubectl apply -k deploy/` installs (the same RBAC rules, the same
//! operator container settings), its values change what they promise, and the rendered
//! manifests are accepted by the real API server. Helm is built from the Go module proxy by
//! `hack/build-helm.sh` (cached outside the repository).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::Value;

use crate::Harness;
use crate::support::{apply_yaml, repo_root};

pub const TESTS: &[crate::TestCase] = &[("helm_chart_lints_renders_like_deploy_and_applies", false, |h| {
    Box::pin(helm_chart_lints_renders_like_deploy_and_applies(h))
})];

fn helm() -> PathBuf {
    let out = Command::new(repo_root().join("hack/build-helm.sh")).output().expect("hack/build-helm.sh runs");
    assert!(out.status.success(), "building Helm failed: {}", String::from_utf8_lossy(&out.stderr));
    let path = String::from_utf8_lossy(&out.stdout).lines().last().expect("the path of helm").trim().to_string();
    PathBuf::from(path)
}

/// The objects `helm template` renders from the chart with `args` (`--set …`).
pub fn render(args: &[&str]) -> Vec<Value> {
    let helm = helm();
    let chart = chart();
    let chart = chart.to_str().expect("a UTF-8 path");
    let mut all = vec!["template", "celery-operator", chart, "--namespace", "celery-operator"];
    all.extend_from_slice(args);
    objects(&run_helm(&helm, &all))
}

fn chart() -> PathBuf {
    repo_root().join("deploy/helm/celery-operator")
}

fn run_helm(helm: &PathBuf, args: &[&str]) -> String {
    let out = Command::new(helm).args(args).env("HELM_CACHE_HOME", std::env::temp_dir().join("celery-operator-helm")).output();
    let out = out.expect("helm runs");
    assert!(
        out.status.success(),
        "helm {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Every object of a multi-document YAML text.
fn objects(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|doc| {
            let value: Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
            (!value.is_null()).then_some(value)
        })
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects.iter().find(|o| o["kind"] == kind).unwrap_or_else(|| panic!("no {kind} among the objects"))
}

fn deploy_file(name: &str) -> Vec<Value> {
    objects(&std::fs::read_to_string(repo_root().join("deploy").join(name)).expect("deploy/ file"))
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

pub async fn helm_chart_lints_renders_like_deploy_and_applies(h: Arc<Harness>) {
    let helm = helm();
    let chart = chart();
    let chart = chart.to_str().expect("UTF-8 path");
    run_helm(&helm, &["lint", "--strict", chart]);

    let ns = h.env.namespace("chart").await;
    let defaults = objects(&run_helm(&helm, &["template", "celery-operator", chart, "--namespace", &ns]));
    let mut kinds: Vec<&str> = defaults.iter().filter_map(|o| o["kind"].as_str()).collect();
    kinds.sort_unstable();
    let mut expected: Vec<&str> =
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment", "Service", "FlowSchema"]
            .into();
    expected.sort_unstable();
    assert_eq!(kinds, expected, "what the chart renders by default");

    // The same permissions as deploy/rbac.yaml, which the other tests run the operator with.
    let rbac = deploy_file("rbac.yaml");
    for kind in ["ClusterRole", "Role"] {
        assert_eq!(find(&defaults, kind)["rules"], find(&rbac, kind)["rules"], "{kind} rules differ from deploy/rbac.yaml");
    }
    // The same FlowSchema for the Lease, named after the release.
    let (rendered, kustomized) = (find(&defaults, "FlowSchema"), &deploy_file("flowschema.yaml")[0]);
    assert_eq!(rendered["spec"]["priorityLevelConfiguration"], kustomized["spec"]["priorityLevelConfiguration"]);
    assert_eq!(
        rendered["spec"]["rules"][0]["resourceRules"][0]["resources"],
        kustomized["spec"]["rules"][0]["resourceRules"][0]["resources"]
    );
    // The same container: security, probes, environment, resources, ports.
    let operator = deploy_file("operator.yaml");
    let (rendered, kustomized) = (container(find(&defaults, "Deployment")), container(&operator[0]));
    for field in ["securityContext", "livenessProbe", "readinessProbe", "env", "resources", "ports", "volumeMounts"] {
        assert_eq!(rendered[field], kustomized[field], "container.{field} differs from deploy/operator.yaml");
    }
    let pod = |d: &Value| d["spec"]["template"]["spec"].clone();
    assert_eq!(pod(find(&defaults, "Deployment"))["securityContext"], pod(&operator[0])["securityContext"]);
    assert_eq!(rendered["image"], "celery-operator:0.1.0", "the image defaults to the chart's appVersion");

    // Values do what they say.
    let custom = objects(&run_helm(
        &helm,
        &[
            "template",
            "ops",
            chart,
            "--namespace",
            &ns,
            "--set",
            "image.repository=registry.example/celery-operator,image.tag=v9",
            "--set",
            "watchNamespaces={shop,billing}",
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "extraPolicies.configMap=my-policies",
            "--set",
            "serviceMonitor.enabled=true",
        ],
    ));
    let deployment = find(&custom, "Deployment");
    let c = container(deployment);
    assert_eq!(c["image"], "registry.example/celery-operator:v9");
    let args: Vec<&str> = c["args"].as_array().expect("args").iter().filter_map(Value::as_str).collect();
    for arg in ["--namespace=shop", "--namespace=billing", "--leader-elect=false"] {
        assert!(args.contains(&arg), "{arg} missing from {args:?}");
    }
    assert!(!custom.iter().any(|o| o["kind"] == "Role"), "no Lease permissions without leader election");
    assert!(!custom.iter().any(|o| o["kind"] == "FlowSchema"), "no Lease FlowSchema without leader election");
    // Watching some namespaces grants the rules there only: no cluster-wide binding.
    assert!(!custom.iter().any(|o| o["kind"] == "ClusterRoleBinding"), "no cluster-wide Secret access");
    let bound: Vec<&str> = custom
        .iter()
        .filter(|o| o["kind"] == "RoleBinding" && o["roleRef"]["kind"] == "ClusterRole")
        .filter_map(|o| o["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(bound, ["shop", "billing"], "one RoleBinding per watched namespace");
    assert!(c["env"].as_array().expect("env").iter().any(|e| e["name"] == "CELERY_OPERATOR_USER_POLICY_DIR"));
    let volumes = pod(deployment)["volumes"].clone();
    assert!(volumes.as_array().expect("volumes").iter().any(|v| v["configMap"]["name"] == "my-policies"), "{volumes}");
    let monitor = find(&custom, "ServiceMonitor");
    assert_eq!(monitor["spec"]["selector"]["matchLabels"], find(&custom, "Service")["spec"]["selector"]);

    // The API server accepts what the chart renders (the ServiceMonitor needs Prometheus's
    // CRD, which this control plane does not have).
    let watched = format!("watchNamespaces={{{ns}}}");
    let yaml = run_helm(&helm, &["template", "chart-test", chart, "--namespace", &ns, "--set", &watched]);
    apply_yaml(&h.env.admin, &yaml, Some(&ns)).await.expect("the rendered chart applies");
    let applied = Api::<Deployment>::namespaced(h.env.admin.clone(), &ns).get("chart-test").await.expect("the Deployment");
    let args = applied.spec.and_then(|s| s.template.spec).map(|p| p.containers[0].args.clone().unwrap_or_default());
    assert!(args.is_some_and(|a| a.contains(&format!("--namespace={ns}"))), "stored as rendered");
}
