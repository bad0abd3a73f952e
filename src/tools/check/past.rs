//! The causal past of every operation of a history, as one clock per operation.
//!
//! Causal order over a history is the transitive closure of two kinds of edges:
//!
//! * **session order**: a served operation (2xx or 404) follows the previous *served*
//!   operation of its session. An operation that was not served (503, no answer) sent the
//!   metadata of the previous served one, so it follows that one too, but nothing follows
//!   it: the session never saw its metadata.
//! * **reads-from**: a read that returned value `v` follows the write of `v` (the contract
//!   says its metadata covers that write), acknowledged or not.
//!
//! The *nodes* are the served operations (the session's chain) and the indeterminate
//! writes (branches off the chain that only a reads-from edge can bring into someone's
//! past). Each node gets a [`Clock`]:
//!
//! * `dense[p]` = how many served operations of session `p` are in the past (served
//!   operations of a session are numbered 1, 2, ... in session order: their *seq*), so a
//!   served `x` is in the past of `o` iff `clock(o).dense[session(x)] >= seq(x)`;
//! * `extras` = the sorted ids of the indeterminate writes in the past, shared (`Rc`)
//!   between clocks that do not add any, since few writes are indeterminate and fewer read.
//!
//! A node's clock is the join of its session predecessor's clock and, for a read, its
//! writer's clock plus the writer itself; a served node then sets its own entry to its
//! seq. Clocks are computed in one pass in a topological order of the edges (Kahn's
//! algorithm, ties by start time): O(ops × sessions) time and space. A cycle cannot occur
//! when every reads-from edge goes from a write that started before the read ended (the
//! checker only passes such edges): around a cycle, read end times would strictly grow.
//! Should one occur anyway, its nodes are processed by start time with what is known.
//!
//! Every clock under-approximates the metadata the replica saw, never over-approximates
//! it, so a violation found against it is real.

use std::collections::VecDeque;
use std::rc::Rc;

use super::history::Op;

/// The causal past of one operation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Clock {
    /// Per session position: served operations of that session in the past.
    pub dense: Vec<u32>,
    /// Sorted ids of the indeterminate writes in the past.
    pub extras: Rc<Vec<usize>>,
}

impl Clock {
    fn empty(sessions: usize) -> Self {
        Clock {
            dense: vec![0; sessions],
            extras: Rc::default(),
        }
    }

    fn join(&mut self, other: &Clock) {
        for (mine, theirs) in self.dense.iter_mut().zip(&other.dense) {
            *mine = (*mine).max(*theirs);
        }
        self.extras = union(&self.extras, &other.extras);
    }

    fn add_extra(&mut self, id: usize) {
        if let Err(at) = self.extras.binary_search(&id) {
            Rc::make_mut(&mut self.extras).insert(at, id);
        }
    }
}

/// The union of two sorted id lists, reusing either when it already covers the other.
fn union(a: &Rc<Vec<usize>>, b: &Rc<Vec<usize>>) -> Rc<Vec<usize>> {
    if Rc::ptr_eq(a, b) || b.is_empty() {
        return Rc::clone(a);
    }
    if a.is_empty() {
        return Rc::clone(b);
    }
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let (x, y) = (a[i], b[j]);
        merged.push(x.min(y));
        i += usize::from(x <= y);
        j += usize::from(y <= x);
    }
    merged.extend_from_slice(&a[i..]);
    merged.extend_from_slice(&b[j..]);
    if merged.len() == a.len() {
        Rc::clone(a)
    } else if merged.len() == b.len() {
        Rc::clone(b)
    } else {
        Rc::new(merged)
    }
}

/// The clocks of a history's operations, indexed like the history's `ops`.
#[derive(Debug)]
pub struct CausalPast {
    /// Dense session position of each op.
    pos: Vec<usize>,
    /// Seq of each served op (1-based within its session); 0 for the others.
    seq: Vec<u32>,
    /// Whether each op is served (on its session's chain).
    served: Vec<bool>,
    /// Clock of each node; `None` for ops that are not nodes (unserved reads).
    clocks: Vec<Option<Clock>>,
    sessions: usize,
}

