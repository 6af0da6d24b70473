//! The subscribers' receive path on io_uring: one ring per worker thread, one multishot
//! `recv` per subscriber socket, fed from a provided-buffer ring (with incremental buffer
//! consumption, `IOU_PBUF_RING_INC`, on kernels that have it: ≥ 6.12).
//!
//! This module owns the ring, the buffer memory and the completion bookkeeping; it knows
//! nothing about WebSocket frames or connections. The worker hands each completion's bytes,
//! in place in the kernel-filled buffer, to the frame parser and then gives the buffer back.
//!
//! The ring is created with `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` when the
//! kernel allows (≥ 6.1): the kernel then retries the multishot receives only when this
//! thread waits for completions, so one `io_uring_enter` gathers whatever arrived on every
//! socket since the last one — many segments per completion when the load generator is busy,
//! which is where the per-delivery cost goes down. The rest of the worker (connects,
//! handshakes, publishers, the timer and the controller's waker) stays on the worker's epoll
//! instance, whose fd is watched by a poll request on this ring, so the thread waits in one
//! place.

use std::io;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::types::{BufRingEntry, CancelBuilder, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, types, IoUring};

/// `user_data` of the poll request on the worker's epoll fd.
pub const UD_EPOLL: u64 = u64::MAX;
/// `IOU_PBUF_RING_INC` from `<linux/io_uring.h>` (kernel 6.12): buffers consumed
/// incrementally (the io-uring crate does not re-export it).
const IOU_PBUF_RING_INC: u16 = 2;
/// Buffer group id of the provided-buffer ring.
const BGID: u16 = 0;

/// How the buffer ring is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufShape {
    pub entries: u16,
    pub buf_bytes: u32,
}

/// With incremental consumption a buffer is shared by many small completions: fewer, larger.
const SHAPE_INCREMENTAL: BufShape = BufShape { entries: 2048, buf_bytes: 32 * 1024 };
/// Without it each completion uses up a whole buffer until handed back: more, smaller.
const SHAPE_WHOLE: BufShape = BufShape { entries: 4096, buf_bytes: 16 * 1024 };

/// What setting the ring up found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingInfo {
    /// Buffers are consumed incrementally (`IOU_PBUF_RING_INC`).
    pub incremental: bool,
    /// `SINGLE_ISSUER | DEFER_TASKRUN` were accepted.
    pub defer_taskrun: bool,
    /// The kernel honours a minimum wait (`IORING_FEAT_MIN_TIMEOUT`, ≥ 6.12), so waits can
    /// gather a batch of completions before waking the thread.
    pub min_wait: bool,
    pub shape: BufShape,
}

/// One completion, copied out of the completion queue.
#[derive(Debug, Clone, Copy)]
pub struct Cqe {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

impl Cqe {
    /// The multishot request stays armed.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

/// An anonymous, page-aligned private mapping.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a Mapping is exclusively owned memory (like a Box<[u8]>); nothing about it is
// tied to the thread that created it.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping with no address hint has no preconditions;
        // the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { ptr: NonNull::new(p.cast()).expect("mmap never returns null on success"), len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing refers to the mapping
        // any more (the owner unregistered it from the kernel first).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The ring, its provided buffers and the bookkeeping of partly consumed buffers.
pub struct RecvRing {
    ring: IoUring,
    /// The `io_uring_buf` entries shared with the kernel (page aligned).
    entries: Mapping,
    /// The buffers themselves: `shape.entries` buffers of `shape.buf_bytes`.
    mem: Mapping,
    /// Our copy of the buffer ring's tail (published with a release store).
    tail: u16,
    /// Incremental mode: bytes of each buffer already handed out in completions.
    consumed: Box<[u32]>,
    info: RingInfo,
    cqes: Vec<Cqe>,
    /// Completions that reported `ENOBUFS` (the buffer ring ran dry; the receive is re-armed).
    pub enobufs: u64,
}

impl std::fmt::Debug for RecvRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvRing").field("info", &self.info).finish_non_exhaustive()
    }
}

