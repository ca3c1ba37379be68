//! Celery's remote control, sent through the app's broker: the commands a scale-down gives a
//! busy worker it waits for (`cancel_consumer`: stop taking tasks from a queue) and takes back
//! when the wait is called off (`add_consumer`).
//!
//! Celery's workers listen on kombu's "pidbox": a fanout exchange `celery.pidbox` whose messages
//! carry `{method, arguments, destination, pattern, matcher}` as JSON; a worker runs the command
//! when its node name (`celery@<pod name>`) is in `destination`. On Redis the exchange is a
//! pub/sub channel, `<global_keyprefix>/<db>.celery.pidbox`, and the message is kombu's virtual
//! envelope (the body base64-encoded, as `celery control` sends it); on RabbitMQ it is a real
//! exchange, published to through the management API the operator already reads queues from.
//! No reply is asked for: the broker's own answer says whether anyone received it (Redis: the
//! number of subscribers; RabbitMQ: `routed`), and the scale-down watches its effect in Flower.
//!
//! The message formats are written here by hand (no Rust kombu exists); they are checked against
//! what `celery control` publishes and against real workers in `tests/brokers.rs`.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Value, json};

/// The pidbox exchange of a Celery app (kombu's `Mailbox('celery')`).
pub const PIDBOX: &str = "celery.pidbox";
/// A command older than this is dropped by the worker (kombu's `expires` header): one that
/// sat in a broker through an outage must not stop a worker long after the scale-down ended.
const EXPIRES_SECS: f64 = 30.0;

/// One remote-control command for some workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// `cancel_consumer` or `add_consumer`.
    pub method: &'static str,
    pub queue: String,
    /// Node names, `celery@<hostname>`.
    pub destination: Vec<String>,
}

impl Command {
    /// Stop consuming from `queue`: the worker finishes (and acknowledges) what it holds.
    pub fn cancel_consumer(queue: &str, destination: Vec<String>) -> Self {
        Self { method: "cancel_consumer", queue: queue.into(), destination }
    }

    /// Consume from `queue` again.
    pub fn add_consumer(queue: &str, destination: Vec<String>) -> Self {
        Self { method: "add_consumer", queue: queue.into(), destination }
    }

    /// The pidbox body: what the worker's `Node.handle_message` dispatches.
    pub fn body(&self) -> Value {
        json!({
            "method": self.method,
            "arguments": { "queue": self.queue },
            "destination": self.destination,
            "pattern": null,
            "matcher": null,
        })
    }
}

/// The pub/sub channel a Redis broker's workers hear the pidbox on.
pub fn redis_channel(global_keyprefix: &str, db: i64) -> String {
    format!("{global_keyprefix}/{db}.{PIDBOX}")
}

/// kombu's virtual-transport envelope of `command`, as published on the Redis channel.
pub fn redis_envelope(command: &Command, delivery_tag: &str) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(command.body().to_string());
    json!({
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": { "clock": 1, "expires": expires() },
        "properties": {
            "delivery_mode": 2,
            "delivery_info": { "exchange": PIDBOX, "routing_key": "" },
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag,
        },
    })
    .to_string()
}

/// The management API's publish request for `command` (`POST /api/exchanges/<vhost>/celery.pidbox/publish`).
pub fn rabbitmq_publish(command: &Command) -> Value {
    json!({
        "properties": {
            "content_type": "application/json",
            "content_encoding": "utf-8",
            "delivery_mode": 2,
            "headers": { "clock": 1, "expires": expires() },
        },
        "routing_key": "",
        "payload": command.body().to_string(),
        "payload_encoding": "string",
    })
}

fn expires() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()) + EXPIRES_SECS
}

/// A delivery tag unique enough for one message (kombu uses a UUID; any distinct string does).
pub fn delivery_tag() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    format!("celery-operator-{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_is_what_celery_control_publishes() {
        let command = Command::cancel_consumer("celery", vec!["celery@x".into()]);
        assert_eq!(redis_channel("", 0), "/0.celery.pidbox");
        assert_eq!(redis_channel("app:", 3), "app:/3.celery.pidbox");
        let envelope: Value = serde_json::from_str(&redis_envelope(&command, "t1")).unwrap();
        let body = base64::engine::general_purpose::STANDARD.decode(envelope["body"].as_str().unwrap()).unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            json!({"method": "cancel_consumer", "arguments": {"queue": "celery"}, "destination": ["celery@x"], "pattern": null, "matcher": null})
        );
        assert_eq!(envelope["properties"]["delivery_info"], json!({"exchange": "celery.pidbox", "routing_key": ""}));
        assert_eq!(
            (envelope["properties"]["body_encoding"].as_str(), envelope["properties"]["delivery_tag"].as_str()),
            (Some("base64"), Some("t1"))
        );
        assert!(envelope["headers"]["expires"].as_f64().unwrap() > 1.7e9);

        let publish = rabbitmq_publish(&Command::add_consumer("q", vec!["celery@y".into()]));
        let payload: Value = serde_json::from_str(publish["payload"].as_str().unwrap()).unwrap();
        assert_eq!(payload["method"], "add_consumer");
        assert_eq!(publish["properties"]["content_type"], "application/json");
        assert_ne!(delivery_tag(), delivery_tag());
    }
}
