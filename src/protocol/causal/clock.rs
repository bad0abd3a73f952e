//! Vector clocks over replica incarnations.
//!
//! # Semantics
//!
//! Every write is named by a [`Dot`]: the [`Incarnation`] that made it (one life of one
//! replica process: its socket address plus an epoch chosen at start-up) and a sequence
//! number that counts that incarnation's writes from 1 without gaps. A [`Clock`] maps
//! incarnations to sequence numbers, and `clock[i] = n` means *every write of incarnation
//! `i` numbered `1..=n` is included*: applied (at a replica) or depended upon (in a client's
//! metadata). A missing entry means 0.
//!
//! A clock also carries a *floor* per address: `floor[a] = f` says every incarnation of `a`
//! whose epoch is below `f` is *retired*: all of its writes are applied on every member of
//! the cluster (or were lost with it), so the clock no longer needs its entry. Floors are
//! how a clock stays O(replicas) although every restart creates a new incarnation.
//!
//! # Laws (tested below)
//!
//! * `merge` is the pointwise maximum: commutative, associative, idempotent, and the result
//!   covers both inputs.
//! * `meet` is the pointwise minimum: it covers a write exactly when both inputs do (the
//!   writes every replica has applied, from their clocks: a *stable cut*).
//! * `covers(dot)` is monotone under `merge` and `advance`.
//! * `compare` is a partial order consistent with `covers_clock`.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A replica's socket address, `IP:PORT`, shared cheaply. Always canonical (written as
/// `SocketAddr` displays it), so that one replica has one name.
pub type Addr = Arc<str>;

/// Parses `IP:PORT`, surrounding spaces ignored. No host names: a replica is named by its
/// socket address.
pub fn parse_addr(text: &str) -> Option<SocketAddr> {
    text.trim().parse().ok()
}

/// The canonical name of the replica at `socket`.
pub fn addr_of(socket: SocketAddr) -> Addr {
    Addr::from(socket.to_string())
}

/// True when `text` names a replica exactly as its canonical name is written.
pub fn is_canonical_addr(text: &str) -> bool {
    text.parse::<SocketAddr>()
        .is_ok_and(|socket| socket.to_string() == text)
}

/// One life of one replica process. Ordered by address, then epoch; a restarted replica
/// always picks an epoch above every earlier one of its address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Incarnation {
    pub addr: Addr,
    pub epoch: u64,
}

impl Incarnation {
    pub fn new(addr: impl Into<Addr>, epoch: u64) -> Self {
        Incarnation {
            addr: addr.into(),
            epoch,
        }
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.addr, self.epoch)
    }
}

/// The unique, permanent name of one write.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub inc: Incarnation,
    pub seq: u64,
}

/// How two clocks relate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    Equal,
    /// The left clock is strictly covered by the right one.
    Before,
    /// The left clock strictly covers the right one.
    After,
    Concurrent,
}

/// A vector clock with per-address retirement floors. See the module documentation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    #[serde(default, with = "entry_list")]
    entries: BTreeMap<Incarnation, u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    floors: BTreeMap<Addr, u64>,
}

impl Clock {
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock from explicit entries (zero entries are dropped).
    pub fn from_entries(entries: impl IntoIterator<Item = (Incarnation, u64)>) -> Self {
        let mut clock = Clock::new();
        for (inc, seq) in entries {
            clock.advance_to(&inc, seq);
        }
        clock
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.floors.is_empty()
    }

