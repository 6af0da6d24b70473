//! The reply path of the mesh: a request sent to *k* shards gathers their *k* answers into one
//! [`Pending`], which the caller either `.await`s (any executor: the HTTP control plane runs
//! tokio) or [`Pending::wait`]s for on a plain thread.
//!
//! One allocation per request, whatever *k*. A shard that drops a request without answering
//! (it was shutting down) still counts down, so a `Pending` never hangs; it resolves to
//! [`RequestError::Stopped`].

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::addressing::{Applied, ClientInfo, PublishReport, RequestError, ShardStats};
use crate::history::Position;
use crate::ids::{ConnId, GroupId, Uid};

/// One shard's answer.
#[derive(Debug)]
pub(crate) enum Answer {
    /// One report per publish of the batch, in order.
    Published(Vec<PublishReport>),
    /// An operation on one connection.
    Applied(Applied),
    /// Members removed by a dissolve.
    Dissolved(u64),
    /// One connection.
    Client(ClientInfo),
    /// A group's members on the shard, with their uids.
    Group { clients: Vec<ConnId>, uids: Vec<Uid> },
    /// A uid's connections on the shard.
    Uid(Vec<ConnId>),
    /// Shard totals.
    Stats(ShardStats),
    /// The cluster task's answer for a batch's appends to groups with history (kept in Redis):
    /// per publish index, its positions; or why nothing was appended (then those publishes
    /// reached nobody through their groups with history).
    Positions(Appended),
}

/// Appends to a history in Redis: per publish index, its positions; or why nothing more was
/// appended.
pub(crate) type Appended = Result<Vec<(usize, Vec<(GroupId, Position)>)>, String>;

struct State {
    answers: Vec<Answer>,
    /// Shards that have neither answered nor dropped their reply.
    remaining: usize,
    /// Shards that dropped their reply without answering.
    dropped: usize,
    waker: Option<Waker>,
}

struct Gather {
    state: Mutex<State>,
    done: Condvar,
}

/// A shard's handle to answer one request, exactly once.
pub(crate) struct Reply {
    gather: Option<Arc<Gather>>,
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reply")
    }
}

impl Reply {
    /// Answer (consumes the reply).
    pub(crate) fn send(mut self, answer: Answer) {
        if let Some(g) = self.gather.take() {
            g.finish_one(Some(answer));
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(g) = self.gather.take() {
            g.finish_one(None);
        }
    }
}

impl Gather {
    fn finish_one(&self, answer: Option<Answer>) {
        let waker = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match answer {
                Some(a) => s.answers.push(a),
                None => s.dropped += 1,
            }
            s.remaining -= 1;
            if s.remaining > 0 {
                return;
            }
            s.waker.take()
        };
        self.done.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

type Finish<T> = Box<dyn FnOnce(Vec<Answer>) -> Result<T, RequestError> + Send>;

/// The answer to a request sent to one or more shards: a future, or [`Pending::wait`].
#[must_use = "a request's answer is only known by awaiting or waiting for it"]
pub struct Pending<T> {
    gather: Option<Arc<Gather>>,
    /// Shards the request could not be queued to (their inbox was full).
    busy: usize,
    finish: Option<Finish<T>>,
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("busy", &self.busy).finish_non_exhaustive()
    }
}

/// Builds one request: `reply()` once per shard it is sent to, then `pending(finish)`.
pub(crate) struct Request {
    gather: Arc<Gather>,
    busy: usize,
}

impl Request {
    pub(crate) fn new() -> Self {
        Request {
            gather: Arc::new(Gather {
                state: Mutex::new(State {
                    answers: Vec::new(),
                    remaining: 0,
                    dropped: 0,
                    waker: None,
                }),
                done: Condvar::new(),
            }),
            busy: 0,
        }
    }

    /// A reply for one more shard.
    pub(crate) fn reply(&mut self) -> Reply {
        self.gather.state.lock().unwrap_or_else(|e| e.into_inner()).remaining += 1;
        Reply { gather: Some(self.gather.clone()) }
    }

    /// A shard could not take the request (its `Reply` was dropped unsent by the caller):
    /// undo that reply's count and remember the shard as busy.
    pub(crate) fn mark_busy(&mut self, reply: Reply) {
        let mut reply = reply;
        if let Some(g) = reply.gather.take() {
            g.state.lock().unwrap_or_else(|e| e.into_inner()).remaining -= 1;
        }
        self.busy += 1;
    }

