//! The HTTP push API side of the generator (`--publish http|http-json|http-batch`): building
//! the exact request bytes of each form, and reading the pipelined responses back (status
//! codes, `"queued"` counts, refused batch items).
//!
//! Request forms (see `docs/loadgen-contract.md`); `{auth}` is
//! `Authorization: Bearer TOKEN\r\n` with `--http-token`, else nothing:
//!
//! ```text
//! seed:  POST {path}?content={text}[&to_group={G}] HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\n\r\n
//! json:  POST {base}/api/publish HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {n}\r\n\r\n
//!        {"data":"{text}","to":{"groups":["{G}"]}}
//! batch: POST {base}/api/publish/batch HTTP/1.1\r\n ...same headers...\r\n\r\n
//!        {"publishes":[{"data":"{text}","to":{"groups":["{G1}"]}},{"data":...}]}
//! ```
//!
//! The text form of a message is hex and `x` only, so it needs no escaping in a query string
//! or a JSON string; group ids are percent-encoded (seed form) or JSON-escaped (JSON forms).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::str::FromStr;

use anyhow::{bail, Context as _, Result};
use tungstenite::http::Uri;

use crate::codec::{self, MsgHeader};

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body kept for scanning (`"queued"` counts); larger bodies are skipped.
const MAX_SCANNED_BODY: usize = 1 << 20;
/// Most messages one batch request may carry.
pub const MAX_BATCH_SIZE: usize = 10_000;

/// Which request form publishers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpForm {
    /// `POST {path}?content=..&to_group=..` with an empty body (the seed-compatible form).
    Seed,
    /// `POST {base}/api/publish` with one JSON publish.
    Json,
    /// `POST {base}/api/publish/batch` with this many publishes per request.
    Batch(usize),
}

impl HttpForm {
    /// Name used in the report: `seed`, `json` or `batch`.
    pub fn name(self) -> &'static str {
        match self {
            HttpForm::Seed => "seed",
            HttpForm::Json => "json",
            HttpForm::Batch(_) => "batch",
        }
    }

    /// Messages carried by one request.
    pub fn messages_per_request(self) -> usize {
        match self {
            HttpForm::Batch(n) => n,
            _ => 1,
        }
    }
}

/// Where and how HTTP publishers post: every constant byte of every request, precomputed.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    /// The API listener.
    pub addr: SocketAddr,
    /// Request form.
    pub form: HttpForm,
    /// Seed: `POST /path?content=`. JSON forms: the request line and headers up to and
    /// including `Content-Length: ` (the length and the blank line follow).
    head: Vec<u8>,
    /// Seed: per group, `&to_group=G HTTP/1.1\r\n...\r\n\r\n` (just ` HTTP/1.1\r\n...` when
    /// there are no groups). JSON forms: per group, `","to":{"groups":["G"]}}` closing one
    /// publish object.
    per_group: Vec<Vec<u8>>,
}

/// Opens one publish object of the JSON forms; the text form follows.
const ITEM_OPEN: &[u8] = br#"{"data":""#;
/// Opens a batch body.
const BATCH_OPEN: &[u8] = br#"{"publishes":["#;
/// Closes a batch body.
const BATCH_CLOSE: &[u8] = b"]}";

