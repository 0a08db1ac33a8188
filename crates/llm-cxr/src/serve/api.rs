//! The handlers of the generating routes (report, ask, draw): request parsing, validation, and
//! the shape of answers (JSON or server-sent events). Chat is in `chat`, the reading routes in
//! `status`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Multipart, Request, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use cxr_image::ImageError;
use cxr_lm::Sampling;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::OwnedSemaphorePermit;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream, StreamExt};

use super::error::{request_id, ApiError};
use super::{AppState, Event, Finish, Job, Refused, Task};

/// Options every generating request may carry.
#[derive(Deserialize, Default)]
pub struct Options {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
}

impl Options {
    pub fn sampling(&self) -> Result<Sampling, ApiError> {
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

    pub fn max_tokens(&self, cap: usize) -> Result<usize, ApiError> {
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
        let bad = |e: &dyn std::fmt::Display| {
            ApiError::bad(format!(
                "field {name}: {value:?} is not a valid value ({e})"
            ))
        };
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
pub(super) fn submit(
    s: &AppState,
    task: Task,
    max_tokens: usize,
    sampling: Sampling,
) -> Result<UnboundedReceiver<Event>, ApiError> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let job = Job {
        request_id: request_id(),
        task,
        max_tokens,
        sampling,
        deadline: Instant::now() + s.timeout,
        events: tx,
    };
    match s.scheduler.submit(job) {
        Ok(()) => Ok(rx),
        Err(Refused::Full) => Err(queue_full()),
        Err(Refused::Stopped) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the model worker has stopped; the server must be restarted",
        )),
    }
}

fn queue_full() -> ApiError {
    ApiError::busy("the model's queue is full; retry later", 2)
}

/// Refuses a text over the prompt limit before it is queued (the worker checks the whole
/// prompt again, image codes and template included, before its prefill).
pub(super) async fn check_prompt(s: &Arc<AppState>, text: String) -> Result<(), ApiError> {
    let st = s.clone();
    let tokens =
        tokio::task::spawn_blocking(move || st.tokenizer.encode(&text).map(|ids| ids.len()))
            .await
            .map_err(ApiError::internal)?
            .map_err(|e| ApiError::internal(format!("counting the prompt's tokens: {e}")))?;
    if tokens > s.max_prompt_tokens {
        return Err(ApiError::bad(super::scheduler::prompt_too_long(
            tokens,
            s.max_prompt_tokens,
            s.positions,
        )));
    }
    Ok(())
}

/// Waits for the job's one final event.
pub(super) async fn finish(mut rx: UnboundedReceiver<Event>) -> Result<Event, ApiError> {
    while let Some(e) = rx.recv().await {
        match e {
            Event::Delta(_) => continue,
            Event::TimedOut => return Err(ApiError::timed_out()),
            Event::Rejected(m) => return Err(ApiError::bad(m)),
            Event::Failed => return Err(model_failed()),
            other => return Ok(other),
        }
    }
    Err(ApiError::internal("the model worker dropped the request"))
}

/// The answer to a request whose batch failed (the worker logged why, under its id).
fn model_failed() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!(
            "the model failed on this request; the server's log has the details under request id {}",
            request_id()
        ),
    )
}

/// The data of an `error` event (streams run outside the request's scope: `id` is passed).
fn stream_error(message: &str, id: &str) -> String {
    json!({"message": message, "request_id": id}).to_string()
}

pub(super) fn finish_reason(f: Finish) -> &'static str {
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
    let id = request_id();
    let stream = UnboundedReceiverStream::new(rx).map(move |e| {
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
                .data(stream_error("the request's deadline passed", &id)),
            Event::Rejected(m) => SseEvent::default()
                .event("error")
                .data(stream_error(&m, &id)),
            Event::Failed => SseEvent::default()
                .event("error")
                .data(stream_error("the model failed on this request", &id)),
            Event::Image { .. } => SseEvent::default()
                .event("error")
                .data(stream_error("an answer of the wrong kind", &id)),
        })
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// The parts of an upload form: the image's bytes and the other text fields, and the upload
/// slot they hold until the image is decoded.
struct Upload {
    image: Option<Vec<u8>>,
    question: Option<String>,
    options: Options,
    _slot: OwnedSemaphorePermit,
}

/// Reads an upload form: its declared length is checked first, then it waits for an upload
/// slot, then the body is read within the time limit.
async fn read_form(s: &AppState, req: Request) -> Result<Upload, ApiError> {
    s.limits.check_length(req.headers())?;
    let slot = s.limits.upload_slot().await?;
    let form = s.limits.form(req).await?;
    fields(form, slot).await
}

