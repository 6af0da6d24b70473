//! What wraps every request before and after the router: the bearer-token check (constant time),
//! without a token the browser guard (no cross-site requests, loopback `Host` only), the counters, the rate-limited error log, and a last guard that turns any error response we
//! did not build (axum's own 405, say) into `{"error":"..."}`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use axum::Router;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use http::HeaderValue;
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
    /// The demo page is on: it and its assets need no token (see `demo.rs`).
    demo_page: bool,
}

impl Auth {
    pub(crate) fn new(token: Option<&str>, demo_page: bool) -> Self {
        Auth { token: token.map(|t| t.as_bytes().into()), demo_page }
    }

    /// Check `Authorization: Bearer <token>`. `/healthz` and `/readyz` need none (probes), nor,
    /// when it is on, the demo page. The token is compared in constant time (its length is not
    /// secret).
    pub(crate) fn check<B>(&self, req: &Request<B>) -> Result<(), ApiError> {
        let Some(token) = &self.token else { return browser_guard(req) };
        if matches!(req.uri().path(), "/healthz" | "/readyz")
            || (self.demo_page && super::demo::is_public(req))
        {
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

/// The API without a token trusts whoever reaches its loopback address. A browser on this machine
/// reaches it too, on behalf of any site it shows: a cross-site `<img src="/?content=..">` or form
/// post (CSRF), or a hostile name that resolves to 127.0.0.1 (DNS rebinding). So the tokenless
/// API refuses, with 403, requests that name a host other than a loopback one, and requests a
/// browser made for another site (`Sec-Fetch-Site`, or an `Origin` other than the API's own on
/// browsers that do not send it). curl, scripts and the demo page (same origin) are unaffected.
/// With a token this is moot: a cross-site request cannot carry `Authorization`.
fn browser_guard<B>(req: &Request<B>) -> Result<(), ApiError> {
    let host = req.headers().get(HOST);
    if let Some(host) = host {
        if !is_loopback_host(host.as_bytes()) {
            return Err(ApiError::forbidden(
                "the API has no token: the Host header must be a loopback name or address",
            ));
        }
    }
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        if !matches!(site.as_bytes(), b"same-origin" | b"none") {
            return Err(ApiError::forbidden(
                "the API has no token: cross-site browser requests are refused",
            ));
        }
    } else if let Some(origin) = headers.get(ORIGIN) {
        if !host.is_some_and(|h| is_same_origin(origin, h)) {
            return Err(ApiError::forbidden(
                "the API has no token: requests from another origin are refused",
            ));
        }
    }
    Ok(())
}

/// `localhost`, `*.localhost`, an IPv4 address in 127.0.0.0/8 or `[::1]`, with or without a port.
fn is_loopback_host(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else { return false };
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.starts_with(':') => v6,
            _ => return false,
        }
    } else {
        host.split_once(':').map_or(host, |(name, _port)| name)
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.eq_ignore_ascii_case("localhost")
        || name.len() > ".localhost".len()
            && name[name.len() - ".localhost".len()..].eq_ignore_ascii_case(".localhost")
    {
        return true;
    }
    name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `Origin: http://<host>` where `<host>` is the request's `Host` (the API is plain HTTP).
fn is_same_origin(origin: &HeaderValue, host: &HeaderValue) -> bool {
    origin
        .as_bytes()
        .strip_prefix(b"http://")
        .is_some_and(|o| o.eq_ignore_ascii_case(host.as_bytes()))
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
        let open = Auth::new(None, false);
        assert!(open.check(&req(None, "/api/stats")).is_ok());
        let auth = Auth::new(Some("s3cret"), false);
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
        // Without the demo page, `/` is the seed pusher and needs the token.
        assert!(auth.check(&req(None, "/")).is_err());
        assert!(auth.check(&req(None, "/demo/config.json")).is_err());
    }

    fn browser(host: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/?content=x").header(HOST, host);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn without_a_token_browsers_may_not_push_for_another_site() {
        let open = Auth::new(None, true);
        let ok = |r: &Request<()>| open.check(r).is_ok();
        // curl, scripts: no Origin, no Sec-Fetch-*.
        for host in [
            "127.0.0.1:2021",
            "localhost:2021",
            "[::1]:2021",
            "127.9.9.9",
            "LOCALHOST.",
            "app.localhost:80",
        ] {
            assert!(ok(&browser(host, &[])), "{host}");
        }
        assert!(ok(&req(None, "/api/stats")), "HTTP/1.0 without Host");
        // DNS rebinding: a foreign name that resolved to loopback.
        for host in
            ["evil.example:2021", "127.0.0.1.evil.example", "[::2]:2021", "[::1", "localhost.evil"]
        {
            let e = open.check(&browser(host, &[])).unwrap_err();
            assert_eq!(e.status(), http::StatusCode::FORBIDDEN, "{host}");
        }
        // The demo page, same origin; a typed URL or bookmark.
        let h = "127.0.0.1:2021";
        assert!(ok(&browser(
            h,
            &[("sec-fetch-site", "same-origin"), ("origin", "http://127.0.0.1:2021")]
        )));
        assert!(ok(&browser(h, &[("sec-fetch-site", "none")])));
        // Another site's <img>, form or fetch.
        for site in ["cross-site", "same-site"] {
            assert!(!ok(&browser(h, &[("sec-fetch-site", site)])), "{site}");
        }
        // Browsers without Fetch Metadata: the Origin decides.
        assert!(ok(&browser(h, &[("origin", "http://127.0.0.1:2021")])));
        for origin in
            ["http://evil.example", "null", "https://127.0.0.1:2021", "http://127.0.0.1:2022"]
        {
            assert!(!ok(&browser(h, &[("origin", origin)])), "{origin}");
        }
        // With a token the token decides.
        let auth = Auth::new(Some("s3cret"), false);
        let r = browser(
            "evil.example",
            &[("authorization", "Bearer s3cret"), ("sec-fetch-site", "cross-site")],
        );
        assert!(auth.check(&r).is_ok());
    }

    #[test]
    fn the_demo_page_needs_no_token_but_the_api_still_does() {
        let auth = Auth::new(Some("s3cret"), true);
        for path in ["/", "/demo/app.js", "/demo/style.css", "/demo/config.json"] {
            assert!(auth.check(&req(None, path)).is_ok(), "{path}");
        }
        for path in ["/?content=x", "/api/stats", "/api/groups/g", "/demo/other"] {
            let e = auth.check(&req(None, path)).unwrap_err();
            assert_eq!(e.status(), http::StatusCode::UNAUTHORIZED, "{path}");
        }
    }
}
