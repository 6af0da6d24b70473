//! The HTTP/1.1 upgrade: request bytes in, response bytes out (check-then-parse).
//!
//! Parsing and validation are tungstenite's (`Request::try_parse`, `create_response`); this
//! module only maps its verdicts to HTTP statuses a client can act on.

use tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request};

/// A valid upgrade request.
#[derive(Debug)]
pub struct Accepted {
    /// Bytes of the request head; anything after them already belongs to the WebSocket stream.
    pub consumed: usize,
    /// The `101 Switching Protocols` response to send.
    pub response: Vec<u8>,
    /// Request path and query, e.g. `/?room=1`.
    pub path: String,
}

/// Why an upgrade is refused, as the HTTP status sent back before closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// 400: not a well-formed WebSocket upgrade request.
    BadRequest(&'static str),
    /// 405: only GET upgrades.
    MethodNotAllowed,
    /// 426: a WebSocket version other than 13, or a plain HTTP request.
    UpgradeRequired(&'static str),
    /// 431: the request head is larger than `header_bytes_max`, or has too many headers.
    HeadersTooLarge,
    /// 503: the node is at `connections_max` or shutting down.
    Unavailable(&'static str),
    /// 505: HTTP/1.0 or older.
    VersionNotSupported,
}

impl Rejection {
    /// The status code.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::BadRequest(_) => 400,
            Rejection::MethodNotAllowed => 405,
            Rejection::UpgradeRequired(_) => 426,
            Rejection::HeadersTooLarge => 431,
            Rejection::Unavailable(_) => 503,
            Rejection::VersionNotSupported => 505,
        }
    }

    /// A one-line explanation, also sent as the body.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::BadRequest(why)
            | Rejection::UpgradeRequired(why)
            | Rejection::Unavailable(why) => why,
            Rejection::MethodNotAllowed => "WebSocket upgrades use GET",
            Rejection::HeadersTooLarge => "request header fields too large",
            Rejection::VersionNotSupported => "WebSocket needs HTTP/1.1",
        }
    }

    /// The full HTTP response, `Connection: close`.
    pub fn response(&self) -> Vec<u8> {
        let (status, text) = match self.status() {
            400 => (400, "Bad Request"),
            405 => (405, "Method Not Allowed"),
            426 => (426, "Upgrade Required"),
            431 => (431, "Request Header Fields Too Large"),
            503 => (503, "Service Unavailable"),
            _ => (505, "HTTP Version Not Supported"),
        };
        let extra = match self {
            Rejection::UpgradeRequired(_) => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            Rejection::MethodNotAllowed => "Allow: GET\r\n",
            Rejection::Unavailable(_) => "Retry-After: 1\r\n",
            _ => "",
        };
        let body = self.reason();
        format!(
            "HTTP/1.1 {status} {text}\r\nConnection: close\r\n{extra}Content-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n{body}\n",
            body.len() + 1
        )
        .into_bytes()
    }
}

/// Examine the bytes received so far. `Ok(None)`: the head is incomplete, read more.
pub fn parse(buf: &[u8], header_bytes_max: usize) -> Result<Option<Accepted>, Rejection> {
    let parsed = match Request::try_parse(buf) {
        Ok(p) => p,
        Err(WsError::Capacity(CapacityError::TooManyHeaders)) => {
            return Err(Rejection::HeadersTooLarge)
        }
        Err(e) => return Err(map_error(&e, buf)),
    };
    let Some((consumed, request)) = parsed else {
        if buf.len() >= header_bytes_max {
            return Err(Rejection::HeadersTooLarge);
        }
        return Ok(None);
    };
    if consumed > header_bytes_max {
        return Err(Rejection::HeadersTooLarge);
    }
    if let Some(v) = request.headers().get("Sec-WebSocket-Version") {
        if v != "13" {
            return Err(Rejection::UpgradeRequired(
                "unsupported WebSocket version; this server speaks 13",
            ));
        }
    }
    let response = create_response(&request).map_err(|e| map_error(&e, buf))?;
    let mut bytes = Vec::with_capacity(160);
    write_response(&mut bytes, &response).map_err(|e| map_error(&e, buf))?;
    let path = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
    Ok(Some(Accepted { consumed, response: bytes, path }))
}

fn map_error(e: &WsError, buf: &[u8]) -> Rejection {
    match e {
        WsError::Protocol(p) => match p {
            ProtocolError::WrongHttpMethod => Rejection::MethodNotAllowed,
            ProtocolError::WrongHttpVersion => Rejection::VersionNotSupported,
            ProtocolError::MissingUpgradeWebSocketHeader
            | ProtocolError::MissingConnectionUpgradeHeader => {
                Rejection::UpgradeRequired("this endpoint only accepts WebSocket upgrades")
            }
            ProtocolError::MissingSecWebSocketVersionHeader => {
                Rejection::BadRequest("missing Sec-WebSocket-Version: 13")
            }
            ProtocolError::MissingSecWebSocketKey => {
                Rejection::BadRequest("missing Sec-WebSocket-Key")
            }
            ProtocolError::InvalidSecWebSocketKey => {
                Rejection::BadRequest("invalid Sec-WebSocket-Key")
            }
            _ => Rejection::BadRequest("malformed WebSocket upgrade request"),
        },
        _ if !buf.is_empty() => Rejection::BadRequest("malformed HTTP request"),
        _ => Rejection::BadRequest("empty request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "GET /chat?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn rfc_sample_key_gets_rfc_accept() {
        let ok = parse(GOOD.as_bytes(), 8192).unwrap().unwrap();
        let text = String::from_utf8(ok.response).unwrap();
        assert!(text.starts_with("HTTP/1.1 101"));
        assert!(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert_eq!(ok.consumed, GOOD.len());
        assert_eq!(ok.path, "/chat?x=1");
    }

    #[test]
    fn every_prefix_is_incomplete_not_an_error() {
        for cut in 0..GOOD.len() {
            assert!(matches!(parse(&GOOD.as_bytes()[..cut], 8192), Ok(None)), "cut at {cut}");
        }
    }

    #[test]
    fn refusals_map_to_statuses() {
        let v8 = GOOD.replace("Version: 13", "Version: 8");
        assert_eq!(parse(v8.as_bytes(), 8192).unwrap_err().status(), 426);
        let post = GOOD.replace("GET", "POST");
        assert_eq!(parse(post.as_bytes(), 8192).unwrap_err().status(), 405);
        let plain = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(parse(plain.as_bytes(), 8192).unwrap_err().status(), 426);
        let nokey = GOOD.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
        assert_eq!(parse(nokey.as_bytes(), 8192).unwrap_err().status(), 400);
        assert_eq!(parse(b"\x16\x03\x01garbage\r\n\r\n", 8192).unwrap_err().status(), 400);
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(parse(big.as_bytes(), 8192).unwrap_err().status(), 431);
        let r = Rejection::UpgradeRequired("x").response();
        assert!(String::from_utf8(r).unwrap().contains("Sec-WebSocket-Version: 13"));
    }
}
