//! Small Linux system helpers: file descriptor limit, CPU usage, a high-resolution timer fd
//! for the publishers' deadlines, and non-blocking connects from a chosen source address.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit read from the kernel with only the soft limit raised
        // up to the hard limit, which an unprivileged process may always do.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// This process's CPU time so far (all threads), from `getrusage(RUSAGE_SELF)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    /// User-mode seconds.
    pub user_s: f64,
    /// Kernel-mode seconds.
    pub sys_s: f64,
}

impl CpuTimes {
    /// Reads the current totals of the whole process.
    pub fn now() -> Self {
        Self::read(libc::RUSAGE_SELF)
    }

    /// Reads the current totals of the calling thread.
    pub fn thread_now() -> Self {
        Self::read(libc::RUSAGE_THREAD)
    }

    fn read(who: libc::c_int) -> Self {
        // SAFETY: rusage is a plain C struct of integers; all-zero is a valid value.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `ru` is a valid, writable rusage for the duration of the call.
        let rc = unsafe { libc::getrusage(who, &mut ru) };
        if rc != 0 {
            return Self::default();
        }
        let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        Self { user_s: secs(ru.ru_utime), sys_s: secs(ru.ru_stime) }
    }

    /// User + system seconds.
    pub fn total_s(&self) -> f64 {
        self.user_s + self.sys_s
    }

    /// `self - earlier`.
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user_s: (self.user_s - earlier.user_s).max(0.0),
            sys_s: (self.sys_s - earlier.sys_s).max(0.0),
        }
    }
}

/// A non-blocking `CLOCK_MONOTONIC` timerfd, armed with relative one-shot timeouts at
/// nanosecond resolution (epoll's own timeout only has millisecond resolution).
#[derive(Debug)]
pub struct TimerFd {
    fd: OwnedFd,
    armed_for: Option<Duration>,
}

impl TimerFd {
    /// Creates a disarmed timer.
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with constant flags; the returned fd is checked below.
        let fd = unsafe {
            libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, armed_for: None })
    }

    /// Arms the timer to fire once after `after` (a zero duration fires as soon as possible).
    pub fn arm(&mut self, after: Duration) -> io::Result<()> {
        // A zero it_value would disarm the timer: use 1 ns instead.
        let after = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(after.subsec_nanos() as i32),
            },
        };
        // SAFETY: `self.fd` is a valid timerfd, `spec` is a valid itimerspec, and a null
        // old-value pointer is allowed.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        self.armed_for = Some(after);
        Ok(())
    }

    /// Consumes pending expirations (so edge-triggered polling sees the next one).
    pub fn clear(&mut self) {
        let mut buf = [0u8; 8];
        // SAFETY: reading at most 8 bytes into an 8-byte stack buffer from a valid fd; errors
        // (EAGAIN when nothing expired) are ignored on purpose.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        self.armed_for = None;
    }
}

impl AsRawFd for TimerFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Starts a non-blocking TCP connect to `dst`, first binding to `src` (port chosen by the
/// kernel at connect time via `IP_BIND_ADDRESS_NO_PORT`, so each source address gets its own
/// full ephemeral port range). Returns the socket while the connect is in progress.
pub fn start_connect(dst: SocketAddr, src: Option<IpAddr>) -> io::Result<mio::net::TcpStream> {
    let domain = if dst.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let sock = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    sock.set_tcp_nodelay(true)?;
    if let Some(ip) = src {
        if ip.is_ipv4() == dst.is_ipv4() {
            set_bind_address_no_port(&sock)?;
            sock.bind(&SocketAddr::new(ip, 0).into())?;
        }
    }
    match sock.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let std_stream: std::net::TcpStream = sock.into();
    Ok(mio::net::TcpStream::from_std(std_stream))
}

fn set_bind_address_no_port(sock: &Socket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: valid socket fd; the option value points to a live c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether stderr is a terminal.
pub fn stderr_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timerfd_fires() {
        let mut t = TimerFd::new().unwrap();
        t.arm(Duration::from_millis(1)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let mut buf = [0u8; 8];
        // SAFETY: valid fd, 8-byte buffer.
        let n = unsafe { libc::read(t.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        assert_eq!(n, 8);
        assert_eq!(u64::from_ne_bytes(buf), 1);
        t.clear();
    }

    #[test]
    fn cpu_times_monotonic() {
        let a = CpuTimes::now();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = CpuTimes::now();
        assert!(b.user_s + b.sys_s >= a.user_s + a.sys_s);
    }
}