impl CausalPast {
    /// Computes every node's clock. `reads_from[i]` is the write op whose value op `i`
    /// read, if any; it must be a node (a served or indeterminate write).
    pub fn compute(ops: &[Op], reads_from: &[Option<usize>]) -> Self {
        let chains = Chains::of(ops);
        let node: Vec<bool> = ops
            .iter()
            .map(|op| op.is_served() || op.is_indeterminate_write())
            .collect();
        let mut past = CausalPast {
            pos: chains.pos,
            seq: chains.seq,
            served: ops.iter().map(Op::is_served).collect(),
            clocks: vec![None; ops.len()],
            sessions: chains.sessions,
        };
        let preds: Vec<[Option<usize>; 2]> = (0..ops.len())
            .map(|i| [chains.prev[i], reads_from[i].filter(|&w| node[w])])
            .collect();
        let order = topological_order(ops, &node, &preds);
        for i in order {
            past.clocks[i] = Some(past.clock_of(i, &preds[i]));
        }
        past
    }

    /// The clock of node `i` from those of its predecessors (missing ones count as empty).
    fn clock_of(&self, i: usize, preds: &[Option<usize>; 2]) -> Clock {
        let [prev, writer] = *preds;
        let mut clock = prev
            .and_then(|p| self.clocks[p].clone())
            .unwrap_or_else(|| Clock::empty(self.sessions));
        if let Some(w) = writer {
            if let Some(theirs) = &self.clocks[w] {
                clock.join(theirs);
            }
            if !self.served[w] {
                clock.add_extra(w);
            }
        }
        if self.served[i] {
            clock.dense[self.pos[i]] = self.seq[i];
        }
        clock
    }

    /// The clock of op `i`, if it is a node.
    pub fn clock(&self, i: usize) -> Option<&Clock> {
        self.clocks[i].as_ref()
    }

    /// True when op `x` is in the causal past of op `of` (an op is in its own past when
    /// it is served).
    pub fn contains(&self, of: usize, x: usize) -> bool {
        let Some(clock) = &self.clocks[of] else {
            return false;
        };
        if self.served[x] {
            clock.dense[self.pos[x]] >= self.seq[x]
        } else {
            clock.extras.binary_search(&x).is_ok()
        }
    }

    /// Dense position of op `i`'s session.
    pub fn position(&self, i: usize) -> usize {
        self.pos[i]
    }

    /// Seq of op `i` in its session's chain (0 when it is not served).
    pub fn seq(&self, i: usize) -> u32 {
        self.seq[i]
    }

    /// Number of sessions (dense positions are `0..sessions()`).
    pub fn sessions(&self) -> usize {
        self.sessions
    }
}

/// Each session's chain of served operations.
struct Chains {
    pos: Vec<usize>,
    seq: Vec<u32>,
    /// The previous served op of the same session, for every op.
    prev: Vec<Option<usize>>,
    sessions: usize,
}

impl Chains {
    fn of(ops: &[Op]) -> Self {
        let mut ids: Vec<u32> = ops.iter().map(|op| op.session).collect();
        ids.sort_unstable();
        ids.dedup();
        let pos: Vec<usize> = ops
            .iter()
            .map(|op| ids.binary_search(&op.session).unwrap_or(0))
            .collect();
        let mut order: Vec<usize> = (0..ops.len()).collect();
        order.sort_by_key(|&i| (pos[i], ops[i].index));
        let mut seq = vec![0; ops.len()];
        let mut prev = vec![None; ops.len()];
        let mut last: Vec<Option<(usize, u32)>> = vec![None; ids.len()];
        for i in order {
            let chain = &mut last[pos[i]];
            prev[i] = chain.map(|(op, _)| op);
            if ops[i].is_served() {
                let next = chain.map_or(1, |(_, s)| s + 1);
                seq[i] = next;
                *chain = Some((i, next));
            }
        }
        Chains {
            pos,
            seq,
            prev,
            sessions: ids.len(),
        }
    }
}

