//! Replaying production: the trace of a real app (real Redis, real API server) from a running
//! operator. `/trace` answers only authorised callers (401 without a token or with one the API
//! server refuses, 403 to a user who may not get the app, 200 once a Role lets them);
//! `celery-operator trace` and `kubectl celery trace|why` fetch it; and `policy simulate`
//! replays it through the same policy, settings and damping to the very replica timeline the
//! operator decided.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};

use crate::Harness;
use crate::autoscaling::{QUEUE_LENGTH_10, shop_yaml_with, wait_replicas};
use crate::lifecycle::create;
use crate::servers::{free_port, redis_server};
use crate::support::{WAIT, eventually, repo_root};

/// Every test: name, whether it needs the control plane to itself, body.
pub const TESTS: &[crate::TestCase] = &[("a_trace_from_the_operator_is_guarded_and_replays_to_its_own_decisions", false, |h| {
    Box::pin(a_trace_from_the_operator_is_guarded_and_replays_to_its_own_decisions(h))
})];

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_celery-operator")
}

fn run(command: &mut Command) -> Output {
    let output = command.output().expect("runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `GET /trace/NS/shop` on the operator's listener: the status code and the body.
async fn get_trace(port: u16, ns: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/trace/{ns}/shop"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the operator answers");
    (response.status().as_u16(), response.text().await.expect("a body"))
}

async fn a_trace_from_the_operator_is_guarded_and_replays_to_its_own_decisions(h: Arc<Harness>) {
    let env = &h.env;
    let (_redis, port) = redis_server(&[]);
    let broker = format!("redis://127.0.0.1:{port}/0");
    let ns = env.namespace("trace").await;
    let listen = free_port();
    let operator = env.start_operator_serving(&[&ns], None, Some(([127, 0, 0, 1], listen).into()));
    let damping = "    scaleDown: {stabilizationWindowSeconds: 3, maxStepPercent: 50, periodSeconds: 2}\n";
    let yaml = shop_yaml_with(&broker, 8, QUEUE_LENGTH_10, damping);
    create(&env.admin, &ns, &yaml).await.expect("created");

    // A little production: up in two steps, then down in damped steps.
    let redis = redis::Client::open(broker.as_str()).expect("redis client");
    let mut conn = redis.get_multiplexed_async_connection().await.expect("redis");
    let push = |n: usize| (0..n).map(|i| format!("{{\"m\": {i}}}")).collect::<Vec<_>>();
    let at = |want: i32| wait_replicas(&env.admin, &ns, "shop", want, WAIT);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _: () = redis::cmd("LPUSH").arg("celery").arg(push(30)).query_async(&mut conn).await.expect("LPUSH");
    at(3).await;
    let _: () = redis::cmd("LPUSH").arg("celery").arg(push(40)).query_async(&mut conn).await.expect("LPUSH");
    at(7).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _: () = redis::cmd("DEL").arg("celery").query_async(&mut conn).await.expect("DEL");
    at(1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Only authorised callers: no token, a token the API server refuses, a user without access.
    let (status, body) = get_trace(listen, &ns, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = get_trace(listen, &ns, Some("not-a-token")).await;
    assert_eq!(status, 401, "{body}");
    let accounts: Api<ServiceAccount> = Api::namespaced(env.admin.clone(), &ns);
    let account: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": "reader"}})).expect("account");
    accounts.create(&PostParams::default(), &account).await.expect("account created");
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
        ..Default::default()
    };
    let token = eventually("a token for the reader", WAIT, || async {
        let made = accounts.create_token_request("reader", &PostParams::default(), &request).await.map_err(|e| e.to_string())?;
        made.status.and_then(|s| s.token).ok_or_else(|| "no token yet".to_string())
    })
    .await;
    let (status, body) = get_trace(listen, &ns, Some(&token)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(&format!("may not get celery shop in namespace {ns}")), "{body}");
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "celery-reader"},
        "rules": [{"apiGroups": ["celeryproject.org"], "resources": ["celery"], "verbs": ["get"]}],
    }))
    .expect("role");
    Api::<Role>::namespaced(env.admin.clone(), &ns).create(&PostParams::default(), &role).await.expect("role created");
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "celery-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "celery-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
    }))
    .expect("binding");
    Api::<RoleBinding>::namespaced(env.admin.clone(), &ns).create(&PostParams::default(), &binding).await.expect("bound");
    let csv = eventually("the trace, once the reader may get the app", WAIT, || async {
        match get_trace(listen, &ns, Some(&token)).await {
            (200, body) => Ok(body),
            (status, body) => Err(format!("{status}: {body}")),
        }
    })
    .await;
    assert!(csv.starts_with(&format!("# celery-operator trace of {ns}/shop\n")), "{csv}");
    assert!(csv.contains("# policy: queue-length target=10\n"), "{csv}");

    // The command line and the kubectl plugin fetch it the same way.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("shop.csv");
    let url = format!("http://127.0.0.1:{listen}");
    run(Command::new(binary())
        .args(["trace", &format!("{ns}/shop"), "--url", &url, "-o"])
        .arg(&file)
        .env("CELERY_OPERATOR_TOKEN", &token));
    let fetched = std::fs::read_to_string(&file).expect("the trace file");
    let plugin = dir.path().join("kubectl-celery");
    std::os::unix::fs::symlink(binary(), &plugin).expect("the plugin link");
    let kubectl = |args: &[&str]| {
        let mut command = Command::new(&plugin);
        command.args(args).args(["-n", &ns, "--url", &url]).env("CELERY_OPERATOR_TOKEN", &token);
        command.env("KUBECONFIG", h.control_plane.admin_kubeconfig());
        run(&mut command)
    };
    let via_plugin = String::from_utf8(kubectl(&["trace", "shop"]).stdout).expect("UTF-8");
    assert_eq!(via_plugin.lines().take(6).collect::<Vec<_>>(), fetched.lines().take(6).collect::<Vec<_>>(), "the same header");
    // The app's own trace through another policy (steps), beside its own, in one command.
    let mut simulate = Command::new(&plugin);
    simulate
        .args(["simulate", "shop", "-n", &ns, "--url", &url, "--policy", "steps", "--settings", "steps=0:1,50:4"])
        .args(["--compare", "queue-length", "--settings2", "target=10"])
        .env("CELERY_OPERATOR_TOKEN", &token)
        .env("CELERY_OPERATOR_POLICY_DIR", repo_root().join("target/policies"))
        .env("CELERY_OPERATOR_POLICY_CACHE", Path::new(env!("CARGO_TARGET_TMPDIR")).join("policy-cache"));
    let compared = String::from_utf8(run(&mut simulate).stdout).expect("UTF-8");
    assert!(compared.contains("steps:") && compared.contains("queue-length:"), "{compared}");
    assert!(compared.contains("worker-seconds") && compared.contains("scale events"), "the summary: {compared}");
    let why = String::from_utf8(kubectl(&["why", "shop"]).stdout).expect("UTF-8");
    assert!(why.contains("decisions that changed something") && why.contains("queue-length"), "{why}");
    assert!(why.contains(" 1 → 3 ") && why.contains(" 3 → 7 "), "the scale-ups with their inputs: {why}");

    // The replay: the same policy, settings and damping (all from the trace) decide as the
    // operator did, tick by tick.
    let simulated = run(Command::new(binary())
        .args(["policy", "simulate", "--json", "--trace"])
        .arg(&file)
        .arg("--policy-dir")
        .arg(repo_root().join("target/policies"))
        .arg("--policy-cache-dir")
        .arg(Path::new(env!("CARGO_TARGET_TMPDIR")).join("policy-cache")));
    let replay: serde_json::Value = serde_json::from_slice(&simulated.stdout).expect("JSON");
    let steps = replay["steps"].as_array().expect("steps");
    assert!(steps.len() > 10, "{replay}");
    let differ: Vec<String> = steps
        .iter()
        .filter(|s| s["replicas"] != s["recorded_decided"])
        .map(|s| {
            format!(
                "t={} backlog={} simulated {} operator {}",
                s["t_seconds"], s["backlog"], s["replicas"], s["recorded_decided"]
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "the replay differs from the operator at {} of {} ticks:\n{}\n{fetched}",
        differ.len(),
        steps.len(),
        differ.join("\n")
    );
    let timeline: Vec<u64> = steps.iter().filter_map(|s| s["replicas"].as_u64()).collect();
    for count in [3, 7, 1] {
        assert!(timeline.contains(&count), "the replay goes through {count}: {timeline:?}");
    }
    operator.stop().await;
}