    /// Number of incarnation entries (what the metadata size grows with).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Incarnation, u64)> {
        self.entries.iter().map(|(inc, seq)| (inc, *seq))
    }

    pub fn floors(&self) -> impl Iterator<Item = (&Addr, u64)> {
        self.floors.iter().map(|(addr, floor)| (addr, *floor))
    }

    /// The sequence number recorded for `inc` (0 when absent).
    pub fn get(&self, inc: &Incarnation) -> u64 {
        self.entries.get(inc).copied().unwrap_or(0)
    }

    /// The retirement floor of `addr` (0 when none).
    pub fn floor(&self, addr: &str) -> u64 {
        self.floors.get(addr).copied().unwrap_or(0)
    }

    /// True when `inc` is retired by this clock's floors.
    pub fn is_retired(&self, inc: &Incarnation) -> bool {
        inc.epoch < self.floor(&inc.addr)
    }

    /// True when the write `dot` is included in this clock.
    pub fn covers(&self, dot: &Dot) -> bool {
        self.covers_seq(&dot.inc, dot.seq)
    }

    fn covers_seq(&self, inc: &Incarnation, seq: u64) -> bool {
        seq == 0 || self.is_retired(inc) || self.get(inc) >= seq
    }

    /// True when every write included in `other`'s entries is included here.
    /// (Floors of `other` are not dependencies: retired writes are everywhere.)
    pub fn covers_clock(&self, other: &Clock) -> bool {
        other
            .entries
            .iter()
            .all(|(inc, seq)| self.covers_seq(inc, *seq))
    }

    pub fn compare(&self, other: &Clock) -> Causality {
        match (self.covers_clock(other), other.covers_clock(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (false, false) => Causality::Concurrent,
        }
    }

    /// Records that the write `dot` is included.
    pub fn advance(&mut self, dot: &Dot) {
        self.advance_to(&dot.inc, dot.seq);
    }

    fn advance_to(&mut self, inc: &Incarnation, seq: u64) {
        if seq == 0 || self.is_retired(inc) {
            return;
        }
        match self.entries.get_mut(inc) {
            Some(current) => *current = (*current).max(seq),
            None => {
                self.entries.insert(inc.clone(), seq);
            }
        }
    }

    /// Pointwise maximum of entries and floors; entries below a floor are dropped.
    pub fn merge(&mut self, other: &Clock) {
        for (addr, floor) in &other.floors {
            self.raise_floor(addr, *floor);
        }
        for (inc, seq) in &other.entries {
            self.advance_to(inc, *seq);
        }
    }

    /// Like [`Clock::merge`], but leaves `me` alone: its entry is advanced only by its own
    /// process's writes, and no floor from `other` retires it.
    pub fn merge_except(&mut self, other: &Clock, me: &Incarnation) {
        for (addr, floor) in &other.floors {
            let floor = if *addr == me.addr {
                (*floor).min(me.epoch)
            } else {
                *floor
            };
            self.raise_floor(addr, floor);
        }
        for (inc, seq) in &other.entries {
            if inc != me {
                self.advance_to(inc, *seq);
            }
        }
    }

    /// The highest epoch named in this clock, by an entry or implied by a floor.
    pub fn max_epoch(&self) -> u64 {
        let entries = self.entries.keys().map(|inc| inc.epoch).max();
        let floors = self.floors.values().map(|f| f.saturating_sub(1)).max();
        entries.max(floors).unwrap_or(0)
    }

    /// The highest sequence number in this clock.
    pub fn max_seq(&self) -> u64 {
        self.entries.values().copied().max().unwrap_or(0)
    }

    pub fn merged(mut self, other: &Clock) -> Clock {
        self.merge(other);
        self
    }

    /// Pointwise minimum of entries and floors: the writes included in both clocks.
    pub fn meet(&self, other: &Clock) -> Clock {
        let mut out = Clock::new();
        for (addr, floor) in &self.floors {
            let floor = (*floor).min(other.floor(addr));
            if floor > 0 {
                out.floors.insert(addr.clone(), floor);
            }
        }
        for inc in self.entries.keys().chain(other.entries.keys()) {
            let seq = self.reach(inc).min(other.reach(inc));
            if seq > 0 && !out.is_retired(inc) {
                out.entries.insert(inc.clone(), seq);
            }
        }
        out
    }

    /// The highest sequence number of `inc` included (all of them when retired).
    fn reach(&self, inc: &Incarnation) -> u64 {
        match self.is_retired(inc) {
            true => u64::MAX,
            false => self.get(inc),
        }
    }

    /// Retires every incarnation of `addr` with an epoch below `floor`.
    pub fn raise_floor(&mut self, addr: &Addr, floor: u64) {
        if floor <= self.floor(addr) {
            return;
        }
        self.floors.insert(addr.clone(), floor);
        self.entries
            .retain(|inc, _| !(inc.addr == *addr && inc.epoch < floor));
    }

    /// This clock's entries minus those retired by `floors` of another clock: what a
    /// client still needs to carry.
    pub fn without_retired(&self, floors: &Clock) -> Clock {
        let mut entries = self.entries.clone();
        entries.retain(|inc, _| !floors.is_retired(inc));
        Clock {
            entries,
            floors: BTreeMap::new(),
        }
    }

    /// The highest epoch this clock knows for `addr`, retired ones included.
    pub fn max_epoch_of(&self, addr: &str) -> Option<u64> {
        let from_entries = self
            .entries
            .keys()
            .filter(|inc| &*inc.addr == addr)
            .map(|inc| inc.epoch)
            .max();
        let from_floor = self.floor(addr).checked_sub(1);
        from_entries.max(from_floor)
    }
}

