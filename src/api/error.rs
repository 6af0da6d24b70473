//! Every error the API answers: a status, a kind (for counters and rate-limited logs) and a
//! message, sent as `{"error":"..."}`. Nothing here knows axum's routing or the node.

use std::borrow::Cow;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::StatusCode;
use serde::Serialize;

use crate::addressing::RequestError;

/// What went wrong, coarsely: one counter and one log budget each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: malformed JSON, query or path parameter.
    BadRequest,
    /// 401: missing or wrong bearer token.
    Unauthorized,
    /// 403: a browser request the tokenless API refuses (another site's, or a foreign `Host`).
    Forbidden,
    /// 404: no such endpoint, or no such client for an operation on one.
    NotFound,
    /// 405: the endpoint exists, the method does not.
    MethodNotAllowed,
    /// 409: the node refused an operation (a limit).
    Conflict,
    /// 413: body over `body_bytes_max`.
    PayloadTooLarge,
    /// 415: wrong `Content-Type`.
    UnsupportedMediaType,
    /// 503: a shard's inbox was full, the shards did not answer in time, or the node is
    /// stopping.
    Unavailable,
    /// 504: the node that holds the client did not answer a forwarded operation within the
    /// cluster's query timeout.
    GatewayTimeout,
    /// Anything else (a bug, or an HTTP error hyper or axum produced by itself).
    Other,
}

impl ErrorKind {
    /// Every kind, in counter order.
    pub(crate) const ALL: [ErrorKind; 11] = [
        ErrorKind::BadRequest,
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::NotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::Conflict,
        ErrorKind::PayloadTooLarge,
        ErrorKind::UnsupportedMediaType,
        ErrorKind::Unavailable,
        ErrorKind::GatewayTimeout,
        ErrorKind::Other,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The kind of an error response we did not build ourselves.
    pub(crate) fn of_status(status: StatusCode) -> ErrorKind {
        match status {
            StatusCode::BAD_REQUEST => ErrorKind::BadRequest,
            StatusCode::UNAUTHORIZED => ErrorKind::Unauthorized,
            StatusCode::FORBIDDEN => ErrorKind::Forbidden,
            StatusCode::NOT_FOUND => ErrorKind::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ErrorKind::MethodNotAllowed,
            StatusCode::CONFLICT => ErrorKind::Conflict,
            StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorKind::UnsupportedMediaType,
            StatusCode::SERVICE_UNAVAILABLE => ErrorKind::Unavailable,
            StatusCode::GATEWAY_TIMEOUT => ErrorKind::GatewayTimeout,
            _ => ErrorKind::Other,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::Conflict => "conflict",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::GatewayTimeout => "gateway_timeout",
            ErrorKind::Other => "other",
        }
    }
}

/// An error answer. Its response carries an `ErrorNote` extension so the service wrapper can
/// count and log it without parsing the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: ErrorKind,
    pub(crate) message: Cow<'static, str>,
}

/// Attached to every error response we build: what the wrapper logs.
#[derive(Debug, Clone)]
pub(crate) struct ErrorNote {
    pub(crate) kind: ErrorKind,
    pub(crate) message: Cow<'static, str>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

impl ApiError {
    fn new(status: StatusCode, kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError { status, kind, message: message.into() }
    }

    /// 400.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, ErrorKind::BadRequest, message)
    }

    /// 400 for a body serde could not read; says where.
    pub(crate) fn bad_json(e: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        let what = match e.classify() {
            Category::Data => "invalid request",
            Category::Io | Category::Syntax | Category::Eof => "malformed JSON",
        };
        ApiError::bad_request(format!("{what}: {e}"))
    }

    /// 401, with `WWW-Authenticate: Bearer`.
    pub fn unauthorized(message: &'static str) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorKind::Unauthorized, message)
    }

    /// 403.
    pub fn forbidden(message: &'static str) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, ErrorKind::Forbidden, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, message)
    }

    /// 405.
    pub fn method_not_allowed(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, ErrorKind::MethodNotAllowed, message)
    }

    /// 409.
    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::CONFLICT, ErrorKind::Conflict, message)
    }

    /// 413.
    pub fn payload_too_large(bytes_max: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::PayloadTooLarge,
            format!("request body over the limit of {bytes_max} bytes"),
        )
    }

    /// 415.
    pub fn unsupported_media_type(expected: &'static str) -> Self {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::UnsupportedMediaType,
            format!("expected Content-Type: {expected}"),
        )
    }

    /// 503, with `Retry-After: 1`.
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, ErrorKind::Unavailable, message)
    }

    /// 504.
    pub fn gateway_timeout(message: impl Into<Cow<'static, str>>) -> Self {
        ApiError::new(StatusCode::GATEWAY_TIMEOUT, ErrorKind::GatewayTimeout, message)
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message sent as `"error"`.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError::unavailable(e.to_string())
    }
}

impl From<crate::cluster::ops::OpError> for ApiError {
    fn from(e: crate::cluster::ops::OpError) -> Self {
        use crate::cluster::ops::OpError;
        match e {
            OpError::Request(e) => e.into(),
            OpError::UnknownNode(_) => ApiError::not_found(e.to_string()),
            OpError::Timeout(..) => ApiError::gateway_timeout(e.to_string()),
            OpError::Invalid(m) => ApiError::bad_request(m),
            OpError::BackplaneDown | OpError::RemoteUnavailable(_) | OpError::BadAnswer => {
                ApiError::unavailable(e.to_string())
            }
        }
    }
}

/// `{"error": message}` with `status`.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::to_vec(&ErrorBody { error: message })
        .unwrap_or_else(|_| br#"{"error":"internal error"}"#.to_vec());
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = error_response(self.status, &self.message);
        r.extensions_mut().insert(ErrorNote { kind: self.kind, message: self.message });
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(r: Response) -> String {
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn errors_are_json_with_their_headers() {
        let r = ApiError::from(RequestError::Busy).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(r.extensions().get::<ErrorNote>().unwrap().kind, ErrorKind::Unavailable);
        assert_eq!(body_of(r).await, r#"{"error":"a shard's inbox is full; retry later"}"#);

        let r = ApiError::from(RequestError::Timeout).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "1");

        let r = ApiError::unauthorized("missing bearer token").into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Bearer");
        assert_eq!(body_of(r).await, r#"{"error":"missing bearer token"}"#);
    }

    #[tokio::test]
    async fn messages_are_escaped() {
        let r = ApiError::bad_request("group: \"a\\b\"").into_response();
        assert_eq!(body_of(r).await, r#"{"error":"group: \"a\\b\""}"#);
    }

    #[test]
    fn kinds_index_their_counters() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
        assert_eq!(ErrorKind::of_status(StatusCode::PAYLOAD_TOO_LARGE), ErrorKind::PayloadTooLarge);
        assert_eq!(ErrorKind::of_status(StatusCode::IM_A_TEAPOT), ErrorKind::Other);
    }
}
