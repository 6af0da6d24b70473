//! What wraps every request before and after the router: the bearer-token check (constant time),
//! the counters, the rate-limited error log, and a last guard that turns any error response we
//! did not build (axum's own 405, say) into `{"error":"..."}`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::Router;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::Request;
use subtle::ConstantTimeEq;

use super::error::{error_response, ApiError, ErrorKind, ErrorNote};
use super::routes::Shared;
use super::stats::LogLimiter;

/// The per-request wrapper; one clone per HTTP connection.
#[derive(Clone)]
pub(crate) struct ApiService {
    pub(crate) app: Router,
    pub(crate) shared: Arc<Shared>,
    pub(crate) auth: Arc<Auth>,
    pub(crate) log: Arc<LogLimiter>,
}

/// The token rule.
pub(crate) struct Auth {
    /// `None`: no token configured (loopback only), every request passes.
    token: Option<Box<[u8]>>,
}

impl Auth {
    pub(crate) fn new(token: Option<&str>) -> Self {
        Auth { token: token.map(|t| t.as_bytes().into()) }
    }

    /// Check `Authorization: Bearer <token>`. `/healthz` and `/readyz` need none (probes). The token is compared in
    /// constant time (its length is not secret).
    pub(crate) fn check<B>(&self, req: &Request<B>) -> Result<(), ApiError> {
        let Some(token) = &self.token else { return Ok(()) };
        if matches!(req.uri().path(), "/healthz" | "/readyz") {
            return Ok(());
        }
        let Some(value) = req.headers().get(AUTHORIZATION) else {
            return Err(ApiError::unauthorized("missing bearer token"));
        };
        let value = value.as_bytes();
        let scheme = b"bearer ";
        if value.len() < scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Err(ApiError::unauthorized("expected Authorization: Bearer <token>"));
        }
        let given = value[scheme.len()..].trim_ascii();
        if bool::from(given.ct_eq(token)) {
            Ok(())
        } else {
            Err(ApiError::unauthorized("invalid bearer token"))
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<B> hyper::service::Service<Request<B>> for ApiService
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture;

    fn call(&self, req: Request<B>) -> BoxFuture {
        let shared = self.shared.clone();
        let log = self.log.clone();
        shared.counters.request();
        if let Err(e) = self.auth.check(&req) {
            let r = finish(&shared, &log, e.into_response());
            return Box::pin(std::future::ready(Ok(r)));
        }
        let fut = tower_service::Service::call(&mut self.app.clone(), req);
        Box::pin(async move {
            let r = match fut.await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok(finish(&shared, &log, r))
        })
    }
}

/// Count, log (rate-limited) and, for an error response that is not ours, make the body JSON.
fn finish(shared: &Shared, log: &LogLimiter, mut r: Response) -> Response {
    let status = r.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return r;
    }
    let (kind, message) = match r.extensions_mut().remove::<ErrorNote>() {
        Some(note) => (note.kind, note.message),
        None => {
            let kind = ErrorKind::of_status(status);
            let message = status.canonical_reason().unwrap_or("error").to_ascii_lowercase();
            let is_json = r
                .headers()
                .get(CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            if !is_json {
                // Keep the headers (405's Allow), replace the body.
                let mut json = error_response(status, &message);
                for (k, v) in r.headers() {
                    if k != CONTENT_TYPE && k != http::header::CONTENT_LENGTH {
                        json.headers_mut().insert(k.clone(), v.clone());
                    }
                }
                r = json;
            }
            (kind, message.into())
        }
    };
    shared.counters.error(kind);
    if let Some(suppressed) = log.allow(kind) {
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                kind = kind.name(),
                suppressed,
                "api: {message}"
            );
        } else {
            tracing::info!(
                status = status.as_u16(),
                kind = kind.name(),
                suppressed,
                "api: {message}"
            );
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>, path: &str) -> Request<()> {
        let mut b = Request::builder().uri(path);
        if let Some(a) = auth {
            b = b.header(AUTHORIZATION, a);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_token_rule() {
        let open = Auth::new(None);
        assert!(open.check(&req(None, "/api/stats")).is_ok());
        let auth = Auth::new(Some("s3cret"));
        assert!(auth.check(&req(Some("Bearer s3cret"), "/api/stats")).is_ok());
        assert!(auth.check(&req(Some("bearer s3cret"), "/")).is_ok());
        assert!(auth.check(&req(None, "/healthz")).is_ok());
        for bad in [
            None,
            Some("Bearer"),
            Some("Bearer "),
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("Basic s3cret"),
            Some("s3cret"),
        ] {
            let e = auth.check(&req(bad, "/api/stats")).unwrap_err();
            assert_eq!(e.status(), http::StatusCode::UNAUTHORIZED, "{bad:?}");
        }
        assert_eq!(
            auth.check(&req(None, "/api/stats")).unwrap_err().message(),
            "missing bearer token"
        );
    }
}
