//! The README's quick start, on the real node: the manifests it applies, as they are (only the
//! broker's address is this test's Redis, where `deploy/redis.yaml` would run one from a
//! registry this machine cannot reach), and its `kubectl run` of the producer.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use celery_operator::crd::Celery;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;

use crate::app::{pods, redis};
use crate::operator::install;
use crate::operator::ready;
use crate::support::{apply_yaml, eventually, repo_root};
use crate::{Node, TestCase, node_ip};

pub const TESTS: &[TestCase] =
    &[("quick_start::the_readmes_example_runs_as_written", |n| Box::pin(the_readmes_example_runs_as_written(n)))];

/// The README's quick-start block, which this test follows.
fn quick_start() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let start = readme.find("## Quick start on a real cluster").expect("the README has a quick start");
    readme[start..].split("\n## ").next().unwrap_or_default().to_string()
}

async fn the_readmes_example_runs_as_written(node: Arc<Node>) {
    let readme = quick_start();
    for step in [
        "kubectl apply -k deploy/",
        "kubectl apply -f deploy/example-celery.yaml",
        "kubectl run burst --rm -it --image=example-image --image-pull-policy=Never",
    ] {
        assert!(readme.contains(step), "the quick start no longer says `{step}`: update this test with it");
    }
    install(&node).await;
    let (_redis, port) = redis();
    let broker = format!("redis://{}:{port}/0", node_ip());

    let ns = "quick-start";
    node.kubectl_ok(&["create", "namespace", ns]);
    let example = std::fs::read_to_string(repo_root().join("deploy/example-celery.yaml")).expect("the example");
    assert!(example.contains("redis://redis:6379/0"), "the example's broker is deploy/redis.yaml's");
    apply_yaml(&node.admin, &example.replace("redis://redis:6379/0", &broker), Some(ns)).await.expect("the example applies");

    // The app says Ready: its workers (autoscaled from 2, its numOfWorkers, between 1 and 5)
    // and its Flower run for real on the real node.
    let apps: Api<Celery> = Api::namespaced(node.admin.clone(), ns);
    eventually("the example app Ready", Duration::from_secs(240), || async {
        let c = apps.get("celery-crd-example").await.map_err(|e| e.to_string())?;
        let conditions = c.status.map(|s| s.conditions).unwrap_or_default();
        match conditions.iter().find(|c| c.type_ == "Ready") {
            Some(r) if r.status == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    for component in ["worker", "flower"] {
        let running: Vec<_> = pods(&node, ns, component).await.into_iter().filter(ready).collect();
        assert!(!running.is_empty(), "a Ready {component} pod");
        for pod in running {
            assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some("real-0"), "{component}");
        }
    }

    // Its policy (queue-length, 50 messages a worker, at least 1) finds nothing waiting and,
    // after its 60 s stabilisation window, leaves one worker: the burst below (20 messages) keeps
    // it at one, so every task's log line is in that pod's log.
    let deployments: Api<Deployment> = Api::namespaced(node.admin.clone(), ns);
    eventually("the example's workers scaled to its minimum, 1", Duration::from_secs(180), || async {
        let d = deployments.get("celery-crd-example-celery-worker").await.map_err(|e| e.to_string())?;
        let running: Vec<_> =
            pods(&node, ns, "worker").await.into_iter().filter(|p| p.metadata.deletion_timestamp.is_none() && ready(p)).collect();
        match (d.spec.and_then(|s| s.replicas), running.len()) {
            (Some(1), 1) => Ok(()),
            other => Err(format!("replicas and Ready pods {other:?}")),
        }
    })
    .await;

    // The README's burst, as a pod of the example image (`-i` without a terminal here).
    let sent = 20;
    let out = node
        .kubectl()
        .args(["-n", ns, "run", "burst", "--rm", "-i", "--image=example-image", "--image-pull-policy=Never", "--restart=Never"])
        .args(["--env", &format!("CELERY_BROKER_URL={broker}"), "--", "python", "producer.py", "--burst", &sent.to_string()])
        .args(["--duration", "0.5"])
        .output()
        .expect("runs kubectl");
    assert!(
        out.status.success(),
        "kubectl run burst: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The example's tasks are not recorded (no EXAMPLE_TASK_LOG): the queue empties and the
    // workers' own logs show them succeed.
    eventually("the burst to be consumed", Duration::from_secs(120), || async {
        let out =
            Command::new("redis-cli").args(["-p", &port.to_string(), "llen", "celery"]).output().map_err(|e| e.to_string())?;
        let left = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if left == "0" { Ok(()) } else { Err(format!("{left} left in the queue")) }
    })
    .await;
    let succeeded = eventually("the workers to log every task succeeded", Duration::from_secs(120), || async {
        let logs = node
            .kubectl()
            .args(["-n", ns, "logs", "-l", "app.kubernetes.io/component=worker", "--tail=-1", "--prefix"])
            .output()
            .map_err(|e| e.to_string())?;
        let n = String::from_utf8_lossy(&logs.stdout).lines().filter(|l| l.contains("succeeded in")).count();
        if n >= sent { Ok(n) } else { Err(format!("{n} of {sent} succeeded")) }
    })
    .await;
    assert_eq!(succeeded, sent, "each task ran once");
}
