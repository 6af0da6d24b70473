//! One WebSocket connection as its shard sees it: socket, protocol state, outbox, lifecycle.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use tokio_uring::net::TcpStream;

use crate::addressing::Session;
use crate::command::RateLimiter;
use crate::fanout::Outbox;
use crate::ids::ConnId;
use crate::proto::CloseCode;
use crate::proto::Codec;

/// Where a connection is in its life. Variants name who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Data flows both ways.
    Open,
    /// A close frame was sent or received: no more data frames; once the outbox is flushed
    /// we send FIN, then wait for the peer's EOF until `deadline`.
    Closing,
    /// Gone: the socket is shut down and the slot is freed once no operation is in flight.
    Dead,
}

pub(crate) struct Conn {
    pub(crate) id: ConnId,
    pub(crate) stream: Rc<TcpStream>,
    pub(crate) codec: Codec,
    /// Bounded so one slow reader cannot grow memory; see `Config::outbox_bytes_max`.
    pub(crate) outbox: Outbox,
    pub(crate) phase: Phase,
    /// A protocol violation: further input is read and discarded, never parsed.
    pub(crate) failed: bool,
    /// FIN sent after the last frame.
    pub(crate) fin_sent: bool,
    /// A read is in flight (the read future holds a clone of `stream`).
    pub(crate) reading: bool,
    /// A vectored write is in flight.
    pub(crate) writing: bool,
    /// Listed in the shard's dirty list (has frames to write, no write in flight).
    pub(crate) dirty: bool,
    /// The last read filled its buffer: read with the large buffer next.
    pub(crate) big_read: bool,
    /// Anything received counts as liveness.
    pub(crate) last_rx: Instant,
    /// When `Closing` gives up waiting for the peer.
    pub(crate) deadline: Instant,
    pub(crate) peer: SocketAddr,
    /// State only some connections need (a session, a command rate limiter): allocated on
    /// first use, so a plain subscriber pays one pointer.
    pub(crate) ext: Option<Box<ConnExt>>,
}

/// Per-connection state that most connections never need.
#[derive(Debug, Default)]
pub(crate) struct ConnExt {
    /// GatewayWorker's `$_SESSION`, bounded by `Config::session_bytes_max`.
    pub(crate) session: Option<Session>,
    /// Created on the first command in command mode.
    pub(crate) limiter: Option<RateLimiter>,
}

impl Conn {
    pub(crate) fn new(id: ConnId, stream: TcpStream, peer: SocketAddr, now: Instant) -> Self {
        Conn {
            id,
            stream: Rc::new(stream),
            codec: Codec::default(),
            outbox: Outbox::default(),
            phase: Phase::Open,
            failed: false,
            fin_sent: false,
            reading: false,
            writing: false,
            dirty: false,
            big_read: false,
            last_rx: now,
            deadline: now,
            peer,
            ext: None,
        }
    }

    /// Free the extension when nothing is left in it.
    pub(crate) fn trim_ext(&mut self) {
        if self.ext.as_ref().is_some_and(|e| e.session.is_none() && e.limiter.is_none()) {
            self.ext = None;
        }
    }

    /// Queue our close frame (dropping queued data when `discard` is set) and enter `Closing`.
    pub(crate) fn begin_close(
        &mut self,
        code: CloseCode,
        reason: &str,
        discard: bool,
        message_bytes_max: usize,
        deadline: Instant,
    ) {
        if self.phase != Phase::Open {
            return;
        }
        if discard {
            self.outbox.discard_queued();
        }
        let mut out = Vec::new();
        self.codec.close(code, reason, message_bytes_max, &mut out);
        if !out.is_empty() {
            self.outbox.push_unbounded(Bytes::from(out).into());
        }
        self.phase = Phase::Closing;
        self.deadline = deadline;
    }

    /// Shut the socket down both ways so in-flight operations complete, and mark it dead.
    pub(crate) fn kill(&mut self) {
        if self.phase != Phase::Dead {
            self.phase = Phase::Dead;
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Whether the slot can be freed.
    pub(crate) fn is_finished(&self) -> bool {
        self.phase == Phase::Dead && !self.reading && !self.writing
    }
}
