//! The Grafana dashboard and the alert rules in `deploy/` are held to the
//! metrics goldrelay really exports: after a little traffic, every
//! `goldrelay_*` series they name is in `/metrics`, and every label value they
//! select with `=` is one goldrelay gives. A renamed metric or label value
//! fails here instead of leaving a panel empty or an alert silent.

use crate::helpers::{reply, spawn_app, TestApp, OPERATOR_TOKEN, PATIENCE, WEBHOOK_SECRET};
use goldrelay::http::problem::ApiError;
use goldrelay::store::StoreError;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every goldrelay metric carries this prefix (`src/metrics.rs`); names
/// without it (`up`, blackbox's `probe_success`) are Prometheus's own.
const PREFIX: &str = "goldrelay_";

/// Exported series: sample name (histograms as `_bucket`, `_sum`, `_count`,
/// exactly as Prometheus stores them) to the `label="value"` pairs seen.
type Exported = BTreeMap<String, BTreeSet<(String, String)>>;

/// One selector in a PromQL expression: a metric name and its `label="value"`
/// matchers (`=~`, `!=`, `!~` and `job` are left out: they select by pattern
/// or by the scrape, not by what goldrelay exports).
#[derive(Debug, PartialEq)]
struct Selector {
    name: String,
    equals: Vec<(String, String)>,
}

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The PromQL of the dashboard: every panel's `expr` and the variables' queries.
fn dashboard_queries() -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr" | "definition" | "query", Value::String(q)) => out.push(q.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana-dashboard.json"))
        .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    walk(&dashboard, &mut queries);
    queries
}

/// The alert rules without their comments: the expressions and annotations.
fn alert_rules() -> String {
    read("deploy/alerts.yml")
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every goldrelay selector in `promql`.
fn selectors(promql: &str) -> Vec<Selector> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut found = Vec::new();
    let mut rest = promql;
    while let Some(start) = rest.find(PREFIX) {
        let preceded = rest[..start].chars().next_back().is_some_and(is_name);
        let tail = &rest[start..];
        let end = tail.find(|c: char| !is_name(c)).unwrap_or(tail.len());
        let (name, after) = tail.split_at(end);
        let (equals, after) = match after.strip_prefix('{') {
            Some(inner) => {
                let close = inner.find('}').expect("a selector's braces close");
                (equal_matchers(&inner[..close]), &inner[close..])
            }
            None => (Vec::new(), after),
        };
        if !preceded {
            found.push(Selector {
                name: name.to_owned(),
                equals,
            });
        }
        rest = after;
    }
    found
}

