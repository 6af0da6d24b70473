//! One WebSocket connection as its shard sees it: socket, protocol state, outbox, lifecycle.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_uring::net::TcpStream;

use crate::addressing::Session;
use crate::auth::{IpKey, TokenGrant};
use crate::command::RateLimiter;
use crate::fanout::{Outbox, SharedFrame};
use crate::ids::ConnId;
use crate::proto::CloseCode;
use crate::proto::Codec;
use crate::tls::TlsSession;

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
    /// The client opted into enveloped messages (`"envelope":true`): it gets every data
    /// message as `{"type":"message",..}` with positions.
    pub(crate) envelope: bool,
    /// A recovery replay is being fed into the outbox: live messages wait behind it in
    /// `ext.backlog`.
    pub(crate) replaying: bool,
    /// Anything received counts as liveness.
    pub(crate) last_rx: Tick,
    /// When `Closing` gives up waiting for the peer; set by the first housekeeping pass after
    /// the close began (so at most one housekeeping interval late).
    pub(crate) deadline: Option<Tick>,
    /// State only some connections need (a session, a command rate limiter, a TLS session):
    /// allocated on first use, so a plain subscriber pays one pointer.
    pub(crate) ext: Option<Box<ConnExt>>,
}

/// A TLS connection's extra state.
#[derive(Debug)]
pub(crate) struct TlsConn {
    pub(crate) session: TlsSession,
    /// Frames whose ciphertext is being written: they stay counted against the outbox budget
    /// until the kernel has taken all of it (ciphertext never queues beyond one write).
    pub(crate) in_flight: Vec<SharedFrame>,
    /// The session failed (its alert is the last thing we send; no close_notify).
    pub(crate) broken: bool,
}

impl TlsConn {
    pub(crate) fn new(session: TlsSession) -> Box<Self> {
        Box::new(TlsConn { session, in_flight: Vec::new(), broken: false })
    }
}

/// Per-connection state that most connections never need.
#[derive(Debug, Default)]
pub(crate) struct ConnExt {
    /// GatewayWorker's `$_SESSION`, bounded by `Config::session_bytes_max`.
    pub(crate) session: Option<Session>,
    /// Created on the first command in command mode.
    pub(crate) limiter: Option<RateLimiter>,
    /// While `replaying`: frames waiting for room in the outbox, in delivery order; `true`
    /// marks live messages (bounded by `outbox_bytes_max` through `backlog_live_bytes`; the
    /// replayed ones are bounded by the group's history).
    pub(crate) backlog: VecDeque<(SharedFrame, bool)>,
    /// Bytes of live messages in `backlog`.
    pub(crate) backlog_live_bytes: usize,
    /// The connect token's grants and expiry (`auth.mode` optional or required).
    pub(crate) token: Option<Box<TokenGrant>>,
    /// The address this connection is counted under (`auth.connections_per_ip_max`),
    /// released when the slot is freed.
    pub(crate) ip: Option<IpKey>,
    /// `wss://` connections only: their TLS session, here from the handshake to the end (a
    /// plain connection pays nothing for TLS but one branch per read and per write start).
    pub(crate) tls: Option<Box<TlsConn>>,
}

