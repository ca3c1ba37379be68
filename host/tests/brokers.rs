//! Broker metrics against real brokers started by this harness: Debian's `redis-server` and
//! `rabbitmq-server` (with its management plugin), each on free loopback ports in its own
//! temporary directory, killed when the test ends. Messages are published and held unacked by
//! the real Celery and kombu (a venv made by `hack/install-test-deps.sh`), so the key layout
//! read here is the one Celery writes, not the one this code assumes.
//!
//! Run: `hack/install-test-deps.sh && cargo test -p celery-operator --test brokers`.

#[path = "common/servers.rs"]
mod servers;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use servers::{STARTUP, Server, free_port, python, redis_server, wait_for};

use celery_operator::metrics::observe::observe;
use celery_operator::metrics::{BrokerError, BrokerOptions, QueueStats, RedisLayout, connect};

/// Publishes with Celery (`publish QUEUE PRIORITY COUNT ...`), or takes messages and keeps
/// them unacknowledged until its stdin closes (`hold QUEUE COUNT`): with `basic_get` on Redis,
/// as a consumer with that prefetch on AMQP.
const CLIENT: &str = r#"
import json, os, sys
from celery import Celery
url, options, mode, *rest = sys.argv[1:]
app = Celery("brokers_test", broker=url)
app.conf.broker_transport_options = json.loads(options)
if mode == "publish":
    for i in range(0, len(rest), 3):
        queue, priority, count = rest[i], int(rest[i + 1]), int(rest[i + 2])
        for _ in range(count):
            app.send_task("brokers_test.work", args=(1,), queue=queue, priority=priority)
    print("published", flush=True)
else:
    queue, count = rest[0], int(rest[1])
    held = []
    with app.connection() as conn:
        channel = conn.default_channel
        if url.startswith("amqp"):
            channel.basic_qos(0, count, False)
            channel.basic_consume(queue, callback=held.append)
            while len(held) < count:
                conn.drain_events(timeout=30)
        else:
            while len(held) < count:
                message = channel.basic_get(queue, no_ack=False)
                assert message is not None, "queue empty"
                held.append(message)
        print("held", len(held), flush=True)
        sys.stdin.read()
        os._exit(0)
"#;

fn client(url: &str, options: &str, args: &[&str]) -> Command {
    let dir = std::env::temp_dir().join("celery-operator-brokers-test");
    std::fs::create_dir_all(&dir).expect("script dir");
    let script = dir.join("client.py");
    std::fs::write(&script, CLIENT).expect("script");
    let mut command = Command::new(python());
    command.arg(script).args([url, options]).args(args);
    command
}

