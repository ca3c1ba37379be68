//! Queue figures from a Redis broker, read the way kombu (Celery's transport) lays them out.
//!
//! - A queue is a list named after it. With priorities, kombu spreads one queue over one list
//!   per priority step: `<queue>` for step 0 and `<queue><sep><step>` for the others (kombu's
//!   `_q_for_pri`), by default `<queue>`, `<queue>\x06\x163`, `<queue>\x06\x166`,
//!   `<queue>\x06\x169`. The backlog is the sum of their lengths; a missing key is an empty
//!   list, so 0.
//! - Messages delivered to a worker and not acknowledged sit in one hash, `unacked`, shared by
//!   every queue of the database: delivery tag → JSON `[message, exchange, routing_key]`. The
//!   routing key tells the queues apart (for Celery's default routing it is the queue's name).
//! - Every key carries kombu's `global_keyprefix` when the app sets one.
//!
//! One read is one round trip: a pipeline of every `LLEN` and one count of the hash. The
//! routing key is inside each value (beside the whole message body), so counting per queue
//! needs the values, and `HLEN` cannot tell queues apart. The count is a small Lua script run
//! by Redis ([`COUNT_UNACKED`]) that reads the routing key at the end of each value and
//! returns one number per queue: message bodies never cross the network. A Redis that refuses
//! scripts (ACLs, a managed service) gets `HVALS` instead, and each value is parsed only far
//! enough to borrow its routing key; nothing is kept between reads.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, Value};
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::sync::Mutex;
use url::Url;

use super::{BrokerError, BrokerOptions, QueueStats, RedisLayout, redact};

/// A Redis broker with its connection kept between reads.
pub struct RedisBroker {
    client: redis::Client,
    /// The database number, which names the pidbox channel (see [`super::control`]).
    db: i64,
    display: String,
    layout: RedisLayout,
    timeout: Duration,
    /// The open connection, shared by every app that reads the same server as the same user
    /// ([`shared_slot`]); dropped after a failed read so that the next read reconnects.
    connection: Arc<Slot>,
    /// Whether the server runs [`COUNT_UNACKED`]; false once it refused.
    scripts: AtomicBool,
}

/// Whether `notify-keyspace-events` flags publish list commands on keyspace channels: `K`, and
/// `l` or `A` (every class but a few, lists among them).
pub fn publishes_list_events(flags: &str) -> bool {
    flags.contains('K') && (flags.contains('l') || flags.contains('A'))
}

/// Whether a keyspace event adds to a list. `LMOVE`, `RPOPLPUSH` and their blocking forms
/// report their destination as `lpush`/`rpush` too; pops, trims and deletions are not pushes.
pub fn is_push(event: &[u8]) -> bool {
    matches!(event, b"lpush" | b"rpush" | b"linsert")
}

/// An open connection and its number (see [`RedisBroker::forget`]), or none yet.
type Slot = Mutex<Option<(u64, MultiplexedConnection)>>;

/// The connection slot of the brokers that read `url` (server, database, user and password)
/// with `timeout`: one connection a process, not one an app. A multiplexed connection pipelines
/// every app's reads, and Redis answers them in order on one socket as it would on many; 10,000
/// apps on one Redis held 10,000 sockets, each with its own driver task and buffers, before.
/// A slot lives while a broker holds it. NB: written here, not taken from a pool crate: the
/// pools at hand (bb8, deadpool) lend a connection to one user at a time, which is what a
/// multiplexed connection does not need.
fn shared_slot(url: &Url, timeout: Duration) -> Arc<Slot> {
    type Slots = std::collections::HashMap<(String, Duration), std::sync::Weak<Slot>>;
    static SLOTS: std::sync::LazyLock<std::sync::Mutex<Slots>> = std::sync::LazyLock::new(Default::default);
    let mut slots = SLOTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let key = (url.as_str().to_string(), timeout);
    if let Some(slot) = slots.get(&key).and_then(std::sync::Weak::upgrade) {
        return slot;
    }
    // The slots no broker holds any more go with the next new one.
    slots.retain(|_, slot| slot.strong_count() > 0);
    let slot = Arc::new(Mutex::new(None));
    slots.insert(key, Arc::downgrade(&slot));
    slot
}

