//! Reading request bodies within limits: a declared length over `--max-body-mib` is refused
//! before a byte is read (413), a body must arrive whole within `--body-timeout` (408), and
//! uploads take one of `--max-uploads` slots while they are read and decoded (429 when none
//! frees up within `UPLOAD_WAIT`), which bounds the memory and CPU that uploads can hold.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::StreamExt;

use super::error::ApiError;

/// How long an upload waits for a free slot before it is answered 429.
pub const UPLOAD_WAIT: Duration = Duration::from_secs(2);

/// The limits on reading bodies.
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
    pub uploads: Arc<Semaphore>,
}

impl BodyLimits {
    fn too_large(&self) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is larger than this server's limit of {} MiB (--max-body-mib)",
                self.max_bytes >> 20
            ),
        )
    }

    /// Refuses a body whose declared length is over the limit, before reading it.
    pub fn check_length(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match declared {
            Some(n) if n > self.max_bytes as u64 => Err(self.too_large()),
            _ => Ok(()),
        }
    }

    /// A slot to read and decode one upload in, waiting up to `UPLOAD_WAIT` for one.
    pub async fn upload_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(UPLOAD_WAIT, self.uploads.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(closed)) => Err(ApiError::internal(closed)),
            Err(_) => Err(ApiError::busy(
                "too many uploads are being read at once (--max-uploads); retry later",
                1,
            )),
        }
    }

    /// The whole body, within the size and time limits.
    pub async fn read(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
        self.check_length(headers)?;
        let collect = async {
            let mut stream = body.into_data_stream();
            let mut out = Vec::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    tracing::info!(
                        "request {}: reading the body: {e}",
                        super::error::request_id()
                    );
                    ApiError::bad("the body could not be read to its end")
                })?;
                if out.len() + chunk.len() > self.max_bytes {
                    return Err(self.too_large());
                }
                out.extend_from_slice(&chunk);
            }
            Ok(Bytes::from(out))
        };
        tokio::time::timeout(self.timeout, collect)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the body did not arrive within {} s (--body-timeout)",
                        self.timeout.as_secs()
                    ),
                )
            })?
    }

    /// A JSON body of type `T`.
    pub async fn json<T: DeserializeOwned>(&self, req: Request) -> Result<T, ApiError> {
        let (parts, body) = req.into_parts();
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || m.ends_with("+json")
            });
        let bytes = self.read(&parts.headers, body).await?;
        if !is_json {
            return Err(ApiError::bad(
                "the body must be JSON, sent with Content-Type: application/json",
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            use serde_json::error::Category;
            let at = format!("line {}, column {}", e.line(), e.column());
            ApiError::bad(match e.classify() {
                Category::Data => format!("the JSON does not fit this route: {e}"),
                Category::Eof => format!("the JSON ends too early ({at})"),
                Category::Syntax | Category::Io => format!("the body is not valid JSON ({at})"),
            })
        })
    }

    /// A multipart form, read whole within the limits (the caller holds an upload slot).
    pub async fn form(&self, req: Request) -> Result<Multipart, ApiError> {
        let (parts, body) = req.into_parts();
        let bytes = self.read(&parts.headers, body).await?;
        let req = Request::from_parts(parts, Body::from(bytes));
        Multipart::from_request(req, &()).await.map_err(|e| {
            tracing::info!("request {}: {}", super::error::request_id(), e.body_text());
            ApiError::bad("the body must be a multipart/form-data form (with its boundary)")
        })
    }
}
