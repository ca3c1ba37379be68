//! Metrics of a Celery app: how much work waits in its queues, read from the broker the way
//! Celery and kombu actually store it.
//!
//! - [`redis`]: the Redis layout of kombu (lists per queue and priority, the `unacked` hash).
//! - [`rabbitmq`]: the RabbitMQ management HTTP API.
//! - [`flower`]: work in progress per worker (and queue lengths) from Flower.
//! - [`observe`]: `celery-operator observe`, what the host would hand a policy.
//! - [`dns`]: the one asynchronous resolver every broker and Flower client looks names up with.
//! - [`control`]: Celery's remote control through the broker (`cancel_consumer`, `add_consumer`),
//!   the one thing sent to a broker rather than read from it.
//!
//! This module talks to brokers and Flower only, never to the Kubernetes API. A value that could not be
//! measured is `None` ("unknown"), never 0: the autoscaling loop holds the replica count on
//! unknown data, whereas a 0 would scale an app down because its broker is unreachable.

pub mod control;
pub mod dns;
pub mod flower;
pub mod observe;
pub mod rabbitmq;
pub mod redis;

use std::time::Duration;

use serde::Serialize;

use crate::policy::QueueSample;
pub use crate::redact::{redact, redact_unparsed};

/// One Celery queue as measured on its broker.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    pub name: String,
    /// Messages waiting to be delivered to a worker; `None` when unknown.
    pub backlog: Option<u64>,
    /// Messages delivered to a worker and not acknowledged yet (prefetched or running).
    pub reserved: Option<u64>,
    /// Consumers attached to the queue; Redis has no such notion, so always `None` there.
    pub consumers: Option<u32>,
}

impl QueueStats {
    /// Every figure unknown: what a queue reads as when its broker could not answer.
    pub fn unknown(name: impl Into<String>) -> Self {
        Self { name: name.into(), backlog: None, reserved: None, consumers: None }
    }

    /// The queue as a policy sees it, or `None` when the backlog is unknown: the loop does not
    /// call a policy then, it holds the current replica count.
    pub fn to_sample(&self) -> Option<QueueSample> {
        Some(QueueSample { name: self.name.clone(), backlog: self.backlog?, reserved: self.reserved, consumers: self.consumers })
    }
}

/// How kombu lays out a queue in Redis: its transport options `sep`, `priority_steps`,
/// `global_keyprefix` and `unacked_key`, which an app sets in `broker_transport_options`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisLayout {
    pub sep: String,
    pub priority_steps: Vec<u32>,
    pub global_keyprefix: String,
    pub unacked_key: String,
}

impl Default for RedisLayout {
    /// kombu's defaults (`kombu/transport/redis.py`).
    fn default() -> Self {
        Self {
            sep: "\x06\x16".into(),
            priority_steps: vec![0, 3, 6, 9],
            global_keyprefix: String::new(),
            unacked_key: "unacked".into(),
        }
    }
}

impl RedisLayout {
    /// kombu's defaults with what a resource's `spec.broker.transportOptions` changes.
    pub fn with(options: Option<&crate::crd::TransportOptions>) -> Self {
        let mut layout = Self::default();
        if let Some(o) = options {
            if let Some(prefix) = &o.global_keyprefix {
                layout.global_keyprefix.clone_from(prefix);
            }
            if let Some(sep) = &o.sep {
                layout.sep.clone_from(sep);
            }
            if let Some(steps) = &o.priority_steps {
                layout.priority_steps.clone_from(steps);
            }
            if let Some(key) = &o.unacked_key {
                layout.unacked_key.clone_from(key);
            }
        }
        layout
    }
}

/// How to reach and read a broker.
#[derive(Clone, Debug)]
pub struct BrokerOptions {
    /// Limit for one whole read (connecting included); past it the figures are unknown.
    pub timeout: Duration,
    pub redis: RedisLayout,
    /// The RabbitMQ management API, e.g. `http://guest:guest@rabbitmq:15672`. Without it,
    /// the AMQP URL's host and credentials on port 15672 (15671 with TLS for `amqps://`).
    pub management_url: Option<String>,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(2), redis: RedisLayout::default(), management_url: None }
    }
}