/// Where and as whom to connect, from a kombu-style broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: ConnectionAddr,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Parses `redis://[user][:password]@host[:port][/db]`, `rediss://…` (TLS; `ssl_cert_reqs=none`
/// skips certificate checks, as in Celery) and `redis+socket:///path?virtual_host=db`.
pub fn parse_url(url: &Url) -> Result<Target, String> {
    let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
    let query = |name: &str| url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    let username = Some(decode(url.username())).filter(|u| !u.is_empty());
    let password = url.password().map(decode);
    let default_port = 6379;
    let (addr, db_text) = match url.scheme() {
        "redis" | "rediss" => {
            let host = url.host_str().filter(|h| !h.is_empty()).ok_or("the URL has no host")?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = url.port().unwrap_or(default_port);
            let addr = if url.scheme() == "rediss" {
                let insecure = match query("ssl_cert_reqs").as_deref() {
                    None | Some("required" | "CERT_REQUIRED" | "optional" | "CERT_OPTIONAL") => false,
                    Some("none" | "CERT_NONE") => true,
                    Some(other) => {
                        return Err(format!("ssl_cert_reqs={other} is not one of required, optional, none"));
                    }
                };
                ConnectionAddr::TcpTls { host, port, insecure, tls_params: None }
            } else {
                ConnectionAddr::Tcp(host, port)
            };
            let path = url.path().trim_matches('/');
            let db = if path.is_empty() { query("db").or_else(|| query("virtual_host")) } else { Some(path.to_string()) };
            (addr, db)
        }
        _ => {
            if url.path().is_empty() {
                return Err("the URL has no socket path".into());
            }
            let addr = ConnectionAddr::Unix(url.path().into());
            (addr, query("virtual_host").or_else(|| query("db")))
        }
    };
    let db = match db_text.as_deref().map(|d| d.trim_start_matches('/')) {
        None | Some("") => 0,
        Some(text) => text.parse::<i64>().map_err(|_| format!("the database `{text}` is not a number"))?,
    };
    Ok(Target { addr, db, username, password })
}

/// The lists holding one queue, in kombu's order of priority steps, each key once.
pub fn queue_keys<'a>(layout: &'a RedisLayout, queue: &'a str) -> impl Iterator<Item = String> + 'a {
    let prefix = &layout.global_keyprefix;
    layout.priority_steps.iter().enumerate().filter_map(move |(i, &step)| {
        if layout.priority_steps[..i].contains(&step) {
            return None;
        }
        Some(if step == 0 { format!("{prefix}{queue}") } else { format!("{prefix}{queue}{}{step}", layout.sep) })
    })
}

/// Number of distinct keys [`queue_keys`] yields per queue.
fn keys_per_queue(layout: &RedisLayout) -> usize {
    let steps = &layout.priority_steps;
    steps.iter().enumerate().filter(|&(i, step)| !steps[..i].contains(step)).count()
}

/// The key of the unacked hash.
pub fn unacked_key(layout: &RedisLayout) -> String {
    format!("{}{}", layout.global_keyprefix, layout.unacked_key)
}

/// An entry of the unacked hash: `[message, exchange, routing_key]` (kombu's `QoS.append`).
#[derive(Deserialize)]
struct UnackedEntry<'a>(IgnoredAny, IgnoredAny, #[serde(borrow)] Cow<'a, str>);

/// The routing key of one entry of the unacked hash, or `None` if it is not kombu's format.
pub fn routing_key(entry: &[u8]) -> Option<Cow<'_, str>> {
    serde_json::from_slice::<UnackedEntry<'_>>(entry).ok().map(|e| e.2)
}

