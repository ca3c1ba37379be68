//! Queue figures from a RabbitMQ broker, through its management HTTP API.
//!
//! `GET /api/queues/{vhost}/{name}` gives `messages_ready` (the backlog),
//! `messages_unacknowledged` (delivered to a worker, not acknowledged yet) and `consumers`.
//! The vhost comes from the AMQP URL as kombu reads it (`amqp://host//` and `amqp://host` are
//! `/`), and is percent-encoded in the path (`/` is `%2F`). The queues of one read are asked
//! for concurrently; AMQP itself has no way to read the unacknowledged count.

use std::time::Duration;

use futures::future::join_all;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::StatusCode;
use url::Url;

use super::{BrokerError, BrokerOptions, QueueStats, redact};

/// A RabbitMQ broker read through its management API.
pub struct RabbitMqBroker {
    http: reqwest::Client,
    /// `scheme://host:port` of the management API, without credentials: reqwest puts the URL
    /// in its errors, so the credentials travel only in the Authorization header.
    api: String,
    vhost: String,
    username: String,
    password: String,
    display: String,
    timeout: Duration,
}

/// Where the management API is and as whom to ask it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub api: String,
    pub vhost: String,
    pub username: String,
    pub password: String,
}

/// The vhost of an AMQP URL the way kombu reads it: the path without its first `/`,
/// percent-decoded; no path means `/`.
pub fn vhost(url: &Url) -> String {
    let path = url.path().strip_prefix('/').unwrap_or(url.path());
    if path.is_empty() {
        return "/".into();
    }
    percent_encoding::percent_decode_str(path).decode_utf8_lossy().into_owned()
}

/// The management API for an AMQP URL, optionally given explicitly. Credentials come from the
/// management URL if it has them, else from the AMQP URL, else kombu's default `guest:guest`.
pub fn parse_urls(amqp: &Url, management: Option<&Url>) -> Result<Target, String> {
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let credentials = |url: &Url| {
        (!url.username().is_empty()).then(|| (decode(url.username()), url.password().map(decode).unwrap_or_default()))
    };
    // The broker's own credentials go to the broker's host only: a management API elsewhere
    // gets the credentials of its own URL, or kombu's default.
    let same_host =
        management.is_none_or(|m| m.host_str().map(str::to_ascii_lowercase) == amqp.host_str().map(str::to_ascii_lowercase));
    let (username, password) = management
        .and_then(credentials)
        .or_else(|| credentials(amqp).filter(|_| same_host))
        .unwrap_or_else(|| ("guest".into(), "guest".into()));
    let api = match management {
        Some(m) => {
            if !matches!(m.scheme(), "http" | "https") {
                return Err(format!("the management URL must be http:// or https://, not {}://", m.scheme()));
            }
            let host = m.host_str().ok_or("the management URL has no host")?;
            let port = m.port().map(|p| format!(":{p}")).unwrap_or_default();
            let path = m.path().trim_end_matches('/');
            format!("{}://{host}{port}{path}", m.scheme())
        }
        None => {
            let host = amqp.host_str().filter(|h| !h.is_empty()).unwrap_or("localhost");
            let (scheme, port) = if amqp.scheme() == "amqps" { ("https", 15671) } else { ("http", 15672) };
            format!("{scheme}://{host}:{port}")
        }
    };
    Ok(Target { api, vhost: vhost(amqp), username, password })
}

/// The path of one queue in the API, every reserved character percent-encoded.
pub fn queue_path(vhost: &str, queue: &str) -> String {
    format!("/api/queues/{}/{}", utf8_percent_encode(vhost, NON_ALPHANUMERIC), utf8_percent_encode(queue, NON_ALPHANUMERIC))
}

/// The figures of a queue object of the API. They are absent until the broker has computed
/// the queue's statistics once (a few seconds after it is declared), and the API then answers
/// `[]` when asked for these columns only: unknown, not 0.
pub fn queue_stats(name: &str, body: &serde_json::Value) -> QueueStats {
    let field = |key: &str| body.get(key).and_then(serde_json::Value::as_u64);
    QueueStats {
        name: name.into(),
        backlog: field("messages_ready"),
        reserved: field("messages_unacknowledged"),
        consumers: field("consumers").and_then(|c| u32::try_from(c).ok()),
    }
}

/// What one queue's request came to.
enum Outcome {
    Found(QueueStats),
    Missing,
    /// An answer about this queue only, e.g. a 5xx while its node is down.
    QueueFailed(QueueStats),
}