/// Everything that can go wrong reading a broker. `broker` is the URL without its password.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker URL {broker}: {reason}")]
    InvalidUrl { broker: String, reason: String },
    #[error(
        "broker {broker}: the scheme `{scheme}` is not supported (use redis://, rediss://, redis+socket://, amqp:// or amqps://)"
    )]
    UnsupportedScheme { broker: String, scheme: String },
    #[error("broker {broker}: no answer within {limit:?} while {what}")]
    Timeout { broker: String, what: &'static str, limit: Duration },
    #[error("broker {broker}: refused the credentials (wrong password or user): {detail}")]
    Unauthorized { broker: String, detail: String },
    #[error("broker {broker}: {what}: {source}")]
    Redis {
        broker: String,
        what: &'static str,
        #[source]
        source: ::redis::RedisError,
    },
    #[error("broker {broker}: {what}: {source}")]
    Http {
        broker: String,
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("broker {broker}: {detail}")]
    Unexpected { broker: String, detail: String },
}

/// The largest HTTP body read from a broker's management API or from Flower. Their answers
/// are a few KiB; a server that sends more is misconfigured or hostile, and is not allowed to
/// make the operator buffer it.
pub const MAX_BODY: usize = 4 << 20;

/// Why a capped body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// The body of `response`, read chunk by chunk and refused beyond `limit` bytes (reqwest reads
/// a whole body whatever its size).
pub async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A broker of one app, ready to be read repeatedly (connections are kept between reads).
pub enum Broker {
    /// Boxed: a Redis client is several times the size of an HTTP one.
    Redis(Box<redis::RedisBroker>),
    RabbitMq(rabbitmq::RabbitMqBroker),
}

impl Broker {
    /// The figures of the named queues, in the order given, in one round trip where the
    /// broker allows it.
    pub async fn queues(&self, names: &[String]) -> Result<Vec<QueueStats>, BrokerError> {
        match self {
            Broker::Redis(b) => b.queues(names).await,
            Broker::RabbitMq(b) => b.queues(names).await,
        }
    }

    /// Sends a Celery remote-control command to the app's workers through this broker;
    /// whether anyone received it.
    pub async fn control(&self, command: &control::Command) -> Result<bool, BrokerError> {
        match self {
            Broker::Redis(b) => b.control(command).await,
            Broker::RabbitMq(b) => b.control(command).await,
        }
    }

    /// A task that calls `pushed` whenever a message lands on one of the lists of `names`, for
    /// a broker that says so as it happens: Redis whose `notify-keyspace-events` already
    /// publishes list events (see [`redis::RedisBroker::publishes_pushes`]). `None` for any
    /// other: the loops then learn of new messages at their next read.
    pub async fn push_follower(
        &self,
        names: &[String],
        pushed: impl Fn() + Send + 'static,
    ) -> Result<Option<futures::future::BoxFuture<'static, Result<(), BrokerError>>>, BrokerError> {
        match self {
            Broker::Redis(b) if b.publishes_pushes().await? => Ok(Some(Box::pin(b.follow_pushes(names, pushed)))),
            Broker::Redis(_) | Broker::RabbitMq(_) => Ok(None),
        }
    }

    /// The broker's URL without its password, for logs and errors.
    pub fn display_url(&self) -> &str {
        match self {
            Broker::Redis(b) => b.display_url(),
            Broker::RabbitMq(b) => b.display_url(),
        }
    }
}

/// Picks the broker from the URL's scheme. Connects lazily: a broker that is down fails the
/// first read, not this call, so an app can be set up before its broker is reachable.
pub fn connect(url: &str, options: &BrokerOptions) -> Result<Broker, BrokerError> {
    let parsed =
        url::Url::parse(url).map_err(|e| BrokerError::InvalidUrl { broker: redact_unparsed(url), reason: e.to_string() })?;
    match parsed.scheme() {
        "redis" | "rediss" | "redis+socket" | "socket" | "unix" => {
            redis::RedisBroker::new(&parsed, options).map(|b| Broker::Redis(Box::new(b)))
        }
        "amqp" | "amqps" | "pyamqp" => rabbitmq::RabbitMqBroker::new(&parsed, options).map(Broker::RabbitMq),
        scheme => Err(BrokerError::UnsupportedScheme { broker: redact(&parsed), scheme: scheme.into() }),
    }
}

/// The broker URL as the operator must dial it to reach what the app's pods reach: a
/// single-label host (`redis`, `rabbitmq`) is a Service of the app's namespace, which the
/// operator, running in its own namespace, must name in full (`redis.shop.svc`). Other hosts,
/// IP addresses, `localhost` and socket URLs are left as they are.
pub fn in_namespace(url: &str, namespace: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_string();
    };
    let Some(url::Host::Domain(host)) = parsed.host() else {
        return url.to_string();
    };
    if host.contains('.') || host.eq_ignore_ascii_case("localhost") {
        return url.to_string();
    }
    let qualified = format!("{host}.{namespace}.svc");
    match parsed.set_host(Some(&qualified)) {
        Ok(()) => parsed.to_string(),
        Err(_) => url.to_string(),
    }
}

