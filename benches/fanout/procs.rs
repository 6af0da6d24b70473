//! Child-process plumbing for the fan-out harness: CPU pinning before exec, parent-death
//! signals, a registry of live children that is killed on panic or Ctrl-C, bounded waits and
//! `/proc` readings (RSS, CPU time, allowed CPUs).

use std::fs::File;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// PIDs of every child we started that has not been reaped yet.
static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn register(pid: i32) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

fn unregister(pid: i32) {
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|&p| p != pid);
}

/// SIGKILLs every registered child. Used from the panic hook and the signal thread, where
/// `Drop` of the owning [`Proc`] may never run.
pub fn kill_all_children() {
    let pids: Vec<i32> = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for pid in pids {
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a child we spawned and
        // have not reaped, so it cannot name an unrelated recycled process.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Installs a panic hook and a SIGINT/SIGTERM/SIGHUP handler that kill every live child.
pub fn install_cleanup_handlers() -> Result<()> {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        kill_all_children();
        prev(info);
    }));
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    thread::Builder::new().name("fanout-signals".into()).spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("fanout: caught signal {sig}, killing children");
            kill_all_children();
            std::process::exit(128 + sig);
        }
    })?;
    Ok(())
}

/// Parses a CPU list such as `0`, `1-3` or `0,2-3`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b): (usize, usize) = (a.trim().parse()?, b.trim().parse()?);
            if a > b {
                bail!("bad CPU range {part:?}");
            }
            out.extend(a..=b);
        } else {
            out.push(part.parse().with_context(|| format!("bad CPU {part:?}"))?);
        }
    }
    if out.is_empty() {
        bail!("empty CPU list {s:?}");
    }
    if let Some(&c) = out.iter().find(|&&c| c >= libc::CPU_SETSIZE as usize) {
        bail!("CPU {c} out of range");
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Formats a CPU list back in the `0,2,3` form.
pub fn fmt_cpu_list(cpus: &[usize]) -> String {
    cpus.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(",")
}

fn cpu_set(cpus: &[usize]) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is the valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        // SAFETY: `parse_cpu_list` guarantees c < CPU_SETSIZE, so the bit is inside `set`.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    set
}

/// How to start one child.
pub struct Spec<'a> {
    pub name: String,
    pub program: &'a Path,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    pub cpus: &'a [usize],
    pub stdout_piped: bool,
    pub stdin_piped: bool,
    pub log: &'a Path,
}

impl Spec<'_> {
    /// The command line as one shell-ish string (env assignments first, then `taskset`-like
    /// note of the CPU set), for the results.
    pub fn command_line(&self) -> String {
        let mut parts: Vec<String> = self.envs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.push(format!("taskset -c {}", fmt_cpu_list(self.cpus)));
        parts.push(self.program.display().to_string());
        parts.extend(self.args.iter().map(|a| shell_quote(a)));
        parts.join(" ")
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A running child. Dropping it terminates it (SIGTERM, then SIGKILL after 3 s) and reaps it.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub command_line: String,
    pub log: std::path::PathBuf,
    reaped: Option<ExitStatus>,
}

pub fn spawn(spec: &Spec<'_>) -> Result<Proc> {
    let mut cmd = Command::new(spec.program);
    cmd.args(&spec.args);
    for (k, v) in &spec.envs {
        cmd.env(k, v);
    }
    let log = File::create(spec.log).with_context(|| format!("creating {}", spec.log.display()))?;
    cmd.stderr(Stdio::from(log));
    cmd.stdout(if spec.stdout_piped { Stdio::piped() } else { Stdio::null() });
    cmd.stdin(if spec.stdin_piped { Stdio::piped() } else { Stdio::null() });
    let set = cpu_set(spec.cpus);
    // SAFETY: the closure runs in the forked child before exec, so it may only make
    // async-signal-safe calls: prctl(2) and sched_setaffinity(2) are raw system calls, `set` was
    // built before the fork and is only read, and `last_os_error` just reads errno without
    // allocating.
    unsafe {
        cmd.pre_exec(move || {
            // Die with the harness even if it is SIGKILLed and cannot clean up.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("spawning {}", spec.command_line()))?;
    register(child.id() as i32);
    Ok(Proc {
        name: spec.name.clone(),
        child,
        command_line: spec.command_line(),
        log: spec.log.to_path_buf(),
        reaped: None,
    })
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Returns the exit status if the child has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.reaped.is_none() {
            if let Some(st) = self.child.try_wait()? {
                unregister(self.pid());
                self.reaped = Some(st);
            }
        }
        Ok(self.reaped)
    }

    /// Waits at most `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        // SAFETY: kill(2) has no memory-safety preconditions; the child is not reaped yet.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        if let Some(st) = self.wait_timeout(grace)? {
            return Ok(st);
        }
        eprintln!("fanout: {} did not exit within {grace:?} of SIGTERM, killing it", self.name);
        self.child.kill().ok();
        let st = self.child.wait()?;
        unregister(self.pid());
        self.reaped = Some(st);
        Ok(st)
    }

    /// Last `n` lines of the child's stderr log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(e) = self.terminate(Duration::from_secs(3)) {
            eprintln!("fanout: stopping {}: {e:#}", self.name);
        }
    }
}

pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Reads a pipe to the end on a helper thread; the receiver yields the text.
pub fn read_to_end_async<R: Read + Send + 'static>(mut r: R) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

/// Reads one line from a pipe, giving up after `timeout`.
pub fn read_line_timeout<R: Read + Send + 'static>(
    r: R,
    timeout: Duration,
) -> Result<Option<String>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        let mut reader = io::BufReader::new(r);
        let mut line = String::new();
        let res = reader.read_line(&mut line).map(|n| (n, line));
        let _ = tx.send(res);
        // Keep draining so the child never blocks on a full pipe.
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok((0, _))) => Ok(None),
        Ok(Ok((_, line))) => Ok(Some(line.trim_end().to_string())),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => bail!("no line within {timeout:?}"),
    }
}

