//! One worker thread: owns a share of the connections and drives them with a hand-written,
//! edge-triggered mio (epoll) loop. No per-message allocation on the receive or send path.
//!
//! With the io_uring receive path ([`IoMode`]), a subscriber connection moves onto the
//! worker's [`RecvRing`] once its handshake is done: from then on its bytes arrive through one
//! multishot `recv` into provided buffers and are parsed where the kernel put them; the
//! thread then waits on the ring, which watches the epoll fd for everything else (connects,
//! publishers, timer, controller commands).

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::client::generate_request;
use tungstenite::handshake::derive_accept_key;
use tungstenite::http::Uri;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

use crate::codec::{self, MsgHeader};
use crate::frame::{push_masked_bytes, push_masked_frame, FrameEvent, FrameParser};
use crate::http::{HttpCounts, HttpRx, HttpTarget};
use crate::seq::{SeqCounts, SeqTracker};
use crate::sys::{start_connect, CpuTimes, TimerFd};
use crate::uring::{Cqe, RecvRing, ENOBUFS, UD_EPOLL};
use crate::{IoMode, Mode};

const WAKER: Token = Token(usize::MAX);
const TIMER: Token = Token(usize::MAX - 1);
/// Size of each read: large reads amortise syscalls across many frames.
const READ_SIZE: usize = 64 * 1024;
/// Most messages one publisher builds per loop iteration when behind (keeps the loop live).
const MAX_BATCH: u64 = 4096;
/// Largest handshake response head accepted.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// The process-wide monotonic clock: one `Instant` captured at start, shared by all threads.
#[derive(Debug, Clone, Copy)]
pub struct Clock(pub Instant);

impl Clock {
    /// Nanoseconds since the start instant.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// Everything immutable the workers share.
#[derive(Debug)]
pub struct Ctx {
    pub clock: Clock,
    pub ws_addr: SocketAddr,
    pub uri: Uri,
    pub source_ips: Vec<IpAddr>,
    pub mode: Mode,
    pub groups: usize,
    /// Per group: masked-at-send JSON text of the add_group command.
    pub add_group: Vec<Vec<u8>>,
    /// Per group: (prefix, suffix) around the message string of send_to_group.
    pub send_parts: Vec<(Vec<u8>, Vec<u8>)>,
    pub payload: usize,
    pub http: Option<HttpTarget>,
    pub publishers: usize,
    pub subscribers: usize,
    pub ramp_per_worker: f64,
    pub inflight_per_worker: usize,
    pub retries: u32,
    pub connect_timeout: Duration,
    /// Receive path for subscriber connections.
    pub io: IoMode,
    /// io_uring: most µs a wait holds completions back to wake the thread once per batch.
    pub recv_batch_us: u64,
}

/// Live counters a worker publishes for the controller (progress line, drain detection).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct WorkerProgress {
    pub connected: AtomicU64,
    pub failed: AtomicU64,
    pub received: AtomicU64,
    pub unique: AtomicU64,
    /// HTTP requests written on open connections and not answered yet.
    pub http_unanswered: AtomicU64,
}

/// State shared between the controller and the workers.
#[derive(Debug)]
pub struct Shared {
    pub progress: Vec<WorkerProgress>,
    /// Per stream: next sequence number, i.e. messages sent so far (written by the owner).
    pub sent: Vec<AtomicU64>,
    /// Publishers still sending in the current step.
    pub pubs_running: AtomicUsize,
}

/// A step of load: publish at `rate_per_pub` from `start_ns` to `end_ns`.
#[derive(Debug, Clone)]
pub struct StepCmd {
    pub rate_per_pub: f64,
    pub start_ns: u64,
    pub end_ns: u64,
    /// Per stream: first sequence number of this step (older deliveries are ignored).
    pub first_seq: Arc<[u64]>,
}

/// Controller -> worker.
#[derive(Debug)]
pub enum Cmd {
    Step(StepCmd),
    Collect,
    Shutdown,
}

/// What one worker saw in one step.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub hist: Histogram<u64>,
    pub counts: SeqCounts,
    pub last_rx_ns: u64,
    pub max_send_lag_ns: u64,
    pub disconnected: u64,
    pub http: HttpCounts,
    /// HTTP publisher connections the server closed during the step.
    pub http_closed: u64,
    /// Error frames received by subscribers / publishers since connecting (cumulative).
    pub sub_errors: u64,
    pub pub_errors: u64,
    pub first_error: Option<String>,
    /// This worker thread's own CPU seconds during the step.
    pub thread_cpu_s: f64,
    /// Receive completions that found the buffer ring empty (cumulative).
    pub enobufs: u64,
    /// Receive completions handled during the step, and the bytes they carried.
    pub completions: u64,
    pub completion_bytes: u64,
}

/// Which receive path a worker runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoUsed {
    /// Subscribers receive through io_uring (else epoll).
    pub uring: bool,
    pub incremental: bool,
    pub defer_taskrun: bool,
    /// Batched waits in use (µs), 0 when the kernel lacks minimum waits or they are off.
    pub recv_batch_us: u64,
    pub buffers: u32,
    pub buffer_bytes: u32,
    /// Why io_uring is not used (`--io auto` fell back, or `--io epoll`).
    pub fallback_reason: Option<String>,
}

/// Result of the connect phase of one worker.
#[derive(Debug, Clone, Default)]
pub struct ConnectSummary {
    pub ok_per_group: Vec<u64>,
    pub failed: u64,
    pub pub_failed: u64,
    pub last_error: Option<String>,
    /// Nanoseconds from a subscriber's first connect attempt to its verified handshake.
    pub latency: Option<Histogram<u64>>,
    /// Attempts beyond the first (retries), subscribers and publishers.
    pub retries: u64,
    /// First attempt started / last connection settled (ns on the shared clock).
    pub first_start_ns: u64,
    pub last_open_ns: u64,
    pub io: IoUsed,
}

/// Worker -> controller.
#[derive(Debug)]
pub enum WorkerMsg {
    Connected(usize, Box<ConnectSummary>),
    Step(usize, Box<StepResult>),
}

