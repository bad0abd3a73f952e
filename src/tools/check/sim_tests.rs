//! The checker against a simulated replicated store, to test it on realistic histories.
//!
//! The simulation is a small causally consistent store: metadata is a vector clock over
//! origin replicas; a write depends on its request's metadata and on its origin's earlier
//! writes; replicas apply a write only after its dependencies (causal delivery) with
//! random replication lag, resolve concurrent
//! writes by (Lamport time, write id), answer 503 when a request's metadata names writes
//! they have not applied, and sometimes apply a write whose answer is lost (a timeout) or
//! refuse one (503). Its histories must be clean, whatever the seed. With a [`Flaw`] (a
//! replica serves whatever it has, ignoring metadata; or concurrent writes resolved so that
//! older ones win) the checker must find stale reads or missed writes (and, at the end,
//! values that causally later writes should have replaced: lost writes), and nothing else.

use std::collections::{BTreeMap, HashMap};

use serde_json::json;

use super::checker::{Violation, ViolationKind, check};
use super::history::{History, Op, OpKind, Status};
use super::settle::{FinalRead, FinalState};
use super::workload::SplitMix64;

const REPLICAS: usize = 3;
const SESSIONS: u32 = 5;
const KEYS: [&str; 3] = ["a", "b", "c"];

/// A bug built into the simulated store.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Flaw {
    None,
    /// Requests are served at once, whatever their metadata names.
    IgnoresMetadata,
    /// The write with the lower Lamport time wins, so causally later writes can lose.
    OlderWins,
}

/// A vector clock over origin replicas: writes of each origin seen.
type Clock = [u32; REPLICAS];

fn join(a: &Clock, b: &Clock) -> Clock {
    std::array::from_fn(|i| a[i].max(b[i]))
}

fn covers(a: &Clock, b: &Clock) -> bool {
    a.iter().zip(b).all(|(x, y)| x >= y)
}

/// A write: its key, value (`None`: delete), Lamport time, origin and clock (its
/// dependencies and itself).
struct Write {
    key: &'static str,
    value: Option<String>,
    lamport: u64,
    origin: usize,
    clock: Clock,
}

#[derive(Default)]
struct Replica {
    applied: Clock,
    store: HashMap<&'static str, usize>,
    lamport: u64,
    pending: Vec<usize>,
}

struct Sim {
    rng: SplitMix64,
    writes: Vec<Write>,
    replicas: Vec<Replica>,
    /// Each session's metadata.
    metadata: Vec<Clock>,
    next_index: Vec<u32>,
    ops: Vec<Op>,
    now: u64,
    flaw: Flaw,
}

impl Sim {
    fn new(seed: u64, flaw: Flaw) -> Self {
        Sim {
            rng: SplitMix64::new(seed),
            writes: Vec::new(),
            replicas: (0..REPLICAS).map(|_| Replica::default()).collect(),
            metadata: vec![Clock::default(); SESSIONS as usize],
            next_index: vec![0; SESSIONS as usize],
            ops: Vec::new(),
            now: 0,
            flaw,
        }
    }

    /// Whether `w` wins over the write currently stored for its key at `r`.
    fn wins(&self, w: usize, current: Option<usize>) -> bool {
        let newer = |c: usize| (self.writes[w].lamport, w) > (self.writes[c].lamport, c);
        current.is_none_or(|c| newer(c) != (self.flaw == Flaw::OlderWins))
    }

    fn apply(&mut self, r: usize, w: usize) {
        let key = self.writes[w].key;
        let current = self.replicas[r].store.get(key).copied();
        if self.wins(w, current) {
            self.replicas[r].store.insert(key, w);
        }
        let write = &self.writes[w];
        let replica = &mut self.replicas[r];
        replica.applied[write.origin] = write.clock[write.origin];
        replica.lamport = replica.lamport.max(write.lamport);
    }

    /// Whether `r` may apply `w`: the origin's previous write and every dependency are in.
    fn deliverable(&self, r: usize, w: usize) -> bool {
        let (write, applied) = (&self.writes[w], &self.replicas[r].applied);
        let o = write.origin;
        applied[o] + 1 == write.clock[o]
            && (0..REPLICAS).all(|x| x == o || applied[x] >= write.clock[x])
    }

    /// Delivers one pending write at random whose dependencies `r` has applied.
    fn deliver_one(&mut self, r: usize) -> bool {
        let pending = &self.replicas[r].pending;
        let ready: Vec<usize> = (0..pending.len())
            .filter(|&i| self.deliverable(r, pending[i]))
            .collect();
        if ready.is_empty() {
            return false;
        }
        let i = ready[self.rng.below(ready.len())];
        let w = self.replicas[r].pending.swap_remove(i);
        self.apply(r, w);
        true
    }

    fn create(
        &mut self,
        r: usize,
        key: &'static str,
        value: Option<String>,
        deps: &Clock,
    ) -> usize {
        let w = self.writes.len();
        let mut clock = *deps;
        clock[r] = self.replicas[r].applied[r] + 1;
        self.writes.push(Write {
            key,
            value,
            lamport: self.replicas[r].lamport + 1,
            origin: r,
            clock,
        });
        self.apply(r, w);
        for other in (0..REPLICAS).filter(|&o| o != r) {
            self.replicas[other].pending.push(w);
        }
        w
    }

