//! What every cluster benchmark starts from: the built-in policies built, name lookups kept on
//! loopback, a runtime, a real control plane and a real Redis. Expects the bench to include
//! `tests/cluster/support.rs` as `support` and `tests/common/servers.rs` as `servers`.

use crate::servers::{self, Server};
use crate::support::{self, ControlPlane};

pub struct Stage {
    pub runtime: tokio::runtime::Runtime,
    pub control_plane: ControlPlane,
    /// Runs while this lives.
    pub redis: Server,
    /// `redis://127.0.0.1:<port>/0`.
    pub broker: String,
}

pub fn stage() -> Stage {
    let built = std::process::Command::new(support::repo_root().join("policies/build.sh")).status();
    assert!(built.is_ok_and(|s| s.success()), "policies/build.sh failed");
    support::keep_lookups_on_loopback();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let control_plane = ControlPlane::start().expect("control plane");
    let (redis, port) = servers::redis_server(&[]);
    Stage { runtime, control_plane, redis, broker: format!("redis://127.0.0.1:{port}/0") }
}
