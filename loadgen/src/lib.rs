//! `ringcast-loadgen`: an open-loop fan-out latency load generator for WebSocket broadcast
//! servers (built for ringcast, works against any server that relays messages to clients).
//!
//! Embed it with [`run`]: build a [`Config`], get a [`Report`] (serde-serializable in the exact
//! `--json` schema of `docs/loadgen-contract.md`).
//!
//! How it measures:
//! * one process-wide monotonic clock: a single `Instant` captured at start, shared by every
//!   thread; each message carries its send time in nanoseconds since that instant, and every
//!   delivery's latency is its receive time minus that send time;
//! * open-loop publishers scheduled by absolute deadlines (`start + k / rate`): they never
//!   wait for replies, and when behind they send at once, never skipping (no coordinated
//!   omission);
//! * `--threads` OS threads each drive their share of the connections with an edge-triggered
//!   epoll (mio) loop, 64 KiB reads and in-place frame header parsing; latencies go into a
//!   per-thread `hdrhistogram` (ns, 3 significant figures) merged at the end; per-subscriber
//!   per-stream sequence windows count duplicates and reorders; losses are
//!   `expected - distinct received`.

#![warn(missing_debug_implementations)]

pub mod codec;
pub mod frame;
pub mod http;
pub mod report;
pub mod seq;
mod sys;
pub mod uring;
mod worker;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use hdrhistogram::Histogram;
use mio::{Poll, Waker};
use tungstenite::http::Uri;

pub use http::Publish;
pub use report::{
    ConnectStats, CpuStats, FindMax, GroupStats, HttpStats, IoStats, LatencyUs, Repeat, Report,
    RunStats, Spread,
};

use crate::http::{HttpCounts, HttpForm, HttpTarget};
use crate::seq::SeqCounts;
use crate::sys::CpuTimes;
use crate::worker::{
    Clock, Cmd, ConnectSummary, Ctx, IoUsed, Shared, StepCmd, StepResult, Worker, WorkerMsg,
    WorkerPlan, WorkerProgress,
};

/// What the clients say to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Publishers send binary messages; the server relays them to every connection.
    #[default]
    Plain,
    /// Subscribers join groups with `{"cmd":"add_group","group_id":"G"}`; publishers send
    /// `{"cmd":"send_to_group","group_id":"G","message":"<hex text form>"}`.
    Groups,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "plain" => Ok(Mode::Plain),
            "groups" => Ok(Mode::Groups),
            _ => Err(format!("unknown mode {s:?} (plain|groups)")),
        }
    }
}

/// The subscribers' receive path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoMode {
    /// io_uring when the kernel allows it, else epoll (the report says which ran and why).
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// Edge-triggered epoll with 64 KiB reads.
    Epoll,
}

impl FromStr for IoMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IoMode::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(IoMode::Uring),
            "epoll" => Ok(IoMode::Epoll),
            _ => Err(format!("unknown receive path {s:?} (auto|uring|epoll)")),
        }
    }
}

/// Which local addresses connections are bound to before connecting.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SourceIps {
    /// 127.0.0.1..=127.0.0.8 round-robin when the target is IPv4 loopback, else no binding.
    #[default]
    Auto,
    /// Never bind (the kernel picks the source address).
    None,
    /// Round-robin over these addresses.
    List(Vec<IpAddr>),
}

impl FromStr for SourceIps {
    type Err = String;
    /// `auto`, `none`, or a comma list of addresses and IPv4 ranges `A-B`
    /// (e.g. `127.0.0.1-127.0.0.16,127.1.0.1`).
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => return Ok(SourceIps::Auto),
            "none" => return Ok(SourceIps::None),
            _ => {}
        }
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some((a, b)) = part.split_once('-') {
                let a: Ipv4Addr = a.trim().parse().map_err(|e| format!("{part}: {e}"))?;
                let b: Ipv4Addr = b.trim().parse().map_err(|e| format!("{part}: {e}"))?;
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a > 65_535 {
                    return Err(format!("bad range {part}"));
                }
                out.extend((a..=b).map(|v| IpAddr::V4(Ipv4Addr::from(v))));
            } else {
                out.push(part.parse().map_err(|e| format!("{part}: {e}"))?);
            }
        }
        if out.is_empty() {
            return Err("empty source address list".into());
        }
        Ok(SourceIps::List(out))
    }
}

