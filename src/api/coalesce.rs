//! Group commit for single publishes: every `POST /api/publish` (and seed form) that arrives in
//! the same scheduler tick goes to the node as ONE [`Handle::publish_batch`], so the shards get
//! one mesh event and one wake-up for all of them, and each subscriber one `writev` for all
//! their frames, instead of one of each per request. Each request still gets its own report.
//!
//! Group commit: while a batch is at the shards, the next one gathers every request that
//! arrives meanwhile, so under load batches grow by themselves; under no load nothing is in
//! flight and a publish leaves at once (one extra task hop). A batch the shards have not
//! answered within 1 ms (a stalled shard) stops holding the next one back, so one slow shard
//! cannot slow the others down by more than that.
//!
//! The cost of sharing a batch: a publish's answer waits for every shard its batch went to (a
//! shard stuck in a long callback delays the answers of the publishes that travelled with one
//! for it, not their delivery elsewhere), and `shards_missed` counts the shards of the batch
//! whose inbox was full, which may include a shard that held no recipient of this publish.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::addressing::{Publish, PublishReport, RequestError};
use crate::Handle;

/// Publishes sent to the node in one batch at most (the rest go in the next).
const FLUSH_PUBLISHES_MAX: usize = 4096;
/// Longest the next batch waits for the previous one's answer.
const HOLD_MAX: Duration = Duration::from_millis(1);

type Reply = oneshot::Sender<Result<PublishReport, RequestError>>;

/// The queue shared by the request handlers and the flusher task.
#[derive(Default)]
pub(crate) struct Coalescer {
    queue: Mutex<Vec<(Publish, Reply)>>,
    ready: Notify,
    /// Batches sent and not answered yet.
    in_flight: AtomicUsize,
    /// Signalled when a batch is answered.
    answered: Notify,
}

impl Coalescer {
    /// Queue `p` for the next batch; the answer arrives on the returned receiver (an error
    /// when the API stops before sending it).
    pub(crate) fn submit(
        &self,
        p: Publish,
    ) -> oneshot::Receiver<Result<PublishReport, RequestError>> {
        let (tx, rx) = oneshot::channel();
        let was_empty = {
            let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.push((p, tx));
            q.len() == 1
        };
        if was_empty {
            self.ready.notify_one();
        }
        rx
    }

    /// The flusher: runs on the API's runtime for its whole life.
    pub(crate) async fn run(self: Arc<Self>, handle: Handle, shard_timeout: Duration) {
        let mut batch = Vec::new();
        loop {
            self.ready.notified().await;
            // Let every request that is ready in this tick (and the I/O the driver finds
            // ready) join the batch first.
            tokio::task::yield_now().await;
            if self.in_flight.load(Relaxed) > 0 {
                let previous = async {
                    while self.in_flight.load(Relaxed) > 0 {
                        self.answered.notified().await;
                    }
                };
                let _ = tokio::time::timeout(HOLD_MAX, previous).await;
            }
            loop {
                {
                    let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                    let n = q.len().min(FLUSH_PUBLISHES_MAX);
                    batch.extend(q.drain(..n));
                }
                if batch.is_empty() {
                    break;
                }
                let (publishes, replies): (Vec<Publish>, Vec<Reply>) = batch.drain(..).unzip();
                let pending = handle.publish_batch(publishes);
                self.in_flight.fetch_add(1, Relaxed);
                let this = self.clone();
                // Answer from another task: the flusher goes on gathering the next batch.
                tokio::spawn(async move {
                    let result = match tokio::time::timeout(shard_timeout, pending).await {
                        Ok(r) => r,
                        Err(_) => Err(RequestError::Timeout),
                    };
                    match result {
                        Ok(reports) => {
                            for (reply, report) in replies.into_iter().zip(reports) {
                                let _ = reply.send(Ok(report));
                            }
                        }
                        Err(e) => {
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                    this.in_flight.fetch_sub(1, Relaxed);
                    this.answered.notify_one();
                });
            }
        }
    }
}