impl Conn {
    pub(crate) fn new(id: ConnId, stream: TcpStream, now: Tick, tls: Option<Box<TlsConn>>) -> Self {
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
            envelope: false,
            replaying: false,
            last_rx: now,
            deadline: None,
            ext: tls.map(|tls| Box::new(ConnExt { tls: Some(tls), ..ConnExt::default() })),
        }
    }

    /// Whether this is a `wss://` connection.
    pub(crate) fn is_tls(&self) -> bool {
        self.ext.as_ref().is_some_and(|e| e.tls.is_some())
    }

    /// Free the extension when nothing is left in it.
    pub(crate) fn trim_ext(&mut self) {
        if self.ext.as_ref().is_some_and(|e| {
            e.session.is_none()
                && e.limiter.is_none()
                && e.token.is_none()
                && e.ip.is_none()
                && e.backlog.is_empty()
                && e.tls.is_none()
        }) {
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
        self.deadline = None;
    }

    /// The peer's address, asked of the kernel (only for log lines: not stored, so an idle
    /// connection does not pay 32 bytes for it).
    pub(crate) fn peer(&self) -> String {
        let fd = self.stream.as_raw_fd();
        // SAFETY: `fd` belongs to `self.stream`, which is alive for this whole call; the
        // borrowed descriptor is used only for getpeername and never closed through it.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        match socket2::SockRef::from(&fd).peer_addr().ok().and_then(|a| a.as_socket()) {
            Some(a) => a.to_string(),
            None => "unknown peer".to_owned(),
        }
    }

    /// Shut the socket down both ways so in-flight operations complete, and mark it dead.
    pub(crate) fn kill(&mut self) {
        if self.phase != Phase::Dead {
            self.phase = Phase::Dead;
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Move backlog frames into the outbox while they fit in `bytes_max` (at least one into
    /// an empty outbox); when the backlog is empty the replay is over. Returns whether any
    /// frame moved.
    pub(crate) fn refill(&mut self, bytes_max: usize) -> bool {
        let mut moved = false;
        let Some(ext) = self.ext.as_mut() else {
            self.replaying = false;
            return false;
        };
        if self.phase == Phase::Open {
            while let Some((f, _)) = ext.backlog.front() {
                let queued = self.outbox.queued_bytes();
                if queued > 0 && queued + f.len() > bytes_max {
                    break;
                }
                let Some((f, live)) = ext.backlog.pop_front() else { break };
                if live {
                    ext.backlog_live_bytes -= f.len();
                }
                self.outbox.push_unbounded(f);
                moved = true;
            }
        } else {
            ext.backlog.clear();
            ext.backlog_live_bytes = 0;
        }
        if ext.backlog.is_empty() {
            ext.backlog = VecDeque::new();
            self.replaying = false;
            self.trim_ext();
        }
        moved
    }

    /// Whether the slot can be freed.
    pub(crate) fn is_finished(&self) -> bool {
        self.phase == Phase::Dead && !self.reading && !self.writing
    }
}

/// A shard-local time: milliseconds since the shard started, in 32 bits (wrapping after 49
/// days). Compared with wrapping arithmetic, so intervals shorter than 24 days are exact; a
/// connection stores two of these instead of two 16-byte `Instant`s.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Tick(u32);

impl Tick {
    /// `now` as seen from `epoch`.
    pub(crate) fn at(epoch: Instant, now: Instant) -> Tick {
        Tick(now.saturating_duration_since(epoch).as_millis() as u64 as u32)
    }

    /// This tick plus `d` (capped at 24 days).
    pub(crate) fn plus(self, d: Duration) -> Tick {
        Tick(self.0.wrapping_add(d.as_millis().min(i32::MAX as u128) as u32))
    }

    /// Time from `earlier` to this tick.
    pub(crate) fn since(self, earlier: Tick) -> Duration {
        Duration::from_millis(u64::from(self.0.wrapping_sub(earlier.0)))
    }

    /// Whether this tick is at or past `deadline`.
    pub(crate) fn reached(self, deadline: Tick) -> bool {
        (self.0.wrapping_sub(deadline.0) as i32) >= 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_compare_across_the_wrap() {
        let near_wrap = Tick(u32::MAX - 5);
        let later = near_wrap.plus(Duration::from_millis(10));
        assert_eq!(later, Tick(4));
        assert!(later.reached(near_wrap));
        assert!(!near_wrap.reached(later));
        assert_eq!(later.since(near_wrap), Duration::from_millis(10));
        let epoch = Instant::now();
        assert_eq!(Tick::at(epoch, epoch + Duration::from_secs(3)), Tick(3000));
    }

    #[test]
    fn a_connection_stays_small() {
        // Idle memory per connection is a goal (docs in results/): keep the struct compact.
        assert!(std::mem::size_of::<Conn>() <= 104, "{}", std::mem::size_of::<Conn>());
    }
}