impl RecvRing {
    /// Sets up a ring with a provided-buffer ring; must run on the thread that will use it.
    ///
    /// `connections` sizes the completion queue (one multishot receive per connection).
    pub fn new(connections: usize) -> io::Result<Self> {
        let cq = (connections.max(1024) * 2).next_power_of_two().min(65_536) as u32;
        let sq = 1024;
        let (ring, defer_taskrun) = match IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_cqsize(cq)
            .build(sq)
        {
            Ok(r) => (r, true),
            // Kernels before 6.1 refuse DEFER_TASKRUN: plain ring.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                (IoUring::builder().setup_cqsize(cq).build(sq)?, false)
            }
            Err(e) => return Err(e),
        };
        if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "kernel io_uring lacks EXT_ARG/NODROP (needs ≥ 5.11)",
            ));
        }
        let mut last_err = None;
        for (flags, shape) in [(IOU_PBUF_RING_INC, SHAPE_INCREMENTAL), (0, SHAPE_WHOLE)] {
            let entries =
                Mapping::new(shape.entries as usize * std::mem::size_of::<BufRingEntry>())?;
            let mem = Mapping::new(shape.entries as usize * shape.buf_bytes as usize)?;
            // SAFETY: `entries` is a page-aligned mapping of exactly `shape.entries` ring
            // entries and lives in `Self` until `Drop` unregisters it before unmapping.
            let reg = unsafe {
                ring.submitter().register_buf_ring_with_flags(
                    entries.ptr.as_ptr() as u64,
                    shape.entries,
                    BGID,
                    flags,
                )
            };
            match reg {
                Ok(()) => {
                    let min_wait = ring.params().is_feature_min_timeout();
                    let info = RingInfo { incremental: flags != 0, defer_taskrun, min_wait, shape };
                    let mut me = Self {
                        ring,
                        entries,
                        mem,
                        tail: 0,
                        consumed: vec![0; shape.entries as usize].into_boxed_slice(),
                        info,
                        cqes: Vec::with_capacity(4096),
                        enobufs: 0,
                    };
                    for bid in 0..shape.entries {
                        me.push_buffer(bid);
                    }
                    me.publish_tail();
                    return Ok(me);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("buffer ring registration failed")))
    }

    pub fn info(&self) -> &RingInfo {
        &self.info
    }

    fn entry_ptr(&self, slot: u16) -> *mut BufRingEntry {
        let i = usize::from(slot & (self.info.shape.entries - 1));
        // SAFETY: `i < entries`, inside the mapping.
        unsafe { self.entries.ptr.as_ptr().cast::<BufRingEntry>().add(i) }
    }

    /// Appends buffer `bid` (whole, from its start) at the local tail.
    fn push_buffer(&mut self, bid: u16) {
        let len = self.info.shape.buf_bytes;
        // SAFETY: `bid < entries`, so the buffer lies inside `mem`.
        let addr = unsafe { self.mem.ptr.as_ptr().add(usize::from(bid) * len as usize) };
        let e = self.entry_ptr(self.tail);
        // SAFETY: the slot at the local tail is not visible to the kernel until the tail is
        // published, so writing it cannot race; the pointer is in bounds (entry_ptr).
        unsafe {
            (*e).set_addr(addr as u64);
            (*e).set_len(len);
            (*e).set_bid(bid);
        }
        self.consumed[usize::from(bid)] = 0;
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers pushed so far visible to the kernel.
    fn publish_tail(&mut self) {
        // SAFETY: the ring base is the first entry of a valid, initialised buf ring; `tail`
        // returns the address of the shared tail field, a u16 the kernel reads atomically.
        let tail = unsafe { BufRingEntry::tail(self.entries.ptr.as_ptr().cast()) };
        // SAFETY: the field is 2-byte aligned and lives as long as the mapping; AtomicU16 has
        // the layout of u16.
        let atomic = unsafe { &*(tail as *const AtomicU16) };
        atomic.store(self.tail, Ordering::Release);
    }

    /// Queues a multishot receive on `fd`, completions tagged `user_data`.
    pub fn arm_recv(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let sqe = opcode::RecvMulti::new(types::Fd(fd), BGID).build().user_data(user_data);
        self.push(&sqe)
    }

    /// Queues a one-shot readiness poll of `fd` (the worker's epoll fd).
    pub fn arm_poll(&mut self, fd: RawFd, user_data: u64) -> io::Result<()> {
        let sqe =
            opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build().user_data(user_data);
        self.push(&sqe)
    }

    fn push(&mut self, sqe: &io_uring::squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the requests reference only fds (no user memory besides the registered
            // buffer ring, which outlives the ring's use; see Drop).
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                return Ok(());
            }
            // Submission queue full: hand what is queued to the kernel first.
            self.ring.submit()?;
        }
    }

    /// Submits what is queued and waits up to `timeout` for at least one completion, then
    /// copies every available completion into an internal list, returned as a slice (valid
    /// until the next call).
    ///
    /// With `batch = Some((n, window))` (and a kernel with minimum waits), the thread is not
    /// woken for each completion: it sleeps until `n` completions are ready or `window` has
    /// passed with at least one ready, so each wake-up handles a batch.
    pub fn wait(
        &mut self,
        timeout: Duration,
        batch: Option<(usize, Duration)>,
    ) -> io::Result<&[Cqe]> {
        let ts = Timespec::new().sec(timeout.as_secs()).nsec(timeout.subsec_nanos());
        let mut args = SubmitArgs::new().timespec(&ts);
        let mut want = 1;
        if let Some((n, window)) = batch.filter(|_| self.info.min_wait) {
            if !timeout.is_zero() && n > 1 && !window.is_zero() {
                want = n;
                args = args.min_wait_usec(window.as_micros().min(u128::from(u32::MAX)) as u32);
            }
        }
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        self.cqes.clear();
        for c in self.ring.completion() {
            self.cqes.push(Cqe { user_data: c.user_data(), result: c.result(), flags: c.flags() });
        }
        Ok(&self.cqes)
    }

    /// The completions gathered by the last [`RecvRing::wait`].
    pub fn take_cqes(&mut self) -> Vec<Cqe> {
        std::mem::take(&mut self.cqes)
    }

    /// Gives the completion list's storage back for reuse.
    pub fn return_cqes(&mut self, mut v: Vec<Cqe>) {
        v.clear();
        self.cqes = v;
    }

    /// The bytes a receive completion carries, in place in its provided buffer, and what to do
    /// with the buffer afterwards. `None` when the completion carries no buffer.
    ///
    /// The returned slice is not tied to `&self`: it stays valid and unchanged until
    /// [`RecvRing::release`] is called with the returned token, because the kernel never
    /// writes a buffer range it has already reported (incremental mode) or a buffer that is
    /// out of the ring (whole-buffer mode).
    pub fn data<'a>(&mut self, c: &Cqe) -> Option<(&'a [u8], Release)> {
        let bid = cqueue::buffer_select(c.flags)?;
        let n = c.result.max(0) as u32;
        let size = self.info.shape.buf_bytes;
        let (off, release) = if self.info.incremental {
            let off = self.consumed[usize::from(bid)];
            let more = cqueue::buffer_more(c.flags);
            self.consumed[usize::from(bid)] = off + n;
            (off, if more { Release::Keep } else { Release::Recycle(bid) })
        } else {
            (0, Release::Recycle(bid))
        };
        debug_assert!(off + n <= size);
        let n = n.min(size - off.min(size));
        // SAFETY: `bid < entries` (the kernel only reports ids we gave it) and
        // `off + n <= buf_bytes`, so the range is inside `mem`; the kernel has finished
        // writing it (its completion was posted) and will not write it again before the
        // buffer is recycled (see above), and `mem` outlives every caller's use because the
        // worker processes the bytes before its next wait.
        let s = unsafe {
            std::slice::from_raw_parts(
                self.mem.ptr.as_ptr().add(usize::from(bid) * size as usize + off as usize),
                n as usize,
            )
        };
        Some((s, release))
    }

    /// Hands a buffer back to the kernel once its bytes are processed.
    pub fn release(&mut self, r: Release) {
        if let Release::Recycle(bid) = r {
            self.push_buffer(bid);
            self.publish_tail();
        }
    }

    /// Cancels every request still in flight (best effort, bounded by `timeout`).
    pub fn cancel_all(&mut self, timeout: Duration) {
        let ts = Timespec::new().sec(timeout.as_secs()).nsec(timeout.subsec_nanos());
        let _ = self.ring.submitter().register_sync_cancel(Some(ts), CancelBuilder::any());
    }
}