impl RabbitMqBroker {
    pub(crate) fn new(url: &Url, options: &BrokerOptions) -> Result<Self, BrokerError> {
        super::ensure_crypto_provider();
        let display = redact(url);
        let invalid = |reason: String| BrokerError::InvalidUrl { broker: display.clone(), reason };
        let management = match options.management_url.as_deref() {
            Some(m) => Some(Url::parse(m).map_err(|e| invalid(format!("management URL: {e}")))?),
            None => None,
        };
        let target = parse_urls(url, management.as_ref()).map_err(invalid)?;
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.timeout)
            .dns_resolver(super::dns::Resolver::shared())
            .build()
            .map_err(|source| BrokerError::Http { broker: display.clone(), what: "building the HTTP client", source })?;
        let display = format!("{display} (management API {})", redact_api(management.as_ref(), &target));
        Ok(Self {
            http,
            api: target.api,
            vhost: target.vhost,
            username: target.username,
            password: target.password,
            display,
            timeout: options.timeout,
        })
    }

    pub fn display_url(&self) -> &str {
        &self.display
    }

    /// Asks for every queue at once. Credentials refused or a broker that does not answer fail
    /// the whole read; a queue that does not exist yet has a backlog of 0.
    pub async fn queues(&self, names: &[String]) -> Result<Vec<QueueStats>, BrokerError> {
        let outcomes = join_all(names.iter().map(|name| self.queue(name))).await;
        let mut stats = Vec::with_capacity(names.len());
        let mut missing = false;
        for (name, outcome) in names.iter().zip(outcomes) {
            match outcome? {
                Outcome::Found(s) | Outcome::QueueFailed(s) => stats.push(s),
                Outcome::Missing => {
                    missing = true;
                    // Celery declares a queue when a worker starts or the first task is sent
                    // to it; until then nothing can wait in it, so its backlog is truly 0.
                    stats.push(QueueStats { name: name.clone(), backlog: Some(0), reserved: Some(0), consumers: Some(0) });
                }
            }
        }
        // NB: a missing vhost also answers 404 for its queues; without this check a typo in the
        // vhost would read as empty queues, and the app would be scaled down.
        if missing && !self.vhost_exists().await? {
            return Err(BrokerError::Unexpected {
                broker: self.display.clone(),
                detail: format!("the vhost `{}` does not exist", self.vhost),
            });
        }
        Ok(stats)
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response, BrokerError> {
        self.http
            .get(format!("{}{path}", self.api))
            .basic_auth(&self.username, Some(&self.password))
            .send()
            .await
            .map_err(|e| self.transport_error(e))
    }

    async fn queue(&self, name: &str) -> Result<Outcome, BrokerError> {
        let path = format!("{}?columns=messages_ready,messages_unacknowledged,consumers", queue_path(&self.vhost, name));
        let response = self.get(&path).await?;
        match response.status() {
            status if status.is_success() => {
                let body = match super::read_body(response, super::MAX_BODY).await {
                    Ok(body) => body,
                    Err(super::BodyError::Http(e)) => return Err(self.transport_error(e)),
                    Err(too_large) => {
                        return Err(BrokerError::Unexpected {
                            broker: self.display.clone(),
                            detail: format!("queue {name}: {too_large}"),
                        });
                    }
                };
                let body: serde_json::Value = serde_json::from_slice(&body).map_err(|e| BrokerError::Unexpected {
                    broker: self.display.clone(),
                    detail: format!("queue {name}: the management API answered something that is not JSON ({e})"),
                })?;
                Ok(Outcome::Found(queue_stats(name, &body)))
            }
            StatusCode::NOT_FOUND => Ok(Outcome::Missing),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(self.unauthorized(response).await),
            status => {
                tracing::warn!(broker = %self.display, queue = name, %status, "the management API could not report the queue");
                Ok(Outcome::QueueFailed(QueueStats::unknown(name)))
            }
        }
    }

    /// Publishes a remote-control command to the app's pidbox exchange; whether a queue (a
    /// worker's pidbox) received it. No exchange yet means no worker ever started: false.
    pub async fn control(&self, command: &super::control::Command) -> Result<bool, BrokerError> {
        let path = format!(
            "/api/exchanges/{}/{}/publish",
            utf8_percent_encode(&self.vhost, NON_ALPHANUMERIC),
            utf8_percent_encode(super::control::PIDBOX, NON_ALPHANUMERIC)
        );
        let response = self
            .http
            .post(format!("{}{path}", self.api))
            .basic_auth(&self.username, Some(&self.password))
            .json(&super::control::rabbitmq_publish(command))
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        match response.status() {
            status if status.is_success() => {
                let body = super::read_body(response, super::MAX_BODY).await.unwrap_or_default();
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                Ok(body["routed"].as_bool().unwrap_or(false))
            }
            StatusCode::NOT_FOUND => Ok(false),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(self.unauthorized(response).await),
            status => Err(BrokerError::Unexpected {
                broker: self.display.clone(),
                detail: format!("publishing {} to {}: HTTP {status}", command.method, super::control::PIDBOX),
            }),
        }
    }

    async fn vhost_exists(&self) -> Result<bool, BrokerError> {
        let path = format!("/api/vhosts/{}", utf8_percent_encode(&self.vhost, NON_ALPHANUMERIC));
        let response = self.get(&path).await?;
        match response.status() {
            status if status.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(self.unauthorized(response).await),
            status => Err(BrokerError::Unexpected {
                broker: self.display.clone(),
                detail: format!("checking the vhost `{}`: HTTP {status}", self.vhost),
            }),
        }
    }

    async fn unauthorized(&self, response: reqwest::Response) -> BrokerError {
        let status = response.status();
        let reason = super::read_body(response, 64 << 10)
            .await
            .ok()
            .and_then(|body| serde_json::from_slice::<serde_json::Value>(&body).ok())
            .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(|r| crate::policy::truncate(r, 200)))
            .unwrap_or_default();
        BrokerError::Unauthorized {
            broker: self.display.clone(),
            detail: format!("HTTP {status} for user `{}` on vhost `{}` {reason}", self.username, self.vhost).trim_end().into(),
        }
    }

    fn transport_error(&self, source: reqwest::Error) -> BrokerError {
        let broker = self.display.clone();
        if source.is_timeout() {
            BrokerError::Timeout { broker, what: "asking the management API", limit: self.timeout }
        } else {
            BrokerError::Http { broker, what: "asking the management API", source: source.without_url() }
        }
    }
}

