//! What platform teams look at: the Grafana dashboard and the PrometheusRule shipped with the
//! chart (and in `deploy/monitoring/`). The chart renders them from the same files as
//! `deploy/monitoring/`, and every metric and label their queries use is one a running
//! operator really exports: its `/metrics` is scraped while it autoscales an app (with a shadow
//! policy) on a real Redis, so the dashboard and the alerts cannot drift from the code.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::Value;

use crate::Harness;
use crate::autoscaling::{QUEUE_LENGTH_10, shop_yaml_with};
use crate::lifecycle::create;
use crate::servers::{free_port, redis_server};
use crate::support::{WAIT, eventually, repo_root};

pub const TESTS: &[crate::TestCase] = &[("the_dashboard_and_alerts_use_only_what_the_operator_exports", false, |h| {
    Box::pin(the_dashboard_and_alerts_use_only_what_the_operator_exports(h))
})];

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every PromQL expression of the dashboard and of the rules.
fn expressions(dashboard: &Value, rules: &Value) -> Vec<String> {
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    for t in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = t["definition"].as_str() {
            exprs.push(q.to_string());
        }
    }
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("an expr").to_string());
        }
    }
    exprs
}

/// The scraped families: name (as `# TYPE` declares it) → its type and the label names seen on
/// its samples.
fn families(scrape: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut families: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (name, kind) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
            families.entry(name.to_string()).or_default().0 = kind.to_string();
        }
    }
    for line in scrape.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let sample = &line[..name_end];
        let family = ["_total", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .find_map(|suffix| sample.strip_suffix(suffix).filter(|f| families.contains_key(*f)))
            .unwrap_or(sample);
        let labels: BTreeSet<String> = line[name_end..]
            .strip_prefix('{')
            .and_then(|rest| rest.split_once('}'))
            .map(|(inside, _)| {
                inside.split(',').filter_map(|pair| pair.split_once('=')).map(|(k, _)| k.trim().to_string()).collect()
            })
            .unwrap_or_default();
        if let Some(entry) = families.get_mut(family) {
            entry.1.extend(labels);
        }
    }
    families
}

/// The metric names an expression reads, and the label names it matches or groups by.
fn used(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let metric = regex::Regex::new(r"celery_operator_[a-z0-9_]+").expect("regex");
    let selector = regex::Regex::new(r"\{([^}]*)\}").expect("regex");
    let grouping = regex::Regex::new(r"(?:by|without)\s*\(([^)]*)\)").expect("regex");
    let label_values = regex::Regex::new(r"label_values\([a-z0-9_]+,\s*([a-z_]+)\)").expect("regex");
    let names = metric.find_iter(expr).map(|m| m.as_str().to_string()).collect();
    let mut labels = BTreeSet::new();
    for c in selector.captures_iter(expr) {
        for matcher in c[1].split(',').filter(|m| !m.trim().is_empty()) {
            let name: String = matcher.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            labels.insert(name);
        }
    }
    for c in grouping.captures_iter(expr).chain(label_values.captures_iter(expr)) {
        labels.extend(c[1].split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()));
    }
    (names, labels)
}

async fn the_dashboard_and_alerts_use_only_what_the_operator_exports(h: Arc<Harness>) {
    // The chart's files and deploy/monitoring/ hold the same dashboard and alerts.
    let dashboard_json = read("deploy/helm/celery-operator/files/grafana-dashboard.json");
    assert_eq!(dashboard_json, read("deploy/monitoring/grafana-dashboard.json"), "the two dashboards differ");
    let dashboard: Value = serde_json::from_str(&dashboard_json).expect("the dashboard is JSON");
    let rules: Value = serde_yaml::from_str(&read("deploy/helm/celery-operator/files/alerts.yaml")).expect("alerts YAML");
    let deployed: Value = serde_yaml::from_str(&read("deploy/monitoring/prometheusrule.yaml")).expect("PrometheusRule YAML");
    assert_eq!(deployed["spec"], rules, "deploy/monitoring/prometheusrule.yaml differs from the chart's alerts");
    let rendered = crate::chart::render(&["--set", "prometheusRule.enabled=true", "--set", "grafanaDashboard.enabled=true"]);
    let rule = rendered.iter().find(|o| o["kind"] == "PrometheusRule").expect("the chart renders a PrometheusRule");
    assert_eq!(rule["spec"], rules, "the chart's PrometheusRule");
    let map = rendered.iter().find(|o| o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1");
    let shipped =
        map.and_then(|m| m["data"]["celery-operator.json"].as_str()).expect("the chart renders the dashboard ConfigMap");
    assert_eq!(serde_json::from_str::<Value>(shipped).expect("JSON"), dashboard, "the chart's dashboard");

    // A running operator, autoscaling an app with a shadow policy: what it exports.
    let env = &h.env;
    let (_redis, port) = redis_server(&[]);
    let ns = env.namespace("monitoring").await;
    let listen = free_port();
    let operator = env.start_operator_serving(&[&ns], None, Some(([127, 0, 0, 1], listen).into()));
    let shadow = "    shadow: {policy: steps, settings: {steps: '0:1,10:3'}}\n";
    let yaml = shop_yaml_with(&format!("redis://127.0.0.1:{port}/0"), 4, QUEUE_LENGTH_10, shadow);
    create(&env.admin, &ns, &yaml).await.expect("created");
    let scrape = eventually("the app's metrics", WAIT, || async {
        let text = crate::support::http_get(listen, "/metrics").await?;
        let app = format!("app=\"{ns}/shop\"");
        let wanted = [
            ("celery_operator_scaling_active{", app.as_str()),
            ("celery_operator_shadow_desired_workers{", app.as_str()),
            ("celery_operator_policy_duration_seconds_bucket{", "policy=\"queue-length\""),
        ];
        if wanted.iter().all(|(w, label)| text.lines().any(|l| l.starts_with(w) && l.contains(label)))
            && text.contains("celery_operator_reconcile_duration_seconds_bucket")
        {
            Ok(text)
        } else {
            Err("not all of the app's metrics yet".to_string())
        }
    })
    .await;
    operator.stop().await;

    let families = families(&scrape);
    let mut problems = Vec::new();
    for expr in expressions(&dashboard, &rules) {
        let (names, labels) = used(&expr);
        assert!(!names.is_empty() || expr.contains("label_values"), "an expression reads no metric of the operator: {expr}");
        let mut seen_labels: BTreeSet<String> = BTreeSet::new();
        for name in &names {
            let family = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|f| families.contains_key(*f)))
                .unwrap_or(name);
            match families.get(family) {
                None => problems.push(format!("{name} is not exported (in: {expr})")),
                Some((kind, family_labels)) => {
                    let suffix_ok = match name.strip_prefix(family).unwrap_or_default() {
                        "" => kind == "gauge",
                        "_total" => kind == "counter",
                        "_bucket" | "_sum" | "_count" => kind == "histogram",
                        _ => false,
                    };
                    if !suffix_ok {
                        problems.push(format!("{name}: the family {family} is a {kind} (in: {expr})"));
                    }
                    seen_labels.extend(family_labels.iter().cloned());
                    if kind == "histogram" {
                        seen_labels.insert("le".into());
                    }
                }
            }
        }
        for label in labels {
            if !seen_labels.contains(&label) {
                problems.push(format!("label `{label}` is on none of {names:?} (in: {expr})"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the dashboard and alerts use what the operator does not export:\n{}\n---\n{scrape}",
        problems.join("\n")
    );
}
