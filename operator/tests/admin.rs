//! The admin port's endpoints, called in-process.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use face2simpson_operator::admin::{AdminState, app};
use face2simpson_operator::metrics::{ErrorLabels, Metrics, ModelLabels};
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use tower::ServiceExt;

async fn get(state: &AdminState, path: &str) -> (StatusCode, String) {
    let response = app(state.clone())
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels { kind: "conflict" })
        .inc();
    metrics.reconciles.inc();
    let model = ModelLabels {
        namespace: "simpsons".into(),
        model: "homer".into(),
    };
    metrics.promotions.get_or_create(&model).inc();
    metrics.rejections.get_or_create(&model).inc();
    metrics.trainings_started.get_or_create(&model).inc();
    metrics.champion_accuracy.get_or_create(&model).set(0.875);
    let state = AdminState {
        registry: Arc::new(registry),
        ready: Arc::new(AtomicBool::new(false)),
    };

    assert_eq!(get(&state, "/healthz").await, (StatusCode::OK, "ok".into()));
    assert_eq!(
        get(&state, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    state.ready.store(true, Ordering::Relaxed);
    assert_eq!(get(&state, "/readyz").await.0, StatusCode::OK);

    let (status, text) = get(&state, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        "face2simpson_operator_reconciles_total 1",
        r#"face2simpson_operator_reconcile_errors_total{kind="conflict"} 1"#,
        r#"face2simpson_operator_promotions_total{namespace="simpsons",model="homer"} 1"#,
        r#"face2simpson_operator_rejections_total{namespace="simpsons",model="homer"} 1"#,
        r#"face2simpson_operator_trainings_started_total{namespace="simpsons",model="homer"} 1"#,
        "# TYPE face2simpson_operator_champion_accuracy gauge",
        r#"face2simpson_operator_champion_accuracy{namespace="simpsons",model="homer"} 0.875"#,
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert_eq!(get(&state, "/nope").await.0, StatusCode::NOT_FOUND);
}
