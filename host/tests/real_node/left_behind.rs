//! A real node whose harness was killed before its stop (the end of a session, a `kill -9` of a
//! test run) leaves its bridge, forward rules, mounts and cgroups behind with nothing of it
//! running. The next start reclaims them (hack/node/real-node.sh, `reclaim_stale_node`); a node
//! that still runs is refused, by name, and not touched. Before that, such a leftover made every
//! later start refuse ("bridge celeryop0 exists") until someone cleaned up by hand.
//!
//! One real node runs per machine, so this is staged before the tier's own node starts
//! ([`stage`], from `main`): a node started in a directory of its own, a second start refused
//! while it runs, then every process of it killed with SIGKILL. The tier's own start then has to
//! reclaim it; the trial checks what each step saw.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::support::repo_root;
use crate::{Node, TestCase};

pub const TESTS: &[TestCase] = &[("left_behind::a_node_killed_before_its_stop_is_reclaimed_and_a_running_one_is_refused", |n| {
    Box::pin(a_node_killed_before_its_stop_is_reclaimed_and_a_running_one_is_refused(n))
})];

/// Where the real node's owner is recorded (hack/node/real-node.sh, NODE_OWNER_FILE).
const OWNER_FILE: &str = "/run/celery-operator-real-node";

/// What staging saw, for the trial.
pub struct Staged {
    /// The state directory of the node left behind.
    dir: PathBuf,
    /// The second start's exit status and output, while the first node ran.
    refused: (bool, String),
    /// Whether the first node's kubelet still ran after the second start was refused.
    first_still_ran: bool,
}

/// What staging saw, or why it could not stage; set by `main` before the trials run.
pub static STAGED: Mutex<Option<Result<Staged, String>>> = Mutex::new(None);

fn control_plane(verb: &str, dir: &Path) -> std::process::Output {
    Command::new(repo_root().join("hack/control-plane.sh"))
        .args([verb, &dir.to_string_lossy()])
        .env("REAL_NODE", "1")
        .output()
        .expect("runs hack/control-plane.sh")
}

fn pid_of(dir: &Path, component: &str) -> Option<i32> {
    std::fs::read_to_string(dir.join(format!("pids/{component}.pid"))).ok()?.trim().parse().ok()
}

/// Whether `pid` runs (a zombie, killed and not yet reaped, does not).
fn runs(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

/// Starts a real node in a directory of its own, has a second start refused while it runs, then
/// kills every process of it with SIGKILL, leaving everything else as a killed harness would.
pub fn stage() -> Result<Staged, String> {
    let dir = std::env::temp_dir().join(format!("celery-operator-left-behind-{}", std::process::id()));
    let started = control_plane("start", &dir);
    if !started.status.success() {
        return Err(format!(
            "cannot start the node to leave behind: {}\n{}",
            started.status,
            String::from_utf8_lossy(&started.stderr)
        ));
    }
    let second = dir.with_extension("second");
    let out = control_plane("start", &second);
    let refused = (!out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned());
    let _ = std::fs::remove_dir_all(&second);
    let first_still_ran = pid_of(&dir, "kubelet").is_some_and(runs);

    let pids: Vec<i32> = std::fs::read_dir(dir.join("pids"))
        .map_err(|e| format!("{}: {e}", dir.join("pids").display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
        .collect();
    let mut kill = Command::new("kill");
    kill.arg("-KILL").args(pids.iter().map(i32::to_string));
    let _ = kill.output();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pids.iter().any(|p| runs(*p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(Staged { dir, refused, first_still_ran })
}

async fn a_node_killed_before_its_stop_is_reclaimed_and_a_running_one_is_refused(node: Arc<Node>) {
    let staged = STAGED.lock().unwrap().take().expect("main staged a node left behind");
    let staged = staged.unwrap_or_else(|e| panic!("{e}"));
    let dir = staged.dir.to_string_lossy().into_owned();

    let (refused, said) = &staged.refused;
    assert!(*refused, "a second real node started while the first ran:\n{said}");
    assert!(
        said.contains("runs on this machine") && said.contains(&dir),
        "the refusal does not say which node runs (expected {dir}):\n{said}"
    );
    assert!(staged.first_still_ran, "the refused start touched the node that ran");

    // The tier's own node started over the leftovers (else no trial would run): the bridge is its
    // own now, and nothing of the killed node is still mounted.
    let owner = std::fs::read_to_string(OWNER_FILE).unwrap_or_default();
    assert_eq!(owner.trim(), node.control_plane.state.to_string_lossy(), "{OWNER_FILE} names another node");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("/proc/self/mountinfo");
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&dir)).collect();
    assert!(left.is_empty(), "the killed node's mounts are still there: {left:#?}");
    let _ = std::fs::remove_dir_all(&staged.dir);
}
