//! The checker: pure functions from a recorded [`History`] and the [`FinalState`] of the
//! replicas to the list of [`Violation`]s, each with the operations that show it.
//!
//! Properties checked (deletes are writes of "absent"; a write that failed without a
//! definite answer is *indeterminate*: it may or may not have taken effect):
//!
//! 1. [`ViolationKind::UnwrittenValue`]: every value read (during the run, or from a
//!    replica at the end) was written to that key by some write, acknowledged or
//!    indeterminate, that started before the read ended.
//! 2. [`ViolationKind::StaleRead`]: a read `r` of key `k` that returned the value of write
//!    `w` has no write `w'` to `k` in its causal past with `w` in the causal past of `w'`
//!    (`r` must not return a value that something it depends on overwrote).
//! 3. [`ViolationKind::MissedWrite`]: a read `r` of `k` that found nothing (GET 404, or a
//!    DELETE 404) has a possible cause: either no write to `k` is in its causal past, or
//!    some delete of `k` (acknowledged or indeterminate, started before `r` ended) is not
//!    in the causal past of any write to `k` in `r`'s causal past (so it may have won).
//! 4. [`ViolationKind::LostWrite`]: every acknowledged write to a write-once key holds on
//!    every replica at the end; and what a replica holds at the end for any other key was
//!    not overwritten by an acknowledged write: the final read has every acknowledged
//!    write in its causal past (all of them reached every replica, durably), so a value
//!    there must pass check 2, and an absence check 3 (with every delete begun), against
//!    the frontier of all acknowledged writes to the key. This is what catches a store
//!    that, after a crash of every replica, came back without a write it had
//!    acknowledged, even when no later read of that key showed it.
//! 5. [`ViolationKind::Divergence`] and [`ViolationKind::Unreadable`]: at the end every
//!    replica was read, and all hold the same value (or absence) for every key used.
//!
//! Causal past = session order plus reads-from, transitively; see [`super::past`] for the
//! clocks. Checks 2 and 3 need only the *frontier* of `r`'s past on `k`: the latest
//! acknowledged write to `k` of each session that `r`'s clock covers (a binary search in
//! that session's writes to `k`), plus the indeterminate writes to `k` in the clock.
//! Every other write to `k` in the past is in the past of a frontier write of its session
//! (clocks grow along a session), so "`w` is overwritten in `r`'s past" is "`w` is in the
//! past of a frontier write other than `w`". Each read costs O(sessions × log ops), plus,
//! for a 404, a scan of the key's deletes that stops at the first possible cause.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;
use serde_json::Value;

use super::history::{Effect, History, Observed, Op};
use super::past::CausalPast;
use super::settle::{FinalRead, FinalState};

/// Which property a violation breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ViolationKind {
    /// A read returned a value nobody wrote to that key (or not yet).
    UnwrittenValue,
    /// A read returned a value that a write in its causal past had overwritten.
    StaleRead,
    /// A read found no value although a write to the key is in its causal past.
    MissedWrite,
    /// An acknowledged write is missing from a replica at the end: a write-once value is
    /// absent, or a key holds a value (or absence) that an acknowledged write overwrote.
    LostWrite,
    /// Replicas hold different values for a key at the end.
    Divergence,
    /// A replica could not be read at the end, so its store could not be verified.
    Unreadable,
}

impl ViolationKind {
    pub fn name(self) -> &'static str {
        match self {
            ViolationKind::UnwrittenValue => "unwritten value",
            ViolationKind::StaleRead => "stale read",
            ViolationKind::MissedWrite => "missed write",
            ViolationKind::LostWrite => "lost write",
            ViolationKind::Divergence => "divergence",
            ViolationKind::Unreadable => "unreadable replica",
        }
    }
}

/// One broken property, with the operations that show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Violation {
    pub kind: ViolationKind,
    /// What went wrong, in one or two sentences.
    pub explanation: String,
    /// The operations involved: the read first, then the writes that show the problem.
    pub ops: Vec<Op>,
}

/// Every violation in `history` and `end`, in a stable order (by kind, then by the time
/// of the first operation involved).
pub fn check(history: &History, end: &FinalState) -> Vec<Violation> {
    let index = Index::new(history);
    let mut violations = index.check_reads();
    violations.extend(index.check_final_values(end));
    violations.extend(index.check_write_once(end));
    violations.extend(index.check_final_overwrites(end));
    violations.extend(check_convergence(&index, end));
    violations.sort_by_key(|v| (v.kind, v.ops.first().map(|op| op.start_us)));
    violations
}

/// A value's canonical text, the key of the writes-by-value map.
fn canonical(value: &Value) -> String {
    value.to_string()
}