/// Counts the entries of kombu's unacked hash (`KEYS[1]`) whose routing key is one of `ARGV`,
/// one count per name in order; `false` (nil) when an entry is not kombu's
/// `[message, exchange, routing_key]`. The routing key is matched at the end of the value;
/// only a key with quotes or backslashes falls back to decoding the whole value.
pub const COUNT_UNACKED: &str = r#"
local index = {}
for i, name in ipairs(ARGV) do index[name] = i end
local counts = {}
for i = 1, #ARGV do counts[i] = 0 end
for _, entry in ipairs(redis.call('HVALS', KEYS[1])) do
  local key = nil
  if string.sub(entry, 1, 1) == '[' then
    key = string.match(string.sub(entry, -1024), ',%s*"([^"\]*)"%s*%]%s*$')
  end
  if key == nil then
    local ok, decoded = pcall(cjson.decode, entry)
    if not ok or type(decoded) ~= 'table' or type(decoded[3]) ~= 'string' or decoded[4] ~= nil then
      return false
    end
    key = decoded[3]
  end
  local i = index[key]
  if i then counts[i] = counts[i] + 1 end
end
return counts
"#;

/// Reserved messages per queue (in the order of `names`) from the values of the unacked hash.
/// `None` if an entry cannot be read: it could belong to any queue, so no count is certain.
pub fn count_reserved<'e>(names: &[String], entries: impl IntoIterator<Item = &'e [u8]>) -> Option<Vec<u64>> {
    let mut counts = vec![0u64; names.len()];
    for entry in entries {
        let key = routing_key(entry)?;
        if let Some(i) = names.iter().position(|n| *n == key) {
            counts[i] += 1;
        }
    }
    Some(counts)
}

/// Turns the pipeline's replies (every `LLEN`, queue by queue, then the `HVALS`) into figures.
pub fn tally(layout: &RedisLayout, names: &[String], replies: &[Value]) -> Result<Vec<QueueStats>, String> {
    let per_queue = keys_per_queue(layout);
    let lists = names.len() * per_queue;
    if replies.len() != lists + 1 {
        return Err(format!("expected {} replies to the pipeline, got {}", lists + 1, replies.len()));
    }
    let (lengths, unacked) = replies.split_at(lists);
    let reserved = match unacked.first() {
        // The script's answer: a count per queue, or nil for an unreadable entry.
        Some(Value::Nil) => None,
        Some(Value::Array(values)) if !values.is_empty() && values.iter().all(|v| matches!(v, Value::Int(_))) => {
            if values.len() != names.len() {
                return Err(format!("the unacked count returned {} numbers for {} queues", values.len(), names.len()));
            }
            let counts = values.iter().map(|v| match v {
                Value::Int(n) => u64::try_from(*n).map_err(|_| format!("the unacked count returned {n}")),
                _ => unreachable!("checked above"),
            });
            Some(counts.collect::<Result<Vec<_>, _>>()?)
        }
        // HVALS: the values themselves.
        Some(Value::Array(values)) => {
            let mut entries = Vec::with_capacity(values.len());
            for value in values {
                match value {
                    Value::BulkString(bytes) => entries.push(bytes.as_slice()),
                    other => return Err(format!("HVALS returned {other:?} instead of strings")),
                }
            }
            count_reserved(names, entries)
        }
        other => return Err(format!("the unacked hash read returned {other:?} instead of an array")),
    };
    let mut stats = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let mut backlog = 0u64;
        for reply in &lengths[i * per_queue..(i + 1) * per_queue] {
            match reply {
                Value::Int(n) => backlog += u64::try_from(*n).map_err(|_| format!("LLEN returned {n}"))?,
                other => return Err(format!("LLEN returned {other:?} instead of a number")),
            }
        }
        stats.push(QueueStats {
            name: name.clone(),
            backlog: Some(backlog),
            reserved: reserved.as_ref().map(|r| r[i]),
            consumers: None,
        });
    }
    Ok(stats)
}