impl HttpTarget {
    /// Precomputes the requests for `http_url` (`http://HOST:PORT/PATH`), the given groups
    /// (empty: publish to everyone, seed form only) and optional bearer token.
    pub fn new(
        http_url: &str,
        addr: SocketAddr,
        groups: &[String],
        form: HttpForm,
        token: Option<&str>,
    ) -> Result<Self> {
        let uri: Uri = http_url.parse().with_context(|| format!("bad --http-url {http_url:?}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("--http-url must be http://HOST:PORT/PATH (no TLS)");
        }
        let authority = uri.authority().map(|a| a.as_str()).context("--http-url has no host")?;
        let auth = match token {
            Some(t) => {
                if t.is_empty() || t.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                    bail!("--http-token must be non-empty, without spaces or control characters");
                }
                format!("Authorization: Bearer {t}\r\n")
            }
            None => String::new(),
        };
        let headers = format!("HTTP/1.1\r\nHost: {authority}\r\n{auth}");
        match form {
            HttpForm::Seed => {
                let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let pq = if pq.is_empty() { "/" } else { pq };
                let sep = if pq.contains('?') { '&' } else { '?' };
                let head = format!("POST {pq}{sep}content=").into_bytes();
                let tail = format!(" {headers}Content-Length: 0\r\n\r\n");
                let per_group = if groups.is_empty() {
                    vec![tail.into_bytes()]
                } else {
                    groups
                        .iter()
                        .map(|g| {
                            format!("&to_group={}{tail}", codec::percent_encode(g)).into_bytes()
                        })
                        .collect()
                };
                Ok(Self { addr, form, head, per_group })
            }
            HttpForm::Json | HttpForm::Batch(_) => {
                if groups.is_empty() {
                    bail!("--publish http-json and http-batch need --mode groups");
                }
                if let HttpForm::Batch(n) = form {
                    if n == 0 || n > MAX_BATCH_SIZE {
                        bail!("--batch-size must be 1..={MAX_BATCH_SIZE}");
                    }
                }
                let base = uri.path().trim_end_matches('/');
                let endpoint =
                    if form == HttpForm::Json { "/api/publish" } else { "/api/publish/batch" };
                let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
                let head = format!(
                    "POST {base}{endpoint}{query} {headers}Content-Type: application/json\r\nContent-Length: "
                )
                .into_bytes();
                let per_group = groups
                    .iter()
                    .map(|g| {
                        format!(r#"","to":{{"groups":[{}]}}}}"#, codec::json_string(g)).into_bytes()
                    })
                    .collect();
                Ok(Self { addr, form, head, per_group })
            }
        }
    }

    /// Appends one request carrying `msgs` (group index, header) to `out`; each message is
    /// the text form of `text_len` characters. Seed and single JSON forms take exactly one
    /// message; the batch form takes 1 to its batch size. No allocation once `out` has room.
    pub fn write_request(&self, out: &mut Vec<u8>, msgs: &[(usize, MsgHeader)], text_len: usize) {
        debug_assert!(!msgs.is_empty());
        match self.form {
            HttpForm::Seed => {
                debug_assert_eq!(msgs.len(), 1);
                let (g, h) = &msgs[0];
                out.extend_from_slice(&self.head);
                push_text(out, h, text_len);
                out.extend_from_slice(&self.per_group[*g]);
            }
            HttpForm::Json => {
                debug_assert_eq!(msgs.len(), 1);
                let (g, h) = &msgs[0];
                let body = ITEM_OPEN.len() + text_len + self.per_group[*g].len();
                self.push_head(out, body);
                out.extend_from_slice(ITEM_OPEN);
                push_text(out, h, text_len);
                out.extend_from_slice(&self.per_group[*g]);
            }
            HttpForm::Batch(_) => {
                let items: usize = msgs
                    .iter()
                    .map(|(g, _)| ITEM_OPEN.len() + text_len + self.per_group[*g].len())
                    .sum();
                let body = BATCH_OPEN.len() + items + (msgs.len() - 1) + BATCH_CLOSE.len();
                self.push_head(out, body);
                out.extend_from_slice(BATCH_OPEN);
                for (i, (g, h)) in msgs.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(ITEM_OPEN);
                    push_text(out, h, text_len);
                    out.extend_from_slice(&self.per_group[*g]);
                }
                out.extend_from_slice(BATCH_CLOSE);
            }
        }
    }

    fn push_head(&self, out: &mut Vec<u8>, body_len: usize) {
        out.extend_from_slice(&self.head);
        let _ = write!(out, "{body_len}\r\n\r\n");
    }
}

#[inline]
fn push_text(out: &mut Vec<u8>, h: &MsgHeader, text_len: usize) {
    let start = out.len();
    out.resize(start + text_len, 0);
    codec::write_text_message(h, &mut out[start..]);
}