/// Lookup tables over one history.
struct Index<'a> {
    ops: &'a [Op],
    /// Writer of each value written (the first, should a value repeat).
    writer: HashMap<String, usize>,
    /// Per key, per session position: its acknowledged writes as `(seq, op)`, seq-sorted.
    acked: HashMap<&'a str, Vec<Vec<(u32, usize)>>>,
    /// Per key: its deletes that may have taken effect, by start time.
    deletes: HashMap<&'a str, Vec<usize>>,
    reads_from: Vec<Option<usize>>,
    past: CausalPast,
}

impl<'a> Index<'a> {
    fn new(history: &'a History) -> Self {
        let ops = &history.ops[..];
        let mut writer = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            if let Some(Effect::Put(value)) = op.effect() {
                writer.entry(canonical(value)).or_insert(i);
            }
        }
        let reads_from = ops
            .iter()
            .map(|op| legal_writer(ops, &writer, op))
            .collect::<Vec<_>>();
        let past = CausalPast::compute(ops, &reads_from);
        let mut index = Index {
            ops,
            writer,
            acked: HashMap::new(),
            deletes: HashMap::new(),
            reads_from,
            past,
        };
        index.index_writes();
        index
    }

    fn index_writes(&mut self) {
        let sessions = self.past.sessions();
        for (i, op) in self.ops.iter().enumerate() {
            if op.is_acknowledged_write() {
                let by_session = self
                    .acked
                    .entry(op.key.as_str())
                    .or_insert_with(|| vec![Vec::new(); sessions]);
                by_session[self.past.position(i)].push((self.past.seq(i), i));
            }
            let may_delete = op.is_acknowledged_write() || op.is_indeterminate_write();
            if may_delete && op.effect() == Some(Effect::Delete) {
                self.deletes.entry(op.key.as_str()).or_default().push(i);
            }
        }
        for by_session in self.acked.values_mut() {
            by_session
                .iter_mut()
                .for_each(|writes| writes.sort_unstable());
        }
        for deletes in self.deletes.values_mut() {
            deletes.sort_by_key(|&d| self.ops[d].start_us);
        }
    }

    /// Checks 1-3 on every served read.
    fn check_reads(&self) -> Vec<Violation> {
        let mut violations = Vec::new();
        for (r, op) in self.ops.iter().enumerate() {
            let found = match op.observed() {
                Some(Observed::Value(value)) => self.check_value_read(r, value),
                Some(Observed::Absent) => self.check_absent_read(r),
                None => None,
            };
            violations.extend(found);
        }
        violations
    }

    fn check_value_read(&self, r: usize, value: &Value) -> Option<Violation> {
        let Some(w) = self.reads_from[r] else {
            return Some(self.unwritten(r, value));
        };
        let overwriters: Vec<usize> = self
            .frontier(r)
            .into_iter()
            .filter(|&f| f != w && self.past.contains(f, w))
            .collect();
        if overwriters.is_empty() {
            return None;
        }
        let read = &self.ops[r];
        Some(Violation {
            kind: ViolationKind::StaleRead,
            explanation: format!(
                "{} returned {value}, written by s{}#{}, but its causal past holds {} \
                 that overwrote it",
                describe(read),
                self.ops[w].session,
                self.ops[w].index,
                plural(overwriters.len(), "a later write", "later writes"),
            ),
            ops: self.with_read(r, std::iter::once(w).chain(overwriters)),
        })
    }

    fn unwritten(&self, r: usize, value: &Value) -> Violation {
        let read = &self.ops[r];
        let (why, writer) = match self.writer.get(&canonical(value)) {
            None => ("nobody wrote that value".to_string(), None),
            Some(&w) if self.ops[w].key != read.key => (
                format!("that value was written to key {}", self.ops[w].key),
                Some(w),
            ),
            Some(&w) => ("its write began after the read ended".to_string(), Some(w)),
        };
        Violation {
            kind: ViolationKind::UnwrittenValue,
            explanation: format!("{} returned {value}: {why}", describe(read)),
            ops: self.with_read(r, writer),
        }
    }

    fn check_absent_read(&self, r: usize) -> Option<Violation> {
        let frontier = self.frontier(r);
        if frontier.is_empty() || self.deletion_possible(r, &frontier) {
            return None;
        }
        let missed: Vec<usize> = frontier
            .iter()
            .copied()
            .filter(|&f| !frontier.iter().any(|&g| g != f && self.past.contains(g, f)))
            .collect();
        let read = &self.ops[r];
        Some(Violation {
            kind: ViolationKind::MissedWrite,
            explanation: format!(
                "{} found no value, but {} of {} in its causal past, and no delete of \
                 it could have come after",
                describe(read),
                plural(missed.len(), "a write", "writes"),
                read.key,
            ),
            ops: self.with_read(r, missed),
        })
    }

    /// True when some delete of the read's key may be the one it observed: it started
    /// before the read ended and no write to the key in the read's past follows it.
    /// The frontier's own deletes are tried first, then the others, latest first.
    fn deletion_possible(&self, r: usize, frontier: &[usize]) -> bool {
        let read = &self.ops[r];
        let survives = |d: usize| !frontier.iter().any(|&f| f != d && self.past.contains(f, d));
        let in_frontier = frontier
            .iter()
            .copied()
            .filter(|&f| self.ops[f].effect() == Some(Effect::Delete));
        let deletes = self.deletes.get(read.key.as_str()).map_or(&[][..], |d| d);
        let begun = deletes.partition_point(|&d| self.ops[d].start_us <= read.end_us);
        in_frontier
            .chain(deletes[..begun].iter().rev().copied())
            .any(survives)
    }

    /// The latest writes to `r`'s key in `r`'s causal past: per session, the last
    /// acknowledged one its clock covers; and every indeterminate one it holds.
    fn frontier(&self, r: usize) -> Vec<usize> {
        let Some(clock) = self.past.clock(r) else {
            return Vec::new();
        };
        let key = self.ops[r].key.as_str();
        let mut frontier = Vec::new();
        if let Some(by_session) = self.acked.get(key) {
            for (writes, &seen) in by_session.iter().zip(&clock.dense) {
                let covered = writes.partition_point(|&(seq, _)| seq <= seen);
                frontier.extend(covered.checked_sub(1).map(|last| writes[last].1));
            }
        }
        frontier.extend(clock.extras.iter().filter(|&&x| self.ops[x].key == key));
        frontier
    }

    /// The latest writes to `key` once every acknowledged write is in the past: per
    /// session, its last acknowledged write to `key`.
    fn final_frontier(&self, key: &str) -> Vec<usize> {
        let by_session = self.acked.get(key).map_or(&[][..], |s| s);
        by_session
            .iter()
            .filter_map(|writes| writes.last().map(|&(_, w)| w))
            .collect()
    }

    /// Whether what a replica holds for `key` at the end is explained by a write that no
    /// acknowledged write overwrote; otherwise the acknowledged writes it lost.
    fn lost_at_end(&self, key: &str, held: &FinalRead, frontier: &[usize]) -> Vec<usize> {
        let overwrites = |x: usize| frontier.iter().any(|&f| f != x && self.past.contains(f, x));
        let latest = || {
            frontier
                .iter()
                .copied()
                .filter(|&f| !overwrites(f))
                .collect()
        };
        match held {
            FinalRead::Value(value) => match self.writer.get(&canonical(value)) {
                // A value nobody wrote to the key is check 1's.
                Some(&w) if self.ops[w].key == key && overwrites(w) => latest(),
                _ => Vec::new(),
            },
            FinalRead::Absent => {
                let deletes = self.deletes.get(key).map_or(&[][..], |d| d);
                match deletes.iter().any(|&d| !overwrites(d)) {
                    true => Vec::new(),
                    false => latest(),
                }
            }
            FinalRead::Failed(_) => Vec::new(),
        }
    }

    /// Check 4 on the other keys: no replica holds, at the end, a value or an absence
    /// that an acknowledged write overwrote.
    fn check_final_overwrites(&self, end: &FinalState) -> Vec<Violation> {
        let once: BTreeSet<&str> = self
            .ops
            .iter()
            .filter(|op| op.write_once)
            .map(|op| op.key.as_str())
            .collect();
        let keys: BTreeSet<&String> = end.reads.values().flat_map(|reads| reads.keys()).collect();
        let mut violations = Vec::new();
        for key in keys.into_iter().filter(|key| !once.contains(key.as_str())) {
            let frontier = self.final_frontier(key);
            let mut lost = BTreeSet::new();
            let mut shown = Vec::new();
            for (replica, reads) in &end.reads {
                let Some(held) = reads.get(key) else { continue };
                let missing = self.lost_at_end(key, held, &frontier);
                if !missing.is_empty() {
                    shown.push(format!("{replica} holds {held}"));
                    lost.extend(missing);
                }
            }
            if !lost.is_empty() {
                violations.push(Violation {
                    kind: ViolationKind::LostWrite,
                    explanation: format!(
                        "at the end, {}: {} of {key} that overwrote it {} lost",
                        shown.join(", "),
                        plural(lost.len(), "an acknowledged write", "acknowledged writes"),
                        if lost.len() == 1 { "is" } else { "are" },
                    ),
                    ops: lost.into_iter().map(|w| self.ops[w].clone()).collect(),
                });
            }
        }
        violations
    }

    /// The read op followed by the given ones, cloned for a violation.
    fn with_read(&self, r: usize, others: impl IntoIterator<Item = usize>) -> Vec<Op> {
        std::iter::once(r)
            .chain(others)
            .map(|i| self.ops[i].clone())
            .collect()
    }

    /// Check 1 on the values the replicas hold at the end.
    fn check_final_values(&self, end: &FinalState) -> Vec<Violation> {
        let mut violations = Vec::new();
        for (replica, reads) in &end.reads {
            for (key, read) in reads {
                let FinalRead::Value(value) = read else {
                    continue;
                };
                let writer = self.writer.get(&canonical(value)).copied();
                if writer.is_some_and(|w| &self.ops[w].key == key) {
                    continue;
                }
                violations.push(Violation {
                    kind: ViolationKind::UnwrittenValue,
                    explanation: format!(
                        "at the end, {replica} holds {key}={value}, which nobody wrote to {key}"
                    ),
                    ops: writer.map(|w| self.ops[w].clone()).into_iter().collect(),
                });
            }
        }
        violations
    }

    /// Check 4: acknowledged write-once values are on every replica at the end.
    fn check_write_once(&self, end: &FinalState) -> Vec<Violation> {
        let mut violations = Vec::new();
        for op in self.ops.iter().filter(|op| op.write_once) {
            let Some(Effect::Put(value)) = op.effect() else {
                continue;
            };
            if !op.is_acknowledged_write() {
                continue;
            }
            let missing: Vec<String> = end
                .reads
                .iter()
                .filter_map(|(replica, reads)| {
                    let held = reads.get(&op.key)?;
                    let holds = matches!(held, FinalRead::Value(v) if v == value);
                    let failed = matches!(held, FinalRead::Failed(_));
                    (!holds && !failed).then(|| format!("{replica} holds {held}"))
                })
                .collect();
            if !missing.is_empty() {
                violations.push(Violation {
                    kind: ViolationKind::LostWrite,
                    explanation: format!(
                        "the acknowledged write-once {}={value} is missing at the end: {}",
                        op.key,
                        missing.join(", ")
                    ),
                    ops: vec![op.clone()],
                });
            }
        }
        violations
    }
}