impl RedisBroker {
    pub(crate) fn new(url: &Url, options: &BrokerOptions) -> Result<Self, BrokerError> {
        super::ensure_crypto_provider();
        let display = redact(url);
        let target = parse_url(url).map_err(|reason| BrokerError::InvalidUrl { broker: display.clone(), reason })?;
        let mut settings = RedisConnectionInfo::default().set_db(target.db);
        if let Some(user) = &target.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &target.password {
            settings = settings.set_password(password);
        }
        let info: ConnectionInfo = target
            .addr
            .into_connection_info()
            .map_err(|e| BrokerError::InvalidUrl { broker: display.clone(), reason: e.to_string() })?
            .set_redis_settings(settings);
        let client =
            redis::Client::open(info).map_err(|e| BrokerError::InvalidUrl { broker: display.clone(), reason: e.to_string() })?;
        Ok(Self {
            client,
            db: target.db,
            display,
            layout: options.redis.clone(),
            timeout: options.timeout,
            connection: shared_slot(url, options.timeout),
            scripts: AtomicBool::new(true),
        })
    }

    pub fn display_url(&self) -> &str {
        &self.display
    }

    /// Reads every queue of `names` and the unacked hash in one pipeline, within the timeout.
    pub async fn queues(&self, names: &[String]) -> Result<Vec<QueueStats>, BrokerError> {
        // NB: bound before matching: the timed-out read still holds the connection lock until
        // it is dropped, and the arms below take that lock.
        let outcome = tokio::time::timeout(self.timeout, self.read(names)).await;
        match outcome {
            Ok(outcome) => outcome,
            Err(_) => {
                // A connection that does not answer in time is not trusted again.
                *self.connection.lock().await = None;
                Err(BrokerError::Timeout { broker: self.display.clone(), what: "reading the queues", limit: self.timeout })
            }
        }
    }

    /// Drops connection number `number` from the slot, if it still holds it, so the next read
    /// (of any app sharing it) reconnects; one that replaced it meanwhile stays.
    async fn forget(&self, number: u64) {
        let mut slot = self.connection.lock().await;
        if slot.as_ref().is_some_and(|(n, _)| *n == number) {
            *slot = None;
        }
    }

    async fn read(&self, names: &[String]) -> Result<Vec<QueueStats>, BrokerError> {
        let (number, mut connection) = self.connection().await?;
        let result = self.read_on(&mut connection, names).await;
        if let Err((_, true)) = &result {
            self.forget(number).await;
        }
        result.map_err(|(error, _)| error)
    }

    /// The read on `connection`; a failure says whether the connection itself is lost (not one
    /// app's answer: a wrong key type, an unexpected reply).
    async fn read_on(
        &self,
        connection: &mut MultiplexedConnection,
        names: &[String],
    ) -> Result<Vec<QueueStats>, (BrokerError, bool)> {
        let lost =
            |e: &redis::RedisError| e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() || e.is_timeout();
        let mut pipe = redis::pipe();
        for name in names {
            for key in queue_keys(&self.layout, name) {
                pipe.cmd("LLEN").arg(key);
            }
        }
        let lists = pipe.clone();
        let scripted = self.scripts.load(Ordering::Relaxed);
        if scripted {
            pipe.cmd("EVAL").arg(COUNT_UNACKED).arg(1).arg(unacked_key(&self.layout)).arg(names);
        } else {
            pipe.cmd("HVALS").arg(unacked_key(&self.layout));
        }
        let failed = |e: redis::RedisError| {
            let lost = lost(&e);
            (self.error("reading the queues", e), lost)
        };
        let replies: Vec<Value> = match pipe.query_async(&mut *connection).await {
            Ok(replies) => replies,
            Err(error) if scripted && refuses_scripts(&error) => {
                tracing::info!(broker = %self.display, %error, "the broker refuses Lua scripts; reading the unacked hash with HVALS");
                self.scripts.store(false, Ordering::Relaxed);
                let mut pipe = lists;
                pipe.cmd("HVALS").arg(unacked_key(&self.layout));
                pipe.query_async(&mut *connection).await.map_err(failed)?
            }
            Err(error) => return Err(failed(error)),
        };
        tally(&self.layout, names, &replies)
            .map_err(|detail| (BrokerError::Unexpected { broker: self.display.clone(), detail }, false))
    }

