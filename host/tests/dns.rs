//! Broker and Flower names are looked up without a thread each (issue 12: 100 apps whose
//! Flower name did not resolve held 516 threads, one blocking `getaddrinfo` each).
//!
//! A DNS server on the loopback interface that reads every query and answers none stands in
//! for a dead cluster DNS: every lookup waits until it times out. The process's threads are
//! counted while 96 such lookups (Redis, RabbitMQ's management API and Flower) are pending.
//! A test binary of its own: the resolver's server is set once per process.
//!
//! Run: `cargo test -p celery-operator --test dns`.

use std::net::UdpSocket;
use std::time::Duration;

use celery_operator::metrics::flower::Flower;
use celery_operator::metrics::{BrokerOptions, connect, dns};

/// Threads of this process, from the kernel.
fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status.lines().find_map(|l| l.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok()).expect("a Threads: line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_lookups_hold_no_thread_each() {
    let silent = UdpSocket::bind("127.0.0.1:0").expect("a loopback UDP port");
    silent.set_nonblocking(true).expect("non-blocking");
    dns::use_server(silent.local_addr().expect("its address"));

    let before = threads();
    let options = BrokerOptions { timeout: Duration::from_secs(10), ..BrokerOptions::default() };
    let queues = vec!["celery".to_string()];
    let mut reads = tokio::task::JoinSet::new();
    for i in 0..32 {
        let (redis, amqp) = (format!("redis://app-{i}.shop.svc:6379/0"), format!("amqp://guest:guest@mq-{i}.shop.svc//"));
        for url in [redis, amqp] {
            let (options, queues) = (options.clone(), queues.clone());
            reads.spawn(async move {
                let broker = connect(&url, &options).map_err(|e| e.to_string())?;
                broker.queues(&queues).await.map(drop).map_err(|e| e.to_string())
            });
        }
        let queues = queues.clone();
        reads.spawn(async move {
            let flower = Flower::new(&format!("http://app-{i}-flower.shop.svc:5555"), None, Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            flower.queues(&queues).await.map(drop).map_err(|e| e.to_string())
        });
    }
    // Count threads once every lookup has sent its query (or the lookups' own deadline nears):
    // a fixed sleep here raced a busy machine, where only 58 of 96 had been sent after a second.
    let mut queries = 0;
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while queries < 96 && tokio::time::Instant::now() < deadline {
        match silent.recv_from(&mut buf) {
            Ok(_) => queries += 1,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let during = threads();
    assert!(reads.try_join_next().is_none(), "a lookup ended before the threads were counted: fewer than 96 were pending");
    let mut failures = Vec::new();
    while let Some(done) = reads.join_next().await {
        failures.push(done.expect("a read task").expect_err("no name resolves"));
    }
    println!("threads: {before} before, {during} with 96 lookups pending; {queries} queries reached the silent server");

    assert!(queries >= 96, "the lookups went to the configured server ({queries} queries seen)");
    assert!(during <= before + 8, "96 pending lookups took {} threads", during - before);
    assert_eq!(failures.len(), 96);
    for (i, failure) in failures.iter().enumerate() {
        assert!(failure.contains(".shop.svc"), "failure {i} names the host: {failure}");
    }
}