/// What the HTTP responses of one step said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpCounts {
    /// Requests written.
    pub requests: u64,
    /// Responses read.
    pub responses: u64,
    /// Responses by status code.
    pub status: BTreeMap<u16, u64>,
    /// Sum of the `"queued":N` numbers in 2xx bodies (recipients the server queued for).
    pub queued: u64,
    /// `"error"` members inside 2xx bodies (publishes of a batch the server refused).
    pub item_errors: u64,
    /// Connections whose responses could not be parsed (counting stopped there).
    pub unparsable: u64,
}

impl HttpCounts {
    /// Responses with a 2xx status.
    pub fn ok(&self) -> u64 {
        self.status.iter().filter(|(c, _)| (200..300).contains(*c)).map(|(_, n)| n).sum()
    }

    /// Responses with any other status.
    pub fn errors(&self) -> u64 {
        self.responses - self.ok()
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &HttpCounts) {
        self.requests += other.requests;
        self.responses += other.responses;
        for (c, n) in &other.status {
            *self.status.entry(*c).or_default() += n;
        }
        self.queued += other.queued;
        self.item_errors += other.item_errors;
        self.unparsable += other.unparsable;
    }
}

/// Reads pipelined HTTP/1.1 responses from one connection, whatever the read boundaries:
/// `Content-Length` and chunked bodies, and no body for 1xx/204/304.
#[derive(Debug, Default)]
pub struct HttpRx {
    buf: Vec<u8>,
    body: Vec<u8>,
    /// Counts since the last [`HttpRx::take`].
    pub counts: HttpCounts,
    /// Requests written minus final responses read, over the connection's life.
    unanswered: u64,
    broken: bool,
}

/// One response parsed off the front of the buffer.
enum Parsed {
    /// `consumed` bytes made one response with this status; its body is in `HttpRx::body`
    /// (empty when too large to keep).
    Done { consumed: usize, code: u16 },
    /// More bytes needed.
    Partial,
    /// Not HTTP as we know it.
    Bad,
}

impl HttpRx {
    /// Counts a request written on this connection.
    #[inline]
    pub fn sent(&mut self) {
        self.counts.requests += 1;
        self.unanswered += 1;
    }

    /// Requests still waiting for their response (0 once the responses became unparsable:
    /// they will never be counted).
    pub fn unanswered(&self) -> u64 {
        if self.broken {
            0
        } else {
            self.unanswered
        }
    }

    /// Takes the counts so far, leaving zeros.
    pub fn take(&mut self) -> HttpCounts {
        std::mem::take(&mut self.counts)
    }