/// Clock entries travel as a list of `[incarnation, seq]` pairs (JSON keys must be strings).
mod entry_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::Incarnation;

    pub fn serialize<S: Serializer>(
        entries: &BTreeMap<Incarnation, u64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(entries.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<Incarnation, u64>, D::Error> {
        let pairs = Vec::<(Incarnation, u64)>::deserialize(deserializer)?;
        Ok(pairs.into_iter().filter(|(_, seq)| *seq > 0).collect())
    }
}

impl PartialOrd for Clock {
    fn partial_cmp(&self, other: &Clock) -> Option<Ordering> {
        match self.compare(other) {
            Causality::Equal => Some(Ordering::Equal),
            Causality::Before => Some(Ordering::Less),
            Causality::After => Some(Ordering::Greater),
            Causality::Concurrent => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn inc(addr: &str, epoch: u64) -> Incarnation {
        Incarnation::new(addr, epoch)
    }

    pub fn dot(addr: &str, epoch: u64, seq: u64) -> Dot {
        Dot {
            inc: inc(addr, epoch),
            seq,
        }
    }

    fn clock(entries: &[(&str, u64, u64)]) -> Clock {
        Clock::from_entries(entries.iter().map(|(a, e, s)| (inc(a, *e), *s)))
    }

    #[test]
    fn empty_clock_covers_nothing_but_seq_zero() {
        let c = Clock::new();
        assert!(!c.covers(&dot("a", 1, 1)));
        assert!(c.covers(&dot("a", 1, 0)));
    }

    #[test]
    fn an_entry_covers_every_earlier_write_of_its_incarnation() {
        let c = clock(&[("a", 1, 3)]);
        assert!(c.covers(&dot("a", 1, 1)));
        assert!(c.covers(&dot("a", 1, 3)));
        assert!(!c.covers(&dot("a", 1, 4)));
        assert!(
            !c.covers(&dot("a", 2, 1)),
            "another life of `a` is not covered"
        );
    }

    #[test]
    fn compare_orders_clocks() {
        let a = clock(&[("a", 1, 1)]);
        let ab = clock(&[("a", 1, 1), ("b", 1, 2)]);
        let b = clock(&[("b", 1, 1)]);
        assert_eq!(a.compare(&a), Causality::Equal);
        assert_eq!(a.compare(&ab), Causality::Before);
        assert_eq!(ab.compare(&a), Causality::After);
        assert_eq!(a.compare(&b), Causality::Concurrent);
        assert!(a < ab);
        assert_eq!(a.partial_cmp(&b), None);
    }

    #[test]
    fn merge_is_pointwise_max() {
        let mut m = clock(&[("a", 1, 5), ("b", 1, 1)]);
        m.merge(&clock(&[("a", 1, 2), ("c", 7, 9)]));
        assert_eq!(m, clock(&[("a", 1, 5), ("b", 1, 1), ("c", 7, 9)]));
    }

    #[test]
    fn floors_retire_old_incarnations() {
        let mut c = clock(&[("a", 1, 5), ("a", 4, 2), ("b", 1, 1)]);
        let addr: Addr = "a".into();
        c.raise_floor(&addr, 4);
        assert_eq!(c.len(), 2);
        assert!(c.covers(&dot("a", 1, 999)), "retired writes are covered");
        assert!(
            c.covers(&dot("a", 3, 1)),
            "unseen older lives are retired too"
        );
        assert!(!c.covers(&dot("a", 4, 3)));
        assert_eq!(c.max_epoch_of("a"), Some(4));
        c.advance(&dot("a", 2, 10));
        assert_eq!(c.len(), 2, "advancing a retired incarnation adds nothing");
    }

    #[test]
    fn without_retired_drops_entries_below_floors() {
        let mut floors = Clock::new();
        floors.raise_floor(&"a".into(), 2);
        let m = clock(&[("a", 1, 5), ("a", 2, 1), ("b", 1, 1)]);
        assert_eq!(
            m.without_retired(&floors),
            clock(&[("a", 2, 1), ("b", 1, 1)])
        );
    }

    #[test]
    fn max_epoch_of_considers_floors() {
        let mut c = Clock::new();
        assert_eq!(c.max_epoch_of("a"), None);
        c.raise_floor(&"a".into(), 10);
        assert_eq!(c.max_epoch_of("a"), Some(9));
    }

    pub fn arb_clock() -> impl Strategy<Value = Clock> {
        let entry = (prop::sample::select(vec!["a", "b", "c"]), 1u64..4, 0u64..6);
        let floor = (prop::sample::select(vec!["a", "b", "c"]), 0u64..3);
        (
            prop::collection::vec(entry, 0..6),
            prop::collection::vec(floor, 0..2),
        )
            .prop_map(|(entries, floors)| {
                let mut c = clock(
                    &entries
                        .iter()
                        .map(|(a, e, s)| (*a, *e, *s))
                        .collect::<Vec<_>>(),
                );
                for (a, f) in floors {
                    c.raise_floor(&Addr::from(a), f);
                }
                c
            })
    }

    #[test]
    fn a_clock_round_trips_through_json() {
        let mut c = clock(&[("10.0.0.1:1", 1, 5), ("10.0.0.2:1", 9, 2)]);
        c.raise_floor(&"10.0.0.3:1".into(), 4);
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Clock>(&text).unwrap(), c);
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_clock(), b in arb_clock()) {
            prop_assert_eq!(a.clone().merged(&b), b.merged(&a));
        }

        #[test]
        fn merge_is_associative(a in arb_clock(), b in arb_clock(), c in arb_clock()) {
            prop_assert_eq!(
                a.clone().merged(&b).merged(&c),
                a.merged(&b.merged(&c))
            );
        }

        #[test]
        fn merge_is_idempotent(a in arb_clock()) {
            prop_assert_eq!(a.clone().merged(&a), a);
        }

        #[test]
        fn merge_covers_both(a in arb_clock(), b in arb_clock()) {
            let m = a.clone().merged(&b);
            prop_assert!(m.covers_clock(&a));
            prop_assert!(m.covers_clock(&b));
        }

        #[test]
        fn meet_covers_exactly_what_both_cover(
            a in arb_clock(),
            b in arb_clock(),
            addr in prop::sample::select(vec!["a", "b", "c", "d"]),
            epoch in 0u64..5,
            seq in 0u64..8,
        ) {
            let m = a.meet(&b);
            let d = dot(addr, epoch, seq);
            prop_assert_eq!(m.covers(&d), a.covers(&d) && b.covers(&d));
            prop_assert!(a.covers_clock(&m) && b.covers_clock(&m));
            prop_assert_eq!(m.clone(), b.meet(&a));
        }

        #[test]
        fn compare_is_antisymmetric(a in arb_clock(), b in arb_clock()) {
            let expected = match a.compare(&b) {
                Causality::Before => Causality::After,
                Causality::After => Causality::Before,
                other => other,
            };
            prop_assert_eq!(b.compare(&a), expected);
        }
    }
}
