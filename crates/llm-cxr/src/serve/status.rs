//! The reading routes: the web page, /health, /metrics (Prometheus text), /openapi.json, the
//! example phantoms, and the 404 of any other path.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;

pub async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

/// "ok" (200), or "degraded" (503) with the reason when the model cannot serve.
pub async fn health(State(s): State<Arc<AppState>>) -> Response {
    let c = &s.scheduler.counters;
    let mut body = json!({
        "status": "ok",
        "model": s.model_name,
        "queued": c.queued.load(Ordering::Relaxed),
        "uptime_s": s.started.elapsed().as_secs(),
    });
    match c.degraded() {
        None => Json(body).into_response(),
        Some(reason) => {
            body["status"] = "degraded".into();
            body["reason"] = reason.into();
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// Prometheus text exposition format 0.0.4.
pub async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    use std::fmt::Write;
    let c = &s.scheduler.counters;
    let mut out = String::new();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let metrics = [
        (
            "llmcxr_queued_requests",
            "gauge",
            "Requests waiting for the model.",
            c.queued.load(Ordering::Relaxed) as u64,
        ),
        (
            "llmcxr_admitted_total",
            "counter",
            "Requests that joined the running batch.",
            load(&c.admitted),
        ),
        (
            "llmcxr_running_rows",
            "gauge",
            "Requests in the running batch.",
            c.running.load(Ordering::Relaxed) as u64,
        ),
        (
            "llmcxr_steps_total",
            "counter",
            "Steps of the running batch (one id drawn for each of its rows).",
            load(&c.steps),
        ),
        (
            "llmcxr_step_rows_total",
            "counter",
            "Rows run in those steps (rows per step = this / steps).",
            load(&c.step_rows),
        ),
        (
            "llmcxr_generated_tokens_total",
            "counter",
            "Tokens generated, image codes included.",
            load(&c.generated_tokens),
        ),
        (
            "llmcxr_cancelled_total",
            "counter",
            "Requests whose client went away before the answer.",
            load(&c.cancelled),
        ),
        (
            "llmcxr_timed_out_total",
            "counter",
            "Requests whose deadline passed.",
            load(&c.timed_out),
        ),
        (
            "llmcxr_failed_batches_total",
            "counter",
            "Batches that failed (a panic or an error in the model); their requests got 500.",
            load(&c.failed_batches),
        ),
        (
            "llmcxr_worker_up",
            "gauge",
            "1 while the model worker thread runs.",
            u64::from(c.worker_alive.load(Ordering::Relaxed)),
        ),
    ];
    for (name, kind, help, value) in metrics {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP llmcxr_requests_total Requests answered, by route and status.\n# TYPE llmcxr_requests_total counter"
    );
    if let Ok(r) = s.requests.lock() {
        for ((route, status), n) in r.iter() {
            let _ = writeln!(
                out,
                "llmcxr_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP llmcxr_request_seconds Time to answer (to the first byte when streaming).\n# TYPE llmcxr_request_seconds summary"
    );
    if let Ok(l) = s.latency.lock() {
        for (route, (sum, count)) in l.iter() {
            let _ = writeln!(
                out,
                "llmcxr_request_seconds_sum{{route=\"{route}\"}} {sum}\nllmcxr_request_seconds_count{{route=\"{route}\"}} {count}"
            );
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

pub async fn openapi(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(super::openapi::served_document(s.max_tokens))
}

/// Any path that is not a route: 404 in the error format, with the request id.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route {} (see /openapi.json)", uri.path()),
    )
}

/// A few phantoms with their reports, for the page's example buttons (made once).
pub async fn examples() -> Json<Value> {
    static EXAMPLES: OnceLock<Value> = OnceLock::new();
    let v = EXAMPLES.get_or_init(|| {
        let items: Vec<Value> = (0..4)
            .map(|i| {
                let spec = cxr_phantom::PhantomSpec::sample(7, i);
                let img = spec.render(256).to_luma8();
                let mut png = Vec::new();
                let _ = img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png);
                json!({
                    "png_base64": base64::engine::general_purpose::STANDARD.encode(&png),
                    "report": spec.report,
                })
            })
            .collect();
        json!({ "examples": items })
    });
    Json(v.clone())
}