    /// Feeds received bytes; counts every complete response.
    pub fn feed(&mut self, data: &[u8]) {
        if self.broken {
            return;
        }
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        loop {
            match parse_response(&self.buf[pos..], &mut self.body) {
                Parsed::Done { consumed, code } => {
                    pos += consumed;
                    if (100..200).contains(&code) {
                        continue; // interim response: the real one follows
                    }
                    self.counts.responses += 1;
                    self.unanswered = self.unanswered.saturating_sub(1);
                    *self.counts.status.entry(code).or_default() += 1;
                    if (200..300).contains(&code) {
                        let (queued, errors) = scan_body(&self.body);
                        self.counts.queued += queued;
                        self.counts.item_errors += errors;
                    }
                }
                Parsed::Partial => break,
                Parsed::Bad => {
                    self.broken = true;
                    self.counts.unparsable += 1;
                    self.buf = Vec::new();
                    return;
                }
            }
        }
        self.buf.drain(..pos);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_response(buf: &[u8], body: &mut Vec<u8>) -> Parsed {
    let Some(head_end) = find(buf, b"\r\n\r\n").map(|e| e + 4) else {
        return if buf.len() > MAX_HEAD { Parsed::Bad } else { Parsed::Partial };
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let code = match resp.parse(&buf[..head_end]) {
        Ok(httparse::Status::Complete(_)) => resp.code.unwrap_or(0),
        _ => return Parsed::Bad,
    };
    let mut len: Option<usize> = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok()) {
                Some(n) => len = Some(n),
                None => return Parsed::Bad,
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h.value.to_ascii_lowercase().ends_with(b"chunked");
        }
    }
    body.clear();
    if (100..200).contains(&code) || code == 204 || code == 304 {
        return Parsed::Done { consumed: head_end, code };
    }
    if chunked {
        return match parse_chunked(&buf[head_end..], body) {
            Some(Some(n)) => Parsed::Done { consumed: head_end + n, code },
            Some(None) => Parsed::Partial,
            None => Parsed::Bad,
        };
    }
    let n = len.unwrap_or(0);
    if buf.len() - head_end < n {
        return Parsed::Partial;
    }
    if n <= MAX_SCANNED_BODY {
        body.extend_from_slice(&buf[head_end..head_end + n]);
    }
    Parsed::Done { consumed: head_end + n, code }
}

/// Decodes a chunked body at the front of `buf` into `body`: `Some(Some(consumed))` when
/// complete, `Some(None)` when more bytes are needed, `None` when malformed.
fn parse_chunked(buf: &[u8], body: &mut Vec<u8>) -> Option<Option<usize>> {
    let mut pos = 0;
    loop {
        let Some(eol) = find(&buf[pos..], b"\r\n") else {
            return if buf.len() - pos > 1024 { None } else { Some(None) };
        };
        let line = std::str::from_utf8(&buf[pos..pos + eol]).ok()?;
        let size_hex = line.split(';').next()?.trim();
        let size = usize::from_str_radix(size_hex, 16).ok()?;
        pos += eol + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = find(&buf[pos..], b"\r\n") else { return Some(None) };
                pos += eol + 2;
                if eol == 0 {
                    return Some(Some(pos));
                }
            }
        }
        if buf.len() - pos < size + 2 {
            return Some(None);
        }
        if body.len() + size <= MAX_SCANNED_BODY {
            body.extend_from_slice(&buf[pos..pos + size]);
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return None;
        }
        pos += size + 2;
    }
}

/// Sums the numbers after every `"queued":` in a response body and counts `"error"` keys.
fn scan_body(body: &[u8]) -> (u64, u64) {
    const QUEUED: &[u8] = b"\"queued\"";
    const ERROR: &[u8] = b"\"error\"";
    let mut queued = 0u64;
    let mut errors = 0u64;
    let mut i = 0;
    while i < body.len() {
        let rest = &body[i..];
        if rest.starts_with(QUEUED) {
            let mut j = i + QUEUED.len();
            while j < body.len() && matches!(body[j], b' ' | b':' | b'\t' | b'\r' | b'\n') {
                j += 1;
            }
            let mut n = 0u64;
            while j < body.len() && body[j].is_ascii_digit() {
                n = n.saturating_mul(10).saturating_add(u64::from(body[j] - b'0'));
                j += 1;
            }
            queued = queued.saturating_add(n);
            i = j;
        } else if rest.starts_with(ERROR) {
            // A key, not a value such as "type":"error": the next non-space byte is ':'.
            let mut j = i + ERROR.len();
            while j < body.len() && body[j] == b' ' {
                j += 1;
            }
            if body.get(j) == Some(&b':') {
                errors += 1;
            }
            i = j;
        } else {
            i += 1;
        }
    }
    (queued, errors)
}

/// `--publish` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Publish {
    /// Over their own WebSocket connections to `url`.
    #[default]
    Ws,
    /// HTTP seed form: `POST /?content=..&to_group=..` (pipelined, empty body).
    Http,
    /// HTTP JSON form: `POST /api/publish` with `{"data":..,"to":{"groups":[..]}}`.
    HttpJson,
    /// HTTP batch form: `POST /api/publish/batch` with `--batch-size` publishes per request.
    HttpBatch,
}

impl Publish {
    /// Whether publishers use the HTTP push API.
    pub fn is_http(self) -> bool {
        self != Publish::Ws
    }
}

