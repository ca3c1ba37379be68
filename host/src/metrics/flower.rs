//! Work in progress from Flower, and queue lengths for apps whose broker only Flower knows.
//!
//! - Per worker, the tasks it is executing and the tasks it has prefetched come from Flower's
//!   Prometheus endpoint (`GET /metrics`): `flower_worker_online`,
//!   `flower_worker_number_of_currently_executing_tasks` (the `active` count every worker
//!   heartbeat carries, every 2 s by default) and `flower_worker_prefetched_tasks`. Flower keeps
//!   them from the event stream it already follows, so reading them costs no broadcast to the
//!   workers, unlike `/api/workers`, which fetches task lists only one worker at a time.
//! - Queue lengths come from `GET /api/queues/length`, which Flower measures on the broker it
//!   is configured with. This is how the Python operator we replace measured the backlog, and
//!   it lets a resource that names its broker only inside the image's Celery configuration
//!   autoscale. Flower answers only for the queues it knows, and drops a queue silently when
//!   its RabbitMQ API fails: a queue missing from the answer is unknown, never 0.
//!
//! A worker is named `celery@<hostname>`; in a pod the hostname is the pod's name, so
//! [`hostname`] maps a worker to its pod.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde::Serialize;
use url::Url;

use super::{QueueStats, redact};

/// One Celery worker as Flower last heard of it.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerLoad {
    /// The worker's node name, `celery@<hostname>`.
    pub name: String,
    /// Flower's last event from it was not `worker-offline`.
    pub online: bool,
    /// Tasks executing now, from its last heartbeat; `None` before the first one.
    pub active: Option<u32>,
    /// Tasks received and not started yet (prefetched), summed over task names.
    pub prefetched: Option<u32>,
}

/// What went wrong asking Flower. `flower` is its URL without a password.
#[derive(Debug, thiserror::Error)]
#[error("Flower {flower}: {detail}")]
pub struct FlowerError {
    pub flower: String,
    pub detail: String,
    /// Flower refused the credentials (401/403).
    pub unauthorized: bool,
}

/// A Flower instance, read repeatedly (the HTTP connection is kept between reads).
pub struct Flower {
    http: reqwest::Client,
    /// `scheme://host:port/prefix` without credentials: reqwest puts the URL in its errors.
    base: String,
    credentials: Option<(String, String)>,
    display: String,
    timeout: Duration,
}

impl Flower {
    /// A client of the Flower at `url` (`http://flower:5555`, with its `--url_prefix` path if it
    /// has one). Credentials in the URL win over `basic_auth` (a `user:password` pair as
    /// Flower's `--basic_auth` takes them; the first pair of a comma-separated list is used).
    pub fn new(url: &str, basic_auth: Option<&str>, timeout: Duration) -> Result<Self, FlowerError> {
        super::ensure_crypto_provider();
        let parsed = Url::parse(url).map_err(|e| FlowerError {
            flower: super::redact_unparsed(url),
            detail: format!("invalid URL: {e}"),
            unauthorized: false,
        })?;
        let display = redact(&parsed);
        let invalid = |detail: &str| FlowerError { flower: display.clone(), detail: detail.into(), unauthorized: false };
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("the URL must be http:// or https://"));
        }
        let host = parsed.host_str().ok_or_else(|| invalid("the URL has no host"))?;
        let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
        let base = format!("{}://{host}{port}{}", parsed.scheme(), parsed.path().trim_end_matches('/'));
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let credentials = if parsed.username().is_empty() {
            basic_auth.and_then(first_pair)
        } else {
            Some((decode(parsed.username()), parsed.password().map(decode).unwrap_or_default()))
        };
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .dns_resolver(super::dns::Resolver::shared())
            .build()
            .map_err(|e| invalid(&format!("building the HTTP client: {e}")))?;
        Ok(Self { http, base, credentials, display, timeout })
    }

    /// The URL without its password, for logs and errors.
    pub fn display_url(&self) -> &str {
        &self.display
    }

    /// Every worker Flower knows, online or not, sorted by name.
    pub async fn workers(&self) -> Result<Vec<WorkerLoad>, FlowerError> {
        let body = self.get("/metrics", "reading its metrics").await?;
        Ok(parse_metrics(&body))
    }

    /// The backlog of the named queues, in the order given, as Flower measures it on its
    /// broker. A queue Flower did not report is unknown.
    pub async fn queues(&self, names: &[String]) -> Result<Vec<QueueStats>, FlowerError> {
        let body = self.get("/api/queues/length", "reading its queue lengths").await?;
        let json: serde_json::Value = serde_json::from_str(&body).map_err(|e| self.error(format!("queue lengths: {e}")))?;
        parse_queue_lengths(names, &json).map_err(|detail| self.error(detail))
    }

    async fn get(&self, path: &str, what: &str) -> Result<String, FlowerError> {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        let response = request.send().await.map_err(|e| self.transport_error(what, &e))?;
        let status = response.status();
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            let detail = if self.credentials.is_some() {
                format!("refused the credentials ({status}) while {what}")
            } else {
                format!(
                    "asks for credentials ({status}) while {what}; set flowerSpec.basicAuth (sent to the app's own Flower Service only) or put them in the URL"
                )
            };
            return Err(FlowerError { flower: self.display.clone(), detail, unauthorized: true });
        }
        if !status.is_success() {
            return Err(self.error(format!("answered {status} while {what}")));
        }
        match super::read_body(response, super::MAX_BODY).await {
            Ok(body) => String::from_utf8(body).map_err(|_| self.error(format!("answered text that is not UTF-8 while {what}"))),
            Err(super::BodyError::Http(e)) => Err(self.transport_error(what, &e)),
            Err(too_large) => Err(self.error(format!("{too_large} while {what}"))),
        }
    }

    fn transport_error(&self, what: &str, error: &reqwest::Error) -> FlowerError {
        if error.is_timeout() {
            return self.error(format!("no answer within {:?} while {what}", self.timeout));
        }
        // Without the URL: it is in `display` already, and `without_url` keeps the cause.
        let mut cause = String::new();
        let mut source: Option<&dyn std::error::Error> = Some(error);
        while let Some(e) = source {
            if !cause.is_empty() {
                cause.push_str(": ");
            }
            cause.push_str(&e.to_string());
            source = e.source();
        }
        self.error(format!("{what}: {cause}"))
    }

    fn error(&self, detail: String) -> FlowerError {
        FlowerError { flower: self.display.clone(), detail, unauthorized: false }
    }
}