fn publish(url: &str, options: &str, args: &[&str]) {
    let out = client(url, options, &[&["publish"], args].concat()).output().expect("python runs");
    assert!(out.status.success(), "publishing failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A kombu client holding messages unacknowledged; they stay so until this is dropped.
struct Holder {
    child: Child,
    _stdin: ChildStdin,
}

impl Holder {
    fn start(url: &str, options: &str, queue: &str, count: u32) -> Holder {
        let mut child = client(url, options, &["hold", queue, &count.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python runs");
        let stdin = child.stdin.take().expect("stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("reads");
        assert_eq!(line.trim(), format!("held {count}"), "the holder did not get its messages");
        Holder { child, _stdin: stdin }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn stats(name: &str, backlog: u64, reserved: u64, consumers: Option<u32>) -> QueueStats {
    QueueStats { name: name.into(), backlog: Some(backlog), reserved: Some(reserved), consumers }
}

fn options() -> BrokerOptions {
    BrokerOptions { timeout: Duration::from_secs(5), ..BrokerOptions::default() }
}

#[tokio::test]
async fn redis_priorities_and_unacked_as_celery_writes_them() {
    let (_server, port) = redis_server(&[]);
    let url = format!("redis://127.0.0.1:{port}/3");
    // Priorities 0..9 land on kombu's steps [0, 3, 6, 9]: 0 → `q`, 3 and 5 → `q\x06\x163`, 9 → `q\x06\x169`.
    publish(&url, "{}", &["work", "0", "2", "work", "3", "1", "work", "5", "3", "work", "9", "4", "mail", "0", "2"]);

    let client = redis::Client::open(url.as_str()).expect("client");
    let mut raw = client.get_multiplexed_async_connection().await.expect("connects");
    for key in ["work", "work\x06\x163", "work\x06\x169"] {
        let exists: bool = redis::cmd("EXISTS").arg(key).query_async(&mut raw).await.expect("EXISTS");
        assert!(exists, "Celery wrote no list {key:?}: the layout assumed here is wrong");
    }

    let broker = connect(&url, &options()).expect("connects");
    let read = broker.queues(&names(&["work", "mail", "absent"])).await.expect("reads");
    assert_eq!(read, [stats("work", 10, 0, None), stats("mail", 2, 0, None), stats("absent", 0, 0, None)]);

    // kombu takes from the highest priority list first: 2 from `work`, then 1 from `work\x06\x163`.
    let _held_work = Holder::start(&url, "{}", "work", 3);
    let _held_mail = Holder::start(&url, "{}", "mail", 1);
    let unacked: u64 = redis::cmd("HLEN").arg("unacked").query_async(&mut raw).await.expect("HLEN");
    assert_eq!(unacked, 4, "kombu keeps held messages in the unacked hash");
    let read = broker.queues(&names(&["work", "mail"])).await.expect("reads");
    assert_eq!(read, [stats("work", 7, 3, None), stats("mail", 1, 1, None)]);

    // The same through `observe`, the JSON a user sees.
    let observed = observe(&url, &names(&["work"]), &options()).await.expect("observes");
    let json = serde_json::to_value(&observed).expect("serialises");
    assert_eq!(json["queues"][0], serde_json::json!({"name": "work", "backlog": 7, "reserved": 3, "consumers": null}));
    assert_eq!(json["broker"], format!("redis://127.0.0.1:{port}/3"));
}

/// kombu's unacked entries with large message bodies: the count crosses the network as a few
/// numbers, not the bodies; a user whose ACL forbids scripts gets the same figures via HVALS.
#[tokio::test]
async fn redis_unacked_bodies_stay_on_the_server() {
    let (_server, port) = redis_server(&[
        "--user",
        "noscript",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
        "-@scripting",
        "--user",
        "default",
        "on",
        "nopass",
        "~*",
        "&*",
        "+@all",
    ]);
    let url = format!("redis://127.0.0.1:{port}/0");
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut raw = client.get_multiplexed_async_connection().await.expect("connects");
    let body = format!("{{\"body\": \"{}\", \"headers\": {{}}}}", "x".repeat(256 << 10));
    for (tag, queue) in [("a", "work"), ("b", "work"), ("c", "mail"), ("d", "other")] {
        let entry = format!("[{body}, \"\", \"{queue}\"]");
        let _: () = redis::cmd("HSET").arg("unacked").arg(tag).arg(entry).query_async(&mut raw).await.expect("HSET");
    }
    let _: () =
        redis::cmd("HSET").arg("unacked").arg("e").arg(r#"[{}, "", "ma\"il"]"#).query_async(&mut raw).await.expect("HSET");
    let sent = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("INFO stats")
    };
    let before = sent(redis::cmd("INFO").arg("stats").query_async(&mut raw).await.expect("INFO"));
    let broker = connect(&url, &options()).expect("connects");
    let read = broker.queues(&names(&["work", "mail", "ma\"il"])).await.expect("reads");
    let after = sent(redis::cmd("INFO").arg("stats").query_async(&mut raw).await.expect("INFO"));
    assert_eq!(read, [stats("work", 0, 2, None), stats("mail", 0, 1, None), stats("ma\"il", 0, 1, None)]);
    // 1 MiB of bodies in the hash; the read (and the INFO reply) is a few hundred bytes.
    assert!(after - before < 16 << 10, "{} bytes left Redis for one read", after - before);

    let refused = connect(&format!("redis://noscript:pw@127.0.0.1:{port}/0"), &options()).expect("connects");
    let read = refused.queues(&names(&["work", "mail"])).await.expect("reads without scripts");
    assert_eq!(read, [stats("work", 0, 2, None), stats("mail", 0, 1, None)]);
}

#[tokio::test]
async fn redis_transport_options_prefix_separator_and_steps() {
    let (_server, port) = redis_server(&[]);
    let url = format!("redis://127.0.0.1:{port}/0");
    let transport = r#"{"global_keyprefix": "app1:", "sep": ":", "priority_steps": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}"#;
    publish(&url, transport, &["q", "0", "1", "q", "4", "2", "q", "7", "3"]);
    let _held = Holder::start(&url, transport, "q", 2);

    let layout = RedisLayout {
        sep: ":".into(),
        priority_steps: (0..10).collect(),
        global_keyprefix: "app1:".into(),
        unacked_key: "unacked".into(),
    };
    let broker = connect(&url, &BrokerOptions { redis: layout, ..options() }).expect("connects");
    assert_eq!(broker.queues(&names(&["q"])).await.expect("reads"), [stats("q", 4, 2, None)]);

    // Without the prefix the app's keys are invisible: its queue reads as empty, as it would
    // for a missing key.
    let plain = connect(&url, &options()).expect("connects");
    assert_eq!(plain.queues(&names(&["q"])).await.expect("reads"), [stats("q", 0, 0, None)]);
}

#[tokio::test]
async fn redis_password_and_acl_user() {
    let (_server, port) = redis_server(&["--requirepass", "s3cret", "--user", "celery", "on", ">pw-celery", "~*", "&*", "+@all"]);
    let read = |url: String| async move { connect(&url, &options()).expect("connects").queues(&names(&["celery"])).await };

    assert_eq!(read(format!("redis://:s3cret@127.0.0.1:{port}/0")).await.expect("reads"), [stats("celery", 0, 0, None)]);
    assert_eq!(read(format!("redis://celery:pw-celery@127.0.0.1:{port}/1")).await.expect("reads"), [stats("celery", 0, 0, None)]);

    for (url, password) in [
        (format!("redis://:wrong-pass@127.0.0.1:{port}/0"), "wrong-pass"),
        (format!("redis://celery:bad-pw@127.0.0.1:{port}/0"), "bad-pw"),
        (format!("redis://nobody:pw-celery@127.0.0.1:{port}/0"), "pw-celery"),
    ] {
        let error = read(url).await.expect_err("refused");
        let message = error.to_string();
        assert!(matches!(error, BrokerError::Unauthorized { .. }), "{message}");
        assert!(message.contains(&format!("127.0.0.1:{port}")), "names the broker: {message}");
        assert!(!message.contains(password), "never shows the password: {message}");
    }
    let error = read(format!("redis://127.0.0.1:{port}/0")).await.expect_err("no password");
    assert!(matches!(error, BrokerError::Unauthorized { .. }), "{error}");
}

/// A figure of Redis's own `INFO`.
async fn info(raw: &mut redis::aio::MultiplexedConnection, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("everything").query_async(raw).await.expect("INFO");
    let prefix = format!("{field}:");
    info.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|n| n.trim().parse().ok()).expect("an INFO field")
}

/// The clients connected to Redis now.
async fn connected_clients(raw: &mut redis::aio::MultiplexedConnection) -> u64 {
    info(raw, "connected_clients").await
}

/// Apps that read the same Redis as the same user share one connection (10,000 apps held
/// 10,000 sockets before); another user, password or database gets its own; a connection that
/// broke is replaced for all of them, and an app whose own read fails (a queue key of the
/// wrong type) does not take the shared connection down with it.
#[tokio::test]
async fn apps_on_one_redis_share_one_connection_per_user() {
    let (_server, port) = redis_server(&["--requirepass", "s3cret", "--user", "celery", "on", ">pw-celery", "~*", "&*", "+@all"]);
    let admin = redis::Client::open(format!("redis://:s3cret@127.0.0.1:{port}/0")).expect("client");
    let mut raw = admin.get_multiplexed_async_connection().await.expect("connects");
    let baseline = connected_clients(&mut raw).await;

    let url = format!("redis://celery:pw-celery@127.0.0.1:{port}/0");
    let apps: Vec<_> = (0..50).map(|_| connect(&url, &options()).expect("connects")).collect();
    for (i, app) in apps.iter().enumerate() {
        app.queues(&names(&[&format!("queue-{i}")])).await.expect("reads");
    }
    assert_eq!(connected_clients(&mut raw).await - baseline, 1, "50 apps, one user: one connection");

    let other_db = connect(&format!("redis://celery:pw-celery@127.0.0.1:{port}/1"), &options()).expect("connects");
    other_db.queues(&names(&["celery"])).await.expect("reads");
    let other_user = connect(&format!("redis://:s3cret@127.0.0.1:{port}/0"), &options()).expect("connects");
    other_user.queues(&names(&["celery"])).await.expect("reads");
    assert_eq!(connected_clients(&mut raw).await - baseline, 3, "another database and another user: their own");

    // One app's queue is not a list: its read fails, the others keep the connection.
    let _: () = redis::cmd("SET").arg("queue-0").arg("not a list").query_async(&mut raw).await.expect("SET");
    let opened = info(&mut raw, "total_connections_received").await;
    apps[0].queues(&names(&["queue-0"])).await.expect_err("a string is no queue");
    apps[1].queues(&names(&["queue-1"])).await.expect("reads");
    assert_eq!(info(&mut raw, "total_connections_received").await, opened, "no reconnection for one app's error");
    let _: i64 = redis::cmd("CLIENT").arg("KILL").arg("USER").arg("celery").query_async(&mut raw).await.expect("CLIENT KILL");
    // The killed connection fails the next read on it; the read after reconnects, for all.
    let _ = apps[1].queues(&names(&["queue-1"])).await;
    for (i, app) in apps.iter().enumerate().skip(1) {
        app.queues(&names(&[&format!("queue-{i}")])).await.expect("reads again");
    }
    let _ = other_db.queues(&names(&["celery"])).await;
    other_db.queues(&names(&["celery"])).await.expect("reads again");
    assert_eq!(connected_clients(&mut raw).await - baseline, 3, "one again for the 50 apps");
}

#[tokio::test]
async fn redis_down_or_silent_is_an_error_not_zero() {
    // Nothing listens on this port: refused at once.
    let port = free_port();
    let broker = connect(&format!("redis://:pw@127.0.0.1:{port}/0"), &options()).expect("connects lazily");
    let error = broker.queues(&names(&["celery"])).await.expect_err("down");
    let message = error.to_string();
    assert!(message.contains(&format!("127.0.0.1:{port}")) && message.contains("connecting"), "{message}");
    assert!(!message.contains(":pw@"), "{message}");

    // A listener that accepts and never answers: the timeout turns it into an error.
    let silent = TcpListener::bind("127.0.0.1:0").expect("binds");
    let port = silent.local_addr().expect("addr").port();
    let short = BrokerOptions { timeout: Duration::from_millis(300), ..BrokerOptions::default() };
    let broker = connect(&format!("redis://127.0.0.1:{port}/0"), &short).expect("connects lazily");
    let error = broker.queues(&names(&["celery"])).await.expect_err("silent");
    assert!(matches!(error, BrokerError::Timeout { .. }), "{error}");

    // A server that goes away between two reads: the second read fails.
    let (server, port) = redis_server(&[]);
    let broker = connect(&format!("redis://127.0.0.1:{port}/0"), &options()).expect("connects");
    broker.queues(&names(&["celery"])).await.expect("reads");
    drop(server);
    broker.queues(&names(&["celery"])).await.expect_err("the server is gone");
}

/// A RabbitMQ node with the management plugin, on free ports, in its own directories.
fn rabbitmq_server() -> (Server, u16, u16) {
    let (amqp, management, dist) = (free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().expect("temp dir");
    let path = |name: &str| dir.path().join(name);
    for sub in ["mnesia", "log", "home"] {
        std::fs::create_dir_all(path(sub)).expect("dirs");
    }
    std::fs::write(path("enabled_plugins"), "[rabbitmq_management].\n").expect("plugins file");
    let config = format!(
        "management.tcp.port = {management}\nmanagement.tcp.ip = 127.0.0.1\n\
         collect_statistics_interval = 500\n"
    );
    std::fs::write(path("rabbitmq.conf"), config).expect("config");
    // NB: /usr/sbin/rabbitmq-server switches to the `rabbitmq` user, which cannot write in
    // this directory; the script it wraps runs as the caller. HOME holds the Erlang cookie.
    let mut command = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
    command
        .env("HOME", path("home"))
        // NB: without this the script keeps the Erlang VM as a child of its own; with it, the
        // script execs the VM, so killing the process stops the node (its helpers exit with it).
        .env("RUNNING_UNDER_SYSTEMD", "true")
        .env("RABBITMQ_NODENAME", format!("celery-operator-test-{amqp}@localhost"))
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", amqp.to_string())
        .env("RABBITMQ_DIST_PORT", dist.to_string())
        .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
        .env("RABBITMQ_LOG_BASE", path("log"))
        .env("RABBITMQ_LOGS", "-")
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
        .env("RABBITMQ_CONFIG_FILE", path("rabbitmq.conf"))
        .env("RABBITMQ_PID_FILE", path("pid"));
    let server = Server::spawn(command, dir);
    wait_for("rabbitmq-server", || management_api(management, "GET", "/api/overview", "").is_some_and(|(s, _)| s == 200));
    (server, amqp, management)
}

/// A request to the management API as guest, by hand, to set the scene.
fn management_api(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    // NB: while the node boots, its listener may accept and stay silent; never block on it.
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    // guest:guest
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    Some((status, response))
}

fn must(port: u16, method: &str, path: &str, body: &str) {
    let (status, response) = management_api(port, method, path, body).expect("management API answers");
    assert!((200..300).contains(&status), "{method} {path}: {response}");
}

/// Reads until the figures match: the management API refreshes statistics periodically.
async fn eventually(broker: &celery_operator::metrics::Broker, queues: &[String], expected: &[QueueStats]) {
    let deadline = Instant::now() + STARTUP;
    loop {
        let read = broker.queues(queues).await.expect("reads");
        if read == expected {
            return;
        }
        assert!(Instant::now() < deadline, "the management API still reports {read:?}, expected {expected:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One node for every RabbitMQ case: it takes seconds to start.
#[tokio::test]
async fn rabbitmq_management_api() {
    let (server, amqp, management) = rabbitmq_server();

    // The default vhost `/`, with Celery publishing (it declares the queue) and a kombu
    // consumer holding two messages with prefetch 2.
    let url = format!("amqp://guest:guest@127.0.0.1:{amqp}//");
    publish(&url, "{}", &["work", "0", "5"]);
    let broker = connect(&url, &BrokerOptions { management_url: Some(format!("http://127.0.0.1:{management}")), ..options() })
        .expect("connects");
    let queues = names(&["work", "absent"]);
    eventually(&broker, &queues, &[stats("work", 5, 0, Some(0)), stats("absent", 0, 0, Some(0))]).await;
    let held = Holder::start(&url, "{}", "work", 2);
    eventually(&broker, &queues, &[stats("work", 3, 2, Some(1)), stats("absent", 0, 0, Some(0))]).await;
    drop(held);

    // A vhost whose name needs encoding, set up through the API; the URL's path names it.
    must(management, "PUT", "/api/vhosts/team%2Fa", "");
    must(management, "PUT", "/api/permissions/team%2Fa/guest", r#"{"configure":".*","write":".*","read":".*"}"#);
    must(management, "PUT", "/api/queues/team%2Fa/jobs", r#"{"durable":true}"#);
    for _ in 0..4 {
        let publish = r#"{"properties":{},"routing_key":"jobs","payload":"x","payload_encoding":"string"}"#;
        must(management, "POST", "/api/exchanges/team%2Fa/amq.default/publish", publish);
    }
    let vhost_url = format!("amqp://guest:guest@127.0.0.1:{amqp}/team%2Fa");
    let in_vhost =
        connect(&vhost_url, &BrokerOptions { management_url: Some(format!("http://127.0.0.1:{management}")), ..options() })
            .expect("connects");
    eventually(&in_vhost, &names(&["jobs"]), &[stats("jobs", 4, 0, Some(0))]).await;
    // Same queue name on `/` does not exist: 0 there, not the vhost's 4.
    eventually(&broker, &names(&["jobs"]), &[stats("jobs", 0, 0, Some(0))]).await;

    // A vhost that does not exist is an error, not empty queues.
    let missing = connect(
        &format!("amqp://guest:guest@127.0.0.1:{amqp}/nope"),
        &BrokerOptions { management_url: Some(format!("http://127.0.0.1:{management}")), ..options() },
    )
    .expect("connects");
    let error = missing.queues(&names(&["work"])).await.expect_err("no such vhost");
    assert!(error.to_string().contains("vhost `nope` does not exist"), "{error}");

    // Wrong credentials: from the AMQP URL (the default) or the management URL.
    let wrong = connect(
        &format!("amqp://guest:not-it@127.0.0.1:{amqp}//"),
        &BrokerOptions { management_url: Some(format!("http://127.0.0.1:{management}")), ..options() },
    )
    .expect("connects");
    let error = wrong.queues(&names(&["work"])).await.expect_err("refused");
    assert!(matches!(error, BrokerError::Unauthorized { .. }), "{error}");
    assert!(!error.to_string().contains("not-it"), "{error}");
    let wrong = connect(
        &url,
        &BrokerOptions { management_url: Some(format!("http://admin:hunter2@127.0.0.1:{management}")), ..options() },
    )
    .expect("connects");
    let error = wrong.queues(&names(&["work"])).await.expect_err("refused");
    assert!(matches!(error, BrokerError::Unauthorized { .. }) && !error.to_string().contains("hunter2"), "{error}");

    // The broker goes down: an error naming it, never zeros.
    drop(server);
    let error = broker.queues(&names(&["work"])).await.expect_err("down");
    assert!(error.to_string().contains(&format!("127.0.0.1:{management}")), "{error}");
}

/// A worker of the example app under the node name `celery@<node>`, killed on drop.
fn example_worker(url: &str, node: &str) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../example");
    let mut command = Command::new(python());
    command.env("CELERY_BROKER_URL", url).env("PYTHONPATH", example);
    command.args(["-m", "celery", "--app=app:celery_app", "worker", "--queues=celery", "--concurrency=1", "--loglevel=info"]);
    command.arg(format!("--hostname=celery@{node}"));
    Server::spawn(command, dir)
}

/// The queues `celery@<node>` consumes from, as `celery inspect active_queues` reports them;
/// `None` while it does not answer.
fn active_queues(url: &str, node: &str) -> Option<Vec<String>> {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../example");
    let out = Command::new(python())
        .current_dir(example)
        .env("CELERY_BROKER_URL", url)
        .args(["-m", "celery", "--app=app:celery_app", "inspect", "active_queues", "-j", "--timeout=3"])
        .arg(format!("--destination=celery@{node}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(text.lines().last()?).ok()?;
    let queues = json.get(format!("celery@{node}"))?.as_array()?;
    Some(queues.iter().filter_map(|q| q["name"].as_str().map(String::from)).collect())
}

/// Waits until `celery@<node>` consumes from exactly `want`.
fn wait_queues(url: &str, node: &str, want: &[&str]) {
    let deadline = Instant::now() + STARTUP;
    loop {
        let got = active_queues(url, node);
        if got.as_deref().is_some_and(|q| q == want) {
            return;
        }
        assert!(Instant::now() < deadline, "celery@{node} consumes from {got:?}, expected {want:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `cancel_consumer` and `add_consumer` as the operator sends them reach real Celery workers on
/// both brokers, addressed to one worker only: the other keeps consuming. On Redis through a
/// `globalKeyprefix` too, which moves the pidbox channel with the rest of the app's keys.
#[tokio::test]
async fn remote_control_stops_and_resumes_a_real_worker() {
    use celery_operator::metrics::control::Command as Control;
    let (_redis, port) = redis_server(&[]);
    let (_rabbit, amqp, management) = rabbitmq_server();
    let cases = [
        (format!("redis://127.0.0.1:{port}/2"), BrokerOptions { ..options() }),
        (
            format!("amqp://guest:guest@127.0.0.1:{amqp}//"),
            BrokerOptions { management_url: Some(format!("http://127.0.0.1:{management}")), ..options() },
        ),
    ];
    for (url, options) in cases {
        let broker = connect(&url, &options).expect("connects");
        let (_w1, _w2) = (example_worker(&url, "w1"), example_worker(&url, "w2"));
        wait_queues(&url, "w1", &["celery"]);
        wait_queues(&url, "w2", &["celery"]);

        let heard = broker.control(&Control::cancel_consumer("celery", vec!["celery@w1".into()])).await.expect("sent");
        assert!(heard, "{url}: the broker delivered it to someone");
        wait_queues(&url, "w1", &[]);
        assert_eq!(active_queues(&url, "w2").as_deref(), Some(&["celery".to_string()][..]), "{url}: w2 was not addressed");

        broker.control(&Control::add_consumer("celery", vec!["celery@w1".into()])).await.expect("sent");
        wait_queues(&url, "w1", &["celery"]);
    }

    // Redis with a global key prefix: the workers listen on the prefixed channel.
    let url = format!("redis://127.0.0.1:{port}/3");
    let prefixed =
        BrokerOptions { redis: RedisLayout { global_keyprefix: "shop:".into(), ..RedisLayout::default() }, ..options() };
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("prefixed.py");
    std::fs::write(
        &config,
        "from app import celery_app\ncelery_app.conf.broker_transport_options = {'global_keyprefix': 'shop:'}\n",
    )
    .expect("config");
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../example");
    let mut command = Command::new(python());
    command.env("CELERY_BROKER_URL", &url).env("PYTHONPATH", format!("{}:{}", example.display(), dir.path().display()));
    command.args([
        "-m",
        "celery",
        "--app=prefixed:celery_app",
        "worker",
        "--queues=celery",
        "--concurrency=1",
        "--hostname=celery@w3",
    ]);
    let _w3 = Server::spawn(command, tempfile::tempdir().expect("temp dir"));
    let broker = connect(&url, &prefixed).expect("connects");
    let unprefixed = connect(&url, &options()).expect("connects");
    // The inspect command runs without the prefix, so the effect is read from the worker's log.
    let deadline = Instant::now() + STARTUP;
    loop {
        if broker.control(&Control::cancel_consumer("celery", vec!["celery@w3".into()])).await.expect("sent") {
            break;
        }
        assert!(Instant::now() < deadline, "no worker listens on the prefixed channel");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        !unprefixed.control(&Control::cancel_consumer("celery", vec!["celery@w3".into()])).await.expect("sent"),
        "nobody listens on the unprefixed channel"
    );
}

/// The calls of a Redis command the server has answered since it started.
async fn calls(raw: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(raw).await.expect("INFO");
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a count"))
}

/// An app's loops (its workerSpec and two worker groups) share one reader: three loops asking
/// at the same tick cost one round trip for all their queues (one EVAL: the queue
/// read is one pipeline with one script), and each gets its own queues, in its own order.
#[tokio::test]
async fn the_loops_of_one_app_share_one_broker_read() {
    use celery_operator::autoscale::reader::AppReader;
    let (server, port) = redis_server(&[]);
    let url = format!("redis://127.0.0.1:{port}/0");
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut raw = client.get_multiplexed_async_connection().await.expect("connects");
    for (queue, n) in [("default", 3), ("reports", 2)] {
        for _ in 0..n {
            let _: i64 = redis::cmd("LPUSH").arg(queue).arg("{}").query_async(&mut raw).await.expect("LPUSH");
        }
    }
    // Never used: the broker URL is inline, so no Secret is read.
    let kube = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().expect("URL"))).expect("client");
    let mut reader = AppReader::new(kube, &app_on(&url), options());
    reader.want(None, Some(&names(&["default"])));
    reader.want(Some("reports"), Some(&names(&["reports", "default"])));
    reader.want(Some("webhooks"), Some(&names(&["webhooks"])));
    reader.want(Some("cpu-only"), None);

    let before = calls(&mut raw, "eval").await;
    // The three loops' tick.
    let (tick, interval) = (Instant::now(), Duration::from_secs(1));
    let default = reader.queues(&names(&["default"]), tick, interval).await.expect("reads");
    let reports = reader.queues(&names(&["reports", "default"]), tick, interval).await.expect("reads");
    let webhooks = reader.queues(&names(&["webhooks"]), tick, interval).await.expect("reads");
    assert_eq!(calls(&mut raw, "eval").await - before, 1, "one round trip for the three loops");
    // Each queue once: its four lists, one per priority step of kombu's default [0, 3, 6, 9].
    assert_eq!(calls(&mut raw, "llen").await, 3 * 4, "each queue read once");
    assert_eq!(default, [stats("default", 3, 0, None)]);
    assert_eq!(reports, [stats("reports", 2, 0, None), stats("default", 3, 0, None)]);
    assert_eq!(webhooks, [stats("webhooks", 0, 0, None)]);

    // At the next tick, a new read, still for all of them.
    let again = reader.queues(&names(&["webhooks"]), Instant::now(), interval).await.expect("reads");
    assert_eq!(again, [stats("webhooks", 0, 0, None)]);
    assert_eq!(calls(&mut raw, "eval").await - before, 2);
    assert_eq!(calls(&mut raw, "llen").await, 2 * 3 * 4);

    // A broker that does not answer is backed off once for the app: the next loop gets the
    // failure without a request of its own, and with when it is tried again.
    drop(server);
    let failed = reader.queues(&names(&["default"]), Instant::now(), interval).await.unwrap_err();
    assert!(failed.starts_with("spec.broker: broker redis://127.0.0.1:"), "{failed}");
    assert!(reader.retry_at().is_some(), "backing off");
    let second = reader.queues(&names(&["reports"]), Instant::now(), interval).await.unwrap_err();
    assert_eq!(second, failed, "the same failure, not another attempt");
}

/// How many subscribers the keyspace channel of `key` (database 0) has.
async fn subscribers(raw: &mut redis::aio::MultiplexedConnection, key: &str) -> u64 {
    let reply: (String, u64) =
        redis::cmd("PUBSUB").arg("NUMSUB").arg(format!("__keyspace@0__:{key}")).query_async(raw).await.expect("PUBSUB");
    reply.1
}

async fn notify_flags(raw: &mut redis::aio::MultiplexedConnection) -> String {
    let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg("notify-keyspace-events").query_async(raw).await.expect("CONFIG");
    pair.get(1).cloned().unwrap_or_default()
}

/// The app `web/shop` on the broker at `url`.
fn app_on(url: &str) -> celery_operator::crd::Celery {
    serde_yaml::from_str(&format!(
        "
apiVersion: celeryproject.org/v1alpha1
kind: Celery
metadata: {{name: shop, namespace: web}}
spec:
  common: {{appName: shop, celeryApp: 'app:celery_app', image: img}}
  broker: {{url: '{url}'}}
"
    ))
    .expect("parses")
}

/// A Redis started with `extra` arguments, a connection to it, and the reader of an app on it
/// whose one loop reads the queue `work`.
async fn reader_of_work(
    extra: &[&str],
) -> (Server, redis::aio::MultiplexedConnection, celery_operator::autoscale::reader::AppReader) {
    let (server, port) = redis_server(extra);
    let url = format!("redis://127.0.0.1:{port}/0");
    let client = redis::Client::open(url.as_str()).expect("client");
    let raw = client.get_multiplexed_async_connection().await.expect("connects");
    // Never used: the broker URL is inline, so no Secret is read.
    let kube = kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().expect("URL"))).expect("client");
    let mut reader = celery_operator::autoscale::reader::AppReader::new(kube, &app_on(&url), options());
    reader.want(None, Some(&names(&["work"])));
    (server, raw, reader)
}

/// A Redis whose owner turned keyspace events on: a push to queues the last read found empty
/// (on any priority list, as Celery writes them) wakes the app's loops, once per empty read; a
/// push to a queue with a backlog, or a pop, does not. The broker's configuration is read, never
/// changed.
#[tokio::test]
async fn a_push_to_an_empty_queue_wakes_the_loops_where_redis_publishes_keyspace_events() {
    let (_server, mut raw, mut reader) = reader_of_work(&["--notify-keyspace-events", "Kl"]).await;
    let work = names(&["work"]);
    let mut pushes = reader.pushes();
    let interval = Duration::from_secs(1);
    let wake = async |pushes: &mut tokio::sync::watch::Receiver<u64>| {
        tokio::time::timeout(Duration::from_secs(30), pushes.changed()).await.is_ok()
    };
    let quiet = async |pushes: &mut tokio::sync::watch::Receiver<u64>| {
        tokio::time::sleep(Duration::from_millis(500)).await;
        !pushes.has_changed().expect("the reader is alive")
    };
    let push = async |raw: &mut redis::aio::MultiplexedConnection, key: &str| {
        let _: i64 = redis::cmd("LPUSH").arg(key).arg("{}").query_async(raw).await.expect("LPUSH");
    };

    assert_eq!(reader.queues(&work, Instant::now(), interval).await.expect("reads"), [stats("work", 0, 0, None)]);
    // It follows every priority list of the queue, on one connection of its own.
    let lists = ["work", "work\x06\x163", "work\x06\x166", "work\x06\x169"];
    for _ in 0..300 {
        if subscribers(&mut raw, "work\x06\x169").await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for list in lists {
        assert_eq!(subscribers(&mut raw, list).await, 1, "{list:?} is not followed");
    }

    push(&mut raw, "work\x06\x169").await;
    assert!(wake(&mut pushes).await, "a push to an empty queue did not wake the loops");
    push(&mut raw, "work").await;
    assert!(quiet(&mut pushes).await, "woken twice for one empty read");

    // The woken tick reads a backlog: pushes no longer wake anyone, nor do pops.
    assert_eq!(reader.queues(&work, Instant::now(), interval).await.expect("reads"), [stats("work", 2, 0, None)]);
    push(&mut raw, "work").await;
    let _: Option<String> = redis::cmd("RPOP").arg("work").query_async(&mut raw).await.expect("RPOP");
    assert!(quiet(&mut pushes).await, "a push to a queue with a backlog woke the loops");

    // Empty again, read as empty: the next push wakes them again.
    let _: i64 = redis::cmd("DEL").arg(&lists[..]).query_async(&mut raw).await.expect("DEL");
    reader.queues(&work, Instant::now(), interval).await.expect("reads");
    push(&mut raw, "work\x06\x163").await;
    assert!(wake(&mut pushes).await, "a push after an empty read did not wake the loops");
    assert_eq!(notify_flags(&mut raw).await, "lK", "the broker's configuration changed");

    // The reader gone, so is its connection.
    drop(reader);
    for _ in 0..300 {
        if subscribers(&mut raw, "work").await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(subscribers(&mut raw, "work").await, 0, "the follower outlived its reader");
}

/// A Redis without keyspace events (the default) is only read: no subscription, no wake-up, and
/// its configuration stays as its owner left it.
#[tokio::test]
async fn a_redis_without_keyspace_events_is_read_at_each_tick_and_left_as_it_is() {
    let (_server, mut raw, mut reader) = reader_of_work(&[]).await;
    let work = names(&["work"]);
    let pushes = reader.pushes();
    reader.queues(&work, Instant::now(), Duration::from_secs(1)).await.expect("reads");
    let _: i64 = redis::cmd("LPUSH").arg("work").arg("{}").query_async(&mut raw).await.expect("LPUSH");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pushes.has_changed().expect("the reader is alive"), "woken without keyspace events");
    assert_eq!(calls(&mut raw, "subscribe").await, 0, "subscribed to a broker that publishes nothing");
    assert_eq!(calls(&mut raw, "config|get").await, 1, "asked once whether it publishes");
    assert_eq!(notify_flags(&mut raw).await, "", "the broker's configuration changed");
}