impl FromStr for Publish {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ws" => Ok(Publish::Ws),
            "http" => Ok(Publish::Http),
            "http-json" => Ok(Publish::HttpJson),
            "http-batch" => Ok(Publish::HttpBatch),
            _ => Err(format!("unknown publish method {s:?} (ws|http|http-json|http-batch)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: MsgHeader = MsgHeader { stream: 1, seq: 2, send_ns: 3 };
    const H2: MsgHeader = MsgHeader { stream: 4, seq: 5, send_ns: 6 };

    fn addr() -> SocketAddr {
        "127.0.0.1:8080".parse().unwrap()
    }

    fn text(h: &MsgHeader, len: usize) -> String {
        let mut t = vec![0u8; len];
        codec::write_text_message(h, &mut t);
        String::from_utf8(t).unwrap()
    }

    fn request(t: &HttpTarget, msgs: &[(usize, MsgHeader)], len: usize) -> String {
        let mut out = Vec::new();
        t.write_request(&mut out, msgs, len);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn seed_form_bytes() {
        let groups = ["g0".to_owned(), "room 1/ü".to_owned()];
        let t = HttpTarget::new("http://127.0.0.1:8080/", addr(), &groups, HttpForm::Seed, None)
            .unwrap();
        let m = text(&H1, 48);
        assert_eq!(m, "52434c470100000002000000000000000300000000000000");
        assert_eq!(
            request(&t, &[(1, H1)], 48),
            format!(
                "POST /?content={m}&to_group=room%201%2F%C3%BC HTTP/1.1\r\n\
                 Host: 127.0.0.1:8080\r\nContent-Length: 0\r\n\r\n"
            )
        );
        // With a token, and a base URL that already has a query.
        let t = HttpTarget::new(
            "http://localhost:9/push?k=v",
            addr(),
            &groups,
            HttpForm::Seed,
            Some("s3cr.et"),
        )
        .unwrap();
        let m = text(&H1, 60);
        assert!(m.ends_with("xxxxxxxxxxxx"));
        assert_eq!(
            request(&t, &[(0, H1)], 60),
            format!(
                "POST /push?k=v&content={m}&to_group=g0 HTTP/1.1\r\n\
                 Host: localhost:9\r\nAuthorization: Bearer s3cr.et\r\nContent-Length: 0\r\n\r\n"
            )
        );
        // No groups (plain mode): to everyone.
        let t =
            HttpTarget::new("http://127.0.0.1:8080", addr(), &[], HttpForm::Seed, None).unwrap();
        assert_eq!(
            request(&t, &[(0, H1)], 48),
            format!(
                "POST /?content={} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 0\r\n\r\n",
                text(&H1, 48)
            )
        );
    }

    #[test]
    fn json_form_bytes() {
        let groups = ["g0".to_owned(), "a\"b".to_owned()];
        let t =
            HttpTarget::new("http://127.0.0.1:8080/", addr(), &groups, HttpForm::Json, Some("tok"))
                .unwrap();
        let m = text(&H1, 48);
        let body = format!(r#"{{"data":"{m}","to":{{"groups":["a\"b"]}}}}"#);
        assert_eq!(
            request(&t, &[(1, H1)], 48),
            format!(
                "POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer tok\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["data"], m.as_str());
        assert_eq!(v["to"]["groups"][0], "a\"b");
    }

    #[test]
    fn batch_form_bytes() {
        let groups = ["g0".to_owned(), "g1".to_owned()];
        let t = HttpTarget::new("http://127.0.0.1:8080", addr(), &groups, HttpForm::Batch(2), None)
            .unwrap();
        let (m1, m2) = (text(&H1, 64), text(&H2, 64));
        let body = format!(
            r#"{{"publishes":[{{"data":"{m1}","to":{{"groups":["g0"]}}}},{{"data":"{m2}","to":{{"groups":["g1"]}}}}]}}"#
        );
        assert_eq!(
            request(&t, &[(0, H1), (1, H2)], 64),
            format!(
                "POST /api/publish/batch HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["publishes"].as_array().unwrap().len(), 2);
        assert_eq!(v["publishes"][1]["data"], m2.as_str());
        // A short tail batch, and a base path.
        let t =
            HttpTarget::new("http://h:1/rc/", addr(), &groups, HttpForm::Batch(5), None).unwrap();
        let one = request(&t, &[(1, H2)], 48);
        let body =
            format!(r#"{{"publishes":[{{"data":"{}","to":{{"groups":["g1"]}}}}]}}"#, text(&H2, 48));
        assert!(one.starts_with("POST /rc/api/publish/batch HTTP/1.1\r\nHost: h:1\r\n"), "{one}");
        assert!(one.ends_with(&format!("Content-Length: {}\r\n\r\n{body}", body.len())), "{one}");
    }

    #[test]
    fn bad_targets_are_refused() {
        let g = ["g".to_owned()];
        assert!(HttpTarget::new("https://h/", addr(), &g, HttpForm::Seed, None).is_err());
        assert!(HttpTarget::new("http://h/", addr(), &[], HttpForm::Json, None).is_err());
        assert!(HttpTarget::new("http://h/", addr(), &g, HttpForm::Batch(0), None).is_err());
        assert!(HttpTarget::new("http://h/", addr(), &g, HttpForm::Seed, Some("a\r\nb")).is_err());
        assert!(HttpTarget::new("http://h/", addr(), &g, HttpForm::Seed, Some("")).is_err());
    }

    #[test]
    fn rx_counts_pipelined_responses_over_splits() {
        let stream: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"queued\":10}\
            HTTP/1.1 503 Service Unavailable\r\nContent-Length: 32\r\n\r\n{\"error\":\"busy\",\"queued\":999999}\
            HTTP/1.1 100 Continue\r\n\r\n\
            HTTP/1.1 204 No Content\r\n\r\n\
            HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            c\r\n{\"results\":[\r\n1b\r\n{\"queued\":3},{\"queued\": 4},\r\n\
            1b\r\n{\"error\":\"no such group\"}]}\r\n0\r\n\r\n\
            HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        for chunk in [1, 2, 3, 7, 50, 1000] {
            let mut rx = HttpRx::default();
            for _ in 0..6 {
                rx.sent();
            }
            assert_eq!(rx.unanswered(), 6);
            for part in stream.chunks(chunk) {
                rx.feed(part);
            }
            assert_eq!(rx.unanswered(), 1);
            let c = rx.take();
            assert_eq!(c.requests, 6);
            assert_eq!(c.responses, 5, "chunk {chunk}");
            assert_eq!(c.ok(), 3);
            assert_eq!(c.errors(), 2);
            assert_eq!(
                c.status,
                BTreeMap::from([(200, 2), (204, 1), (401, 1), (503, 1)]),
                "chunk {chunk}"
            );
            // Only 2xx bodies count: 10 + 3 + 4, one refused batch item.
            assert_eq!((c.queued, c.item_errors, c.unparsable), (17, 1, 0), "chunk {chunk}");
            assert_eq!(rx.take(), HttpCounts::default());
        }
    }

    #[test]
    fn rx_gives_up_on_garbage() {
        let mut rx = HttpRx::default();
        rx.feed(b"SSH-2.0-nope\r\n\r\n");
        rx.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(rx.counts.unparsable, 1);
        assert_eq!(rx.counts.responses, 0);
    }

    #[test]
    fn body_scan_ignores_error_values() {
        assert_eq!(scan_body(br#"{"type":"error","queued":0}"#), (0, 0));
        assert_eq!(scan_body(br#"{"results":[{"queued":2},{"error" : "x"}]}"#), (2, 1));
    }

    #[test]
    fn publish_parsing() {
        assert_eq!("ws".parse::<Publish>(), Ok(Publish::Ws));
        assert_eq!("http".parse::<Publish>(), Ok(Publish::Http));
        assert_eq!("http-json".parse::<Publish>(), Ok(Publish::HttpJson));
        assert_eq!("http-batch".parse::<Publish>(), Ok(Publish::HttpBatch));
        assert!("udp".parse::<Publish>().is_err());
    }
}