    /// Publishes a remote-control command on the app's pidbox channel; whether any worker
    /// (a subscriber of the channel) received it.
    pub async fn control(&self, command: &super::control::Command) -> Result<bool, BrokerError> {
        let channel = super::control::redis_channel(&self.layout.global_keyprefix, self.db);
        let envelope = super::control::redis_envelope(command, &super::control::delivery_tag());
        let publish = async {
            let (_, mut connection) = self.connection().await?;
            let receivers: i64 = redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(envelope)
                .query_async(&mut connection)
                .await
                .map_err(|e| self.error("publishing a remote-control command", e))?;
            Ok::<_, BrokerError>(receivers > 0)
        };
        match tokio::time::timeout(self.timeout, publish).await {
            Ok(outcome) => outcome,
            Err(_) => Err(BrokerError::Timeout {
                broker: self.display.clone(),
                what: "publishing a remote-control command",
                limit: self.timeout,
            }),
        }
    }

    /// Whether the server publishes keyspace events for list pushes: its
    /// `notify-keyspace-events` holds `K` (keyspace channels) and `l` or `A` (list commands).
    /// Read with `CONFIG GET`, never set: the broker's configuration is its owner's. A server
    /// that refuses `CONFIG` (ACLs, managed services) counts as not publishing.
    pub async fn publishes_pushes(&self) -> Result<bool, BrokerError> {
        let ask = async {
            let (_, mut connection) = self.connection().await?;
            let reply: redis::RedisResult<Vec<String>> =
                redis::cmd("CONFIG").arg("GET").arg("notify-keyspace-events").query_async(&mut connection).await;
            Ok::<_, BrokerError>(
                reply.ok().and_then(|pair| pair.into_iter().nth(1)).is_some_and(|flags| publishes_list_events(&flags)),
            )
        };
        tokio::time::timeout(self.timeout, ask).await.unwrap_or_else(|_| {
            Err(BrokerError::Timeout {
                broker: self.display.clone(),
                what: "reading notify-keyspace-events",
                limit: self.timeout,
            })
        })
    }

    /// Follows pushes to the lists of `names` (every priority step) on their keyspace channels,
    /// calling `pushed` for each, on a connection of its own, until that connection ends. Owns
    /// what it needs: it runs as a task beside the reads.
    pub fn follow_pushes(
        &self,
        names: &[String],
        pushed: impl Fn() + Send + 'static,
    ) -> impl std::future::Future<Output = Result<(), BrokerError>> + Send + 'static {
        let channels: Vec<String> = names
            .iter()
            .flat_map(|name| queue_keys(&self.layout, name).collect::<Vec<_>>())
            .map(|key| format!("__keyspace@{}__:{key}", self.db))
            .collect();
        let (client, display, timeout) = (self.client.clone(), self.display.clone(), self.timeout);
        let broker = display.clone();
        let failed =
            move |what: &'static str, source: redis::RedisError| BrokerError::Redis { broker: broker.clone(), what, source };
        async move {
            let subscribe = async {
                let mut pubsub = client.get_async_pubsub().await.map_err(|e| failed("connecting to follow pushes", e))?;
                pubsub.subscribe(&channels).await.map_err(|e| failed("subscribing to keyspace events", e))?;
                Ok::<_, BrokerError>(pubsub)
            };
            let pubsub = match tokio::time::timeout(timeout, subscribe).await {
                Ok(subscribed) => subscribed?,
                Err(_) => {
                    return Err(BrokerError::Timeout { broker: display, what: "subscribing to keyspace events", limit: timeout });
                }
            };
            let mut messages = pubsub.into_on_message();
            while let Some(message) = futures::StreamExt::next(&mut messages).await {
                if is_push(message.get_payload_bytes()) {
                    pushed();
                }
            }
            Ok(())
        }
    }

    async fn connection(&self) -> Result<(u64, MultiplexedConnection), BrokerError> {
        static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut slot = self.connection.lock().await;
        if let Some((number, connection)) = slot.as_ref() {
            return Ok((*number, connection.clone()));
        }
        let config =
            AsyncConnectionConfig::new().set_connection_timeout(Some(self.timeout)).set_response_timeout(Some(self.timeout));
        let config = config.set_dns_resolver(super::dns::Resolver::shared());
        let connection =
            self.client.get_multiplexed_async_connection_with_config(&config).await.map_err(|e| self.error("connecting", e))?;
        let number = OPENED.fetch_add(1, Ordering::Relaxed);
        *slot = Some((number, connection.clone()));
        Ok((number, connection))
    }

    fn error(&self, what: &'static str, source: redis::RedisError) -> BrokerError {
        let broker = self.display.clone();
        // NB: a pipeline's error carries one error per command and no single code; NOAUTH
        // then shows only in the text.
        let text = source.to_string();
        if text.contains("NOAUTH") {
            let detail = "the broker requires a password and the URL gives none (NOAUTH)".into();
            BrokerError::Unauthorized { broker, detail }
        } else if source.kind() == redis::ErrorKind::AuthenticationFailed || text.contains("WRONGPASS") {
            BrokerError::Unauthorized { broker, detail: text }
        } else if source.is_timeout() {
            BrokerError::Timeout { broker, what, limit: self.timeout }
        } else {
            BrokerError::Redis { broker, what, source }
        }
    }
}