/// A free loopback port (bound then released; a tiny race that is fine on this machine).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Polls until something accepts TCP connections on `addr`, the child dies, or `timeout`.
pub fn wait_listening(proc_: &mut Proc, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = proc_.try_wait()? {
            bail!("{} exited ({st}) before listening:\n{}", proc_.name, proc_.log_tail(20));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} not listening on {addr} after {timeout:?}:\n{}",
                proc_.name,
                proc_.log_tail(20)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn status_field(pid: i32, field: &str) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: i32) -> Result<u64> {
    let v = status_field(pid, "VmRSS")?;
    v.trim_end_matches("kB").trim().parse().context("parsing VmRSS")
}

/// The CPUs the kernel lets `pid` run on (`Cpus_allowed_list`), as proof of the pinning.
pub fn cpus_allowed(pid: i32) -> String {
    status_field(pid, "Cpus_allowed_list").unwrap_or_else(|e| format!("unknown ({e})"))
}

/// User + system CPU seconds consumed so far by `pid` (all threads).
pub fn cpu_seconds(pid: i32) -> Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised comm; utime and stime are fields 14 and 15 (1-based).
    let rest = text.rsplit_once(')').map(|(_, r)| r).context("parsing /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11).context("utime")?.parse()?;
    let stime: f64 = f.get(12).context("stime")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((utime + stime) / hz)
}

/// Summed `/proc/stat` counters (in seconds) of a set of CPUs.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTimes {
    /// user + nice + system: time spent running processes (ours and everybody else's).
    pub tasks: f64,
    /// irq + softirq: with IRQ time accounting, loopback TCP receive processing lands here
    /// rather than in the process that triggered it.
    pub irq: f64,
    pub steal: f64,
}

/// Reads the per-CPU lines of `/proc/stat` for `cpus`.
pub fn cpu_times(cpus: &[usize]) -> Result<CpuTimes> {
    let text = std::fs::read_to_string("/proc/stat")?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut t = CpuTimes::default();
    for &c in cpus {
        let prefix = format!("cpu{c} ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .with_context(|| format!("no cpu{c} in /proc/stat"))?;
        let v: Vec<f64> =
            line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0.0)).collect();
        let g = |i: usize| v.get(i).copied().unwrap_or(0.0) / hz;
        // user nice system idle iowait irq softirq steal
        t.tasks += g(0) + g(1) + g(2);
        t.irq += g(5) + g(6);
        t.steal += g(7);
    }
    Ok(t)
}

impl CpuTimes {
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            tasks: self.tasks - earlier.tasks,
            irq: self.irq - earlier.irq,
            steal: self.steal - earlier.steal,
        }
    }
}

/// Whether an environment variable is set to something other than empty, `0` or `false`.
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).map(|v| !v.is_empty() && v != "0" && v != "false").unwrap_or(false)
}

/// Runs `cargo build --release ARGS` and returns the command line.
pub fn cargo_build(
    cargo: &str,
    workspace: &Path,
    target_dir: &Path,
    args: &[&str],
) -> Result<String> {
    let mut all = vec!["build", "--release"];
    all.extend_from_slice(args);
    let line = format!("{cargo} {}", all.join(" "));
    eprintln!("bench: {line}");
    let t0 = Instant::now();
    let status = Command::new(cargo)
        .args(&all)
        .current_dir(workspace)
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {line}"))?;
    if !status.success() {
        bail!("{line} failed: {status}");
    }
    eprintln!("bench: built in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(line)
}

/// The two binaries a harness runs, built with `cargo build --release` unless
/// `RINGCAST_BENCH_RINGCAST_BIN` / `RINGCAST_BENCH_LOADGEN_BIN` name prebuilt ones.
pub struct Binaries {
    pub ringcast_bin: std::path::PathBuf,
    pub loadgen_bin: std::path::PathBuf,
    /// The `cargo build` command lines run.
    pub build_commands: Vec<String>,
}

impl Binaries {
    /// Builds (unless `report_only`) and checks the binaries.
    pub fn resolve(workspace: &Path, report_only: bool) -> Result<Binaries> {
        let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(d) => {
                let d = std::path::PathBuf::from(d);
                if d.is_absolute() {
                    d
                } else {
                    workspace.join(d)
                }
            }
            None => workspace.join("target"),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build_commands = Vec::new();
        let ringcast_bin = match std::env::var_os("RINGCAST_BENCH_RINGCAST_BIN") {
            Some(p) => std::path::PathBuf::from(p),
            None if report_only => target_dir.join("release").join("ringcast"),
            None => {
                build_commands.push(cargo_build(
                    &cargo,
                    workspace,
                    &target_dir,
                    &["--bin", "ringcast", "-p", "ringcast"],
                )?);
                target_dir.join("release").join("ringcast")
            }
        };
        let loadgen_bin = match std::env::var_os("RINGCAST_BENCH_LOADGEN_BIN") {
            Some(p) => std::path::PathBuf::from(p),
            None if report_only => target_dir.join("release").join("ringcast-loadgen"),
            None => {
                build_commands.push(cargo_build(
                    &cargo,
                    workspace,
                    &target_dir,
                    &["-p", "ringcast-loadgen"],
                )?);
                target_dir.join("release").join("ringcast-loadgen")
            }
        };
        for bin in [&ringcast_bin, &loadgen_bin] {
            if !report_only && !bin.is_file() {
                bail!("{} does not exist", bin.display());
            }
        }
        Ok(Binaries { ringcast_bin, loadgen_bin, build_commands })
    }
}
