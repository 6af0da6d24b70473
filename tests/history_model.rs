//! The recovery seam against a model, without sockets: the real history store
//! (`MemoryHistory`, its `append` / `read` contract) and the real per-shard `Seams`, driven
//! by random interleavings of publishes (from the API or from a shard), partial inbox drains,
//! disconnects and recovering reconnects on other shards. Shards are simulated as FIFO
//! inboxes plus a member set, exactly what the node gives them. Property: every client
//! receives the group's offsets 1, 2, 3, ... with no gap and no duplicate, across any number
//! of reconnects.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use ringcast::history::{
    AppendItem, HistoryBackend, HistoryConfig, HistoryRule, MemoryHistory, Position, ReadFrom,
    Seams,
};
use ringcast::{GroupId, Message};

const SHARDS: usize = 3;
const CLIENTS: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    /// Publish from the API thread (`None`) or from a shard (applied there at once).
    Publish(Option<usize>),
    /// A shard takes up to n events from its inbox.
    Drain(usize, usize),
    Disconnect(usize),
    /// Reconnect a client on a shard, recovering from the last offset it received.
    Reconnect(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => proptest::option::of(0..SHARDS).prop_map(Op::Publish),
        3 => (0..SHARDS, 1usize..4).prop_map(|(s, n)| Op::Drain(s, n)),
        1 => (0..CLIENTS).prop_map(Op::Disconnect),
        1 => (0..CLIENTS, 0..SHARDS).prop_map(|(c, s)| Op::Reconnect(c, s)),
    ]
}

struct Shard {
    inbox: VecDeque<Vec<(GroupId, Position)>>,
    members: BTreeSet<usize>,
    seams: Seams<usize>,
}

struct Sim {
    h: MemoryHistory,
    g: GroupId,
    shards: Vec<Shard>,
    /// client -> shard while connected.
    at: HashMap<usize, usize>,
    received: Vec<Vec<u64>>,
    now: Instant,
}

impl Sim {
    fn deliver(&mut self, shard: usize, positions: &[(GroupId, Position)]) {
        let mut skip = Vec::new();
        let sh = &mut self.shards[shard];
        let members = &sh.members;
        sh.seams.covered(positions, |c| members.contains(&c), |c| skip.push(c));
        let offset = positions[0].1.offset;
        for &c in &self.shards[shard].members {
            if !skip.contains(&c) {
                self.received[c].push(offset);
            }
        }
    }

    fn publish(&mut self, from: Option<usize>) {
        let msg = Message::text("m");
        let limits = self.h.limits_for(&self.g).unwrap();
        let item = AppendItem { groups: vec![(self.g.clone(), limits)], message: &msg };
        let mut positions = Vec::new();
        let shards = &mut self.shards;
        self.h.append(std::slice::from_ref(&item), self.now, &mut |appended| {
            positions = appended[0].positions.clone();
            // Under the group's order: to every shard that has members, the publishing one
            // included (its copy goes through its own inbox, behind older messages).
            for sh in shards.iter_mut() {
                if !sh.members.is_empty() {
                    sh.inbox.push_back(positions.clone());
                }
            }
        });
        // A shard that publishes then goes on with its loop turn.
        if let Some(s) = from {
            self.drain(s, 1);
        }
    }

    fn drain(&mut self, shard: usize, n: usize) {
        for _ in 0..n {
            let Some(p) = self.shards[shard].inbox.pop_front() else { return };
            self.deliver(shard, &p);
        }
    }

    fn join(&mut self, c: usize, shard: usize, since: Position) {
        let shards = &mut self.shards;
        let read = self.h.read(&self.g, ReadFrom::Since(since), usize::MAX, self.now, &mut |_| {
            shards[shard].members.insert(c);
        });
        let (msgs, _) = read.outcome.expect("the history keeps everything in this test");
        self.received[c].extend(msgs.iter().map(|m| m.offset));
        let top = read.position.unwrap().offset;
        self.shards[shard].seams.add(c, self.g.clone(), top);
        self.at.insert(c, shard);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn recovery_has_no_gap_and_no_duplicate(
        start in proptest::collection::vec(0..SHARDS, CLIENTS),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let config = HistoryConfig {
            rules: vec![HistoryRule {
                pattern: "g".into(),
                messages_max: 100_000,
                age_max: Duration::from_secs(3600),
            }],
            ..Default::default()
        };
        let g = GroupId::new("g", 8).unwrap();
        let mut sim = Sim {
            h: MemoryHistory::new(&config).unwrap(),
            g: g.clone(),
            shards: (0..SHARDS)
                .map(|_| Shard { inbox: VecDeque::new(), members: BTreeSet::new(), seams: Seams::default() })
                .collect(),
            at: HashMap::new(),
            received: vec![Vec::new(); CLIENTS],
            now: Instant::now(),
        };
        let first = sim.h.read(&g, ReadFrom::Last(0), 0, sim.now, &mut |_| {}).position.unwrap();
        for (c, &s) in start.iter().enumerate() {
            sim.join(c, s, first);
        }
        for op in ops {
            match op {
                Op::Publish(from) => sim.publish(from),
                Op::Drain(s, n) => sim.drain(s, n),
                Op::Disconnect(c) => {
                    if let Some(s) = sim.at.remove(&c) {
                        sim.shards[s].members.remove(&c);
                        sim.shards[s].seams.forget(c, None);
                    }
                }
                Op::Reconnect(c, s) => {
                    if !sim.at.contains_key(&c) {
                        let last = sim.received[c].last().copied().unwrap_or(0);
                        sim.join(c, s, Position { offset: last, ..first });
                    }
                }
            }
        }
        for s in 0..SHARDS {
            sim.drain(s, usize::MAX);
        }
        let top = sim.h.read(&g, ReadFrom::Last(0), 0, sim.now, &mut |_| {}).position.unwrap().offset;
        for c in 0..CLIENTS {
            let got = &sim.received[c];
            let want: Vec<u64> = (1..=got.len() as u64).collect();
            prop_assert_eq!(got, &want, "client {} received a gap or a duplicate", c);
            if sim.at.contains_key(&c) {
                prop_assert_eq!(got.len() as u64, top, "a connected client has everything");
            }
        }
    }
}