/// Which connections a worker owns.
#[derive(Debug, Clone, Default)]
pub struct WorkerPlan {
    /// (global subscriber index, group index)
    pub subs: Vec<(usize, usize)>,
    /// Publisher indices.
    pub pubs: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Sub { group: usize },
    WsPub,
    HttpPub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Connecting,
    Handshaking,
    Open,
    Closing,
    Closed,
    Failed,
}

#[derive(Debug)]
struct Handshake {
    req: Vec<u8>,
    written: usize,
    accept: String,
    resp: Vec<u8>,
}

struct Conn {
    role: Role,
    phase: Phase,
    sock: Option<TcpStream>,
    src: Option<IpAddr>,
    attempts: u32,
    deadline_ns: u64,
    hs: Option<Box<Handshake>>,
    parser: FrameParser,
    out: Vec<u8>,
    out_pos: usize,
    seqs: Box<[SeqTracker]>,
    http_rx: Option<Box<HttpRx>>,
    close_sent: bool,
    /// When the first connect attempt started (ns), for the connect latency.
    first_attempt_ns: u64,
    /// Receives through the io_uring (not registered for reading with epoll).
    on_ring: bool,
    /// On the ring and registered with epoll for writability (a pong or close did not fit).
    write_watch: bool,
}

struct Publisher {
    index: usize,
    conn: usize,
    /// Per group: next sequence number of stream `index * groups + g`.
    next_seq: Vec<u64>,
    rr: usize,
    k: u64,
    start_ns: u64,
    end_ns: u64,
    interval_ns: f64,
    active: bool,
    max_lag_ns: u64,
}

impl Publisher {
    #[inline]
    fn deadline(&self, k: u64) -> u64 {
        self.start_ns + (k as f64 * self.interval_ns) as u64
    }