/// Parses a duration in seconds: a plain number (`2.5`) or one with a unit suffix
/// (`500ms`, `5s`, `1m`), as used by the CLI's time flags.
pub fn parse_secs(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, mult) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else {
        (t, 1.0)
    };
    let v: f64 =
        num.trim().parse().map_err(|_| format!("bad duration {s:?} (e.g. 5, 5s, 500ms)"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(v * mult)
}

/// Everything a run needs. [`Config::default`] gives the CLI defaults (except `url`).
#[derive(Debug, Clone)]
pub struct Config {
    /// WebSocket URL of the server, `ws://HOST:PORT/PATH`.
    pub url: String,
    /// Subscriber connections (publisher connections are extra).
    pub connections: usize,
    /// Offered rate in messages/s, all publishers together.
    pub rate: f64,
    /// Measured seconds of publishing per run / find-max step.
    pub duration_s: f64,
    /// Bytes per message (>= 24; the text form is at least 48 characters).
    pub payload: usize,
    /// Publisher connections; the rate is split evenly among them.
    pub publishers: usize,
    /// Connection attempts started per second during ramp-up (0 = unlimited).
    pub ramp_rate: f64,
    /// Connects + handshakes in flight at once, over all threads.
    pub max_inflight_handshakes: usize,
    /// Source addresses to bind before connecting.
    pub source_ips: SourceIps,
    /// Worker threads (0 = available CPUs).
    pub threads: usize,
    /// Seconds of unmeasured load before measuring.
    pub warmup_s: f64,
    /// find-max: highest acceptable p99 latency in ms.
    pub p99_bound_ms: f64,
    /// Step the rate up until the bounds break, instead of one run at `rate`.
    pub find_max: bool,
    /// find-max: first offered rate (None = `rate`).
    pub start_rate: Option<f64>,
    /// find-max: multiply the rate by this after each step that met the bounds.
    pub rate_step_factor: f64,
    /// find-max: at most this many climbing steps (retries and bisections come on top).
    pub max_steps: usize,
    /// find-max: times a step that missed the bounds is run again before it counts as failed.
    pub step_retries: usize,
    /// find-max: after the first confirmed failure, bisect (geometrically) between the best
    /// passing rate and the failed one this many times.
    pub bisect_steps: usize,
    /// Run the whole measurement (warm-up + run or find-max) this many times over the same
    /// connections and report the median repetition with the spread.
    pub repeat: usize,
    /// Only open the connections (as fast as `ramp_rate` and `max_inflight_handshakes`
    /// allow), report handshakes/s and connect latency, and stop.
    pub connect_only: bool,
    /// Receive path of the subscriber connections.
    pub io: IoMode,
    /// io_uring path: a wait may hold completions back up to this many µs (or until 64 are
    /// ready) so the thread wakes once per batch instead of once per segment; adds at most
    /// this much to measured latencies. 0 = wake for every completion.
    pub recv_batch_us: u64,
    /// Seconds to wait after the last send for in-flight deliveries.
    pub drain_s: f64,
    /// Plain relay or groups commands.
    pub mode: Mode,
    /// Groups mode: group ids; subscriber i joins group i mod len, publishers rotate over all.
    pub groups: Vec<String>,
    /// Groups mode: when > 0 (and `groups` is empty), use this many groups named
    /// `{group_prefix}0` .. `{group_prefix}{N-1}`.
    pub group_count: usize,
    /// Name prefix of the generated groups of `group_count`.
    pub group_prefix: String,
    /// Publish over WebSocket or one of the HTTP push API's forms.
    pub publish: Publish,
    /// HTTP push API base URL (`http://HOST:PORT/PATH`), required with an HTTP [`Publish`].
    pub http_url: Option<String>,
    /// Bearer token sent as `Authorization: Bearer TOKEN` with every HTTP request.
    pub http_token: Option<String>,
    /// Publishes per request with [`Publish::HttpBatch`].
    pub batch_size: usize,
    /// Retries per connection after a failed connect or handshake.
    pub connect_retries: u32,
    /// Seconds one connect + handshake attempt may take.
    pub connect_timeout_s: f64,
    /// Live progress on stderr: None = when stderr is a TTY and the run is longer than ~3 s.
    pub progress: Option<bool>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            url: String::new(),
            connections: 100,
            rate: 1000.0,
            duration_s: 10.0,
            payload: 64,
            publishers: 1,
            ramp_rate: 5000.0,
            max_inflight_handshakes: 256,
            source_ips: SourceIps::Auto,
            threads: 0,
            warmup_s: 1.0,
            p99_bound_ms: 50.0,
            find_max: false,
            start_rate: None,
            rate_step_factor: 1.5,
            max_steps: 12,
            step_retries: 1,
            bisect_steps: 3,
            repeat: 1,
            connect_only: false,
            io: IoMode::Auto,
            recv_batch_us: 50,
            drain_s: 2.0,
            mode: Mode::Plain,
            groups: Vec::new(),
            group_count: 0,
            group_prefix: "g".to_owned(),
            publish: Publish::Ws,
            http_url: None,
            http_token: None,
            batch_size: 10,
            connect_retries: 5,
            connect_timeout_s: 10.0,
            progress: None,
        }
    }
}

/// Runs the whole load test described by `cfg` and reports what was measured.
pub fn run(cfg: &Config) -> Result<Report> {
    let mut c = Controller::start(cfg)?;
    let res = if cfg.connect_only { c.connect_report() } else { c.measure_repeated() };
    c.shutdown();
    res
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}:{port}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| anyhow!("{host}:{port} resolved to no address"))
}

