//! Cross-shard events: one bounded crossbeam channel into each shard, plus an eventfd that the
//! shard keeps a read on in its io_uring. A sender pushes, then writes the eventfd only if the
//! shard is not already signalled, so a burst of events costs one wake-up. The shard clears the
//! flag *before* draining, so an event sent during the drain always gets a fresh wake-up.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::server::ConnId;

/// What one shard asks of another.
#[derive(Debug)]
pub(crate) enum ShardMsg {
    /// An encoded frame for every open connection of the shard.
    Broadcast(Bytes),
    /// An encoded frame for one connection of the shard.
    SendTo(ConnId, Bytes),
    /// Close one connection with a code and reason.
    Close(ConnId, u16, String),
    /// Begin graceful shutdown: stop accepting, close everyone with 1001.
    Shutdown,
}

/// The sending side of one shard's inbox.
#[derive(Debug)]
pub(crate) struct Link {
    tx: Sender<ShardMsg>,
    signalled: AtomicBool,
    eventfd: OwnedFd,
}

/// The event was not delivered: the shard's inbox is full (or the shard has exited).
#[derive(Debug)]
pub(crate) struct Full;

impl Link {
    /// Queue an event without ever blocking the caller.
    pub(crate) fn send(&self, msg: ShardMsg) -> Result<(), Full> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.wake();
                Ok(())
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Full),
        }
    }

    fn wake(&self) {
        if !self.signalled.swap(true, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own for our lifetime.
            let _ =
                unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    /// Called by the owning shard before it drains its inbox.
    pub(crate) fn clear_signal(&self) {
        self.signalled.store(false, Ordering::Release);
    }
}

/// Create one shard's link and the receiving half (inbox plus a file to read the eventfd).
pub(crate) fn link(capacity: usize) -> io::Result<(Link, Receiver<ShardMsg>, File)> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
    let reader = File::from(eventfd.try_clone()?);
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    Ok((Link { tx, signalled: AtomicBool::new(false), eventfd }, rx, reader))
}

impl Link {
    /// Signal the shard even if it is already marked signalled (it left events in its inbox).
    pub(crate) fn force_wake(&self) {
        self.signalled.store(false, Ordering::Release);
        self.wake();
    }
}