/// Parses an upload form's fields as the report and ask routes do, from a whole body and its
/// `Content-Type`: the fuzzer's way in. The error is the message a client would get.
pub async fn parse_upload_form(content_type: &str, body: Vec<u8>) -> Result<(), String> {
    let request = Request::builder()
        .header(axum::http::header::CONTENT_TYPE, content_type)
        .body(axum::body::Body::from(body))
        .map_err(|e| e.to_string())?;
    let form = <Multipart as axum::extract::FromRequest<()>>::from_request(request, &())
        .await
        .map_err(|e| e.body_text())?;
    let slot = Arc::new(tokio::sync::Semaphore::new(1))
        .acquire_owned()
        .await
        .map_err(|e| e.to_string())?;
    fields(form, slot).await.map(drop).map_err(|e| e.message)
}

async fn fields(mut form: Multipart, slot: OwnedSemaphorePermit) -> Result<Upload, ApiError> {
    let mut up = Upload {
        image: None,
        question: None,
        options: Options::default(),
        _slot: slot,
    };
    let malformed = |e: axum::extract::multipart::MultipartError| {
        tracing::info!("request {}: {}", request_id(), e.body_text());
        ApiError::bad("the multipart form is malformed")
    };
    while let Some(field) = form.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field.bytes().await.map_err(malformed)?;
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

/// The upload decoded (DICOM, PNG or JPEG) and preprocessed into the VQ-GAN's input. A cheap
/// look at its leading bytes comes first (a file of no known format is 400 whatever the load),
/// then the queue (429 before the decode when it is full). Errors name the problem, never a
/// DICOM tag's value.
async fn vqgan_input(s: &AppState, up: Upload) -> Result<candle_core::Tensor, ApiError> {
    let bytes = up
        .image
        .ok_or_else(|| ApiError::bad("the form has no `image` file"))?;
    let upload = std::path::PathBuf::from("upload");
    if bytes.is_empty() {
        return Err(ApiError::image(&ImageError::Empty { path: upload }));
    }
    if cxr_image::sniff_format(&bytes).is_none() {
        return Err(ApiError::image(&ImageError::UnknownFormat { path: upload }));
    }
    if !s.scheduler.has_room() {
        return Err(queue_full());
    }
    let (config, device) = (s.vqgan.clone(), s.device.clone());
    // The decoder runs outside the request's scope: its errors are told (and logged) here. It
    // holds the upload slot until it ends, even when the client has gone and this future with it.
    let slot = up._slot;
    let decoded = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let img = cxr_image::decode_image(&bytes, &upload).map_err(Ok)?;
        cxr_vqgan::vqgan_input(&img, &config, &device).map_err(|e| Err(e.to_string()))
    })
    .await
    .map_err(|e| ApiError::internal(format!("decoding the upload: {e}")))?;
    decoded.map_err(|e| match e {
        Ok(e) => ApiError::image(&e),
        Err(e) => {
            tracing::info!(
                "request {}: upload refused: preprocessing: {e}",
                request_id()
            );
            ApiError::bad("the image could not be read: it could not be preprocessed for the model")
        }
    })
}

/// Queues a text job and answers it: whole, or as events.
async fn answer(
    s: &AppState,
    task: Task,
    max_tokens: usize,
    sampling: Sampling,
    stream: bool,
) -> Result<Response, ApiError> {
    let rx = submit(s, task, max_tokens, sampling)?;
    if stream {
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
pub async fn report(State(s): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let up = read_form(&s, req).await?;
    if up.question.is_some() {
        return Err(ApiError::bad("a report takes no question (use /v1/ask)"));
    }
    let (max_tokens, sampling, stream) = (
        up.options.max_tokens(s.max_tokens)?,
        up.options.sampling()?,
        up.options.stream,
    );
    let image = vqgan_input(&s, up).await?;
    answer(&s, Task::Report { image }, max_tokens, sampling, stream).await
}

/// POST /v1/ask: multipart `image` and `question` (+ options) -> the answer.
pub async fn ask(State(s): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let mut up = read_form(&s, req).await?;
    let question = up
        .question
        .take()
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| ApiError::bad("the form has no `question`"))?;
    let (max_tokens, sampling, stream) = (
        up.options.max_tokens(s.max_tokens)?,
        up.options.sampling()?,
        up.options.stream,
    );
    check_prompt(&s, question.clone()).await?;
    let image = vqgan_input(&s, up).await?;
    answer(
        &s,
        Task::Ask { image, question },
        max_tokens,
        sampling,
        stream,
    )
    .await
}

#[derive(Deserialize)]
pub struct DrawRequest {
    report: String,
    #[serde(flatten)]
    options: Options,
}

/// POST /v1/draw: `{"report": ...}` -> `{"png_base64", "codes"}`.
pub async fn draw(State(s): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let req: DrawRequest = s.limits.json(req).await?;
    if req.report.trim().is_empty() {
        return Err(ApiError::bad("the report is empty"));
    }
    let sampling = req.options.sampling()?;
    check_prompt(&s, req.report.clone()).await?;
    let started = Instant::now();
    let rx = submit(
        &s,
        Task::Draw { report: req.report },
        s.vqgan.tokens_per_image(),
        sampling,
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
