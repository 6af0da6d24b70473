//! The demo page (`ringcast serve --demo`, [`super::ApiConfig::demo_page`]): plain HTML,
//! JavaScript and CSS under `src/api/demo/`, embedded in the binary with `include_str!` (no
//! build step, no file to install). Seed 004's "open the browser console and create a
//! WebSocket" test, made friendly: the page connects to the node's WebSocket listener, shows
//! its client id, joins groups, chats with the client commands, pushes through
//! `POST /api/publish` and polls `/api/stats` and `/api/groups/{g}`.
//!
//! Routes, only when the page is on (otherwise they do not exist):
//! - `GET /` with no query string: the page. With a query string, `/` stays seed 003's pusher.
//! - `GET /demo/app.js`, `GET /demo/style.css`: its script and style.
//! - `GET /demo/config.json`: where the WebSocket listener is, `{"ws_host":..,"ws_port":..,
//!   "token_required":..}`. `ws_host` is `null` when the node listens on every address
//!   (0.0.0.0 or ::): the page then uses its own host name, the one the browser reached.
//!
//! These four need no bearer token even when the API has one: they are the same for everyone
//! and hold no node data. The page asks the user for the token when the API answers 401.
//!
//! Deliberately absent: anything that reads the node. The page is static; every figure it
//! shows comes from the ordinary, authenticated API.

use std::net::SocketAddr;

use axum::body::Body;
use axum::response::Response;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Method, Request};
use serde::Serialize;

const INDEX_HTML: &str = include_str!("demo/index.html");
const APP_JS: &str = include_str!("demo/app.js");
const STYLE_CSS: &str = include_str!("demo/style.css");

/// The page's own paths besides `/`.
pub(crate) const APP_JS_PATH: &str = "/demo/app.js";
pub(crate) const STYLE_CSS_PATH: &str = "/demo/style.css";
pub(crate) const CONFIG_PATH: &str = "/demo/config.json";

/// The script may only come from this origin, it may open WebSockets to any host (the
/// listener is on another port, and another host behind some set-ups), and nothing may frame
/// the page.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// What the page needs to know, computed once at start-up.
pub(crate) struct Page {
    config_json: String,
}

/// `/demo/config.json`.
#[derive(Serialize)]
struct PageConfig {
    /// Host part of the WebSocket URL (IPv6 in brackets), or `None` for "the page's host".
    ws_host: Option<String>,
    ws_port: u16,
    /// Whether the API wants a bearer token (the page then shows its token field at once).
    token_required: bool,
}

impl Page {
    /// The page for a node listening for WebSocket clients on `ws`.
    pub(crate) fn new(ws: SocketAddr, token_required: bool) -> Page {
        let ip = ws.ip().to_canonical();
        let ws_host = match ip {
            ip if ip.is_unspecified() => None,
            std::net::IpAddr::V4(v4) => Some(v4.to_string()),
            std::net::IpAddr::V6(v6) => Some(format!("[{v6}]")),
        };
        let config = PageConfig { ws_host, ws_port: ws.port(), token_required };
        Page { config_json: serde_json::to_string(&config).expect("plain struct serializes") }
    }

    pub(crate) fn index(&self) -> Response {
        let mut r = asset(Body::from(INDEX_HTML), "text/html; charset=utf-8");
        r.headers_mut().insert(
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        r.headers_mut().insert(HeaderName::from_static("x-frame-options"), "DENY".parse().unwrap());
        r
    }

    pub(crate) fn app_js(&self) -> Response {
        asset(Body::from(APP_JS), "text/javascript; charset=utf-8")
    }

    pub(crate) fn style_css(&self) -> Response {
        asset(Body::from(STYLE_CSS), "text/css; charset=utf-8")
    }

    pub(crate) fn config(&self) -> Response {
        asset(Body::from(self.config_json.clone()), "application/json")
    }
}

/// A static answer (the embedded files are served from the binary's memory, not copied).
fn asset(body: Body, content_type: &'static str) -> Response {
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Small, and it changes with the binary: always fetch it again.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    h.insert(HeaderName::from_static("referrer-policy"), HeaderValue::from_static("no-referrer"));
    r
}

/// `GET` or `HEAD` of `/` without a query string: a browser asking for the page (a request
/// with a query string is seed 003's pusher).
pub(crate) fn is_page_request<B>(req: &Request<B>) -> bool {
    is_read(req) && req.uri().path() == "/" && req.uri().query().is_none_or(str::is_empty)
}

/// The requests that need no bearer token when the page is on: the page and its assets.
pub(crate) fn is_public<B>(req: &Request<B>) -> bool {
    is_page_request(req)
        || (is_read(req) && matches!(req.uri().path(), APP_JS_PATH | STYLE_CSS_PATH | CONFIG_PATH))
}

fn is_read<B>(req: &Request<B>) -> bool {
    req.method() == Method::GET || req.method() == Method::HEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    #[test]
    fn the_page_is_a_bare_get_of_root() {
        assert!(is_page_request(&req(Method::GET, "/")));
        assert!(is_page_request(&req(Method::HEAD, "/")));
        assert!(is_page_request(&req(Method::GET, "/?")));
        assert!(!is_page_request(&req(Method::GET, "/?content=x")));
        assert!(!is_page_request(&req(Method::POST, "/")));
        assert!(!is_page_request(&req(Method::GET, "/index.html")));
    }

    #[test]
    fn only_the_page_and_its_assets_are_public() {
        for uri in ["/", "/demo/app.js", "/demo/style.css", "/demo/config.json"] {
            assert!(is_public(&req(Method::GET, uri)), "{uri}");
        }
        for (m, uri) in [
            (Method::GET, "/?content=x"),
            (Method::POST, "/demo/config.json"),
            (Method::GET, "/demo/"),
            (Method::GET, "/demo/../api/stats"),
            (Method::GET, "/api/stats"),
        ] {
            assert!(!is_public(&req(m.clone(), uri)), "{m} {uri}");
        }
    }

    #[test]
    fn the_websocket_host_the_page_is_told() {
        let host = |addr: &str| {
            let p = Page::new(addr.parse().unwrap(), false);
            serde_json::from_str::<serde_json::Value>(&p.config_json).unwrap()["ws_host"].clone()
        };
        assert_eq!(host("0.0.0.0:2020"), serde_json::Value::Null);
        assert_eq!(host("[::]:2020"), serde_json::Value::Null);
        assert_eq!(host("127.0.0.1:2020"), "127.0.0.1");
        assert_eq!(host("[::1]:2020"), "[::1]");
        assert_eq!(host("[::ffff:10.0.0.5]:2020"), "10.0.0.5");
        let p = Page::new("10.1.2.3:4000".parse().unwrap(), true);
        assert_eq!(p.config_json, r#"{"ws_host":"10.1.2.3","ws_port":4000,"token_required":true}"#);
    }

    #[test]
    fn the_page_loads_only_its_own_assets_and_never_uses_inner_html() {
        assert!(INDEX_HTML.contains(r#"src="/demo/app.js""#));
        assert!(INDEX_HTML.contains(r#"href="/demo/style.css""#));
        // Untrusted text (other clients' messages) must only ever reach the DOM as text.
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            assert!(!APP_JS.contains(sink), "app.js uses {sink}");
            assert!(!INDEX_HTML.contains(sink), "index.html uses {sink}");
        }
        // The CSP forbids inline scripts, so the page must have none.
        assert!(!INDEX_HTML.contains("<script>"));
    }
}
