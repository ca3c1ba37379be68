//! `queue-length`: one worker per `target` messages waiting in the broker.
//!
//! desired = ceil(backlog / target), where backlog is the sum over the app's queues of the
//! messages ready (plus, with `countReserved=true`, those delivered but not yet acknowledged).
//! Built for wasm32-unknown-unknown, so the component imports nothing but the host's `log`.

#[cfg(target_arch = "wasm32")]
mod alloc;

wit_bindgen::generate!({
    path: "../../wit",
    world: "scaling-policy",
});

use celery::autoscaler::types::{Decision, Input};
use exports::celery::autoscaler::policy::Guest;

/// Settings after parsing; see README.md.
#[derive(Debug, PartialEq)]
struct Settings {
    target: u64,
    count_reserved: bool,
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> Option<&'a str> {
    settings
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.trim())
}

fn parse_settings(settings: &[(String, String)]) -> Result<Settings, String> {
    // `averageValue` is the seed-style name of the same number (`type: message_queue`).
    let (key, raw) = match (
        setting(settings, "target"),
        setting(settings, "averageValue"),
    ) {
        (Some(v), _) => ("target", v),
        (None, Some(v)) => ("averageValue", v),
        (None, None) => {
            return Err(
                "setting target: required (messages per worker, a positive integer)".into(),
            );
        }
    };
    let target = match raw.parse::<u64>() {
        Ok(0) => return Err(format!("setting {key}: must be at least 1, got 0")),
        Ok(n) => n,
        Err(_) => return Err(format!("setting {key}: not a positive integer: {raw:?}")),
    };
    let count_reserved = match setting(settings, "countReserved") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) => {
            return Err(format!(
                "setting countReserved: expected true or false, got {v:?}"
            ));
        }
    };
    for (k, _) in settings {
        if !matches!(k.as_str(), "target" | "averageValue" | "countReserved") {
            return Err(format!(
                "setting {k}: unknown (known: target, countReserved)"
            ));
        }
    }
    Ok(Settings {
        target,
        count_reserved,
    })
}

fn decide(input: &Input) -> Result<Decision, String> {
    let s = parse_settings(&input.settings)?;
    let queues = &input.current.queues;
    let ready: u64 = queues
        .iter()
        .fold(0, |sum, q| sum.saturating_add(q.backlog));
    let reserved: u64 = if s.count_reserved {
        queues
            .iter()
            .fold(0, |sum, q| sum.saturating_add(q.reserved.unwrap_or(0)))
    } else {
        0
    };
    let backlog = ready.saturating_add(reserved);
    // ceil without overflow; a non-empty backlog always yields at least one worker.
    let wanted = backlog / s.target + u64::from(backlog % s.target != 0);
    let replicas = u32::try_from(wanted).unwrap_or(u32::MAX);
    let what = if s.count_reserved {
        format!("{backlog} messages ({ready} ready + {reserved} reserved)")
    } else {
        format!("{backlog} messages")
    };
    let reason = if backlog == 0 {
        "queues are empty → 0 workers".to_string()
    } else {
        let plural = if replicas == 1 { "worker" } else { "workers" };
        format!("{what} at {} per worker → {replicas} {plural}", s.target)
    };
    Ok(Decision { replicas, reason })
}

struct QueueLength;

impl Guest for QueueLength {
    fn decide(input: Input) -> Result<Decision, String> {
        decide(&input)
    }

    fn validate_settings(settings: Vec<(String, String)>) -> Result<(), String> {
        parse_settings(&settings).map(|_| ())
    }
}

export!(QueueLength);