fn host_port(uri: &Uri, default_port: u16) -> Result<(String, u16)> {
    let host = uri.host().ok_or_else(|| anyhow!("URL {uri} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    Ok((host, uri.port_u16().unwrap_or(default_port)))
}

/// The group ids a config asks for: none in plain mode; `groups`, or `group_count` generated
/// names, or the single group `loadgen` in groups mode.
pub fn group_names(cfg: &Config) -> Vec<String> {
    match cfg.mode {
        Mode::Plain => Vec::new(),
        Mode::Groups if !cfg.groups.is_empty() => cfg.groups.clone(),
        Mode::Groups if cfg.group_count > 0 => {
            (0..cfg.group_count).map(|i| format!("{}{i}", cfg.group_prefix)).collect()
        }
        Mode::Groups => vec!["loadgen".to_owned()],
    }
}

fn http_target(cfg: &Config, groups: &[String]) -> Result<Option<HttpTarget>> {
    let form = match cfg.publish {
        Publish::Ws => return Ok(None),
        Publish::Http => HttpForm::Seed,
        Publish::HttpJson => HttpForm::Json,
        Publish::HttpBatch => HttpForm::Batch(cfg.batch_size),
    };
    let url = cfg.http_url.as_deref().ok_or_else(|| anyhow!("--publish http* needs --http-url"))?;
    let uri: Uri = url.parse().with_context(|| format!("bad --http-url {url:?}"))?;
    let (host, port) = host_port(&uri, 80)?;
    let addr = resolve(&host, port)?;
    Ok(Some(HttpTarget::new(url, addr, groups, form, cfg.http_token.as_deref())?))
}

/// Drives the workers through connect, warm-up and measured steps.
struct Controller {
    cfg: Config,
    ctx: Arc<Ctx>,
    shared: Arc<Shared>,
    threads: usize,
    usable_cores: usize,
    cmd_tx: Vec<mpsc::Sender<Cmd>>,
    wakers: Vec<Waker>,
    from_workers: mpsc::Receiver<WorkerMsg>,
    handles: Vec<JoinHandle<()>>,
    members: Vec<u64>,
    connect: ConnectStats,
    /// The receive path the workers run (worker 0's; all try the same).
    io: IoUsed,
    progress: Progress,
}

impl Controller {
    fn start(cfg: &Config) -> Result<Self> {
        let cfg = cfg.clone();
        validate(&cfg)?;
        let uri: Uri = cfg.url.parse().with_context(|| format!("bad --url {:?}", cfg.url))?;
        match uri.scheme_str() {
            Some("ws") => {}
            Some("wss") => bail!("wss:// is not supported (plain ws:// only)"),
            _ => bail!("--url must be ws://HOST:PORT/PATH"),
        }
        let (host, port) = host_port(&uri, 80)?;
        let ws_addr = resolve(&host, port)?;
        let groups = group_names(&cfg);
        let ngroups = groups.len().max(1);
        let http = http_target(&cfg, &groups)?;
        let source_ips = match &cfg.source_ips {
            SourceIps::None => Vec::new(),
            SourceIps::List(v) => v.clone(),
            SourceIps::Auto => match ws_addr.ip() {
                IpAddr::V4(v4) if v4.is_loopback() => {
                    (1..=8).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))).collect()
                }
                _ => Vec::new(),
            },
        };
        let usable_cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let threads = if cfg.threads == 0 { usable_cores } else { cfg.threads };
        match sys::raise_nofile_limit() {
            Ok(lim) if (lim as usize) < cfg.connections + cfg.publishers + 64 => eprintln!(
                "warning: open file limit {lim} is below the {} connections requested",
                cfg.connections + cfg.publishers
            ),
            Ok(_) => {}
            Err(e) => eprintln!("warning: could not raise the open file limit: {e}"),
        }

        let clock = Clock(Instant::now());
        let ctx = Arc::new(Ctx {
            clock,
            ws_addr,
            uri,
            source_ips,
            mode: cfg.mode,
            groups: ngroups,
            add_group: groups.iter().map(|g| codec::add_group_json(g).into_bytes()).collect(),
            send_parts: groups.iter().map(|g| codec::send_to_group_parts(g)).collect(),
            payload: cfg.payload,
            http,
            publishers: cfg.publishers,
            subscribers: cfg.connections,
            ramp_per_worker: cfg.ramp_rate / threads as f64,
            inflight_per_worker: (cfg.max_inflight_handshakes / threads).max(1),
            retries: cfg.connect_retries,
            connect_timeout: Duration::from_secs_f64(cfg.connect_timeout_s),
            io: cfg.io,
            recv_batch_us: cfg.recv_batch_us,
        });
        let shared = Arc::new(Shared {
            progress: (0..threads).map(|_| WorkerProgress::default()).collect(),
            sent: (0..cfg.publishers * ngroups).map(|_| AtomicU64::new(0)).collect(),
            pubs_running: AtomicUsize::new(0),
        });

        let mut plans = vec![WorkerPlan::default(); threads];
        if !cfg.connect_only {
            for p in 0..cfg.publishers {
                plans[p % threads].pubs.push(p);
            }
        }
        for i in 0..cfg.connections {
            plans[i % threads].subs.push((i, i % ngroups));
        }

        let total_secs = (cfg.warmup_s
            + cfg.duration_s * if cfg.find_max { cfg.max_steps as f64 } else { 1.0 })
            * cfg.repeat as f64;
        let progress = Progress::new(cfg.progress, total_secs > 3.0);

        let (to_ctl, from_workers) = mpsc::channel();
        let mut cmd_tx = Vec::new();
        let mut wakers = Vec::new();
        let mut handles = Vec::new();
        let connect_start = Instant::now();
        for (id, plan) in plans.iter().enumerate() {
            let poll = Poll::new().context("creating epoll instance")?;
            let waker = Waker::new(poll.registry(), mio::Token(usize::MAX))?;
            let (tx, rx) = mpsc::channel();
            let worker =
                Worker::new(id, ctx.clone(), shared.clone(), poll, rx, to_ctl.clone(), plan)?;
            let h = std::thread::Builder::new()
                .name(format!("loadgen-{id}"))
                .spawn(move || worker.run())
                .context("spawning worker thread")?;
            cmd_tx.push(tx);
            wakers.push(waker);
            handles.push(h);
        }
        drop(to_ctl);

        let mut c = Controller {
            cfg,
            ctx,
            shared,
            threads,
            usable_cores,
            cmd_tx,
            wakers,
            from_workers,
            handles,
            members: vec![0; ngroups],
            connect: ConnectStats {
                ok: 0,
                failed: 0,
                secs: 0.0,
                handshakes_per_sec: 0.0,
                latency_us: LatencyUs::default(),
                retries: 0,
            },
            io: IoUsed::default(),
            progress,
        };
        if let Err(e) = c.wait_connected(connect_start) {
            c.shutdown();
            return Err(e);
        }
        Ok(c)
    }

    fn wait_connected(&mut self, t0: Instant) -> Result<()> {
        let mut summaries: Vec<Option<Box<ConnectSummary>>> = vec![None; self.threads];
        while summaries.iter().any(Option::is_none) {
            if let Some(WorkerMsg::Connected(id, s)) = self.recv(Duration::from_millis(250))? {
                summaries[id] = Some(s);
            }
            let (ok, failed) = self.shared.progress.iter().fold((0, 0), |(o, f), p| {
                (o + p.connected.load(Ordering::Relaxed), f + p.failed.load(Ordering::Relaxed))
            });
            self.progress.show(&format!(
                "connecting: {ok}/{} open, {failed} failed, {:.1} s",
                self.cfg.connections,
                t0.elapsed().as_secs_f64()
            ));
        }
        self.connect.secs = round3(t0.elapsed().as_secs_f64());
        self.progress.clear();
        let mut pub_failed = 0;
        let mut last_err = None;
        let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)?;
        let (mut first_ns, mut last_ns) = (u64::MAX, 0u64);
        let mut ios = Vec::new();
        for s in summaries.into_iter().flatten() {
            if let Some(h) = &s.latency {
                hist.add(h).map_err(|e| anyhow!("merging histograms: {e:?}"))?;
            }
            self.connect.retries += s.retries;
            if s.first_start_ns > 0 {
                first_ns = first_ns.min(s.first_start_ns);
            }
            last_ns = last_ns.max(s.last_open_ns);
            ios.push(s.io.clone());
            for (g, n) in s.ok_per_group.iter().enumerate() {
                self.members[g] += n;
            }
            self.connect.failed += s.failed;
            pub_failed += s.pub_failed;
            if s.last_error.is_some() {
                last_err = s.last_error;
            }
        }
        self.connect.ok = self.members.iter().sum();
        self.connect.latency_us = latency_of(&hist);
        self.connect.handshakes_per_sec = if last_ns > first_ns {
            round3(self.connect.ok as f64 / ((last_ns - first_ns) as f64 / 1e9))
        } else {
            0.0
        };
        self.io = ios.first().cloned().unwrap_or_default();
        if ios.iter().any(|i| i.uring != self.io.uring) {
            eprintln!("warning: workers run different receive paths: {ios:?}");
        }
        match (&self.io.fallback_reason, self.io.uring) {
            (_, true) => eprintln!(
                "receive path: io_uring multishot recv, {} x {} KiB provided buffers per thread{}{}, \
                 batched waits {} µs",
                self.io.buffers,
                self.io.buffer_bytes / 1024,
                if self.io.incremental { ", incremental consumption" } else { "" },
                if self.io.defer_taskrun { ", DEFER_TASKRUN" } else { "" },
                self.io.recv_batch_us
            ),
            (Some(why), false) => eprintln!("receive path: epoll ({why})"),
            (None, false) => eprintln!("receive path: epoll"),
        }
        if self.connect.failed > 0 || pub_failed > 0 {
            eprintln!(
                "{} subscriber and {pub_failed} publisher connection(s) failed; last error: {}",
                self.connect.failed,
                last_err.as_deref().unwrap_or("?")
            );
        }
        if pub_failed > 0 {
            bail!("{pub_failed} publisher connection(s) failed: {}", last_err.unwrap_or_default());
        }
        if self.connect.ok == 0 && self.cfg.connections > 0 {
            bail!("no subscriber could connect: {}", last_err.unwrap_or_default());
        }
        eprintln!(
            "connected {} subscriber(s) + {} publisher(s) in {:.2} s ({} failed, {:.0} handshakes/s)",
            self.connect.ok,
            if self.cfg.connect_only { 0 } else { self.cfg.publishers },
            self.connect.secs,
            self.connect.failed,
            self.connect.handshakes_per_sec
        );
        Ok(())
    }

    /// Receives one worker message; errors if a worker died.
    fn recv(&mut self, timeout: Duration) -> Result<Option<WorkerMsg>> {
        match self.from_workers.recv_timeout(timeout) {
            Ok(m) => Ok(Some(m)),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if self.handles.iter().any(|h| h.is_finished()) {
                    bail!("a load generator worker thread exited unexpectedly");
                }
                Ok(None)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("all worker threads exited"),
        }
    }

    fn broadcast(&self, mk: impl Fn() -> Cmd) {
        for (tx, w) in self.cmd_tx.iter().zip(&self.wakers) {
            let _ = tx.send(mk());
            let _ = w.wake();
        }
    }

    /// The `--connect-only` report: the connect phase's figures, nothing published.
    fn connect_report(&mut self) -> Result<Report> {
        let run = RunStats {
            url: self.cfg.url.clone(),
            connections: self.cfg.connections,
            publishers: 0,
            rate: 0.0,
            duration_s: 0.0,
            payload: self.cfg.payload,
            connect: self.connect.clone(),
            sent: 0,
            expected: 0,
            received: 0,
            deliveries_per_sec: 0.0,
            latency_us: LatencyUs::default(),
            lost: 0,
            duplicates: 0,
            reordered: 0,
            cpu: CpuStats {
                user_s: 0.0,
                sys_s: 0.0,
                wall_s: 0.0,
                cores_used: 0.0,
                threads: self.threads,
                busiest_thread_cores: 0.0,
                s_per_million_deliveries: 0.0,
                saturated: false,
            },
            io: self.io_stats(0, 0, 0),
            step_kind: None,
            http: None,
            groups: None,
            extra: report::Extra::default(),
        };
        Ok(Report { run, find_max: None, connect_only: true, repeat: None })
    }

    /// `--repeat N`: the whole measurement N times; the median repetition is reported.
    fn measure_repeated(&mut self) -> Result<Report> {
        let n = self.cfg.repeat.max(1);
        let mut reports = Vec::with_capacity(n);
        for i in 0..n {
            if n > 1 {
                eprintln!("repetition {}/{n}", i + 1);
            }
            reports.push(self.measure()?);
        }
        if n == 1 {
            return Ok(reports.pop().expect("one report"));
        }
        // Headline figure: best deliveries/s for find-max (0 when no step met the bounds);
        // p99 for a fixed-rate run.
        let dps: Vec<f64> = reports
            .iter()
            .map(|r| match &r.find_max {
                Some(fm) => fm.best.as_ref().map_or(0.0, |b| b.deliveries_per_sec),
                None => r.run.deliveries_per_sec,
            })
            .collect();
        let p99: Vec<f64> = reports.iter().map(|r| r.run.latency_us.p99 as f64).collect();
        let key = if self.cfg.find_max { &dps } else { &p99 };
        let median = Spread::of(key).median;
        let reported = key.iter().position(|v| *v == median).unwrap_or(0);
        let repeat = Repeat {
            n,
            reported,
            deliveries_per_sec: Spread::of(&dps),
            p50_us: Spread::of(
                &reports.iter().map(|r| r.run.latency_us.p50 as f64).collect::<Vec<_>>(),
            ),
            p99_us: Spread::of(&p99),
            s_per_million_deliveries: Spread::of(
                &reports.iter().map(|r| r.run.cpu.s_per_million_deliveries).collect::<Vec<_>>(),
            ),
        };
        let mut r = reports.swap_remove(reported);
        r.repeat = Some(repeat);
        Ok(r)
    }

    /// Runs a find-max step; a step that misses the bounds is run again (up to
    /// `step_retries` times) before it counts as failed. Every run goes into `steps`.
    fn checked_step(
        &mut self,
        rate: f64,
        label: &str,
        kind: &str,
        steps: &mut Vec<RunStats>,
    ) -> Result<Option<RunStats>> {
        let cfg = self.cfg.clone();
        for attempt in 0..=cfg.step_retries {
            let mut st = self.step(rate, cfg.duration_s, label)?;
            let ok = st.expected > 0
                && st.latency_us.p99 as f64 <= cfg.p99_bound_ms * 1000.0
                && st.received as f64 >= 0.99 * st.expected as f64;
            st.extra.met_bounds = ok;
            st.step_kind = Some(if attempt == 0 { kind.to_owned() } else { "retry".to_owned() });
            let last = attempt == cfg.step_retries;
            eprintln!(
                "{label} ({}): {rate:.1} msg/s -> {:.0} deliveries/s, p99 {:.3} ms, received {}/{}, \
                 generator {:.2} µs/delivery{} {}",
                st.step_kind.as_deref().unwrap_or(""),
                st.deliveries_per_sec,
                st.latency_us.p99 as f64 / 1000.0,
                st.received,
                st.expected,
                st.cpu.s_per_million_deliveries,
                if st.cpu.saturated { " (generator saturated)" } else { "" },
                match (ok, last) {
                    (true, _) => "ok",
                    (false, false) => "over the bounds: retrying once",
                    (false, true) => "over the bounds",
                }
            );
            steps.push(st.clone());
            if ok {
                return Ok(Some(st));
            }
        }
        Ok(None)
    }

    fn measure(&mut self) -> Result<Report> {
        let cfg = self.cfg.clone();
        let first_rate = if cfg.find_max { cfg.start_rate.unwrap_or(cfg.rate) } else { cfg.rate };
        if cfg.warmup_s > 0.0 {
            eprintln!("warming up for {:.1} s at {first_rate:.1} msg/s", cfg.warmup_s);
            self.step(first_rate, cfg.warmup_s, "warmup")?;
        }
        if !cfg.find_max {
            let run = self.step(cfg.rate, cfg.duration_s, "run")?;
            return Ok(Report { run, find_max: None, connect_only: false, repeat: None });
        }
        let mut steps: Vec<RunStats> = Vec::new();
        let mut best: Option<RunStats> = None;
        let keep = |best: &mut Option<RunStats>, st: RunStats| {
            if best.as_ref().is_none_or(|b| st.deliveries_per_sec > b.deliveries_per_sec) {
                *best = Some(st);
            }
        };
        let mut rate = first_rate;
        let mut good_rate: Option<f64> = None;
        let mut failed_rate: Option<f64> = None;
        for i in 0..cfg.max_steps {
            let label = format!("step {}/{}", i + 1, cfg.max_steps);
            match self.checked_step(rate, &label, "climb", &mut steps)? {
                Some(st) => {
                    keep(&mut best, st);
                    good_rate = Some(rate);
                    rate *= cfg.rate_step_factor;
                }
                None => {
                    failed_rate = Some(rate);
                    break;
                }
            }
        }
        // Bisect between the last passing and the first (confirmed) failing rate.
        if let (Some(mut lo), Some(mut hi)) = (good_rate, failed_rate) {
            for b in 0..cfg.bisect_steps {
                let mid = (lo * hi).sqrt();
                let label = format!("bisect {}/{}", b + 1, cfg.bisect_steps);
                match self.checked_step(mid, &label, "bisect", &mut steps)? {
                    Some(st) => {
                        keep(&mut best, st);
                        lo = mid;
                    }
                    None => hi = mid,
                }
            }
            failed_rate = Some(hi);
        }
        let top =
            best.clone().or_else(|| steps.last().cloned()).ok_or_else(|| anyhow!("no step ran"))?;
        Ok(Report {
            run: top,
            find_max: Some(FindMax { p99_bound_ms: cfg.p99_bound_ms, steps, best, failed_rate }),
            connect_only: false,
            repeat: None,
        })
    }

    fn io_stats(&self, completions: u64, bytes: u64, enobufs: u64) -> IoStats {
        IoStats {
            path: if self.io.uring { "io_uring" } else { "epoll" }.to_owned(),
            incremental_buffers: self.io.incremental,
            defer_taskrun: self.io.defer_taskrun,
            recv_batch_us: self.io.recv_batch_us,
            buffers: self.io.buffers,
            buffer_bytes: self.io.buffer_bytes,
            fallback_reason: self.io.fallback_reason.clone(),
            completions,
            bytes_per_completion: if completions > 0 {
                round3(bytes as f64 / completions as f64)
            } else {
                0.0
            },
            enobufs,
        }
    }

    fn sent_now(&self) -> Vec<u64> {
        self.shared.sent.iter().map(|a| a.load(Ordering::Relaxed)).collect()
    }

    fn expected(&self, first: &[u64], now: &[u64]) -> u64 {
        let g = self.members.len();
        first.iter().zip(now).enumerate().map(|(s, (a, b))| (b - a) * self.members[s % g]).sum()
    }

    /// One step of load at `rate` msg/s for `secs`; returns its stats.
    fn step(&mut self, rate: f64, secs: f64, label: &str) -> Result<RunStats> {
        let clock = self.ctx.clock;
        let first: Arc<[u64]> = Arc::from(self.sent_now());
        let lead_ns = 20_000_000;
        let start_ns = clock.now_ns() + lead_ns;
        let end_ns = start_ns + (secs * 1e9) as u64;
        self.shared.pubs_running.store(self.cfg.publishers, Ordering::SeqCst);
        let cmd = StepCmd {
            rate_per_pub: rate / self.cfg.publishers as f64,
            start_ns,
            end_ns,
            first_seq: first.clone(),
        };
        let cpu0 = CpuTimes::now();
        self.broadcast(|| Cmd::Step(cmd.clone()));

        let drain_ns = (self.cfg.drain_s * 1e9) as u64;
        let mut last_send_done: Option<u64> = None;
        let mut last_show = 0u64;
        loop {
            std::thread::sleep(Duration::from_millis(5));
            if self.handles.iter().any(|h| h.is_finished()) {
                bail!("a load generator worker thread exited unexpectedly");
            }
            let now = clock.now_ns();
            let sent = self.sent_now();
            let expected = self.expected(&first, &sent);
            let (received, unique) = self.shared.progress.iter().fold((0, 0), |(r, u), p| {
                (r + p.received.load(Ordering::Relaxed), u + p.unique.load(Ordering::Relaxed))
            });
            if now >= last_show + 500_000_000 {
                last_show = now;
                let el = now.saturating_sub(start_ns) as f64 / 1e9;
                let nsent: u64 = sent.iter().zip(first.iter()).map(|(b, a)| b - a).sum();
                self.progress.show(&format!(
                    "{label} @ {rate:.0} msg/s: {:.1}/{secs:.1} s, sent {nsent}, delivered {received}/{expected} ({:.0}/s)",
                    el.min(secs),
                    if el > 0.0 { received as f64 / el } else { 0.0 }
                ));
            }
            if now < end_ns {
                continue;
            }
            let running = self.shared.pubs_running.load(Ordering::SeqCst);
            if running == 0 && last_send_done.is_none() {
                last_send_done = Some(now);
            }
            // Publishers normally finish right at end_ns; give a stuck one 5 s at most.
            let drain_from = last_send_done.unwrap_or(end_ns + 5_000_000_000);
            // Done once everything expected arrived and every HTTP request was answered (so
            // this step's refused pushes are counted in this step).
            let unanswered: u64 = self
                .shared
                .progress
                .iter()
                .map(|p| p.http_unanswered.load(Ordering::Relaxed))
                .sum();
            if running == 0 && unique >= expected && unanswered == 0 {
                break;
            }
            if now >= drain_from + drain_ns {
                break;
            }
        }
        let wall_end_ns = clock.now_ns();
        let cpu = CpuTimes::now().since(&cpu0);
        self.progress.clear();

        self.broadcast(|| Cmd::Collect);
        let mut slots: Vec<Option<Box<StepResult>>> = vec![None; self.threads];
        while slots.iter().any(Option::is_none) {
            if let Some(WorkerMsg::Step(id, r)) = self.recv(Duration::from_millis(250))? {
                slots[id] = Some(r);
            }
        }
        let results: Vec<Box<StepResult>> = slots.into_iter().flatten().collect();
        let sent_end = self.sent_now();
        let expected = self.expected(&first, &sent_end);
        let sent: u64 = sent_end.iter().zip(first.iter()).map(|(b, a)| b - a).sum();

        let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3)?;
        let mut counts = SeqCounts::default();
        let mut last_rx = 0u64;
        let mut lag = 0u64;
        let mut disconnected = 0;
        let mut http = HttpCounts::default();
        let mut http_closed = 0;
        let (mut sub_errors, mut pub_errors, mut first_error) = (0, 0, None);
        let (mut busiest_s, mut completions, mut cbytes, mut enobufs) = (0f64, 0, 0, 0);
        for r in &results {
            busiest_s = busiest_s.max(r.thread_cpu_s);
            completions += r.completions;
            cbytes += r.completion_bytes;
            enobufs += r.enobufs;
            hist.add(&r.hist).map_err(|e| anyhow!("merging histograms: {e:?}"))?;
            counts.received += r.counts.received;
            counts.duplicates += r.counts.duplicates;
            counts.reordered += r.counts.reordered;
            last_rx = last_rx.max(r.last_rx_ns);
            lag = lag.max(r.max_send_lag_ns);
            disconnected += r.disconnected;
            http.add(&r.http);
            http_closed += r.http_closed;
            sub_errors += r.sub_errors;
            pub_errors += r.pub_errors;
            if first_error.is_none() {
                first_error.clone_from(&r.first_error);
            }
        }
        let http_stats = self.ctx.http.as_ref().map(|t| HttpStats {
            form: t.form.name().to_owned(),
            batch_size: t.form.messages_per_request(),
            requests: http.requests,
            responses: http.responses,
            ok: http.ok(),
            errors: http.errors(),
            status: http.status.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
            queued: http.queued,
            item_errors: http.item_errors,
            connections_closed: http_closed,
            unparsable: http.unparsable,
        });
        let group_stats = (self.cfg.mode == Mode::Groups).then(|| GroupStats {
            count: self.members.len(),
            members_min: self.members.iter().copied().min().unwrap_or(0),
            members_max: self.members.iter().copied().max().unwrap_or(0),
            error_replies_subscribers: sub_errors,
            error_replies_publishers: pub_errors,
            first_error: first_error.clone(),
        });
        let latency_us = latency_of(&hist);
        let span_s = (last_rx.max(end_ns) - start_ns) as f64 / 1e9;
        let wall_s = (wall_end_ns.saturating_sub(start_ns)) as f64 / 1e9;
        let cores_used = if wall_s > 0.0 { (cpu.user_s + cpu.sys_s) / wall_s } else { 0.0 };
        let limit = self.threads.min(self.usable_cores) as f64;
        let busiest_thread_cores = if wall_s > 0.0 { busiest_s / wall_s } else { 0.0 };
        let cpu_s = cpu.user_s + cpu.sys_s;
        Ok(RunStats {
            url: self.cfg.url.clone(),
            connections: self.cfg.connections,
            publishers: self.cfg.publishers,
            rate,
            duration_s: secs,
            payload: self.cfg.payload,
            connect: self.connect.clone(),
            sent,
            expected,
            received: counts.received,
            deliveries_per_sec: if span_s > 0.0 { counts.received as f64 / span_s } else { 0.0 },
            latency_us,
            lost: expected.saturating_sub(counts.unique()),
            duplicates: counts.duplicates,
            reordered: counts.reordered,
            cpu: CpuStats {
                user_s: round3(cpu.user_s),
                sys_s: round3(cpu.sys_s),
                wall_s: round3(wall_s),
                cores_used: round3(cores_used),
                threads: self.threads,
                busiest_thread_cores: round3(busiest_thread_cores),
                s_per_million_deliveries: if counts.received > 0 {
                    round3(cpu_s / counts.received as f64 * 1e6)
                } else {
                    0.0
                },
                saturated: cores_used >= 0.9 * limit || busiest_thread_cores >= 0.9,
            },
            io: self.io_stats(completions, cbytes, enobufs),
            step_kind: None,
            http: http_stats,
            groups: group_stats,
            extra: report::Extra {
                max_send_lag_ms: lag as f64 / 1e6,
                disconnected,
                http: self.ctx.http.is_some().then(|| (http.ok(), http.errors())),
                met_bounds: false,
            },
        })
    }

    fn shutdown(&mut self) {
        self.broadcast(|| Cmd::Shutdown);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        self.progress.clear();
    }
}