/// The first `user:password` pair of Flower's `--basic_auth` value.
fn first_pair(value: &str) -> Option<(String, String)> {
    let pair = value.split(',').map(str::trim).find(|p| !p.is_empty())?;
    let (user, password) = pair.split_once(':').unwrap_or((pair, ""));
    Some((user.to_string(), password.to_string()))
}

/// The hostname of a worker node name: `celery@web-7d9f-x2` is `web-7d9f-x2`. Celery's `%h`
/// may give a fully qualified name; a pod's own name is its first label.
pub fn hostname(worker: &str) -> &str {
    let host = worker.rsplit_once('@').map_or(worker, |(_, host)| host);
    host.split('.').next().unwrap_or(host)
}

/// The workers in Flower's Prometheus text. Lines are `name{labels} value`; only the three
/// worker gauges are read, every other metric is skipped.
pub fn parse_metrics(text: &str) -> Vec<WorkerLoad> {
    let mut workers: BTreeMap<String, WorkerLoad> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((metric, rest)) = line.split_once('{') else { continue };
        if !matches!(
            metric,
            "flower_worker_online" | "flower_worker_number_of_currently_executing_tasks" | "flower_worker_prefetched_tasks"
        ) {
            continue;
        }
        let Some((labels, value)) = rest.rsplit_once('}') else { continue };
        let (Some(worker), Ok(value)) = (label(labels, "worker"), value.trim().parse::<f64>()) else { continue };
        let entry = workers.entry(worker.clone()).or_insert_with(|| WorkerLoad {
            name: worker,
            online: false,
            active: None,
            prefetched: None,
        });
        // Gauges are whole counts; a negative one (Flower decrements on events it may have
        // missed the start of) counts as 0.
        let count = value.max(0.0).min(f64::from(u32::MAX)) as u32;
        match metric {
            "flower_worker_online" => entry.online = value >= 1.0,
            "flower_worker_number_of_currently_executing_tasks" => entry.active = Some(count),
            _ => entry.prefetched = Some(entry.prefetched.unwrap_or(0).saturating_add(count)),
        }
    }
    workers.into_values().collect()
}

/// The value of label `name` in `a="x",b="y"`, with Prometheus' escapes undone.
fn label(labels: &str, name: &str) -> Option<String> {
    let mut rest = labels;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => return None,
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                other => value.push(other),
            }
        }
        let end = end?;
        if key.trim_start_matches(',').trim() == name {
            return Some(value);
        }
        rest = after[end + 1..].trim_start_matches(',');
    }
    None
}

