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
    /// The `Origin` header, if any (checked against the allowlist by `crate::auth`).
    pub origin: Option<String>,
    /// Every `Sec-WebSocket-Protocol` value offered, joined with `, `.
    pub protocols: Option<String>,
}

impl Accepted {
    /// The 101 response, naming `protocol` (one the client offered) in
    /// `Sec-WebSocket-Protocol`, or the plain one when `None`.
    pub fn response_with(&self, protocol: Option<&str>) -> Vec<u8> {
        let Some(p) = protocol else { return self.response.clone() };
        debug_assert!(p.bytes().all(|b| b.is_ascii_graphic() && b != b','));
        // The head ends with an empty line: insert the header before it.
        let mut out = self.response[..self.response.len() - 2].to_vec();
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out
    }
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
    /// 401: connect authentication failed (token missing, invalid or expired).
    Unauthorized(&'static str),
    /// 403: not allowed (the `Origin` is not on the allowlist).
    Forbidden(&'static str),
    /// 429: too many handshakes from this address, or too many of its connections open.
    TooManyRequests(&'static str),
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
            Rejection::Unauthorized(_) => 401,
            Rejection::Forbidden(_) => 403,
            Rejection::TooManyRequests(_) => 429,
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
            | Rejection::Unauthorized(why)
            | Rejection::Forbidden(why)
            | Rejection::TooManyRequests(why)
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
            401 => (401, "Unauthorized"),
            403 => (403, "Forbidden"),
            429 => (429, "Too Many Requests"),
            405 => (405, "Method Not Allowed"),
            426 => (426, "Upgrade Required"),
            431 => (431, "Request Header Fields Too Large"),
            503 => (503, "Service Unavailable"),
            _ => (505, "HTTP Version Not Supported"),
        };
        let extra = match self {
            Rejection::UpgradeRequired(_) => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            Rejection::MethodNotAllowed => "Allow: GET\r\n",
            Rejection::Unavailable(_) | Rejection::TooManyRequests(_) => "Retry-After: 1\r\n",
            // RFC 7235: a 401 names its scheme; RFC 6750 §3: the error code only when a token
            // was presented.
            Rejection::Unauthorized(why) if why.contains("required") => {
                "WWW-Authenticate: Bearer realm=\"ringcast\"\r\n"
            }
            Rejection::Unauthorized(_) => {
                "WWW-Authenticate: Bearer realm=\"ringcast\", error=\"invalid_token\"\r\n"
            }
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
    let header = |name: &str| -> Option<String> {
        let values: Vec<&str> = request
            .headers()
            .get_all(name)
            .iter()
            .map(|v| std::str::from_utf8(v.as_bytes()).unwrap_or("\u{fffd}"))
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    let origin = header("Origin");
    let protocols = header("Sec-WebSocket-Protocol");
    Ok(Some(Accepted { consumed, response: bytes, path, origin, protocols }))
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
        let r = String::from_utf8(Rejection::Unauthorized("token expired").response()).unwrap();
        assert!(r.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{r}");
        assert!(r.contains("WWW-Authenticate: Bearer"), "{r}");
        assert!(r.ends_with("\r\n\r\ntoken expired\n"), "{r}");
        let r = String::from_utf8(Rejection::Forbidden("origin").response()).unwrap();
        assert!(r.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{r}");
        let r = String::from_utf8(Rejection::TooManyRequests("slow").response()).unwrap();
        assert!(r.starts_with("HTTP/1.1 429 Too Many Requests\r\n") && r.contains("Retry-After"));
    }

    #[test]
    fn origin_and_protocols_are_reported_and_a_protocol_can_be_echoed() {
        let req = GOOD.replace(
            "Host: a\r\n",
            "Host: a\r\nOrigin: https://x.test\r\nSec-WebSocket-Protocol: ringcast\r\n\
             Sec-WebSocket-Protocol: ringcast.token.abc\r\n",
        );
        let ok = parse(req.as_bytes(), 8192).unwrap().unwrap();
        assert_eq!(ok.origin.as_deref(), Some("https://x.test"));
        assert_eq!(ok.protocols.as_deref(), Some("ringcast, ringcast.token.abc"));
        let text = String::from_utf8(ok.response_with(Some("ringcast"))).unwrap();
        assert!(text.ends_with("\r\nSec-WebSocket-Protocol: ringcast\r\n\r\n"), "{text}");
        assert_eq!(ok.response_with(None), ok.response);
        let plain = parse(GOOD.as_bytes(), 8192).unwrap().unwrap();
        assert_eq!((plain.origin, plain.protocols), (None, None));
    }
}