/// Percentiles of a nanosecond histogram, in µs.
fn latency_of(hist: &Histogram<u64>) -> LatencyUs {
    let us = |ns: u64| (ns + 500) / 1000;
    let q = |x: f64| if hist.is_empty() { 0 } else { us(hist.value_at_quantile(x)) };
    LatencyUs {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: if hist.is_empty() { 0 } else { us(hist.max()) },
        mean: if hist.is_empty() { 0.0 } else { round3(hist.mean() / 1000.0) },
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn validate(cfg: &Config) -> Result<()> {
    if cfg.payload < codec::HEADER_LEN {
        bail!("--payload must be at least {} bytes", codec::HEADER_LEN);
    }
    if cfg.publishers == 0 {
        bail!("--publishers must be at least 1");
    }
    if cfg.publishers.saturating_mul(cfg.groups.len().max(1)) > u32::MAX as usize {
        bail!("--publishers x groups must fit the 32-bit stream id");
    }
    if !(cfg.rate > 0.0 && cfg.rate.is_finite()) {
        bail!("--rate must be > 0");
    }
    if !(cfg.duration_s > 0.0 && cfg.duration_s.is_finite()) {
        bail!("--duration must be > 0");
    }
    if cfg.warmup_s < 0.0 || cfg.drain_s < 0.0 || cfg.connect_timeout_s <= 0.0 {
        bail!("--warmup and --drain-secs must be >= 0, --connect-timeout > 0");
    }
    if cfg.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if cfg.connect_only && cfg.connections == 0 {
        bail!("--connect-only needs --connections > 0");
    }
    if cfg.max_inflight_handshakes == 0 {
        bail!("--max-inflight-handshakes must be at least 1");
    }
    if cfg.find_max {
        if cfg.rate_step_factor <= 1.0 {
            bail!("--rate-step-factor must be > 1");
        }
        if cfg.max_steps == 0 {
            bail!("--max-steps must be at least 1");
        }
        if let Some(r) = cfg.start_rate {
            if r <= 0.0 {
                bail!("--start-rate must be > 0");
            }
        }
    }
    if cfg.mode == Mode::Groups && cfg.groups.len().max(cfg.group_count) > 65_536 {
        bail!("at most 65536 groups");
    }
    if cfg.publishers.saturating_mul(cfg.group_count.max(1)) > u32::MAX as usize {
        bail!("--publishers x --group-count must fit the 32-bit stream id");
    }
    match cfg.publish {
        Publish::HttpJson | Publish::HttpBatch if cfg.mode != Mode::Groups => {
            bail!("--publish http-json and http-batch need --mode groups")
        }
        Publish::HttpBatch if cfg.batch_size == 0 || cfg.batch_size > http::MAX_BATCH_SIZE => {
            bail!("--batch-size must be 1..={}", http::MAX_BATCH_SIZE)
        }
        _ => {}
    }
    Ok(())
}

/// The live progress line on stderr.
#[derive(Debug)]
struct Progress {
    enabled: bool,
    tty: bool,
    shown: bool,
}

impl Progress {
    fn new(force: Option<bool>, long_run: bool) -> Self {
        let tty = sys::stderr_is_tty();
        let enabled = force.unwrap_or(tty && long_run);
        Self { enabled, tty, shown: false }
    }

    fn show(&mut self, line: &str) {
        if !self.enabled {
            return;
        }
        if self.tty {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.enabled && self.tty && self.shown {
            eprint!("\r\x1b[K");
        }
        self.shown = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parsing() {
        assert_eq!(parse_secs("5"), Ok(5.0));
        assert_eq!(parse_secs("2.5s"), Ok(2.5));
        assert_eq!(parse_secs("250ms"), Ok(0.25));
        assert_eq!(parse_secs("1m"), Ok(60.0));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
    }

    #[test]
    fn source_ip_parsing() {
        assert_eq!("auto".parse::<SourceIps>(), Ok(SourceIps::Auto));
        assert_eq!("none".parse::<SourceIps>(), Ok(SourceIps::None));
        let SourceIps::List(v) = "127.0.0.1-127.0.0.3, 10.0.0.1".parse::<SourceIps>().unwrap()
        else {
            panic!()
        };
        assert_eq!(v.len(), 4);
        assert_eq!(v[2], "127.0.0.3".parse::<IpAddr>().unwrap());
        assert!("127.0.0.9-127.0.0.1".parse::<SourceIps>().is_err());
        assert!("".parse::<SourceIps>().is_err());
    }

    #[test]
    fn http_request_line() {
        let cfg = Config {
            mode: Mode::Groups,
            groups: vec!["a b".to_owned()],
            publish: Publish::Http,
            http_url: Some("http://127.0.0.1:8080/push".to_owned()),
            ..Config::default()
        };
        let t = http_target(&cfg, &group_names(&cfg)).unwrap().unwrap();
        let h = codec::MsgHeader { stream: 0, seq: 0, send_ns: 0 };
        let mut out = Vec::new();
        t.write_request(&mut out, &[(0, h)], 48);
        let text = "52434c47".to_owned() + &"0".repeat(40);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "POST /push?content={text}&to_group=a%20b HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
                 Content-Length: 0\r\n\r\n"
            )
        );
        let cfg = Config {
            mode: Mode::Plain,
            http_url: Some("http://127.0.0.1:8080/?x=1".into()),
            ..cfg
        };
        let t = http_target(&cfg, &group_names(&cfg)).unwrap().unwrap();
        let mut out = Vec::new();
        t.write_request(&mut out, &[(0, h)], 48);
        assert!(out.starts_with(b"POST /?x=1&content=52434c47"));
        assert!(out.ends_with(b"0 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 0\r\n\r\n"));
    }

    #[test]
    fn group_names_from_count() {
        let cfg = Config { mode: Mode::Groups, group_count: 3, ..Config::default() };
        assert_eq!(group_names(&cfg), ["g0", "g1", "g2"]);
        let cfg = Config { group_prefix: "room-".into(), ..cfg };
        assert_eq!(group_names(&cfg), ["room-0", "room-1", "room-2"]);
        let cfg = Config { groups: vec!["x".into()], ..cfg };
        assert_eq!(group_names(&cfg), ["x"]);
        let cfg = Config { mode: Mode::Plain, ..cfg };
        assert!(group_names(&cfg).is_empty());
        let cfg = Config { mode: Mode::Groups, ..Config::default() };
        assert_eq!(group_names(&cfg), ["loadgen"]);
    }

    #[test]
    fn json_forms_need_groups_mode() {
        let cfg = Config {
            url: "ws://127.0.0.1:1/".into(),
            publish: Publish::HttpBatch,
            http_url: Some("http://127.0.0.1:2/".into()),
            ..Config::default()
        };
        assert!(validate(&cfg).is_err());
        assert!(validate(&Config { mode: Mode::Groups, ..cfg.clone() }).is_ok());
        assert!(validate(&Config { mode: Mode::Groups, batch_size: 0, ..cfg }).is_err());
    }
}