/// Whether a pipeline failed because the server will not run the count script (scripting
/// disabled by ACL, `EVAL` renamed or unknown), rather than for a reason HVALS would share.
fn refuses_scripts(error: &redis::RedisError) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    ["noperm", "unknown command", "eval", "script"].iter().any(|s| text.contains(s))
        && !text.contains("noauth")
        && !text.contains("wrongpass")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("valid URL")
    }

    #[test]
    fn list_pushes_are_published_with_keyspace_channels_and_list_or_all_events() {
        for on in ["Kl", "lK", "AK", "KEA", "Kgl$"] {
            assert!(publishes_list_events(on), "{on:?}");
        }
        // Keyevent channels only, other classes only, nothing.
        for off in ["El", "EA", "Kg$", "K", ""] {
            assert!(!publishes_list_events(off), "{off:?}");
        }
        for push in ["lpush", "rpush", "linsert"] {
            assert!(is_push(push.as_bytes()), "{push}");
        }
        for not in ["rpop", "lpop", "ltrim", "lset", "lrem", "del", "expired"] {
            assert!(!is_push(not.as_bytes()), "{not}");
        }
    }

    #[test]
    fn urls_give_host_db_and_credentials() {
        let t = parse_url(&url("redis://redis:6380/3")).expect("parses");
        assert_eq!(t, Target { addr: ConnectionAddr::Tcp("redis".into(), 6380), db: 3, username: None, password: None });
        let t = parse_url(&url("redis://:p%40ss@redis")).expect("parses");
        assert_eq!((t.db, t.username, t.password.as_deref()), (0, None, Some("p@ss")));
        let t = parse_url(&url("redis://celery:pw@redis/1")).expect("parses");
        assert_eq!((t.username.as_deref(), t.password.as_deref(), t.db), (Some("celery"), Some("pw"), 1));
        let t = parse_url(&url("rediss://redis:6390/0?ssl_cert_reqs=CERT_NONE")).expect("parses");
        assert_eq!(t.addr, ConnectionAddr::TcpTls { host: "redis".into(), port: 6390, insecure: true, tls_params: None });
        let t = parse_url(&url("rediss://redis/0")).expect("parses");
        assert!(matches!(t.addr, ConnectionAddr::TcpTls { insecure: false, .. }));
        let t = parse_url(&url("redis+socket:///run/redis.sock?virtual_host=2")).expect("parses");
        assert_eq!((t.addr, t.db), (ConnectionAddr::Unix("/run/redis.sock".into()), 2));
        assert!(parse_url(&url("redis://redis/zero")).is_err());
        assert!(parse_url(&url("rediss://redis/0?ssl_cert_reqs=maybe")).is_err());
    }

    #[test]
    fn keys_follow_kombu_priority_layout() {
        let layout = RedisLayout::default();
        let keys: Vec<_> = queue_keys(&layout, "celery").collect();
        assert_eq!(keys, ["celery", "celery\x06\x163", "celery\x06\x166", "celery\x06\x169"]);
        let layout = RedisLayout {
            sep: ":".into(),
            priority_steps: vec![0, 1, 1, 2],
            global_keyprefix: "app1_".into(),
            unacked_key: "unacked".into(),
        };
        let keys: Vec<_> = queue_keys(&layout, "q").collect();
        assert_eq!(keys, ["app1_q", "app1_q:1", "app1_q:2"]);
        assert_eq!(keys_per_queue(&layout), 3);
        assert_eq!(unacked_key(&layout), "app1_unacked");
    }

    #[test]
    fn unacked_entries_count_per_routing_key() {
        let names = vec!["celery".to_string(), "mail".to_string()];
        let entries: Vec<&[u8]> = vec![
            br#"[{"body": "e30=", "headers": {"x": "[\"a\", \"b\"]"}}, "celery", "celery"]"#,
            br#"[{"body": ""}, "", "mail"]"#,
            br#"[{"body": ""}, "celery", "celery"]"#,
            br#"[{"body": ""}, "other", "other"]"#,
        ];
        assert_eq!(count_reserved(&names, entries), Some(vec![2, 1]));
        assert_eq!(routing_key(br#"[{}, "", "ma\"il"]"#).as_deref(), Some("ma\"il"));
        assert_eq!(count_reserved(&names, [b"not json".as_slice()]), None);
        assert_eq!(count_reserved(&names, [br#"[{}, "x"]"#.as_slice()]), None);
    }

    #[test]
    fn replies_sum_over_priority_lists() {
        let layout = RedisLayout::default();
        let names = vec!["a".to_string(), "b".to_string()];
        let mut replies: Vec<Value> = [1, 2, 0, 3, 0, 0, 0, 5].into_iter().map(Value::Int).collect();
        replies.push(Value::Array(vec![Value::BulkString(br#"[{}, "", "b"]"#.to_vec())]));
        let stats = tally(&layout, &names, &replies).expect("tallies");
        assert_eq!(stats[0], QueueStats { name: "a".into(), backlog: Some(6), reserved: Some(0), consumers: None });
        assert_eq!(stats[1], QueueStats { name: "b".into(), backlog: Some(5), reserved: Some(1), consumers: None });

        replies.pop();
        assert!(tally(&layout, &names, &replies).is_err(), "a missing HVALS reply is an error");
        replies.push(Value::Array(vec![Value::BulkString(b"garbage".to_vec())]));
        let stats = tally(&layout, &names, &replies).expect("tallies");
        assert_eq!((stats[0].backlog, stats[0].reserved), (Some(6), None), "unreadable unacked → unknown");
        replies[0] = Value::Nil;
        assert!(tally(&layout, &names, &replies).is_err());
    }

    #[test]
    fn the_scripts_counts_are_read_as_they_come() {
        let layout = RedisLayout::default();
        let names = vec!["a".to_string(), "b".to_string()];
        let mut replies: Vec<Value> = [1, 0, 0, 0, 2, 0, 0, 0].into_iter().map(Value::Int).collect();
        replies.push(Value::Array(vec![Value::Int(4), Value::Int(0)]));
        let stats = tally(&layout, &names, &replies).expect("tallies");
        assert_eq!((stats[0].reserved, stats[1].reserved), (Some(4), Some(0)));
        *replies.last_mut().unwrap() = Value::Nil;
        assert_eq!(tally(&layout, &names, &replies).expect("tallies")[0].reserved, None, "nil: an unreadable entry");
        *replies.last_mut().unwrap() = Value::Array(vec![Value::Int(4)]);
        assert!(tally(&layout, &names, &replies).is_err(), "one count for two queues");
    }
}
