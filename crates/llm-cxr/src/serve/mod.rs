//! `llm-cxr serve`: the three tasks and plain chat over HTTP (axum on tokio). Handlers parse and
//! validate; the model runs on one worker thread behind a bounded queue (`scheduler`), whose
//! running batch requests join between steps. A full
//! queue answers 429 with Retry-After, a passed deadline 503, a body over the limit 413. Text
//! streams as server-sent events; a client that goes away ends its generation. Logs carry the
//! method, path, status and time of each request, never anything read from an upload.

mod api;
mod scheduler;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;

use cxr_instruct::Phrasings;
use cxr_vqgan::VqganConfig;
use scheduler::{Engine, Event, Finish, Job, Refused, Scheduler, Task};

use super::commands::chat::ModelArgs;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub lm: ModelArgs,
    #[command(flatten)]
    pub vqgan: super::commands::vqgan::VqganArgs,
    /// Address to listen on (0.0.0.0 to accept other machines).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port; 0 picks a free one (printed on start).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests that may wait for the model; one more is answered 429 with Retry-After.
    #[arg(long, default_value_t = 32)]
    pub queue: usize,
    /// The most requests generated at once: rows of the running batch, which waiting requests
    /// join between its steps (continuous batching).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// The most new tokens one text request may ask for (and its default).
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Seconds a request may take, waiting included; then 503 (or an `error` event when
    /// streaming).
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// Largest request body in MiB (an upload); larger ones get 413.
    #[arg(long, default_value_t = 32)]
    pub max_body_mib: usize,
}

/// What every handler shares.
pub struct AppState {
    pub scheduler: Scheduler,
    pub vqgan: VqganConfig,
    pub model_name: String,
    pub max_tokens: usize,
    pub timeout: Duration,
    pub started: Instant,
    /// Requests answered, by (route, status).
    pub requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Seconds spent answering, summed, and the count, by route.
    pub latency: Mutex<BTreeMap<String, (f64, u64)>>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (lm, vocab, vqgan) = super::commands::tasks::load_pair(&a.lm, &a.vqgan)?;
    let config = vqgan.config().clone();
    let engine = Engine {
        lm,
        vocab,
        vqgan,
        phrasings: Phrasings::default(),
    };
    let state = Arc::new(AppState {
        scheduler: Scheduler::start(engine, a.queue.max(1), a.batch),
        vqgan: config,
        model_name: a
            .lm
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "llm-cxr".into()),
        max_tokens: a.max_tokens.max(1),
        timeout: Duration::from_secs(a.timeout.max(1)),
        started: Instant::now(),
        requests: Default::default(),
        latency: Default::default(),
    });
    let app = router(state, a.max_body_mib << 20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let addr: SocketAddr = format!("{}:{}", a.host, a.port)
            .parse()
            .with_context(|| format!("--host {} --port {}", a.host, a.port))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let bound = listener.local_addr()?;
        // Tests and scripts read this line to find a port picked with --port 0.
        println!("llm-cxr serving on http://{bound}");
        use std::io::Write;
        std::io::stdout().flush()?;
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        anyhow::Ok(())
    })
}

pub fn router(state: Arc<AppState>, max_body: usize) -> Router {
    Router::new()
        .route("/", get(api::page))
        .route("/health", get(api::health))
        .route("/metrics", get(api::metrics))
        .route("/openapi.json", get(api::openapi))
        .route("/v1/examples", get(api::examples))
        .route("/v1/report", post(api::report))
        .route("/v1/ask", post(api::ask))
        .route("/v1/draw", post(api::draw))
        .route("/v1/chat/completions", post(api::chat_completions))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), account))
        .with_state(state)
}

/// Counts and logs every request: route, status, seconds.
async fn account(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // The route's pattern: the label stays one of the routes, whatever path was asked for.
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("other", |m| m.as_str())
        .to_string();
    let response = next.run(req).await;
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    if let Ok(mut r) = state.requests.lock() {
        *r.entry((route.clone(), status)).or_default() += 1;
    }
    if let Ok(mut l) = state.latency.lock() {
        let e = l.entry(route).or_default();
        e.0 += seconds;
        e.1 += 1;
    }
    tracing::info!("{method} {path} -> {status} in {:.0} ms", seconds * 1e3);
    response
}

