//! Errors as clients see them: a status, OpenAI's `{"error": {...}}` body with the request's id,
//! and a message in plain words. What went wrong inside (a library's message, a path, a panic)
//! goes to the log under the same request id, never to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cxr_image::ImageError;
use serde_json::json;

tokio::task_local! {
    /// The id of the request being answered (set by the `account` middleware).
    pub static REQUEST_ID: String;
}

/// The current request's id, or "-" outside a request.
pub fn request_id() -> String {
    REQUEST_ID
        .try_with(|id| id.clone())
        .unwrap_or_else(|_| "-".into())
}

/// An error as clients see it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A failure of the server's own: the client gets the request id, the log gets `detail`.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        let id = request_id();
        tracing::error!("request {id}: {detail}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the server failed on this request; its log has the details under request id {id}"
            ),
        )
    }

    pub fn busy(message: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, message)
        }
    }

    pub fn timed_out() -> Self {
        ApiError {
            retry_after: Some(5),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the request's deadline passed before the model finished it",
            )
        }
    }

    /// An upload that could not be decoded, said without the decoder's own words (logged).
    pub fn image(e: &ImageError) -> Self {
        tracing::info!("request {}: upload refused: {e}", request_id());
        let why = match e {
            ImageError::Empty { .. } => "the file is empty".to_string(),
            ImageError::TooLarge { bytes, max, .. } => {
                format!("the file is {bytes} bytes, more than the {max} accepted")
            }
            ImageError::UnknownFormat { .. } => "it is not a DICOM, PNG or JPEG file".into(),
            ImageError::Dimensions {
                width,
                height,
                max_side,
                max_pixels,
                ..
            } => format!(
                "it claims {width} x {height} pixels, more than the {max_side} px per side or \
                 {max_pixels} pixels accepted"
            ),
            ImageError::Corrupt { format, .. } => {
                format!("its {} data is broken or cut short", format_name(*format))
            }
            ImageError::UnsupportedTransferSyntax { uid, .. } => {
                format!("its DICOM transfer syntax {uid} is not one this server decodes")
            }
            ImageError::UnsupportedDicom { .. } => {
                "it is a DICOM image of a kind this server does not read".into()
            }
            ImageError::MissingAttribute { attribute, .. } => {
                format!("its DICOM attribute {attribute} is missing or invalid")
            }
            _ => "it is not an image this server can decode".into(),
        };
        Self::bad(format!("the image could not be read: {why}"))
    }
}

fn format_name(f: cxr_image::ImageFormat) -> &'static str {
    match f {
        cxr_image::ImageFormat::Dicom => "DICOM",
        cxr_image::ImageFormat::Png => "PNG",
        cxr_image::ImageFormat::Jpeg => "JPEG",
    }
}

/// The `type` of an error, as OpenAI names them.
pub fn kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 404 | 408 | 413 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        503 => "timeout_error",
        _ => "server_error",
    }
}

/// The body of an error answer.
pub fn body(status: StatusCode, message: &str) -> serde_json::Value {
    json!({"error": {"message": message, "type": kind(status), "request_id": request_id()}})
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(body(self.status, &self.message))).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}
