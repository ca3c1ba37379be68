//! Tier 2: the leader elector against a mocked API server (`tower-test`), on tokio's paused
//! clock, so the faults a real API server brings only by chance are staged exactly: a renewal
//! that hangs and returns late, after the term's deadline, must not stretch the term; a
//! standby must not take over a Lease whose record keeps changing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use celery_operator::leader::{Elector, LeaderError, Leadership, LeaseConfig};
use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

fn lease(holder: &str, renewed: &str, version: u64) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "lease", "namespace": "ns", "resourceVersion": version.to_string()},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renewed, "leaseTransitions": 0}
    })
}

fn respond(body: &Value, status: StatusCode) -> Response<Body> {
    Response::builder().status(status).body(Body::from(serde_json::to_vec(body).unwrap())).unwrap()
}

/// A Lease server: GET returns the stored Lease, PUT stores it after `put_delay(n)` for the
/// n-th PUT (the API server hanging); every PUT's arrival time is recorded.
async fn serve(
    mut handle: Handle,
    stored: Arc<Mutex<Value>>,
    put_delay: fn(usize) -> Duration,
    puts: Arc<Mutex<Vec<tokio::time::Instant>>>,
) {
    while let Some((request, reply)) = handle.next_request().await {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let stored = stored.clone();
        let puts = puts.clone();
        tokio::spawn(async move {
            let response = match parts.method {
                Method::GET => respond(&stored.lock().unwrap().clone(), StatusCode::OK),
                Method::PUT => {
                    let n = {
                        let mut puts = puts.lock().unwrap();
                        puts.push(tokio::time::Instant::now());
                        puts.len() - 1
                    };
                    tokio::time::sleep(put_delay(n)).await;
                    let mut sent: Value = serde_json::from_slice(&bytes).unwrap();
                    let version: u64 = stored.lock().unwrap()["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
                    sent["metadata"]["resourceVersion"] = (version + 1).to_string().into();
                    *stored.lock().unwrap() = sent.clone();
                    respond(&sent, StatusCode::OK)
                }
                _ => respond(&json!({}), StatusCode::METHOD_NOT_ALLOWED),
            };
            reply.send_response(response);
        });
    }
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_returns_late_ends_the_term_and_stops_writes() {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(mock, "ns");
    let stored = Arc::new(Mutex::new(lease("other", "2026-12-01T00:00:00.000000Z", 1)));
    let puts = Arc::new(Mutex::new(Vec::new()));
    // The API server takes the Lease over at once, then hangs every renewal for 12 s: longer
    // than the 10 s renew deadline. (It does apply them in the end, as a paused server does.)
    let delay = |n: usize| if n == 0 { Duration::from_millis(50) } else { Duration::from_secs(12) };
    tokio::spawn(serve(handle, stored.clone(), delay, puts.clone()));

    let config = LeaseConfig::new("ns", "lease", "me", Duration::from_secs(15));
    let leadership = Arc::new(Leadership::elected());
    let mut elector = Elector::new(client, config);
    let start = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), elector.acquire(&leadership)).await.expect("acquires");
    let won = tokio::time::Instant::now();
    assert!(won - start >= Duration::from_secs(15), "took the Lease over only after a whole duration");
    assert!(leadership.holds());

    let keeping = {
        let leadership = leadership.clone();
        tokio::spawn(async move { elector.keep(&leadership).await })
    };
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(leadership.holds(), "within the term");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!leadership.holds(), "the term ended 10 s after the last renewal that was sent in time");
    let lost = tokio::time::timeout(Duration::from_secs(1), keeping).await.expect("keep returns at the deadline").expect("joins");
    assert!(matches!(lost, LeaderError::Expired { .. }), "{lost}");

    // The hung renewal lands at the server later; the term does not come back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(stored.lock().unwrap()["spec"]["holderIdentity"], "me", "the late renewal was applied");
    assert!(!leadership.holds(), "a renewal that returned after the deadline does not stretch the term");
    let puts = puts.lock().unwrap().clone();
    assert!(puts.iter().all(|&at| at < won + Duration::from_secs(10)), "no renewal sent after the term ended: {puts:?}");
}

#[tokio::test(start_paused = true)]
async fn renewals_keep_the_term_and_a_live_leader_is_not_taken_over() {
    let (mock, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(mock, "ns");
    let stored = Arc::new(Mutex::new(lease("other", "2026-12-01T00:00:00.000000Z", 1)));
    let puts = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(serve(handle, stored.clone(), |_| Duration::from_millis(50), puts.clone()));

    let config = LeaseConfig::new("ns", "lease", "me", Duration::from_secs(15));
    let leadership = Arc::new(Leadership::elected());
    let mut elector = Elector::new(client, config);
    tokio::time::timeout(Duration::from_secs(60), elector.acquire(&leadership)).await.expect("acquires");
    assert!(leadership.holds());
    let keeping = {
        let leadership = leadership.clone();
        tokio::spawn(async move { elector.keep(&leadership).await })
    };
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(leadership.holds(), "renewing every 2 s keeps the term");
    assert!(!keeping.is_finished());
    let renewals = puts.lock().unwrap().len();
    assert!((25..=35).contains(&renewals), "about one renewal per 2 s retry over 60 s: {renewals}");
    // Someone else takes the Lease: the next renewal sees it and the term ends at once.
    *stored.lock().unwrap() = lease("thief", "2026-12-01T00:10:00.000000Z", 1000);
    let lost = tokio::time::timeout(Duration::from_secs(10), keeping).await.expect("ends").expect("joins");
    assert!(matches!(&lost, LeaderError::TakenOver { holder, .. } if holder == "thief"), "{lost}");
    assert!(!leadership.holds());
}