/// The OpenAPI 3.1 description of the routes above.
pub fn openapi_document() -> serde_json::Value {
    use serde_json::json;
    let error = json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let text_answer = json!({
        "description": "The answer (JSON), or server-sent events when `stream` is true: `token` events {\"delta\"}, then `done` {\"text\", \"finish_reason\", \"usage\"} or `error`.",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/TextAnswer"}},
            "text/event-stream": {"schema": {"type": "string"}}
        }
    });
    let limits = json!({
        "400": error, "413": {"description": "The body is over the server's limit"},
        "429": {"description": "The queue is full; see Retry-After", "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
        "503": {"description": "The request's deadline passed"}
    });
    let with_limits = |ok: serde_json::Value| {
        let mut r = limits.clone();
        r["200"] = ok;
        r
    };
    let options = json!({
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "description": "0 = greedy"},
        "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": 0},
        "seed": {"type": "integer", "minimum": 0},
        "stream": {"type": "boolean"}
    });
    let form = |extra: serde_json::Value, required: &[&str]| {
        let mut props = options.clone();
        props["image"] = json!({"type": "string", "format": "binary", "description": "A CXR: DICOM, PNG or JPEG"});
        if let (Some(p), Some(e)) = (props.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        json!({"required": true, "content": {"multipart/form-data": {"schema": {"type": "object", "required": required, "properties": props}}}})
    };
    json!({
        "openapi": "3.1.0",
        "info": {"title": "llm-cxr", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Read and draw chest X-rays with an instruction-finetuned language model."},
        "paths": {
            "/health": {"get": {"summary": "Liveness and queue length", "responses": {"200": {"description": "OK"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text/plain; version=0.0.4"}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OK"}}}},
            "/v1/examples": {"get": {"summary": "Phantom CXRs with their reports, to try the model on", "responses": {"200": {"description": "{\"examples\": [{\"png_base64\", \"report\"}]}"}}}},
            "/v1/report": {"post": {"summary": "CXR -> report", "requestBody": form(json!({}), &["image"]), "responses": with_limits(text_answer.clone())}},
            "/v1/ask": {"post": {"summary": "A question about a CXR (VQA)", "requestBody": form(json!({"question": {"type": "string"}}), &["image", "question"]), "responses": with_limits(text_answer)}},
            "/v1/draw": {"post": {"summary": "Report -> CXR (exactly one image's codes, decoded by the VQ-GAN)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["report"],
                    "properties": {"report": {"type": "string"}, "temperature": options["temperature"], "top_p": options["top_p"], "top_k": options["top_k"], "seed": options["seed"]}}}}},
                "responses": with_limits(json!({"description": "The drawing", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Drawing"}}}}))}},
            "/v1/chat/completions": {"post": {"summary": "OpenAI-compatible chat completion (text); server-sent chunks when `stream` is true, ending with `data: [DONE]`",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["messages"],
                    "properties": {"model": {"type": "string"}, "messages": {"type": "array", "items": {"type": "object", "required": ["role", "content"],
                        "properties": {"role": {"enum": ["system", "user", "assistant"]}, "content": {"type": "string"}}}},
                        "max_tokens": options["max_tokens"], "temperature": options["temperature"], "top_p": options["top_p"], "seed": options["seed"], "stream": options["stream"]}}}}},
                "responses": with_limits(json!({"description": "A chat.completion object, or chat.completion.chunk events"}))}}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {"message": {"type": "string"}, "type": {"type": "string"}}}}},
            "TextAnswer": {"type": "object", "properties": {"text": {"type": "string"}, "finish_reason": {"enum": ["stop", "length"]},
                "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"}}}, "seconds": {"type": "number"}}},
            "Drawing": {"type": "object", "properties": {"png_base64": {"type": "string"}, "codes": {"type": "array", "items": {"type": "integer"}}, "grid": {"type": "integer"}, "seconds": {"type": "number"}}}
        }}
    })
}
