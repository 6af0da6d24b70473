//! The control plane's own counters (plain relaxed atomics: one thread writes them, any thread
//! reads them) and its log budget: at most one line per error kind per second, with the number
//! of lines suppressed since the previous one. Never a line per request at info level.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use serde::Serialize;

use super::error::ErrorKind;

/// A snapshot of the API's counters ([`super::ApiServer::stats`], and `"api"` in
/// `GET /api/stats`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ApiStats {
    /// Requests answered (any status).
    pub requests: u64,
    /// Requests answered with a 4xx or 5xx status.
    pub errors: u64,
    /// 400 answers.
    pub bad_request: u64,
    /// 401 answers.
    pub unauthorized: u64,
    /// 403 answers (the tokenless API's browser guard).
    pub forbidden: u64,
    /// 404 answers.
    pub not_found: u64,
    /// 405 answers.
    pub method_not_allowed: u64,
    /// 409 answers.
    pub conflict: u64,
    /// 413 answers.
    pub payload_too_large: u64,
    /// 415 answers.
    pub unsupported_media_type: u64,
    /// 503 answers (busy shard, timeout, stopping node).
    pub unavailable: u64,
    /// 504 answers (an operation forwarded to another node got no answer in time).
    pub gateway_timeout: u64,
    /// Other error statuses.
    pub other_errors: u64,
    /// Publish requests that reached the node (single, batch and seed form).
    pub publish_requests: u64,
    /// Messages those requests published (a batch counts each of its publishes).
    pub messages_published: u64,
    /// HTTP connections accepted.
    pub connections_accepted: u64,
}

const KINDS: usize = ErrorKind::ALL.len();

/// The live counters.
#[derive(Debug)]
pub(crate) struct Counters {
    requests: AtomicU64,
    by_kind: [AtomicU64; KINDS],
    publish_requests: AtomicU64,
    messages_published: AtomicU64,
    pub(crate) connections_accepted: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            requests: AtomicU64::new(0),
            by_kind: std::array::from_fn(|_| AtomicU64::new(0)),
            publish_requests: AtomicU64::new(0),
            messages_published: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
        }
    }
}

impl Counters {
    pub(crate) fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub(crate) fn error(&self, kind: ErrorKind) {
        self.by_kind[kind.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn published(&self, messages: usize) {
        self.publish_requests.fetch_add(1, Relaxed);
        self.messages_published.fetch_add(messages as u64, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ApiStats {
        let k = |kind: ErrorKind| self.by_kind[kind.index()].load(Relaxed);
        ApiStats {
            requests: self.requests.load(Relaxed),
            errors: self.by_kind.iter().map(|a| a.load(Relaxed)).sum(),
            bad_request: k(ErrorKind::BadRequest),
            unauthorized: k(ErrorKind::Unauthorized),
            forbidden: k(ErrorKind::Forbidden),
            not_found: k(ErrorKind::NotFound),
            method_not_allowed: k(ErrorKind::MethodNotAllowed),
            conflict: k(ErrorKind::Conflict),
            payload_too_large: k(ErrorKind::PayloadTooLarge),
            unsupported_media_type: k(ErrorKind::UnsupportedMediaType),
            unavailable: k(ErrorKind::Unavailable),
            gateway_timeout: k(ErrorKind::GatewayTimeout),
            other_errors: k(ErrorKind::Other),
            publish_requests: self.publish_requests.load(Relaxed),
            messages_published: self.messages_published.load(Relaxed),
            connections_accepted: self.connections_accepted.load(Relaxed),
        }
    }
}

/// One log budget per error kind: a line at most every `interval_ms`.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    start: Instant,
    interval_ms: u64,
    /// Milliseconds since `start` of the last line, plus one (0: never logged).
    last: [AtomicU64; KINDS],
    suppressed: [AtomicU64; KINDS],
}

impl LogLimiter {
    pub(crate) fn new(interval_ms: u64) -> Self {
        LogLimiter {
            start: Instant::now(),
            interval_ms,
            last: std::array::from_fn(|_| AtomicU64::new(0)),
            suppressed: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Whether a line for `kind` may be written now; if so, how many were suppressed since
    /// the last one.
    pub(crate) fn allow(&self, kind: ErrorKind) -> Option<u64> {
        self.allow_at(kind, self.start.elapsed().as_millis() as u64)
    }

    fn allow_at(&self, kind: ErrorKind, now_ms: u64) -> Option<u64> {
        let i = kind.index();
        let last = self.last[i].load(Relaxed);
        if last != 0 && now_ms + 1 < last + self.interval_ms {
            self.suppressed[i].fetch_add(1, Relaxed);
            return None;
        }
        if self.last[i].compare_exchange(last, now_ms + 1, Relaxed, Relaxed).is_err() {
            self.suppressed[i].fetch_add(1, Relaxed);
            return None;
        }
        Some(self.suppressed[i].swap(0, Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_per_interval() {
        let l = LogLimiter::new(1000);
        assert_eq!(l.allow_at(ErrorKind::BadRequest, 0), Some(0));
        assert_eq!(l.allow_at(ErrorKind::BadRequest, 10), None);
        assert_eq!(l.allow_at(ErrorKind::BadRequest, 998), None);
        // Another kind has its own budget.
        assert_eq!(l.allow_at(ErrorKind::Unavailable, 500), Some(0));
        assert_eq!(l.allow_at(ErrorKind::BadRequest, 1000), Some(2));
        assert_eq!(l.allow_at(ErrorKind::BadRequest, 1500), None);
        assert_eq!(l.allow_at(ErrorKind::BadRequest, 2000), Some(1));
    }

    #[test]
    fn snapshot_sums_errors() {
        let c = Counters::default();
        c.request();
        c.request();
        c.error(ErrorKind::NotFound);
        c.error(ErrorKind::Unavailable);
        c.published(100);
        let s = c.snapshot();
        assert_eq!((s.requests, s.errors, s.not_found, s.unavailable), (2, 2, 1, 1));
        assert_eq!((s.publish_requests, s.messages_published), (1, 100));
    }
}