    /// One client request of session `s`; records it.
    fn step(&mut self, s: usize) {
        let r = self.rng.below(REPLICAS);
        let key = KEYS[self.rng.below(KEYS.len())];
        let kind = [
            OpKind::Get,
            OpKind::Get,
            OpKind::Put,
            OpKind::Put,
            OpKind::Delete,
        ][self.rng.below(5)];
        let index = self.next_index[s];
        self.next_index[s] += 1;
        let value = (kind == OpKind::Put).then(|| format!("s{s}-{index}"));
        let meta = self.metadata[s];
        let ready = covers(&self.replicas[r].applied, &meta);
        let (status, read) = if self.flaw != Flaw::IgnoresMetadata && !ready {
            (Status::Http(503), None)
        } else {
            self.serve(s, r, kind, key, value.clone(), &meta)
        };
        self.ops.push(Op {
            session: s as u32,
            index,
            replica: format!("r{r}"),
            kind,
            key: key.into(),
            write_once: false,
            value: value.map(|v| json!(v)),
            start_us: self.now,
            end_us: self.now + 5,
            status,
            read: read.map(|v| json!(v)),
            error: (!matches!(status, Status::Http(200 | 201 | 404))).then(|| "failed".into()),
        });
        self.now += 10;
    }

    fn serve(
        &mut self,
        s: usize,
        r: usize,
        kind: OpKind,
        key: &'static str,
        value: Option<String>,
        meta: &Clock,
    ) -> (Status, Option<String>) {
        let current = self.replicas[r].store.get(key).copied();
        let live = current.filter(|&w| self.writes[w].value.is_some());
        match (kind, live) {
            (OpKind::Get, Some(w)) => {
                self.metadata[s] = join(meta, &self.writes[w].clock);
                (Status::Http(200), self.writes[w].value.clone())
            }
            (OpKind::Get, None) | (OpKind::Delete, None) => (Status::Http(404), None),
            _ => self.write(s, r, key, value, meta, live.is_some()),
        }
    }

    /// A PUT or DELETE: refused (503), applied with its answer lost, or acknowledged.
    fn write(
        &mut self,
        s: usize,
        r: usize,
        key: &'static str,
        value: Option<String>,
        meta: &Clock,
        existed: bool,
    ) -> (Status, Option<String>) {
        match self.rng.below(20) {
            0 => (Status::Http(503), None),
            1 => {
                self.create(r, key, value, meta);
                (Status::Timeout, None)
            }
            _ => {
                let created = !existed && value.is_some();
                let w = self.create(r, key, value, meta);
                self.metadata[s] = join(meta, &self.writes[w].clock);
                (Status::Http(if created { 201 } else { 200 }), None)
            }
        }
    }

    fn run(mut self, steps: usize) -> (History, FinalState) {
        for _ in 0..steps {
            for r in 0..REPLICAS {
                if self.rng.below(3) == 0 {
                    self.deliver_one(r);
                }
            }
            let s = self.rng.below(SESSIONS as usize);
            self.step(s);
        }
        for r in 0..REPLICAS {
            while self.deliver_one(r) {}
        }
        let end = self.final_state();
        (History::new(self.ops), end)
    }

    fn final_state(&self) -> FinalState {
        let reads = self
            .replicas
            .iter()
            .enumerate()
            .map(|(r, replica)| {
                let store: BTreeMap<String, FinalRead> = KEYS
                    .iter()
                    .map(|&k| {
                        let held = replica
                            .store
                            .get(k)
                            .and_then(|&w| self.writes[w].value.clone());
                        (
                            k.to_string(),
                            held.map_or(FinalRead::Absent, |v| FinalRead::Value(json!(v))),
                        )
                    })
                    .collect();
                (format!("r{r}"), store)
            })
            .collect();
        FinalState {
            reads,
            ..FinalState::default()
        }
    }
}

fn sim_check(seed: u64, flaw: Flaw) -> (Vec<Violation>, History) {
    let (history, end) = Sim::new(seed, flaw).run(3000);
    (check(&history, &end), history)
}

#[test]
fn a_causally_consistent_store_is_always_clean() {
    for seed in 0..12 {
        let (violations, history) = sim_check(seed, Flaw::None);
        let served = history.ops.iter().filter(|op| op.is_served()).count();
        assert!(served > 1000, "seed {seed}: only {served} ops served");
        assert!(
            violations.is_empty(),
            "seed {seed}: {} violations, the first: {:#?}",
            violations.len(),
            violations.first()
        );
    }
}

#[test]
fn flawed_stores_are_caught() {
    for flaw in [Flaw::IgnoresMetadata, Flaw::OlderWins] {
        for seed in 0..4 {
            let (violations, _) = sim_check(seed, flaw);
            assert!(
                !violations.is_empty(),
                "{flaw:?}, seed {seed}: nothing found"
            );
            let unexpected = violations.iter().find(|v| {
                !matches!(
                    v.kind,
                    ViolationKind::StaleRead
                        | ViolationKind::MissedWrite
                        | ViolationKind::LostWrite
                )
            });
            assert_eq!(unexpected, None, "{flaw:?}, seed {seed}");
        }
    }
}