impl Drop for RecvRing {
    fn drop(&mut self) {
        self.cancel_all(Duration::from_millis(500));
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
        // Then the fields drop: the ring fd closes before the mappings are unmapped.
    }
}

/// What to do with a completion's buffer after its bytes are processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Release {
    /// Incremental mode: the kernel keeps filling the rest of this buffer.
    Keep,
    /// The buffer is used up: give it back.
    Recycle(u16),
}

/// `ENOBUFS` as a completion result.
pub const ENOBUFS: i32 = -libc::ENOBUFS;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    /// Bytes written to a socket pair come back through the multishot receive, in order,
    /// across many completions and buffer recycles.
    #[test]
    fn multishot_receive_round_trip() {
        let mut ring = match RecvRing::new(1) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("skipping: io_uring unavailable here ({e})");
                return;
            }
        };
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        ring.arm_recv(b.as_raw_fd(), 7).unwrap();
        let want: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut got = Vec::new();
        let mut off = 0;
        let mut rounds = 0;
        while got.len() < want.len() {
            rounds += 1;
            assert!(rounds < 100_000, "stuck");
            if off < want.len() {
                let end = (off + 100_000).min(want.len());
                a.write_all(&want[off..end]).unwrap();
                off = end;
            }
            let cqes = ring.wait(Duration::from_millis(200), None).unwrap().to_vec();
            for c in cqes {
                assert_eq!(c.user_data, 7);
                if c.result == ENOBUFS {
                    ring.arm_recv(b.as_raw_fd(), 7).unwrap();
                    continue;
                }
                assert!(c.result > 0, "result {}", c.result);
                let (d, r) = ring.data(&c).expect("a buffer");
                got.extend_from_slice(d);
                ring.release(r);
                if !c.more() {
                    ring.arm_recv(b.as_raw_fd(), 7).unwrap();
                }
            }
        }
        assert_eq!(got, want);
    }
}
