//! POST /v1/chat/completions, as OpenAI's: a `chat.completion` object, or `chat.completion.chunk`
//! events ending with `data: [DONE]`. One choice per request (`n` must be 1).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use super::api::{check_prompt, finish, finish_reason, submit, Options};
use super::error::{request_id, ApiError};
use super::{AppState, Event, Task};

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
    /// Choices asked for: only 1 (a sampled request is cheaper sent again than batched here).
    n: Option<u64>,
    #[serde(default)]
    stream: bool,
}

/// POST /v1/chat/completions, as OpenAI's. The prompt is the last user message in LLM-CXR's
/// Alpaca template, the one the model was fine-tuned with (earlier turns are not part of it).
pub async fn chat_completions(
    State(s): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let req: ChatRequest = s.limits.json(req).await?;
    if let Some(n) = req.n.filter(|&n| n != 1) {
        return Err(ApiError::bad(format!(
            "n is {n}: this server answers one choice per request (n must be 1)"
        )));
    }
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
    let (max_tokens, sampling) = (options.max_tokens(s.max_tokens)?, options.sampling()?);
    check_prompt(&s, prompt.clone()).await?;
    let rx = submit(&s, Task::Chat { prompt }, max_tokens, sampling)?;
    let request = request_id();
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
            Event::TimedOut | Event::Rejected(_) | Event::Failed | Event::Image { .. } => {
                Some(SseEvent::default().data(
                    json!({"error": {"message": "generation failed or timed out", "request_id": request}})
                        .to_string(),
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