/// The nodes in an order where every node comes after its predecessors (Kahn's algorithm,
/// ready nodes taken by start time); nodes on a cycle, if any, come last by start time.
fn topological_order(ops: &[Op], node: &[bool], preds: &[[Option<usize>; 2]]) -> Vec<usize> {
    let mut by_start: Vec<usize> = (0..ops.len()).filter(|&i| node[i]).collect();
    by_start.sort_by_key(|&i| (ops[i].start_us, ops[i].session, ops[i].index));
    let mut indegree = vec![0usize; ops.len()];
    let mut succs: Vec<Vec<usize>> = vec![Vec::new(); ops.len()];
    for &i in &by_start {
        for p in preds[i].iter().flatten() {
            indegree[i] += 1;
            succs[*p].push(i);
        }
    }
    let mut ready: VecDeque<usize> = by_start
        .iter()
        .copied()
        .filter(|&i| indegree[i] == 0)
        .collect();
    let mut order = Vec::with_capacity(by_start.len());
    let mut done = vec![false; ops.len()];
    while let Some(i) = ready.pop_front() {
        order.push(i);
        done[i] = true;
        for &s in &succs[i] {
            indegree[s] -= 1;
            if indegree[s] == 0 {
                ready.push_back(s);
            }
        }
    }
    order.extend(by_start.into_iter().filter(|&i| !done[i]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::check::history::{OpKind, Status};
    use serde_json::json;

    fn op(session: u32, index: u32, kind: OpKind, status: u16) -> Op {
        let start_us = u64::from(index) * 10 + u64::from(session);
        Op {
            session,
            index,
            replica: "r".into(),
            kind,
            key: "k".into(),
            write_once: false,
            value: (kind == OpKind::Put).then(|| json!(format!("s{session}-{index}"))),
            start_us,
            end_us: start_us + 5,
            status: Status::Http(status),
            read: None,
            error: None,
        }
    }

    #[test]
    fn session_order_skips_unserved_ops() {
        let ops = vec![
            op(0, 0, OpKind::Put, 201),
            op(0, 1, OpKind::Put, 503),
            op(0, 2, OpKind::Get, 404),
        ];
        let past = CausalPast::compute(&ops, &[None, None, None]);
        assert!(past.contains(2, 0));
        assert!(
            !past.contains(2, 1),
            "the 503 write is not in the session's past"
        );
        assert!(
            past.contains(1, 0),
            "the failed write carried the first one's metadata"
        );
        assert!(past.contains(0, 0));
        assert_eq!(past.seq(2), 2);
    }

    #[test]
    fn reads_from_brings_the_writer_and_its_past() {
        let ops = vec![
            op(0, 0, OpKind::Put, 201),
            op(0, 1, OpKind::Put, 201),
            op(1, 0, OpKind::Get, 200),
            op(1, 1, OpKind::Get, 200),
        ];
        let past = CausalPast::compute(&ops, &[None, None, Some(1), None]);
        assert!(past.contains(2, 0) && past.contains(2, 1));
        assert!(past.contains(3, 0), "transitively, through session order");
        assert!(!past.contains(1, 2));
    }

    #[test]
    fn indeterminate_writes_enter_only_by_reads_from() {
        let ops = vec![
            op(0, 0, OpKind::Put, 201),
            op(0, 1, OpKind::Put, 503),
            op(0, 2, OpKind::Get, 200),
            op(1, 0, OpKind::Get, 200),
            op(1, 1, OpKind::Get, 404),
        ];
        let past = CausalPast::compute(&ops, &[None, None, None, Some(1), None]);
        assert!(!past.contains(2, 1));
        assert!(past.contains(3, 1) && past.contains(4, 1));
        assert!(
            past.contains(4, 0),
            "the failed write's own past comes along"
        );
        assert_eq!(*past.clock(4).unwrap().extras, vec![1]);
    }

    #[test]
    fn cycles_do_not_hang() {
        // Two reads each reading the other session's later write: impossible, but handled.
        let ops = vec![
            op(0, 0, OpKind::Get, 200),
            op(0, 1, OpKind::Put, 201),
            op(1, 0, OpKind::Get, 200),
            op(1, 1, OpKind::Put, 201),
        ];
        let past = CausalPast::compute(&ops, &[Some(3), None, Some(1), None]);
        assert!((0..4).all(|i| past.clock(i).is_some()));
    }

    #[test]
    fn union_reuses_covering_lists() {
        let a = Rc::new(vec![1, 3, 5]);
        let b = Rc::new(vec![3]);
        assert!(Rc::ptr_eq(&union(&a, &b), &a));
        assert!(Rc::ptr_eq(&union(&b, &a), &a));
        assert_eq!(*union(&a, &Rc::new(vec![2, 6])), vec![1, 2, 3, 5, 6]);
    }
}