/// The `label="value"` matchers of a selector's inside, `job` excepted.
fn equal_matchers(inside: &str) -> Vec<(String, String)> {
    inside
        .split(',')
        .filter_map(|matcher| {
            let (label, value) = matcher.split_once('=')?;
            let label = label.trim();
            let value = value.trim().strip_prefix('"')?.strip_suffix('"')?;
            let plain = !label.ends_with('!') && label != "job";
            plain.then(|| (label.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Parses the text exposition format into names and label pairs.
fn exported(text: &str) -> Exported {
    let mut series = Exported::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = series.entry(line[..end].to_owned()).or_default();
        if let Some(inner) = line[end..]
            .strip_prefix('{')
            .and_then(|l| l.split_once('}'))
        {
            labels.extend(equal_matchers(inner.0));
        }
    }
    series
}

/// Label values goldrelay gives only while something is broken, which this
/// test does not break: taken from the code that names them, so renaming
/// them in the code without the rules still fails.
fn values_only_seen_in_a_fault() -> BTreeSet<(String, String)> {
    let store_down = ApiError::StoreUnavailable(StoreError::Unavailable).slug();
    [("outcome".to_owned(), store_down.to_owned())].into()
}

/// A reply delivered and confirmed through a signed webhook, a dead reply, and
/// an unsigned webhook call: every metric family gets a series.
async fn drive_traffic(app: &TestApp) {
    app.chatwoot.set_webhook(
        format!("{}/api/webhooks/chatwoot", app.api.address),
        Some(WEBHOOK_SECRET.into()),
    );
    app.api.accept(&reply("dash-1", 1)).await;
    // Conversation 99999 does not exist in the sandbox: Chatwoot answers 404.
    app.api.accept(&reply("dash-dead", 99_999)).await;
    app.api
        .wait_for_status("dash-1", "confirmed", PATIENCE)
        .await;
    app.api.wait_for_status("dash-dead", "dead", PATIENCE).await;
    let unsigned = app
        .api
        .client
        .post(format!("{}/api/webhooks/chatwoot", app.api.address))
        .json(&serde_json::json!({"event": "message_created"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
}

async fn scrape(app: &TestApp) -> Exported {
    let response = app
        .api
        .client
        .get(format!("{}/metrics", app.api.address))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    exported(&response.text().await.unwrap())
}

/// What in `selectors` is not in `exported`, one line each.
fn missing(source: &str, selectors: &[Selector], exported: &Exported) -> Vec<String> {
    let faults = values_only_seen_in_a_fault();
    let mut missing = Vec::new();
    for selector in selectors {
        let Some(labels) = exported.get(&selector.name) else {
            missing.push(format!(
                "{source}: metric {} is not exported",
                selector.name
            ));
            continue;
        };
        for pair in &selector.equals {
            if !labels.contains(pair) && !faults.contains(pair) {
                let (label, value) = pair;
                missing.push(format!(
                    "{source}: {}{{{label}=\"{value}\"}} is never exported",
                    selector.name
                ));
            }
        }
    }
    missing
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported() {
    let app = spawn_app().await;
    drive_traffic(&app).await;
    let exported = scrape(&app).await;
    let dashboard: Vec<Selector> = dashboard_queries()
        .iter()
        .flat_map(|q| selectors(q))
        .collect();
    let alerts = selectors(&alert_rules());
    // The scan itself must find what the files use, or this test proves nothing.
    for (source, found) in [("dashboard", &dashboard), ("alerts", &alerts)] {
        let names: BTreeSet<_> = found.iter().map(|s| s.name.as_str()).collect();
        assert!(names.len() >= 5, "{source} names only {names:?}");
    }
    let mut problems = missing("deploy/grafana-dashboard.json", &dashboard, &exported);
    problems.extend(missing("deploy/alerts.yml", &alerts, &exported));
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "{}\nexported: {:?}",
        problems.join("\n"),
        exported.keys()
    );
}

#[test]
fn the_scan_finds_names_and_equal_matchers_and_skips_the_rest() {
    let promql = r#"histogram_quantile(0.9, sum by (le) (rate(goldrelay_a_bucket{job=~"$job"}[5m])))
        / max(goldrelay_b{status="dead", job="x", outcome!="y", reason=~"z"}) or up{job="goldrelay"}
        and not_goldrelay_c"#;
    assert_eq!(
        selectors(promql),
        [
            Selector {
                name: "goldrelay_a_bucket".into(),
                equals: vec![],
            },
            Selector {
                name: "goldrelay_b".into(),
                equals: vec![("status".into(), "dead".into())],
            },
        ]
    );
}

#[test]
fn a_renamed_metric_or_label_value_is_reported_missing() {
    let exported = exported(
        "# TYPE goldrelay_replies gauge\ngoldrelay_replies{status=\"dead\"} 1\ngoldrelay_x_count 3\n",
    );
    let used = selectors(
        r#"goldrelay_replies{status="gone"} + goldrelay_replies_total + goldrelay_x_count + goldrelay_replies{status="dead"}"#,
    );
    assert_eq!(
        missing("f", &used, &exported),
        [
            "f: goldrelay_replies{status=\"gone\"} is never exported",
            "f: metric goldrelay_replies_total is not exported",
        ]
    );
}
