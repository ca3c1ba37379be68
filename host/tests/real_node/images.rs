//! The images `hack/build-images.sh` assembled without Docker, as the node's containerd holds
//! them, against the Dockerfiles users build with Docker: the same user, entrypoint, command and
//! working directory.

use std::process::Command;
use std::sync::Arc;

use crate::dockerfile::final_value;
use crate::support::repo_root;
use crate::{Node, TestCase};

pub const TESTS: &[TestCase] = &[("images::configured_as_their_dockerfiles_say", |n| Box::pin(configured_as_dockerfiles(n)))];

/// `ctr` of the node, talking to its containerd.
fn ctr(node: &Node, args: &[&str]) -> String {
    let env = std::fs::read_to_string(node.control_plane.state.join("cluster.env")).expect("cluster.env");
    let bin = env.lines().find_map(|l| l.strip_prefix("BIN='").and_then(|v| v.strip_suffix('\''))).expect("BIN in cluster.env");
    let sock = node.control_plane.state.join("node/containerd.sock");
    let out = Command::new(format!("{bin}/node/ctr"))
        .arg("--address")
        .arg(&sock)
        .args(["-n", "k8s.io"])
        .args(args)
        .output()
        .expect("runs ctr");
    assert!(out.status.success(), "ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The OCI image configuration of `reference` as imported into the node.
pub fn image_config(node: &Node, reference: &str) -> serde_json::Value {
    let list = ctr(node, &["images", "ls"]);
    let line = list
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reference))
        .unwrap_or_else(|| panic!("{reference} is not in the node's containerd:\n{list}"));
    // REF TYPE DIGEST ...: the digest of the manifest.
    let manifest_digest = line.split_whitespace().nth(2).expect("a digest");
    let manifest: serde_json::Value =
        serde_json::from_str(&ctr(node, &["content", "get", manifest_digest])).expect("a JSON manifest");
    let config_digest = manifest["config"]["digest"].as_str().expect("a config digest").to_string();
    serde_json::from_str(&ctr(node, &["content", "get", &config_digest])).expect("a JSON configuration")
}

fn exec_form(args: Option<String>) -> serde_json::Value {
    args.map(|a| serde_json::from_str(&a).unwrap_or_else(|e| panic!("not the exec form {a}: {e}"))).unwrap_or_default()
}

async fn configured_as_dockerfiles(node: Arc<Node>) {
    for (reference, dockerfile) in
        [("docker.io/library/celery-operator:dev", "Dockerfile"), ("docker.io/library/example-image:dev", "example/Dockerfile")]
    {
        let text = std::fs::read_to_string(repo_root().join(dockerfile)).expect("the Dockerfile");
        let config = image_config(&node, reference);
        let c = &config["config"];
        let user = final_value(&text, "USER").expect("USER");
        assert_eq!(c["User"].as_str(), Some(user.as_str()), "{reference}: USER of {dockerfile}");
        assert_eq!(c["Entrypoint"], exec_form(final_value(&text, "ENTRYPOINT")), "{reference}: ENTRYPOINT of {dockerfile}");
        assert_eq!(c["Cmd"], exec_form(final_value(&text, "CMD")), "{reference}: CMD of {dockerfile}");
        if let Some(dir) = final_value(&text, "WORKDIR") {
            assert_eq!(c["WorkingDir"].as_str(), Some(dir.as_str()), "{reference}: WORKDIR of {dockerfile}");
        }
        assert_eq!(config["os"], "linux");
    }
}