/// Why the operator will not dial `url` for an app, if it will not: a Unix socket (a path in
/// the operator's own pod, not the app's), or a link-local address such as a cloud metadata
/// service (169.254.169.254, fe80::/10), where a resource could point the operator's
/// credentials or requests. Names are not resolved here; literal addresses and the metadata
/// names clouds use are refused.
pub fn forbidden_destination(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    if matches!(parsed.scheme(), "unix" | "socket" | "redis+socket") || parsed.scheme().ends_with("+unix") {
        return Some(format!(
            "{}:// is a socket in the operator's own pod, not the app's; give a host and port the operator can reach",
            parsed.scheme()
        ));
    }
    let link_local = match parsed.host()? {
        url::Host::Ipv4(ip) => ip.is_link_local() || ip.is_unspecified(),
        url::Host::Ipv6(ip) => {
            ip.is_unspecified()
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local() || v4.is_unspecified())
        }
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            matches!(name.as_str(), "metadata" | "metadata.google.internal" | "metadata.azure.com" | "instance-data")
        }
    };
    link_local.then(|| {
        format!(
            "{} is a link-local or metadata address; the operator does not send requests or credentials there",
            parsed.host_str().unwrap_or_default()
        )
    })
}

/// rustls needs a process-wide crypto provider before any TLS client is built; the operator
/// uses ring (as kube does). Installing it twice is harmless, so every client builder calls this.
pub(crate) fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_and_metadata_addresses_are_refused() {
        for bad in [
            "redis+socket:///run/redis.sock",
            "unix:///var/run/docker.sock",
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]:5555",
            "http://[::ffff:169.254.169.254]/",
            "http://0.0.0.0:5555",
            "http://metadata.google.internal/computeMetadata/v1/",
        ] {
            assert!(forbidden_destination(bad).is_some(), "{bad}");
        }
        for good in
            ["redis://redis.shop.svc:6379/0", "http://shop-flower.shop.svc:5555", "http://127.0.0.1:15672", "amqp://10.0.0.7//"]
        {
            assert_eq!(forbidden_destination(good), None, "{good}");
        }
    }

    #[test]
    fn transport_options_change_only_what_they_name() {
        assert_eq!(RedisLayout::with(None), RedisLayout::default());
        let options: crate::crd::TransportOptions =
            serde_json::from_value(serde_json::json!({"globalKeyprefix": "shop:", "prioritySteps": [0, 5]})).expect("parses");
        let layout = RedisLayout::with(Some(&options));
        assert_eq!((layout.global_keyprefix.as_str(), layout.priority_steps.as_slice()), ("shop:", &[0, 5][..]));
        assert_eq!((layout.sep.as_str(), layout.unacked_key.as_str()), ("\x06\x16", "unacked"));
    }

    #[test]
    fn single_label_hosts_are_services_of_the_apps_namespace() {
        assert_eq!(in_namespace("redis://:pw@redis:6379/0", "shop"), "redis://:pw@redis.shop.svc:6379/0");
        assert_eq!(in_namespace("amqp://guest@rabbitmq//", "shop"), "amqp://guest@rabbitmq.shop.svc//");
        for kept in
            ["redis://redis.other.svc:6379/0", "redis://127.0.0.1:6379", "redis://localhost/1", "redis+socket:///run/redis.sock"]
        {
            assert_eq!(in_namespace(kept, "shop"), kept);
        }
    }

    #[test]
    fn connect_picks_the_broker_by_scheme() {
        let options = BrokerOptions::default();
        assert!(matches!(connect("redis://localhost/0", &options), Ok(Broker::Redis(_))));
        assert!(matches!(connect("amqp://guest:guest@localhost//", &options), Ok(Broker::RabbitMq(_))));
        let error = connect("sqs://key:secret@sqs.example/", &options).err().expect("unsupported");
        assert!(matches!(error, BrokerError::UnsupportedScheme { .. }), "{error}");
        assert!(!error.to_string().contains("secret"), "{error}");
        let error = connect("redis://:pw@host:notaport/0", &options).err().expect("invalid");
        assert!(!error.to_string().contains("pw"), "{error}");
    }

    #[test]
    fn unknown_backlog_is_not_a_sample() {
        assert_eq!(QueueStats::unknown("q").to_sample(), None);
        let known = QueueStats { name: "q".into(), backlog: Some(3), reserved: None, consumers: Some(1) };
        assert_eq!(known.to_sample().map(|s| s.backlog), Some(3));
    }
}