/// The read op described for an explanation: `s3#17 GET k at R`.
fn describe(op: &Op) -> String {
    format!(
        "s{}#{} {} {} at {}",
        op.session,
        op.index,
        op.kind.name().to_uppercase(),
        op.key,
        op.replica
    )
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        one.to_string()
    } else {
        format!("{n} {many}")
    }
}

/// The writer of the value `op` read, if that write is to the same key and started before
/// the read ended: the only reads-from edges that can be real.
fn legal_writer(ops: &[Op], writer: &HashMap<String, usize>, op: &Op) -> Option<usize> {
    let Some(Observed::Value(value)) = op.observed() else {
        return None;
    };
    let &w = writer.get(&canonical(value))?;
    let write = &ops[w];
    (write.key == op.key && write.start_us <= op.end_us).then_some(w)
}

/// Check 5: every replica was read at the end, and all agree on every key.
fn check_convergence(index: &Index<'_>, end: &FinalState) -> Vec<Violation> {
    let mut violations = unreadable(end);
    let keys: BTreeSet<&String> = end.reads.values().flat_map(|reads| reads.keys()).collect();
    for key in keys {
        let held: BTreeMap<&String, &FinalRead> = end
            .reads
            .iter()
            .filter_map(|(replica, reads)| Some((replica, reads.get(key)?)))
            .filter(|(_, read)| !matches!(read, FinalRead::Failed(_)))
            .collect();
        let distinct: BTreeSet<String> = held.values().map(|read| read.to_string()).collect();
        if distinct.len() <= 1 {
            continue;
        }
        let shown: Vec<String> = held
            .iter()
            .map(|(r, read)| format!("{r}: {read}"))
            .collect();
        let writers = held.values().filter_map(|read| match read {
            FinalRead::Value(value) => index.writer.get(&canonical(value)).copied(),
            _ => None,
        });
        let writers: BTreeSet<usize> = writers.collect();
        violations.push(Violation {
            kind: ViolationKind::Divergence,
            explanation: format!(
                "replicas disagree on {key} at the end: {}",
                shown.join(", ")
            ),
            ops: writers.into_iter().map(|w| index.ops[w].clone()).collect(),
        });
    }
    violations
}

/// One violation per replica that could not be read at the end.
fn unreadable(end: &FinalState) -> Vec<Violation> {
    end.reads
        .iter()
        .filter_map(|(replica, reads)| {
            let failed: Vec<&String> = reads
                .values()
                .filter_map(|read| match read {
                    FinalRead::Failed(error) => Some(error),
                    _ => None,
                })
                .collect();
            let first = failed.first()?;
            Some(Violation {
                kind: ViolationKind::Unreadable,
                explanation: format!(
                    "{replica} could not be read at the end ({} of {} keys failed; first: {first})",
                    failed.len(),
                    reads.len()
                ),
                ops: Vec::new(),
            })
        })
        .collect()
}