    /// Shards marked busy so far.
    pub(crate) fn busy(&self) -> usize {
        self.busy
    }

    /// Finish building. `finish` turns the answers (and the number of busy shards) into the
    /// result once every shard has answered.
    pub(crate) fn pending<T>(
        self,
        finish: impl FnOnce(Vec<Answer>, usize) -> Result<T, RequestError> + Send + 'static,
    ) -> Pending<T> {
        let busy = self.busy;
        Pending {
            gather: Some(self.gather),
            busy,
            finish: Some(Box::new(move |answers| finish(answers, busy))),
        }
    }
}

impl<T> Pending<T> {
    /// An already known result.
    pub(crate) fn ready(result: Result<T, RequestError>) -> Self
    where
        T: Send + 'static,
    {
        Request::new().pending(move |_, _| result)
    }

    /// Transform the eventual result.
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U + Send + 'static) -> Pending<U>
    where
        T: 'static,
    {
        let Pending { gather, busy, finish } = self;
        Pending {
            gather,
            busy,
            finish: finish.map(|fin| -> Finish<U> { Box::new(move |answers| fin(answers).map(f)) }),
        }
    }

    fn take_result(&mut self, answers: Vec<Answer>, dropped: usize) -> Result<T, RequestError> {
        self.gather = None;
        let finish = self.finish.take().expect("Pending polled after completion");
        if dropped > 0 {
            return Err(RequestError::Stopped);
        }
        finish(answers)
    }

    /// Block the calling thread until every shard answered, or `timeout`. Never call this on a
    /// shard thread or inside an async runtime (it blocks).
    pub fn wait(mut self, timeout: Duration) -> Result<T, RequestError> {
        let gather = self.gather.clone().expect("Pending waited after completion");
        let deadline = Instant::now() + timeout;
        let mut s = gather.state.lock().unwrap_or_else(|e| e.into_inner());
        while s.remaining > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RequestError::Timeout);
            }
            s = gather.done.wait_timeout(s, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        let answers = std::mem::take(&mut s.answers);
        let dropped = s.dropped;
        drop(s);
        self.take_result(answers, dropped)
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, RequestError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Pending holds no self-references: it is Unpin.
        let this = self.get_mut();
        let gather = this.gather.clone().expect("Pending polled after completion");
        let mut s = gather.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.remaining > 0 {
            s.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let answers = std::mem::take(&mut s.answers);
        let dropped = s.dropped;
        drop(s);
        Poll::Ready(this.take_result(answers, dropped))
    }
}

impl<T> Unpin for Pending<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_every_answer_across_threads() {
        let mut req = Request::new();
        let replies: Vec<Reply> = (0..4).map(|_| req.reply()).collect();
        let pending = req.pending(|answers, busy| {
            assert_eq!(busy, 0);
            Ok(answers.len())
        });
        for r in replies {
            std::thread::spawn(move || r.send(Answer::Dissolved(1)));
        }
        assert_eq!(pending.wait(Duration::from_secs(5)), Ok(4));
    }

    #[test]
    fn a_dropped_reply_resolves_to_stopped() {
        let mut req = Request::new();
        let a = req.reply();
        let b = req.reply();
        let pending = req.pending(|_, _| Ok(()));
        a.send(Answer::Dissolved(0));
        drop(b);
        assert_eq!(pending.wait(Duration::from_secs(1)), Err(RequestError::Stopped));
    }

    #[test]
    fn busy_shards_are_reported_and_not_waited_for() {
        let mut req = Request::new();
        let a = req.reply();
        let b = req.reply();
        req.mark_busy(b);
        let pending = req.pending(|answers, busy| Ok((answers.len(), busy)));
        a.send(Answer::Dissolved(0));
        assert_eq!(pending.wait(Duration::from_secs(1)), Ok((1, 1)));
    }

    #[test]
    fn times_out_when_a_shard_is_silent() {
        let mut req = Request::new();
        let _kept = req.reply();
        let pending = req.pending(|_, _| Ok(()));
        assert_eq!(pending.wait(Duration::from_millis(20)), Err(RequestError::Timeout));
    }

    #[test]
    fn no_shard_at_all_is_immediately_ready() {
        let pending = Request::new().pending(|answers, _| Ok(answers.len()));
        assert_eq!(pending.wait(Duration::from_millis(1)), Ok(0));
    }
}
