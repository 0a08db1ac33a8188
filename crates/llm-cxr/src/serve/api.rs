//! The HTTP handlers: request parsing, validation, and the shape of answers (JSON, server-sent
//! events, OpenAI's chat-completion objects).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{Multipart, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use candle_core::Device;
use cxr_lm::Sampling;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt};

use super::{AppState, Event, Finish, Job, Refused, Task};

/// An error as clients see it: a status and OpenAI's `{"error": {...}}` body.
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            retry_after: None,
        }
    }
    fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            retry_after: None,
        }
    }
    fn timed_out() -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the request's deadline passed before the model finished it".into(),
            retry_after: Some(5),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status.as_u16() {
            400 => "invalid_request_error",
            429 => "rate_limit_error",
            503 => "timeout_error",
            _ => "server_error",
        };
        let body = json!({"error": {"message": self.message, "type": kind}});
        let mut r = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

pub async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

pub async fn health(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "model": s.model_name,
        "queued": s.scheduler.counters.queued.load(Ordering::Relaxed),
        "uptime_s": s.started.elapsed().as_secs(),
    }))
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

pub async fn openapi() -> Json<Value> {
    Json(super::openapi_document())
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

/// Options every generating request may carry.
#[derive(Deserialize, Default)]
pub struct Options {
    max_tokens: Option<usize>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<usize>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
}

impl Options {
    fn sampling(&self) -> Result<Sampling, ApiError> {
        let d = Sampling::default();
        let s = Sampling {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_k: self.top_k.unwrap_or(d.top_k),
            top_p: self.top_p.unwrap_or(d.top_p),
            seed: self.seed.unwrap_or(d.seed),
        };
        if !(0.0..=10.0).contains(&s.temperature)
            || !(0.0..=1.0).contains(&s.top_p)
            || s.top_p == 0.0
        {
            return Err(ApiError::bad(
                "temperature must be in [0, 10] and top_p in (0, 1]",
            ));
        }
        Ok(s)
    }

    fn max_tokens(&self, cap: usize) -> Result<usize, ApiError> {
        match self.max_tokens {
            None => Ok(cap),
            Some(0) => Err(ApiError::bad("max_tokens must be at least 1")),
            Some(n) if n > cap => Err(ApiError::bad(format!(
                "max_tokens {n} is above this server's limit of {cap}"
            ))),
            Some(n) => Ok(n),
        }
    }

    /// Reads one multipart text field into the options; false if the name is not an option.
    fn set(&mut self, name: &str, value: &str) -> Result<bool, ApiError> {
        let bad = |e: &dyn std::fmt::Display| ApiError::bad(format!("field {name}: {e}"));
        match name {
            "max_tokens" => self.max_tokens = Some(value.trim().parse().map_err(|e| bad(&e))?),
            "temperature" => self.temperature = Some(value.trim().parse().map_err(|e| bad(&e))?),
            "top_p" => self.top_p = Some(value.trim().parse().map_err(|e| bad(&e))?),
            "top_k" => self.top_k = Some(value.trim().parse().map_err(|e| bad(&e))?),
            "seed" => self.seed = Some(value.trim().parse().map_err(|e| bad(&e))?),
            "stream" => self.stream = matches!(value.trim(), "true" | "1" | "yes"),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Queues a job; its events arrive on the returned channel.
fn submit(
    s: &AppState,
    task: Task,
    max_tokens: usize,
    sampling: Sampling,
) -> Result<UnboundedReceiver<Event>, ApiError> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let job = Job {
        task,
        max_tokens,
        sampling,
        deadline: Instant::now() + s.timeout,
        events: tx,
    };
    match s.scheduler.submit(job) {
        Ok(()) => Ok(rx),
        Err(Refused::Full) => Err(ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "the model's queue is full; retry later".into(),
            retry_after: Some(2),
        }),
        Err(Refused::Stopped) => Err(ApiError::internal("the model worker has stopped")),
    }
}

/// Waits for the job's one final event.
async fn finish(mut rx: UnboundedReceiver<Event>) -> Result<Event, ApiError> {
    while let Some(e) = rx.recv().await {
        match e {
            Event::Delta(_) => continue,
            Event::TimedOut => return Err(ApiError::timed_out()),
            Event::Rejected(m) => return Err(ApiError::bad(m)),
            Event::Failed(m) => return Err(ApiError::internal(m)),
            other => return Ok(other),
        }
    }
    Err(ApiError::internal("the model worker dropped the request"))
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

/// Our own event stream: `token` events with `{"delta"}`, then `done` with the whole answer, or
/// `error`.
fn text_events(
    rx: UnboundedReceiver<Event>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = UnboundedReceiverStream::new(rx).map(|e| {
        Ok(match e {
            Event::Delta(d) => SseEvent::default()
                .event("token")
                .data(json!({ "delta": d }).to_string()),
            Event::Text {
                text,
                prompt_tokens,
                completion_tokens,
                finish,
            } => SseEvent::default().event("done").data(
                json!({
                    "text": text,
                    "finish_reason": finish_reason(finish),
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
                })
                .to_string(),
            ),
            Event::TimedOut => SseEvent::default()
                .event("error")
                .data(json!({"message": "deadline passed"}).to_string()),
            Event::Rejected(m) | Event::Failed(m) => SseEvent::default()
                .event("error")
                .data(json!({ "message": m }).to_string()),
            Event::Image { .. } => SseEvent::default().event("error").data("{}"),
        })
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The parts of an upload form: the image's bytes and the other text fields.
struct Upload {
    image: Option<Vec<u8>>,
    question: Option<String>,
    options: Options,
}

async fn read_form(mut form: Multipart) -> Result<Upload, ApiError> {
    let mut up = Upload {
        image: None,
        question: None,
        options: Options::default(),
    };
    // A body over the limit is 413, a malformed one 400 (the error knows which).
    let failed = |what: &str, e: axum::extract::multipart::MultipartError| ApiError {
        status: e.status(),
        message: format!("reading {what}: {}", e.body_text()),
        retry_after: None,
    };
    while let Some(field) = form.next_field().await.map_err(|e| failed("the form", e))? {
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| failed(&format!("field {name}"), e))?;
        match name.as_str() {
            "image" => up.image = Some(bytes.to_vec()),
            "question" => up.question = Some(String::from_utf8_lossy(&bytes).into_owned()),
            other => {
                let text = String::from_utf8_lossy(&bytes);
                if !up.options.set(other, &text)? {
                    return Err(ApiError::bad(format!("unknown form field {other:?}")));
                }
            }
        }
    }
    Ok(up)
}

/// The upload decoded (DICOM, PNG or JPEG) and preprocessed into the VQ-GAN's input. Errors name
/// the problem, never a DICOM tag's value.
async fn vqgan_input(
    s: &AppState,
    bytes: Option<Vec<u8>>,
) -> Result<candle_core::Tensor, ApiError> {
    let bytes = bytes.ok_or_else(|| ApiError::bad("the form has no `image` file"))?;
    let config = s.vqgan.clone();
    tokio::task::spawn_blocking(move || {
        let img = cxr_image::decode_image(&bytes, std::path::Path::new("upload"))
            .map_err(|e| ApiError::bad(format!("the image could not be read: {e}")))?;
        cxr_vqgan::vqgan_input(&img, &config, &Device::Cpu)
            .map_err(|e| ApiError::internal(format!("preprocessing: {e}")))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
}

async fn answer(s: &AppState, task: Task, options: &Options) -> Result<Response, ApiError> {
    let rx = submit(
        s,
        task,
        options.max_tokens(s.max_tokens)?,
        options.sampling()?,
    )?;
    if options.stream {
        return Ok(text_events(rx).into_response());
    }
    let started = Instant::now();
    match finish(rx).await? {
        Event::Text {
            text,
            prompt_tokens,
            completion_tokens,
            finish,
        } => Ok(Json(json!({
            "text": text,
            "finish_reason": finish_reason(finish),
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
            "seconds": started.elapsed().as_secs_f64(),
        }))
        .into_response()),
        _ => Err(ApiError::internal("an answer of the wrong kind")),
    }
}

/// POST /v1/report: multipart `image` (+ options) -> the report.
pub async fn report(State(s): State<Arc<AppState>>, form: Multipart) -> Result<Response, ApiError> {
    let up = read_form(form).await?;
    if up.question.is_some() {
        return Err(ApiError::bad("a report takes no question (use /v1/ask)"));
    }
    let image = vqgan_input(&s, up.image).await?;
    answer(&s, Task::Report { image }, &up.options).await
}

/// POST /v1/ask: multipart `image` and `question` (+ options) -> the answer.
pub async fn ask(State(s): State<Arc<AppState>>, form: Multipart) -> Result<Response, ApiError> {
    let up = read_form(form).await?;
    let question = up
        .question
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| ApiError::bad("the form has no `question`"))?;
    let image = vqgan_input(&s, up.image).await?;
    answer(&s, Task::Ask { image, question }, &up.options).await
}

#[derive(Deserialize)]
pub struct DrawRequest {
    report: String,
    #[serde(flatten)]
    options: Options,
}

/// POST /v1/draw: `{"report": ...}` -> `{"png_base64", "codes"}`.
pub async fn draw(
    State(s): State<Arc<AppState>>,
    body: Result<Json<DrawRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad(e.body_text()))?;
    if req.report.trim().is_empty() {
        return Err(ApiError::bad("the report is empty"));
    }
    let started = Instant::now();
    let rx = submit(
        &s,
        Task::Draw { report: req.report },
        s.vqgan.tokens_per_image(),
        req.options.sampling()?,
    )?;
    match finish(rx).await? {
        Event::Image { png, codes } => Ok(Json(json!({
            "png_base64": base64::engine::general_purpose::STANDARD.encode(&png),
            "codes": codes,
            "grid": s.vqgan.grid_side(),
            "seconds": started.elapsed().as_secs_f64(),
        }))
        .into_response()),
        _ => Err(ApiError::internal("an answer of the wrong kind")),
    }
}

#[derive(Deserialize)]
pub struct ChatMessage {
    role: String,
    content: String,
}

#[derive(Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default, alias = "max_completion_tokens")]
    max_tokens: Option<usize>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
}

/// POST /v1/chat/completions, as OpenAI's. The prompt is the last user message in LLM-CXR's
/// Alpaca template, the one the model was fine-tuned with (earlier turns are not part of it).
pub async fn chat_completions(
    State(s): State<Arc<AppState>>,
    body: Result<Json<ChatRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad(e.body_text()))?;
    let Some(last) = req.messages.iter().rev().find(|m| m.role == "user") else {
        return Err(ApiError::bad("messages hold no user message"));
    };
    for m in &req.messages {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(ApiError::bad(format!("unknown role {:?}", m.role)));
        }
    }
    let prompt = cxr_instruct::prompt(&last.content, None);
    let options = Options {
        max_tokens: req.max_tokens,
        temperature: Some(req.temperature.unwrap_or(1.0)),
        top_p: Some(req.top_p.unwrap_or(1.0)),
        top_k: None,
        seed: req.seed,
        stream: req.stream,
    };
    let rx = submit(
        &s,
        Task::Chat { prompt },
        options.max_tokens(s.max_tokens)?,
        options.sampling()?,
    )?;
    let id = format!(
        "chatcmpl-{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let model = req.model.unwrap_or_else(|| s.model_name.clone());
    if req.stream {
        let chunk = move |delta: Value, finish: Option<&str>| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
            .to_string()
        };
        let first = SseEvent::default().data(chunk(json!({"role": "assistant"}), None));
        let body = UnboundedReceiverStream::new(rx).filter_map(move |e| match e {
            Event::Delta(d) => Some(SseEvent::default().data(chunk(json!({ "content": d }), None))),
            Event::Text { finish, .. } => {
                Some(SseEvent::default().data(chunk(json!({}), Some(finish_reason(finish)))))
            }
            Event::TimedOut | Event::Rejected(_) | Event::Failed(_) | Event::Image { .. } => {
                Some(SseEvent::default().data(
                    json!({"error": {"message": "generation failed or timed out"}}).to_string(),
                ))
            }
        });
        let done = tokio_stream::once(SseEvent::default().data("[DONE]"));
        let events = tokio_stream::once(first)
            .chain(body)
            .chain(done)
            .map(Ok::<_, Infallible>);
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    match finish(rx).await? {
        Event::Text {
            text,
            prompt_tokens,
            completion_tokens,
            finish,
        } => Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason(finish),
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }))
        .into_response()),
        _ => Err(ApiError::internal("an answer of the wrong kind")),
    }
}