/// The queues of `GET /api/queues/length`: `{"active_queues": [{"name": .., "messages": ..}]}`
/// for Redis, the RabbitMQ API's queue objects (`messages_ready`, `messages_unacknowledged`,
/// `consumers`) for RabbitMQ.
pub fn parse_queue_lengths(names: &[String], json: &serde_json::Value) -> Result<Vec<QueueStats>, String> {
    let listed = json
        .get("active_queues")
        .and_then(serde_json::Value::as_array)
        .ok_or("the queue lengths have no `active_queues` list")?;
    Ok(names
        .iter()
        .map(|name| {
            let found = listed.iter().find(|q| q.get("name").and_then(serde_json::Value::as_str) == Some(name.as_str()));
            let Some(queue) = found else { return QueueStats::unknown(name.as_str()) };
            let field = |key: &str| queue.get(key).and_then(serde_json::Value::as_u64);
            QueueStats {
                name: name.clone(),
                backlog: field("messages_ready").or_else(|| field("messages")),
                reserved: field("messages_unacknowledged"),
                consumers: field("consumers").and_then(|c| u32::try_from(c).ok()),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP flower_worker_online Worker online status
# TYPE flower_worker_online gauge
flower_worker_online{worker="celery@shop-celery-worker-7d9f-x2"} 1.0
flower_worker_online{worker="celery@gone"} 0.0
# TYPE flower_worker_number_of_currently_executing_tasks gauge
flower_worker_number_of_currently_executing_tasks{worker="celery@shop-celery-worker-7d9f-x2"} 3.0
flower_worker_prefetched_tasks{task="app.slow",worker="celery@shop-celery-worker-7d9f-x2"} 2.0
flower_worker_prefetched_tasks{task="app.fast",worker="celery@shop-celery-worker-7d9f-x2"} 1.0
flower_worker_prefetched_tasks{task="app.odd\"name",worker="celery@gone"} -1.0
flower_events_total{task="app.slow",type="task-received",worker="celery@other"} 9.0
process_virtual_memory_bytes 1.2e+09
"#;

    #[test]
    fn workers_come_from_the_gauges_only() {
        let workers = parse_metrics(METRICS);
        assert_eq!(workers.len(), 2, "{workers:?}");
        assert_eq!(
            workers[1],
            WorkerLoad { name: "celery@shop-celery-worker-7d9f-x2".into(), online: true, active: Some(3), prefetched: Some(3) }
        );
        assert_eq!(workers[0], WorkerLoad { name: "celery@gone".into(), online: false, active: None, prefetched: Some(0) });
    }

    #[test]
    fn labels_are_unescaped_and_found_anywhere() {
        assert_eq!(label(r#"task="a\"b,c",worker="w@h""#, "worker").as_deref(), Some("w@h"));
        assert_eq!(label(r#"task="a\"b,c",worker="w@h""#, "task").as_deref(), Some("a\"b,c"));
        assert_eq!(label(r#"task="x""#, "worker"), None);
    }

    #[test]
    fn a_worker_maps_to_its_pod() {
        assert_eq!(hostname("celery@shop-celery-worker-7d9f-x2"), "shop-celery-worker-7d9f-x2");
        assert_eq!(hostname("w1@pod-a.shop.svc.cluster.local"), "pod-a");
        assert_eq!(hostname("plain"), "plain");
    }

    #[test]
    fn queue_lengths_of_both_brokers_and_missing_queues() {
        let names: Vec<String> = ["celery", "mail", "absent"].map(String::from).into();
        let json = serde_json::json!({"active_queues": [
            {"name": "celery", "messages": 7},
            {"name": "mail", "messages": 9, "messages_ready": 4, "messages_unacknowledged": 5, "consumers": 2},
        ]});
        let stats = parse_queue_lengths(&names, &json).expect("parses");
        assert_eq!(stats[0], QueueStats { name: "celery".into(), backlog: Some(7), reserved: None, consumers: None });
        assert_eq!(stats[1], QueueStats { name: "mail".into(), backlog: Some(4), reserved: Some(5), consumers: Some(2) });
        assert_eq!(stats[2], QueueStats::unknown("absent"), "not reported: unknown, not 0");
        assert!(parse_queue_lengths(&names, &serde_json::json!({"error": 1})).unwrap_err().contains("active_queues"));
    }

    #[test]
    fn credentials_come_from_the_url_or_the_basic_auth_value() {
        let timeout = Duration::from_secs(1);
        let flower = Flower::new("http://u:p%40ss@flower:5555/flower/", Some("x:y"), timeout).expect("valid");
        assert_eq!(flower.credentials, Some(("u".into(), "p@ss".into())));
        assert_eq!(flower.base, "http://flower:5555/flower");
        assert!(!flower.display_url().contains("p%40ss"), "{}", flower.display_url());
        let flower = Flower::new("http://flower:5555", Some(" admin:s3cret , other:x"), timeout).expect("valid");
        assert_eq!(flower.credentials, Some(("admin".into(), "s3cret".into())));
        let error = Flower::new("ftp://flower", None, timeout).err().expect("not http");
        assert!(error.to_string().contains("http://"), "{error}");
    }
}