    /// The next request: how many messages it carries (up to `per_request`, fewer at the end
    /// of the step) and when it is due (the deadline of its last message). `None` once every
    /// message of the step is sent.
    #[inline]
    fn next_request(&self, per_request: usize) -> Option<(usize, u64)> {
        let mut n = 0;
        while n < per_request && self.deadline(self.k + n as u64) < self.end_ns {
            n += 1;
        }
        (n > 0).then(|| (n, self.deadline(self.k + n as u64 - 1)))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// xorshift64* for frame masks: cheap, and masks need no cryptographic strength here.
struct Rng(u64);

impl Rng {
    #[inline]
    fn mask(&mut self) -> [u8; 4] {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((v >> 32) as u32).to_ne_bytes()
    }
}

struct StepState {
    measuring: bool,
    first_seq: Arc<[u64]>,
    hist: Histogram<u64>,
    counts: SeqCounts,
    last_rx_ns: u64,
    disconnected: u64,
    http_closed: u64,
    /// Error frames received since connecting (never reset).
    sub_errors: u64,
    pub_errors: u64,
    first_error: Option<String>,
    cpu0: CpuTimes,
    completions: u64,
    completion_bytes: u64,
}

/// Per-read context for frame handling.
struct RxEnv<'a> {
    ctx: &'a Ctx,
    step: &'a mut StepState,
    rng: &'a mut Rng,
}

/// Outcome of processing received bytes.
#[derive(Default)]
struct RxOutcome {
    close: Option<[u8; 2]>,
    got_close: bool,
}

/// Handles the frames in `data` for `conn`: deliveries, pings, closes.
fn process_frames(
    conn: &mut Conn,
    data: &[u8],
    rx_ns: u64,
    env: &mut RxEnv<'_>,
) -> Result<RxOutcome, String> {
    let mut outcome = RxOutcome::default();
    let role = conn.role;
    let groups = env.ctx.groups;
    let streams = env.ctx.publishers * groups;
    let Conn { parser, out, seqs, .. } = conn;
    let step = &mut *env.step;
    let rng = &mut *env.rng;
    let mut errors = (0u64, None::<String>);
    let mut error_reply = |p: &[u8]| {
        errors.0 += 1;
        if errors.1.is_none() {
            errors.1 = Some(String::from_utf8_lossy(&p[..p.len().min(200)]).into_owned());
        }
    };
    let mut deliver = |h: MsgHeader| {
        let Role::Sub { group } = role else { return };
        if !step.measuring {
            return;
        }
        let s = h.stream as usize;
        if s >= streams || s % groups != group || h.seq < step.first_seq[s] {
            return;
        }
        step.hist.saturating_record(rx_ns.saturating_sub(h.send_ns));
        step.counts.add(seqs[s / groups].observe(h.seq));
        step.last_rx_ns = rx_ns;
    };
    parser
        .feed(data, |ev| match ev {
            FrameEvent::Binary(p) => {
                if let Some(h) = MsgHeader::parse_binary(p) {
                    deliver(h);
                }
            }
            FrameEvent::Text(p) => {
                if let Some(h) = MsgHeader::parse_text(p) {
                    deliver(h);
                } else if is_error_reply(p) {
                    error_reply(p);
                }
            }
            FrameEvent::Ping(p) => {
                push_masked_bytes(out, OpCode::Control(Control::Pong), p, rng.mask());
            }
            FrameEvent::Close(p) => {
                outcome.got_close = true;
                let code = if p.len() >= 2 {
                    [p[0], p[1]]
                } else {
                    u16::from(CloseCode::Normal).to_be_bytes()
                };
                outcome.close = Some(code);
            }
            FrameEvent::Continuation | FrameEvent::Pong => {}
        })
        .map_err(|e| e.to_string())?;
    if errors.0 > 0 {
        if matches!(role, Role::Sub { .. }) {
            step.sub_errors += errors.0;
        } else {
            step.pub_errors += errors.0;
        }
        if step.first_error.is_none() {
            eprintln!(
                "server error reply to a {} connection: {}",
                if matches!(role, Role::Sub { .. }) { "subscriber" } else { "publisher" },
                errors.1.as_deref().unwrap_or("")
            );
            step.first_error = errors.1;
        }
    }
    Ok(outcome)
}

/// Whether a text frame (prefix) is a command-protocol error reply, `{"type":"error",...}`.
fn is_error_reply(p: &[u8]) -> bool {
    let p = p.trim_ascii_start();
    p.starts_with(b"{")
        && find(p, b"\"type\"").is_some_and(|i| {
            let rest = p[i + 6..].trim_ascii_start();
            rest.strip_prefix(b":").is_some_and(|r| r.trim_ascii_start().starts_with(b"\"error\""))
        })
}

/// Writes as much of `out[out_pos..]` as the socket takes.
fn flush(sock: &mut TcpStream, out: &mut Vec<u8>, out_pos: &mut usize) -> io::Result<()> {
    while *out_pos < out.len() {
        match sock.write(&out[*out_pos..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => *out_pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if *out_pos == out.len() {
        out.clear();
        *out_pos = 0;
    } else if *out_pos > 64 * 1024 && *out_pos * 2 > out.len() {
        out.drain(..*out_pos);
        *out_pos = 0;
    }
    Ok(())
}

/// One worker thread's state.
pub struct Worker {
    id: usize,
    ctx: Arc<Ctx>,
    shared: Arc<Shared>,
    poll: Poll,
    cmds: Receiver<Cmd>,
    to_ctl: Sender<WorkerMsg>,
    conns: Vec<Conn>,
    pubs: Vec<Publisher>,
    buf: Box<[u8]>,
    /// Scratch: the messages of the request being built.
    batch: Vec<(usize, MsgHeader)>,
    rng: Rng,
    timer: TimerFd,
    timer_deadline: Option<u64>,
    step: StepState,
    // connect phase
    queue: std::collections::VecDeque<usize>,
    retry: Vec<(u64, usize)>,
    inflight: Vec<usize>,
    next_slot_ns: u64,
    interval_ns: u64,
    unsettled: usize,
    summary: ConnectSummary,
    connect_reported: bool,
    connected: u64,
    connect_hist: Histogram<u64>,
    retries: u64,
    first_start_ns: u64,
    last_open_ns: u64,
    // run state
    max_lag_ns: u64,
    shutdown_deadline: Option<u64>,
    /// The subscribers' io_uring receive path, when in use.
    ring: Option<RecvRing>,
    io_used: IoUsed,
    /// The ring's poll request on the epoll fd is in flight.
    epoll_armed: bool,
}

impl Worker {
    /// Builds a worker for `plan`; `poll` must be the one the controller's waker uses.
    pub fn new(
        id: usize,
        ctx: Arc<Ctx>,
        shared: Arc<Shared>,
        poll: Poll,
        cmds: Receiver<Cmd>,
        to_ctl: Sender<WorkerMsg>,
        plan: &WorkerPlan,
    ) -> io::Result<Self> {
        let mut conns = Vec::with_capacity(plan.subs.len() + plan.pubs.len());
        let mut pubs = Vec::with_capacity(plan.pubs.len());
        let nsrc = ctx.source_ips.len();
        let src_for = |i: usize| if nsrc == 0 { None } else { Some(ctx.source_ips[i % nsrc]) };
        let new_conn = |role: Role, src: Option<IpAddr>, seqs: usize| Conn {
            role,
            phase: Phase::Idle,
            sock: None,
            src,
            attempts: 0,
            deadline_ns: 0,
            hs: None,
            parser: FrameParser::default(),
            out: Vec::new(),
            out_pos: 0,
            seqs: vec![SeqTracker::default(); seqs].into_boxed_slice(),
            http_rx: None,
            close_sent: false,
            first_attempt_ns: 0,
            on_ring: false,
            write_watch: false,
        };
        for &p in &plan.pubs {
            let (role, src) = if ctx.http.is_some() {
                (Role::HttpPub, None)
            } else {
                (Role::WsPub, src_for(ctx.subscribers + p))
            };
            pubs.push(Publisher {
                index: p,
                conn: conns.len(),
                next_seq: vec![0; ctx.groups],
                rr: 0,
                k: 0,
                start_ns: 0,
                end_ns: 0,
                interval_ns: 0.0,
                active: false,
                max_lag_ns: 0,
            });
            conns.push(new_conn(role, src, 0));
        }
        for &(i, group) in &plan.subs {
            conns.push(new_conn(Role::Sub { group }, src_for(i), ctx.publishers));
        }
        let mut timer = TimerFd::new()?;
        poll.registry().register(
            &mut SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&timer)),
            TIMER,
            Interest::READABLE,
        )?;
        timer.clear();
        let interval_ns =
            if ctx.ramp_per_worker > 0.0 { (1e9 / ctx.ramp_per_worker) as u64 } else { 0 };
        let hist = Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let n = conns.len();
        let seed = (ctx.clock.now_ns() ^ 0x9E37_79B9_7F4A_7C15).wrapping_mul(id as u64 + 1) | 1;
        Ok(Self {
            id,
            shared,
            poll,
            cmds,
            to_ctl,
            queue: (0..n).collect(),
            conns,
            pubs,
            buf: vec![0u8; READ_SIZE].into_boxed_slice(),
            batch: Vec::with_capacity(
                ctx.http.as_ref().map_or(1, |h| h.form.messages_per_request()),
            ),
            rng: Rng(seed),
            timer,
            timer_deadline: None,
            step: StepState {
                measuring: false,
                first_seq: Arc::from(vec![0u64; ctx.publishers * ctx.groups]),
                hist,
                counts: SeqCounts::default(),
                last_rx_ns: 0,
                disconnected: 0,
                http_closed: 0,
                sub_errors: 0,
                pub_errors: 0,
                first_error: None,
                cpu0: CpuTimes::default(),
                completions: 0,
                completion_bytes: 0,
            },
            retry: Vec::new(),
            inflight: Vec::new(),
            next_slot_ns: 0,
            interval_ns,
            unsettled: n,
            summary: ConnectSummary { ok_per_group: vec![0; ctx.groups], ..Default::default() },
            connect_reported: false,
            connected: 0,
            connect_hist: Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
                .map_err(|e| io::Error::other(e.to_string()))?,
            retries: 0,
            first_start_ns: 0,
            last_open_ns: 0,
            max_lag_ns: 0,
            shutdown_deadline: None,
            ring: None,
            io_used: IoUsed::default(),
            epoll_armed: false,
            ctx,
        })
    }

    /// Sets up the io_uring receive path as `--io` asks (on this thread: the ring is
    /// single-issuer).
    fn setup_io(&mut self) -> io::Result<()> {
        let subs = self.conns.iter().filter(|c| matches!(c.role, Role::Sub { .. })).count();
        match self.ctx.io {
            IoMode::Epoll => {
                self.io_used.fallback_reason = Some("--io epoll".into());
                return Ok(());
            }
            IoMode::Auto | IoMode::Uring if subs == 0 => {
                self.io_used.fallback_reason = Some("no subscriber connections".into());
                return Ok(());
            }
            _ => {}
        }
        match RecvRing::new(subs) {
            Ok(r) => {
                let i = r.info();
                self.io_used = IoUsed {
                    uring: true,
                    incremental: i.incremental,
                    defer_taskrun: i.defer_taskrun,
                    recv_batch_us: if i.min_wait { self.ctx.recv_batch_us } else { 0 },
                    buffers: u32::from(i.shape.entries),
                    buffer_bytes: i.shape.buf_bytes,
                    fallback_reason: None,
                };
                self.ring = Some(r);
                Ok(())
            }
            Err(e) if self.ctx.io == IoMode::Auto => {
                self.io_used.fallback_reason = Some(format!(
                    "io_uring unavailable ({e}; see kernel.io_uring_disabled, seccomp), using epoll"
                ));
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Runs until shut down.
    pub fn run(mut self) {
        if let Err(e) = self.setup_io() {
            eprintln!("worker {}: --io uring: cannot set up io_uring: {e}", self.id);
            return;
        }
        let mut events = Events::with_capacity(1024);
        self.next_slot_ns = self.ctx.clock.now_ns();
        loop {
            let now = self.ctx.clock.now_ns();
            self.drive_connects(now);
            self.maybe_report_connected();
            if let Some(d) = self.shutdown_deadline {
                let closing = self.conns.iter().any(|c| c.phase == Phase::Closing);
                if now >= d || !closing {
                    break;
                }
            }
            self.arm_timer(now);
            let timeout = if self.unsettled > 0 || self.shutdown_deadline.is_some() {
                Duration::from_millis(5)
            } else {
                Duration::from_millis(200)
            };
            let epoll_ready = if self.ring.is_some() {
                match self.wait_ring(timeout) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("worker {}: io_uring wait failed: {e}", self.id);
                        break;
                    }
                }
            } else {
                true
            };
            if epoll_ready {
                let t = if self.ring.is_some() { Duration::ZERO } else { timeout };
                if let Err(e) = self.poll.poll(&mut events, Some(t)) {
                    if e.kind() != io::ErrorKind::Interrupted {
                        eprintln!("worker {}: poll failed: {e}", self.id);
                        break;
                    }
                }
            } else {
                events.clear();
            }
            for (i, ev) in events.iter().enumerate() {
                match ev.token() {
                    WAKER => self.handle_cmds(),
                    TIMER => {
                        self.timer.clear();
                        self.timer_deadline = None;
                    }
                    Token(idx) => self.on_event(idx, ev.is_error() || ev.is_write_closed()),
                }
                if i % 32 == 31 && self.pubs.iter().any(|p| p.active) {
                    self.run_publishers();
                }
            }
            self.run_publishers();
            // Commands can also arrive without the waker firing in this batch.
            self.handle_cmds();
            self.publish_progress();
        }
        if let Some(r) = self.ring.as_mut() {
            r.cancel_all(Duration::from_millis(200));
        }
    }

    /// Waits on the ring (which also watches the epoll fd) and handles the receive
    /// completions; returns whether the epoll fd became ready.
    fn wait_ring(&mut self, timeout: Duration) -> io::Result<bool> {
        let Some(ring) = self.ring.as_mut() else { return Ok(true) };
        if !self.epoll_armed {
            ring.arm_poll(std::os::fd::AsRawFd::as_raw_fd(&self.poll), UD_EPOLL)?;
            self.epoll_armed = true;
        }
        let batch = (self.ctx.recv_batch_us > 0)
            .then(|| (64, Duration::from_micros(self.ctx.recv_batch_us)));
        ring.wait(timeout, batch)?;
        let cqes = ring.take_cqes();
        let mut epoll_ready = false;
        for (i, c) in cqes.iter().enumerate() {
            if c.user_data == UD_EPOLL {
                self.epoll_armed = false;
                epoll_ready = true;
            } else {
                self.on_recv_completion(c);
            }
            // Keep publishers on schedule through long batches of completions.
            if i % 64 == 63 && self.pubs.iter().any(|p| p.active) {
                self.run_publishers();
            }
        }
        if let Some(ring) = self.ring.as_mut() {
            ring.return_cqes(cqes);
        }
        Ok(epoll_ready)
    }

    /// One multishot receive completion of subscriber `c.user_data`.
    fn on_recv_completion(&mut self, c: &Cqe) {
        let idx = c.user_data as usize;
        let Some(ring) = self.ring.as_mut() else { return };
        let live = self
            .conns
            .get(idx)
            .is_some_and(|cn| cn.on_ring && matches!(cn.phase, Phase::Open | Phase::Closing));
        if c.result > 0 {
            let Some((data, release)) = ring.data(c) else { return };
            if live {
                // The clock is read once per completion.
                let rx_ns = self.ctx.clock.now_ns();
                self.step.completions += 1;
                self.step.completion_bytes += data.len() as u64;
                if self.handle_rx(idx, data, rx_ns) {
                    self.flush_ring_conn(idx);
                }
            }
            if let Some(ring) = self.ring.as_mut() {
                ring.release(release);
            }
        } else if c.result == ENOBUFS {
            ring.enobufs += 1;
        } else if live {
            // 0: the server closed; < 0: a socket error. Either ends the connection.
            self.close_conn(idx);
            return;
        }
        if !c.more() {
            let still = self
                .conns
                .get(idx)
                .is_some_and(|cn| cn.on_ring && matches!(cn.phase, Phase::Open | Phase::Closing));
            if still {
                self.arm_ring_recv(idx);
            }
        }
    }

    fn arm_ring_recv(&mut self, idx: usize) {
        let (Some(ring), Some(sock)) = (self.ring.as_mut(), self.conns[idx].sock.as_ref()) else {
            return;
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(sock);
        if let Err(e) = ring.arm_recv(fd, idx as u64) {
            eprintln!("worker {}: connection {idx}: arming receive failed: {e}", self.id);
            self.close_conn(idx);
        }
    }

    /// Moves an open subscriber's reads from epoll to the ring.
    fn move_to_ring(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        let Some(sock) = c.sock.as_mut() else { return };
        if let Err(e) = self.poll.registry().deregister(sock) {
            eprintln!("worker {}: connection {idx}: epoll deregister failed: {e}", self.id);
            return;
        }
        c.on_ring = true;
        self.arm_ring_recv(idx);
        self.flush_ring_conn(idx);
    }

    /// Writes what a ring connection owes the server (pongs, close); if the socket is full,
    /// watches it for writability with epoll.
    fn flush_ring_conn(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        if c.out.is_empty() {
            return;
        }
        let Some(sock) = c.sock.as_mut() else { return };
        if flush(sock, &mut c.out, &mut c.out_pos).is_err() {
            return self.close_conn(idx);
        }
        if !c.out.is_empty() && !c.write_watch {
            match self.poll.registry().register(sock, Token(idx), Interest::WRITABLE) {
                Ok(()) => c.write_watch = true,
                Err(_) => self.close_conn(idx),
            }
        }
    }

    fn publish_progress(&self) {
        let p = &self.shared.progress[self.id];
        p.received.store(self.step.counts.received, Ordering::Relaxed);
        p.unique.store(self.step.counts.unique(), Ordering::Relaxed);
        if self.ctx.http.is_some() {
            let unanswered: u64 = self
                .pubs
                .iter()
                .map(|pb| &self.conns[pb.conn])
                .filter(|c| c.phase == Phase::Open)
                .filter_map(|c| c.http_rx.as_ref())
                .map(|h| h.unanswered())
                .sum();
            p.http_unanswered.store(unanswered, Ordering::Relaxed);
        }
    }

    fn handle_cmds(&mut self) {
        while let Ok(cmd) = self.cmds.try_recv() {
            match cmd {
                Cmd::Step(s) => self.start_step(s),
                Cmd::Collect => {
                    self.step.measuring = false;
                    let res = StepResult {
                        hist: self.step.hist.clone(),
                        counts: self.step.counts,
                        last_rx_ns: self.step.last_rx_ns,
                        max_send_lag_ns: self.max_lag_ns,
                        disconnected: self.step.disconnected,
                        http: {
                            let mut all = HttpCounts::default();
                            for h in self.conns.iter_mut().filter_map(|c| c.http_rx.as_mut()) {
                                all.add(&h.take());
                            }
                            all
                        },
                        http_closed: self.step.http_closed,
                        sub_errors: self.step.sub_errors,
                        pub_errors: self.step.pub_errors,
                        first_error: self.step.first_error.clone(),
                        thread_cpu_s: CpuTimes::thread_now().since(&self.step.cpu0).total_s(),
                        enobufs: self.ring.as_ref().map_or(0, |r| r.enobufs),
                        completions: self.step.completions,
                        completion_bytes: self.step.completion_bytes,
                    };
                    let _ = self.to_ctl.send(WorkerMsg::Step(self.id, Box::new(res)));
                }
                Cmd::Shutdown => self.begin_shutdown(),
            }
        }
    }

    fn start_step(&mut self, s: StepCmd) {
        self.step.hist.reset();
        self.step.counts = SeqCounts::default();
        self.step.last_rx_ns = 0;
        self.step.disconnected = 0;
        self.step.http_closed = 0;
        self.step.first_seq = s.first_seq;
        self.step.measuring = true;
        self.step.cpu0 = CpuTimes::thread_now();
        self.step.completions = 0;
        self.step.completion_bytes = 0;
        self.max_lag_ns = 0;
        for p in &mut self.pubs {
            p.k = 0;
            p.start_ns = s.start_ns;
            p.end_ns = s.end_ns;
            p.interval_ns = if s.rate_per_pub > 0.0 { 1e9 / s.rate_per_pub } else { f64::INFINITY };
            p.max_lag_ns = 0;
            p.active = true;
        }
        self.publish_progress();
    }

    fn begin_shutdown(&mut self) {
        let now = self.ctx.clock.now_ns();
        self.shutdown_deadline = Some(now + 1_000_000_000);
        for p in &mut self.pubs {
            if p.active {
                p.active = false;
                self.shared.pubs_running.fetch_sub(1, Ordering::Relaxed);
            }
        }
        for idx in 0..self.conns.len() {
            let c = &mut self.conns[idx];
            match c.phase {
                Phase::Open if c.role != Role::HttpPub => {
                    let code = u16::from(CloseCode::Normal).to_be_bytes();
                    push_masked_bytes(
                        &mut c.out,
                        OpCode::Control(Control::Close),
                        &code,
                        self.rng.mask(),
                    );
                    c.close_sent = true;
                    c.phase = Phase::Closing;
                    if let Some(sock) = c.sock.as_mut() {
                        if flush(sock, &mut c.out, &mut c.out_pos).is_err() {
                            c.phase = Phase::Closed;
                            c.sock = None;
                        }
                    }
                }
                Phase::Closing | Phase::Closed | Phase::Failed => {}
                _ => {
                    c.phase = Phase::Closed;
                    c.sock = None;
                }
            }
        }
        self.unsettled = 0;
        self.queue.clear();
        self.retry.clear();
        self.inflight.clear();
    }

    fn arm_timer(&mut self, now: u64) {
        let per_request = self.ctx.http.as_ref().map_or(1, |h| h.form.messages_per_request());
        let next = self
            .pubs
            .iter()
            .filter(|p| p.active)
            .filter_map(|p| p.next_request(per_request).map(|(_, due)| due))
            .min();
        if let Some(d) = next {
            if self.timer_deadline != Some(d) {
                let _ = self.timer.arm(Duration::from_nanos(d.saturating_sub(now)));
                self.timer_deadline = Some(d);
            }
        }
    }

    // ---------------------------------------------------------------- connect phase

    fn drive_connects(&mut self, now: u64) {
        if self.unsettled == 0 {
            return;
        }
        // Handshake / connect timeouts.
        let mut i = 0;
        while i < self.inflight.len() {
            let idx = self.inflight[i];
            if now >= self.conns[idx].deadline_ns {
                self.fail_attempt(idx, "connect/handshake timed out".into());
            } else {
                i += 1;
            }
        }
        while self.inflight.len() < self.ctx.inflight_per_worker {
            if self.interval_ns > 0 && now < self.next_slot_ns {
                break;
            }
            let due_retry = self.retry.iter().position(|&(t, _)| t <= now);
            let idx = if let Some(pos) = due_retry {
                self.retry.swap_remove(pos).1
            } else if let Some(idx) = self.queue.pop_front() {
                idx
            } else {
                break;
            };
            // Never accumulate more than ~10 ms of catch-up burst.
            self.next_slot_ns =
                self.next_slot_ns.max(now.saturating_sub(10_000_000)) + self.interval_ns;
            self.start_attempt(idx, now);
        }
    }

    fn start_attempt(&mut self, idx: usize, now: u64) {
        let ctx = &*self.ctx;
        let c = &mut self.conns[idx];
        let (addr, src) = match (c.role, &ctx.http) {
            (Role::HttpPub, Some(h)) => (h.addr, None),
            _ => (ctx.ws_addr, c.src),
        };
        let mut sock = match start_connect(addr, src) {
            Ok(s) => s,
            Err(e) => {
                self.fail_attempt(idx, format!("connect to {addr} failed: {e}"));
                return;
            }
        };
        if let Err(e) = self.poll.registry().register(
            &mut sock,
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.fail_attempt(idx, format!("epoll register failed: {e}"));
            return;
        }
        if c.attempts == 0 {
            c.first_attempt_ns = now;
            if self.first_start_ns == 0 {
                self.first_start_ns = now.max(1);
            }
        } else {
            self.retries += 1;
        }
        c.sock = Some(sock);
        c.phase = Phase::Connecting;
        c.deadline_ns = now + ctx.connect_timeout.as_nanos() as u64;
        c.parser = FrameParser::default();
        c.out.clear();
        c.out_pos = 0;
        self.inflight.push(idx);
    }

    fn fail_attempt(&mut self, idx: usize, why: String) {
        if let Some(pos) = self.inflight.iter().position(|&i| i == idx) {
            self.inflight.swap_remove(pos);
        }
        let c = &mut self.conns[idx];
        c.sock = None;
        c.hs = None;
        c.attempts += 1;
        if c.attempts > self.ctx.retries {
            c.phase = Phase::Failed;
            self.unsettled -= 1;
            if matches!(c.role, Role::Sub { .. }) {
                self.summary.failed += 1;
                self.shared.progress[self.id].failed.fetch_add(1, Ordering::Relaxed);
            } else {
                self.summary.pub_failed += 1;
            }
            self.summary.last_error = Some(why);
        } else {
            c.phase = Phase::Idle;
            // Exponential backoff: 50 ms, 100 ms, ... capped at 2 s.
            let backoff = (50_000_000u64 << (c.attempts - 1).min(6)).min(2_000_000_000);
            self.retry.push((self.ctx.clock.now_ns() + backoff, idx));
        }
    }

    fn became_open(&mut self, idx: usize) {
        if let Some(pos) = self.inflight.iter().position(|&i| i == idx) {
            self.inflight.swap_remove(pos);
        }
        self.unsettled -= 1;
        let c = &mut self.conns[idx];
        c.phase = Phase::Open;
        c.hs = None;
        match c.role {
            Role::Sub { group } => {
                let now = self.ctx.clock.now_ns();
                self.connect_hist.saturating_record(now.saturating_sub(c.first_attempt_ns).max(1));
                self.last_open_ns = now;
                self.summary.ok_per_group[group] += 1;
                self.connected += 1;
                self.shared.progress[self.id].connected.store(self.connected, Ordering::Relaxed);
                if self.ctx.mode == Mode::Groups {
                    push_masked_bytes(
                        &mut c.out,
                        OpCode::Data(Data::Text),
                        &self.ctx.add_group[group],
                        self.rng.mask(),
                    );
                }
            }
            Role::HttpPub => c.http_rx = Some(Box::default()),
            Role::WsPub => {}
        }
    }

    fn maybe_report_connected(&mut self) {
        if self.unsettled == 0 && !self.connect_reported && self.shutdown_deadline.is_none() {
            self.connect_reported = true;
            let mut s = std::mem::take(&mut self.summary);
            s.latency = Some(self.connect_hist.clone());
            s.retries = self.retries;
            s.first_start_ns = self.first_start_ns;
            s.last_open_ns = self.last_open_ns;
            s.io = self.io_used.clone();
            let _ = self.to_ctl.send(WorkerMsg::Connected(self.id, Box::new(s)));
        }
    }

    // ---------------------------------------------------------------- I/O

    fn on_event(&mut self, idx: usize, errored: bool) {
        let Some(c) = self.conns.get(idx) else { return };
        match c.phase {
            Phase::Connecting => self.on_connecting(idx, errored),
            Phase::Handshaking => self.on_handshaking(idx),
            Phase::Open | Phase::Closing if c.on_ring => self.flush_ring_conn(idx),
            Phase::Open | Phase::Closing => {
                self.on_readable(idx);
                self.on_writable(idx);
            }
            Phase::Idle | Phase::Closed | Phase::Failed => {}
        }
    }

    fn on_connecting(&mut self, idx: usize, errored: bool) {
        let c = &mut self.conns[idx];
        let Some(sock) = c.sock.as_mut() else { return };
        match sock.take_error() {
            Ok(Some(e)) | Err(e) => return self.fail_attempt(idx, format!("connect failed: {e}")),
            Ok(None) => {}
        }
        match sock.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected && !errored => return,
            Err(e) => return self.fail_attempt(idx, format!("connect failed: {e}")),
        }
        if c.role == Role::HttpPub {
            return self.became_open(idx);
        }
        let hs = (|| -> Result<Handshake, tungstenite::Error> {
            let req = (&self.ctx.uri).into_client_request()?;
            let (req, key) = generate_request(req)?;
            Ok(Handshake {
                req,
                written: 0,
                accept: derive_accept_key(key.as_bytes()),
                resp: Vec::with_capacity(256),
            })
        })();
        match hs {
            Ok(hs) => {
                c.hs = Some(Box::new(hs));
                c.phase = Phase::Handshaking;
                self.on_handshaking(idx);
            }
            Err(e) => self.fail_attempt(idx, format!("handshake request: {e}")),
        }
    }

    fn on_handshaking(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        let (Some(sock), Some(hs)) = (c.sock.as_mut(), c.hs.as_mut()) else { return };
        while hs.written < hs.req.len() {
            match sock.write(&hs.req[hs.written..]) {
                Ok(n) => hs.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail_attempt(idx, format!("handshake write: {e}")),
            }
        }
        loop {
            match sock.read(&mut self.buf[..4096]) {
                Ok(0) => return self.fail_attempt(idx, "server closed during handshake".into()),
                Ok(n) => hs.resp.extend_from_slice(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail_attempt(idx, format!("handshake read: {e}")),
            }
        }
        let Some(end) = find(&hs.resp, b"\r\n\r\n") else {
            if hs.resp.len() > MAX_RESPONSE_HEAD {
                self.fail_attempt(idx, "handshake response head too large".into());
            }
            return;
        };
        if let Err(why) = verify_response(&hs.resp[..end + 4], &hs.accept) {
            return self.fail_attempt(idx, why);
        }
        let rest = hs.resp.split_off(end + 4);
        self.became_open(idx);
        if !rest.is_empty() {
            let rx_ns = self.ctx.clock.now_ns();
            if !self.handle_rx(idx, &rest, rx_ns) {
                return;
            }
        }
        if self.ring.is_some() && matches!(self.conns[idx].role, Role::Sub { .. }) {
            return self.move_to_ring(idx);
        }
        self.on_writable(idx);
        // Edge-triggered: data may already be waiting after the head we read.
        self.on_readable(idx);
    }

    fn handle_rx(&mut self, idx: usize, data: &[u8], rx_ns: u64) -> bool {
        let mut env = RxEnv { ctx: &self.ctx, step: &mut self.step, rng: &mut self.rng };
        let c = &mut self.conns[idx];
        match process_frames(c, data, rx_ns, &mut env) {
            Ok(o) => {
                if let Some(code) = o.close {
                    self.on_server_close(idx, code);
                    return false;
                }
                true
            }
            Err(e) => {
                eprintln!("worker {}: connection {idx}: protocol error: {e}", self.id);
                self.close_conn(idx);
                false
            }
        }
    }

    fn on_readable(&mut self, idx: usize) {
        loop {
            let c = &mut self.conns[idx];
            if !matches!(c.phase, Phase::Open | Phase::Closing) {
                return;
            }
            let Some(sock) = c.sock.as_mut() else { return };
            if c.role == Role::HttpPub {
                match sock.read(&mut self.buf[..READ_SIZE]) {
                    Ok(0) => return self.close_conn(idx),
                    Ok(n) => {
                        if let Some(h) = c.http_rx.as_mut() {
                            h.feed(&self.buf[..n]);
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return self.close_conn(idx),
                }
            }
            let n = match sock.read(&mut self.buf[..READ_SIZE]) {
                Ok(0) => return self.close_conn(idx),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close_conn(idx),
            };
            let rx_ns = self.ctx.clock.now_ns();
            let buf = std::mem::take(&mut self.buf);
            let keep_going = self.handle_rx(idx, &buf[..n], rx_ns);
            self.buf = buf;
            if !keep_going {
                return;
            }
            let c = &mut self.conns[idx];
            if !c.out.is_empty() {
                if let Some(sock) = c.sock.as_mut() {
                    if flush(sock, &mut c.out, &mut c.out_pos).is_err() {
                        return self.close_conn(idx);
                    }
                }
            }
        }
    }

    fn on_writable(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        if c.out.is_empty() {
            return;
        }
        if let Some(sock) = c.sock.as_mut() {
            if flush(sock, &mut c.out, &mut c.out_pos).is_err() {
                self.close_conn(idx);
            }
        }
    }

    fn on_server_close(&mut self, idx: usize, code: [u8; 2]) {
        let c = &mut self.conns[idx];
        if !c.close_sent {
            push_masked_bytes(&mut c.out, OpCode::Control(Control::Close), &code, self.rng.mask());
            c.close_sent = true;
            if let Some(sock) = c.sock.as_mut() {
                let _ = flush(sock, &mut c.out, &mut c.out_pos);
            }
        }
        self.close_conn(idx);
    }

    fn close_conn(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        if c.phase == Phase::Open && self.shutdown_deadline.is_none() {
            if matches!(c.role, Role::Sub { .. }) {
                self.step.disconnected += 1;
            }
            if matches!(c.role, Role::WsPub | Role::HttpPub) {
                eprintln!("worker {}: publisher connection {idx} closed by the server", self.id);
            }
            if c.role == Role::HttpPub {
                self.step.http_closed += 1;
            }
        }
        if let Some(mut s) = c.sock.take() {
            if c.on_ring {
                // The ring's receive holds its own reference to the socket: shut it down so
                // the receive ends (its last completion is then ignored) and the server sees
                // the close now, not when the ring is torn down.
                let _ = s.shutdown(std::net::Shutdown::Both);
                if c.write_watch {
                    let _ = self.poll.registry().deregister(&mut s);
                }
            } else {
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
        c.phase = Phase::Closed;
    }

    // ---------------------------------------------------------------- publishing

    fn run_publishers(&mut self) {
        if !self.pubs.iter().any(|p| p.active) {
            return;
        }
        let ctx = &*self.ctx;
        let groups = ctx.groups;
        let per_request = ctx.http.as_ref().map_or(1, |h| h.form.messages_per_request());
        let text_len = codec::text_len(ctx.payload);
        let batch = &mut self.batch;
        for p in &mut self.pubs {
            if !p.active {
                continue;
            }
            let c = &mut self.conns[p.conn];
            if c.phase != Phase::Open {
                p.active = false;
                self.shared.pubs_running.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            let mut now = ctx.clock.now_ns();
            let mut built = 0u64;
            loop {
                let Some((n, due)) = p.next_request(per_request) else {
                    p.active = false;
                    self.shared.pubs_running.fetch_sub(1, Ordering::Relaxed);
                    break;
                };
                if due > now || built >= MAX_BATCH {
                    break;
                }
                // Lateness against the schedule of the request's last message (a batch waits
                // for its last message by design; that wait is not lag).
                p.max_lag_ns = p.max_lag_ns.max(now - due);
                batch.clear();
                for _ in 0..n {
                    let g = p.rr;
                    p.rr = (p.rr + 1) % groups;
                    let stream = p.index * groups + g;
                    batch.push((
                        g,
                        MsgHeader { stream: stream as u32, seq: p.next_seq[g], send_ns: now },
                    ));
                    p.next_seq[g] += 1;
                }
                match (&ctx.http, c.http_rx.as_mut()) {
                    (Some(http), Some(rx)) => {
                        http.write_request(&mut c.out, batch, text_len);
                        rx.sent();
                        // Visible before this publisher can count as finished (the controller
                        // waits for every request's response); publish_progress refines it.
                        self.shared.progress[self.id]
                            .http_unanswered
                            .fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {
                        for (g, h) in batch.iter() {
                            build_ws_message(ctx, &mut c.out, h, *g, &mut self.rng);
                        }
                    }
                }
                for (g, _) in batch.iter() {
                    let stream = p.index * groups + g;
                    self.shared.sent[stream].store(p.next_seq[*g], Ordering::Relaxed);
                }
                p.k += n as u64;
                built += n as u64;
                now = ctx.clock.now_ns();
            }
            self.max_lag_ns = self.max_lag_ns.max(p.max_lag_ns);
            if built > 0 {
                if let Some(sock) = c.sock.as_mut() {
                    if let Err(e) = flush(sock, &mut c.out, &mut c.out_pos) {
                        eprintln!("worker {}: publisher {} write failed: {e}", self.id, p.index);
                        c.sock = None;
                        c.phase = Phase::Closed;
                    }
                }
            }
        }
    }
}

/// Appends one WebSocket message for `h` (sent to group `g`) in the configured framing.
#[inline]
fn build_ws_message(ctx: &Ctx, out: &mut Vec<u8>, h: &MsgHeader, g: usize, rng: &mut Rng) {
    match ctx.mode {
        Mode::Plain => {
            push_masked_frame(out, OpCode::Data(Data::Binary), ctx.payload, rng.mask(), |dst| {
                codec::write_binary_message(h, dst)
            });
        }
        Mode::Groups => {
            let (pre, suf) = &ctx.send_parts[g];
            let tl = codec::text_len(ctx.payload);
            let len = pre.len() + tl + suf.len();
            push_masked_frame(out, OpCode::Data(Data::Text), len, rng.mask(), |dst| {
                dst[..pre.len()].copy_from_slice(pre);
                codec::write_text_message(h, &mut dst[pre.len()..pre.len() + tl]);
                dst[pre.len() + tl..].copy_from_slice(suf);
            });
        }
    }
}

/// Checks a handshake response head: status 101 and the right `Sec-WebSocket-Accept`.
fn verify_response(head: &[u8], accept: &str) -> Result<(), String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("incomplete handshake response".into()),
        Err(e) => return Err(format!("bad handshake response: {e}")),
    }
    if resp.code != Some(101) {
        return Err(format!(
            "handshake refused: HTTP {} {}",
            resp.code.unwrap_or(0),
            resp.reason.unwrap_or("")
        ));
    }
    let got = resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"));
    match got {
        Some(h) if h.value == accept.as_bytes() => Ok(()),
        Some(_) => Err("handshake: wrong Sec-WebSocket-Accept".into()),
        None => Err("handshake: missing Sec-WebSocket-Accept".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_rx_counts_pipelined_responses_over_splits() {
        let stream = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        for chunk in [1, 3, 7, 1000] {
            let mut rx = HttpRx::default();
            for part in stream.chunks(chunk) {
                rx.feed(part);
            }
            let c = rx.take();
            assert_eq!((c.ok(), c.errors(), c.unparsable), (2, 1, 0), "chunk {chunk}");
        }
    }

    #[test]
    fn error_replies_are_recognised() {
        assert!(is_error_reply(br#"{"type":"error","reason":"rate limited"}"#));
        assert!(is_error_reply(br#" { "reason":"x", "type" : "error" }"#));
        assert!(!is_error_reply(br#"{"type":"ok","cmd":"add_group","id":1}"#));
        assert!(!is_error_reply(br#"{"type":"welcome","client_id":"0123456789abcdef0123456789ab","worker_id":0,"connection_id":1}"#));
        assert!(!is_error_reply(b"error"));
    }

    #[test]
    fn batch_requests_wait_for_their_last_message() {
        let p = Publisher {
            index: 0,
            conn: 0,
            next_seq: vec![0],
            rr: 0,
            k: 0,
            start_ns: 0,
            end_ns: 1_000,
            interval_ns: 100.0,
            active: true,
            max_lag_ns: 0,
        };
        // 10 messages at 0, 100, ... 900: batches of 4 are due at 300 and 700, the tail of 2
        // at 900.
        assert_eq!(p.next_request(1), Some((1, 0)));
        assert_eq!(p.next_request(4), Some((4, 300)));
        let p = Publisher { k: 4, ..p };
        assert_eq!(p.next_request(4), Some((4, 700)));
        let p = Publisher { k: 8, ..p };
        assert_eq!(p.next_request(4), Some((2, 900)));
        let p = Publisher { k: 10, ..p };
        assert_eq!(p.next_request(4), None);
    }

    #[test]
    fn verify_response_checks_accept() {
        let acc = derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(acc, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {acc}\r\n\r\n"
        );
        assert!(verify_response(ok.as_bytes(), &acc).is_ok());
        assert!(verify_response(ok.as_bytes(), "nope").is_err());
        assert!(verify_response(b"HTTP/1.1 503 Busy\r\n\r\n", &acc).is_err());
    }

    #[test]
    fn publisher_deadlines_are_absolute() {
        let p = Publisher {
            index: 0,
            conn: 0,
            next_seq: vec![0],
            rr: 0,
            k: 0,
            start_ns: 1_000,
            end_ns: 0,
            interval_ns: 1e9 / 3.0,
            active: true,
            max_lag_ns: 0,
        };
        assert_eq!(p.deadline(0), 1_000);
        assert_eq!(p.deadline(3), 1_000 + 1_000_000_000);
        assert_eq!(p.deadline(300), 1_000 + 100_000_000_000);
    }
}
