//! Which bus channels a node subscribes to: the subscription state machine. Sans-I/O: no
//! Redis, no tokio, no clock (time is passed in).
//!
//! Inputs are `handle_*` (a channel is wanted or not, Redis reconnected), outputs `poll_*`
//! (channels to subscribe, channels to unsubscribe, when to call again). The driver feeds it
//! from the node's directory (a group is wanted while any shard has a member) and turns the
//! polls into `SUBSCRIBE`/`UNSUBSCRIBE` (or the sharded forms) batches.
//!
//! No churn: a channel no longer wanted lingers for `linger` before it is unsubscribed; wanted
//! again in that time, it is kept and nothing goes to Redis. A channel wanted and unwanted
//! between two polls is never sent at all.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::ids::{GroupId, NodeId, Uid};

/// A bus channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Broadcasts: every node subscribes.
    All,
    /// Messages for one node: client-id sends, queries and their answers.
    Node(NodeId),
    /// One group's publishes.
    Group(GroupId),
    /// One uid's publishes.
    Uid(Uid),
}

impl Channel {
    /// The Redis channel name under `namespace`. The `{…}` hash tag of a group or uid channel
    /// is the name itself, so in a Redis Cluster channels spread over the Redis shards.
    pub fn name(&self, namespace: &str) -> String {
        match self {
            Channel::All => format!("{namespace}:all"),
            Channel::Node(n) => format!("{namespace}:node:{n}"),
            Channel::Group(g) => format!("{namespace}:g:{g}"),
            Channel::Uid(u) => format!("{namespace}:u:{u}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Wanted, not yet sent to Redis.
    Pending,
    /// Subscribed (sent).
    Active,
    /// Subscribed, no longer wanted; unsubscribe at this instant unless wanted again.
    Lingering(Instant),
}

/// The subscription state of one node.
#[derive(Debug)]
pub struct Subscriptions<C = Channel> {
    linger: Duration,
    state: HashMap<C, State>,
}

impl<C: Clone + Eq + Hash> Subscriptions<C> {
    /// Nothing subscribed; unsubscribes wait `linger`.
    pub fn new(linger: Duration) -> Self {
        Subscriptions { linger, state: HashMap::new() }
    }

    /// `ch` is wanted (a first local member, or a channel the node always needs).
    pub fn handle_wanted(&mut self, ch: C) {
        match self.state.get(&ch) {
            None => {
                self.state.insert(ch, State::Pending);
            }
            Some(State::Lingering(_)) => {
                self.state.insert(ch, State::Active);
            }
            Some(State::Pending | State::Active) => {}
        }
    }

    /// `ch` is no longer wanted (the last local member left).
    pub fn handle_unwanted(&mut self, ch: &C, now: Instant) {
        match self.state.get(ch) {
            Some(State::Pending) => {
                self.state.remove(ch);
            }
            Some(State::Active) => {
                self.state.insert(ch.clone(), State::Lingering(now + self.linger));
            }
            Some(State::Lingering(_)) | None => {}
        }
    }

    /// Redis lost every subscription (reconnected): subscribe again to everything wanted;
    /// lingering channels are simply forgotten.
    pub fn handle_reconnected(&mut self) {
        self.state.retain(|_, s| !matches!(s, State::Lingering(_)));
        for s in self.state.values_mut() {
            *s = State::Pending;
        }
    }

    /// Channels to subscribe now (each at most once until unsubscribed or reconnected).
    pub fn poll_subscribe(&mut self) -> Vec<C> {
        let mut out = Vec::new();
        for (ch, s) in self.state.iter_mut() {
            if *s == State::Pending {
                *s = State::Active;
                out.push(ch.clone());
            }
        }
        out
    }

    /// Channels whose linger ended by `now`: unsubscribe them.
    pub fn poll_unsubscribe(&mut self, now: Instant) -> Vec<C> {
        let mut out = Vec::new();
        self.state.retain(|ch, s| match s {
            State::Lingering(at) if *at <= now => {
                out.push(ch.clone());
                false
            }
            _ => true,
        });
        out
    }

    /// When [`Subscriptions::poll_unsubscribe`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.state
            .values()
            .filter_map(|s| if let State::Lingering(at) = s { Some(*at) } else { None })
            .min()
    }

    /// Whether messages on `ch` are arriving (subscribed, lingering included).
    pub fn is_receiving(&self, ch: &C) -> bool {
        matches!(self.state.get(ch), Some(State::Active | State::Lingering(_)))
    }

    /// Whether `ch` is wanted (pending or active, not lingering).
    pub fn is_wanted(&self, ch: &C) -> bool {
        matches!(self.state.get(ch), Some(State::Pending | State::Active))
    }

    /// Channels subscribed or about to be (for stats).
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// Whether nothing is subscribed.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// Channels wanted but not yet sent.
    pub fn pending(&self) -> usize {
        self.state.values().filter(|s| **s == State::Pending).count()
    }

    /// Every channel on which messages arrive now (subscribed, lingering included).
    pub fn receiving(&self) -> Vec<C> {
        self.state
            .iter()
            .filter(|(_, s)| matches!(s, State::Active | State::Lingering(_)))
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Every channel currently wanted (for a resynchronisation from the directory).
    pub fn wanted(&self) -> Vec<C> {
        self.state
            .iter()
            .filter(|(_, s)| matches!(s, State::Pending | State::Active))
            .map(|(c, _)| c.clone())
            .collect()
    }
}

/// What the other nodes receive: which nodes are subscribed to each group and uid channel,
/// from their announcements (a node announces its subscribes and unsubscribes on the `all`
/// channel, and its whole set when it starts or reconnects). Lets a publish say which nodes it
/// was forwarded to without asking anyone. Sans-I/O.
#[derive(Debug, Default)]
pub struct RemoteInterest {
    by_channel: HashMap<Channel, BTreeSet<NodeId>>,
    by_node: HashMap<NodeId, HashSet<Channel>>,
}

impl RemoteInterest {
    /// `node` subscribed to `ch`.
    pub fn add(&mut self, node: NodeId, ch: Channel) {
        self.by_channel.entry(ch.clone()).or_default().insert(node);
        self.by_node.entry(node).or_default().insert(ch);
    }

    /// `node` unsubscribed from `ch`.
    pub fn remove(&mut self, node: NodeId, ch: &Channel) {
        if let Some(nodes) = self.by_channel.get_mut(ch) {
            nodes.remove(&node);
            if nodes.is_empty() {
                self.by_channel.remove(ch);
            }
        }
        if let Some(chans) = self.by_node.get_mut(&node) {
            chans.remove(ch);
            if chans.is_empty() {
                self.by_node.remove(&node);
            }
        }
    }

    /// Forget everything `node` announced (it left presence, or sends its whole set anew).
    pub fn forget(&mut self, node: NodeId) {
        for ch in self.by_node.remove(&node).unwrap_or_default() {
            if let Some(nodes) = self.by_channel.get_mut(&ch) {
                nodes.remove(&node);
                if nodes.is_empty() {
                    self.by_channel.remove(&ch);
                }
            }
        }
    }

    /// Keep only the nodes in `alive`.
    pub fn retain(&mut self, alive: &BTreeSet<NodeId>) {
        let gone: Vec<NodeId> =
            self.by_node.keys().filter(|n| !alive.contains(n)).copied().collect();
        for n in gone {
            self.forget(n);
        }
    }

    /// Nodes subscribed to any of `channels`.
    pub fn nodes<'a>(&self, channels: impl IntoIterator<Item = &'a Channel>) -> BTreeSet<NodeId> {
        let mut out = BTreeSet::new();
        for ch in channels {
            if let Some(n) = self.by_channel.get(ch) {
                out.extend(n.iter().copied());
            }
        }
        out
    }

    /// Channels known for `node`.
    pub fn channels_of(&self, node: NodeId) -> usize {
        self.by_node.get(&node).map_or(0, HashSet::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_interest_tracks_announcements_and_presence() {
        let (a, b) = (NodeId(1), NodeId(2));
        let mut r = RemoteInterest::default();
        r.add(a, g("room"));
        r.add(b, g("room"));
        r.add(b, g("other"));
        assert_eq!(r.nodes([&g("room")]), BTreeSet::from([a, b]));
        assert_eq!(r.nodes([&g("other"), &g("none")]), BTreeSet::from([b]));
        r.remove(a, &g("room"));
        assert_eq!(r.nodes([&g("room")]), BTreeSet::from([b]));
        r.remove(a, &g("room"));
        assert_eq!(r.channels_of(a), 0);
        r.retain(&BTreeSet::from([a]));
        assert!(r.nodes([&g("room"), &g("other")]).is_empty(), "b left presence");
        assert_eq!(r.channels_of(b), 0);
        r.add(a, g("x"));
        r.forget(a);
        assert!(r.nodes([&g("x")]).is_empty());
        assert!(r.by_channel.is_empty() && r.by_node.is_empty(), "nothing left behind");
    }

    fn g(s: &str) -> Channel {
        Channel::Group(GroupId::new(s, 64).unwrap())
    }

    #[test]
    fn first_member_subscribes_last_member_lingers_then_unsubscribes() {
        let t0 = Instant::now();
        let mut s = Subscriptions::new(Duration::from_secs(5));
        s.handle_wanted(g("a"));
        assert_eq!(s.poll_subscribe(), vec![g("a")]);
        assert!(s.poll_subscribe().is_empty(), "sent once");
        s.handle_unwanted(&g("a"), t0);
        assert!(s.is_receiving(&g("a")));
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        assert!(s.poll_unsubscribe(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(s.poll_unsubscribe(t0 + Duration::from_secs(5)), vec![g("a")]);
        assert!(s.is_empty());
    }

    #[test]
    fn members_coming_and_going_cause_no_churn() {
        let t0 = Instant::now();
        let mut s = Subscriptions::new(Duration::from_secs(5));
        // Wanted and unwanted before the driver polls: nothing is ever sent.
        s.handle_wanted(g("a"));
        s.handle_unwanted(&g("a"), t0);
        assert!(s.poll_subscribe().is_empty());
        assert!(s.poll_unsubscribe(t0 + Duration::from_secs(60)).is_empty());
        // Subscribed, left, back within the linger: still one subscribe, no unsubscribe.
        s.handle_wanted(g("b"));
        assert_eq!(s.poll_subscribe().len(), 1);
        for i in 0..100 {
            s.handle_unwanted(&g("b"), t0 + Duration::from_millis(i));
            s.handle_wanted(g("b"));
        }
        assert!(s.poll_subscribe().is_empty());
        assert!(s.poll_unsubscribe(t0 + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn reconnect_resubscribes_what_is_wanted() {
        let t0 = Instant::now();
        let mut s = Subscriptions::new(Duration::from_secs(5));
        s.handle_wanted(Channel::All);
        s.handle_wanted(g("a"));
        s.handle_wanted(g("b"));
        s.poll_subscribe();
        s.handle_unwanted(&g("b"), t0);
        s.handle_reconnected();
        let mut again = s.poll_subscribe();
        again.sort();
        assert_eq!(again, vec![Channel::All, g("a")]);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn channel_names() {
        assert_eq!(Channel::All.name("rc"), "rc:all");
        assert_eq!(Channel::Node(NodeId(0xab)).name("rc"), "rc:node:000000ab");
        assert_eq!(g("room").name("rc"), "rc:g:room");
        assert_eq!(Channel::Uid(Uid::new("7", 8).unwrap()).name("rc"), "rc:u:7");
    }
}

#[cfg(test)]
mod props {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Step {
        Want(u8),
        Unwant(u8),
        Poll,
        Advance(u16),
        Reconnect,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u8..6).prop_map(Step::Want),
            4 => (0u8..6).prop_map(Step::Unwant),
            3 => Just(Step::Poll),
            2 => (0u16..3000).prop_map(Step::Advance),
            1 => Just(Step::Reconnect),
        ]
    }

    proptest! {
        /// Against a model of what Redis has: after every poll, every wanted channel is
        /// subscribed at Redis; nothing is subscribed twice; a channel unwanted for longer
        /// than the linger is not subscribed any more.
        #[test]
        fn redis_follows_interest(steps in proptest::collection::vec(step(), 1..200)) {
            let linger = Duration::from_millis(1000);
            let t0 = Instant::now();
            let mut now = t0;
            let mut s: Subscriptions<u8> = Subscriptions::new(linger);
            let mut redis: HashSet<u8> = HashSet::new();
            let mut wanted: HashSet<u8> = HashSet::new();
            let mut unwanted_since: HashMap<u8, Instant> = HashMap::new();
            for st in steps {
                match st {
                    Step::Want(c) => {
                        s.handle_wanted(c);
                        wanted.insert(c);
                        unwanted_since.remove(&c);
                    }
                    Step::Unwant(c) => {
                        s.handle_unwanted(&c, now);
                        if wanted.remove(&c) {
                            unwanted_since.insert(c, now);
                        }
                    }
                    Step::Advance(ms) => now += Duration::from_millis(ms.into()),
                    Step::Reconnect => {
                        s.handle_reconnected();
                        redis.clear();
                    }
                    Step::Poll => {
                        for c in s.poll_subscribe() {
                            prop_assert!(redis.insert(c), "subscribed twice: {c}");
                        }
                        for c in s.poll_unsubscribe(now) {
                            prop_assert!(!wanted.contains(&c), "unsubscribed a wanted {c}");
                            redis.remove(&c);
                        }
                        for c in &wanted {
                            prop_assert!(redis.contains(c), "wanted {c} not subscribed");
                            prop_assert!(s.is_receiving(c));
                        }
                        for (c, since) in &unwanted_since {
                            if now >= *since + linger {
                                prop_assert!(!redis.contains(c), "{c} kept past its linger");
                            }
                        }
                    }
                }
            }
        }
    }
}