/// The management API as shown in errors: its address and user, never the password.
fn redact_api(management: Option<&Url>, target: &Target) -> String {
    match management {
        Some(m) => redact(m),
        None => target.api.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("valid URL")
    }

    #[test]
    fn vhosts_as_kombu_reads_them() {
        assert_eq!(vhost(&url("amqp://guest@rabbitmq//")), "/");
        assert_eq!(vhost(&url("amqp://guest@rabbitmq")), "/");
        assert_eq!(vhost(&url("amqp://guest@rabbitmq/")), "/");
        assert_eq!(vhost(&url("amqp://guest@rabbitmq/%2F")), "/");
        assert_eq!(vhost(&url("amqp://guest@rabbitmq/celery")), "celery");
        assert_eq!(vhost(&url("amqp://guest@rabbitmq/team%2Fa")), "team/a");
    }

    #[test]
    fn paths_encode_vhost_and_queue() {
        assert_eq!(queue_path("/", "celery"), "/api/queues/%2F/celery");
        assert_eq!(queue_path("team/a", "high prio"), "/api/queues/team%2Fa/high%20prio");
    }

    #[test]
    fn management_api_from_the_amqp_url_or_given() {
        let t = parse_urls(&url("amqp://celery:s3cret@rabbit:5672/prod"), None).expect("parses");
        assert_eq!(
            t,
            Target {
                api: "http://rabbit:15672".into(),
                vhost: "prod".into(),
                username: "celery".into(),
                password: "s3cret".into()
            }
        );
        let t = parse_urls(&url("amqps://rabbit//"), None).expect("parses");
        assert_eq!((t.api.as_str(), t.username.as_str(), t.password.as_str()), ("https://rabbit:15671", "guest", "guest"));
        let m = url("https://admin:pw@mgmt.example:8443/rabbit/");
        let t = parse_urls(&url("amqp://celery:x@rabbit//"), Some(&m)).expect("parses");
        assert_eq!(
            (t.api.as_str(), t.username.as_str(), t.password.as_str()),
            ("https://mgmt.example:8443/rabbit", "admin", "pw")
        );
        assert!(parse_urls(&url("amqp://rabbit//"), Some(&url("ftp://mgmt"))).is_err());

        // The broker's password never goes to another host.
        let t = parse_urls(&url("amqp://celery:s3cret@rabbit//"), Some(&url("http://collector.example:15672"))).expect("parses");
        assert_eq!((t.username.as_str(), t.password.as_str()), ("guest", "guest"));
        let t = parse_urls(&url("amqp://celery:s3cret@rabbit//"), Some(&url("https://RABBIT:15671"))).expect("parses");
        assert_eq!((t.username.as_str(), t.password.as_str()), ("celery", "s3cret"), "the same host, another port");
    }

    #[test]
    fn queue_objects_without_statistics_are_unknown() {
        let body = serde_json::json!({"messages_ready": 4, "messages_unacknowledged": 2, "consumers": 1});
        assert_eq!(
            queue_stats("q", &body),
            QueueStats { name: "q".into(), backlog: Some(4), reserved: Some(2), consumers: Some(1) }
        );
        assert_eq!(queue_stats("q", &serde_json::json!([])), QueueStats::unknown("q"));
        assert_eq!(queue_stats("q", &serde_json::json!({"name": "q"})), QueueStats::unknown("q"));
    }
}
