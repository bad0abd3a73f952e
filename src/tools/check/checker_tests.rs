//! Unit tests of the checker on hand-made histories: one or more per property that must be
//! caught, and clean histories (including concurrent writes, indeterminate writes and a
//! large simulated linearizable run) that must pass.
//!
//! Histories are written as a script: each op gets the next time slot (ops never overlap
//! in time), so concurrency is expressed by the absence of causal edges, as in the causal
//! model the checker judges.

use std::collections::BTreeMap;
use std::collections::HashMap;

use serde_json::json;

use super::checker::{Violation, ViolationKind, check};
use super::history::{History, Op, OpKind, Status};
use super::settle::{FinalRead, FinalState};
use super::workload::SplitMix64;

/// A history under construction.
#[derive(Default)]
struct Script {
    ops: Vec<Op>,
    next_index: HashMap<u32, u32>,
    now: u64,
}

const OK: Status = Status::Http(200);
const CREATED: Status = Status::Http(201);
const BUSY: Status = Status::Http(503);
const LOST: Status = Status::Timeout;

impl Script {
    fn push(&mut self, session: u32, kind: OpKind, key: &str, status: Status) -> &mut Op {
        let index = self.next_index.entry(session).or_default();
        let op = Op {
            session,
            index: *index,
            replica: format!("r{}", session % 3),
            kind,
            key: key.into(),
            write_once: false,
            value: None,
            start_us: self.now,
            end_us: self.now + 5,
            status,
            read: None,
            error: (!matches!(status, Status::Http(200 | 201 | 404))).then(|| "failed".into()),
        };
        *index += 1;
        self.now += 10;
        self.ops.push(op);
        self.ops.last_mut().unwrap()
    }

    fn put(&mut self, session: u32, key: &str, value: &str, status: Status) -> &mut Op {
        let op = self.push(session, OpKind::Put, key, status);
        op.value = Some(json!(value));
        op
    }

    fn get(&mut self, session: u32, key: &str, read: Option<&str>) -> &mut Op {
        let status = if read.is_some() {
            OK
        } else {
            Status::Http(404)
        };
        let op = self.push(session, OpKind::Get, key, status);
        op.read = read.map(|v| json!(v));
        op
    }

    fn delete(&mut self, session: u32, key: &str, status: Status) -> &mut Op {
        self.push(session, OpKind::Delete, key, status)
    }

    fn history(&self) -> History {
        History::new(self.ops.clone())
    }

    fn check(&self) -> Vec<Violation> {
        check(&self.history(), &FinalState::default())
    }
}

fn kinds(violations: &[Violation]) -> Vec<ViolationKind> {
    violations.iter().map(|v| v.kind).collect()
}

/// The (session, index) of each op of a violation.
fn shown(violation: &Violation) -> Vec<(u32, u32)> {
    violation
        .ops
        .iter()
        .map(|op| (op.session, op.index))
        .collect()
}

fn end_state(stores: &[(&str, &[(&str, FinalRead)])]) -> FinalState {
    let reads = stores
        .iter()
        .map(|(replica, store)| {
            let store: BTreeMap<String, FinalRead> = store
                .iter()
                .map(|(key, read)| (key.to_string(), read.clone()))
                .collect();
            (replica.to_string(), store)
        })
        .collect();
    FinalState {
        reads,
        ..FinalState::default()
    }
}

fn value(v: &str) -> FinalRead {
    FinalRead::Value(json!(v))
}

// ---- clean histories -------------------------------------------------------------------

#[test]
fn a_single_session_reading_its_writes_is_clean() {
    let mut s = Script::default();
    s.get(0, "k", None);
    s.put(0, "k", "a", CREATED);
    s.get(0, "k", Some("a"));
    s.put(0, "k", "b", OK);
    s.get(0, "k", Some("b"));
    s.delete(0, "k", OK);
    s.get(0, "k", None);
    s.delete(0, "k", Status::Http(404));
    s.put(0, "k", "c", CREATED);
    s.get(0, "k", Some("c"));
    assert_eq!(s.check(), vec![]);
}

#[test]
fn concurrent_writes_may_be_read_in_either_order() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.put(1, "k", "b", OK);
    s.get(2, "k", Some("a"));
    s.get(2, "k", Some("b"));
    s.get(3, "k", Some("b"));
    s.get(3, "k", Some("a"));
    assert_eq!(s.check(), vec![]);
}

#[test]
fn reads_need_not_see_writes_outside_their_causal_past() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.put(0, "k", "b", OK);
    // Session 1 never read anything of session 0: any value, or none, is fine.
    s.get(1, "k", None);
    s.get(1, "k", Some("b"));
    s.get(2, "k", Some("a"));
    assert_eq!(s.check(), vec![]);
}

#[test]
fn a_concurrent_delete_may_win() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.delete(1, "k", OK);
    s.get(0, "k", None);
    s.delete(0, "k", Status::Http(404));
    assert_eq!(s.check(), vec![]);
}

#[test]
fn an_indeterminate_delete_may_have_won() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.delete(1, "k", LOST);
    s.get(0, "k", None);
    assert_eq!(s.check(), vec![]);
}

#[test]
fn indeterminate_writes_may_be_read_or_not() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.put(0, "k", "b", LOST);
    s.put(0, "k", "c", BUSY);
    // The session never saw b's or c's metadata: reading a is fine...
    s.get(0, "k", Some("a"));
    // ...and so is reading b or c, which may have taken effect.
    s.get(1, "k", Some("b"));
    s.get(2, "k", Some("c"));
    assert_eq!(s.check(), vec![]);
}

#[test]
fn unserved_reads_are_ignored() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.push(0, OpKind::Get, "k", BUSY);
    s.push(0, OpKind::Get, "k", Status::Unreachable);
    assert_eq!(s.check(), vec![]);
}

// ---- 1. a value nobody wrote ----------------------------------------------------------------

#[test]
fn a_value_nobody_wrote_is_caught() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.get(1, "k", Some("zzz"));
    let violations = s.check();
    assert_eq!(kinds(&violations), vec![ViolationKind::UnwrittenValue]);
    assert_eq!(shown(&violations[0]), vec![(1, 0)]);
}

#[test]
fn a_value_written_to_another_key_is_caught() {
    let mut s = Script::default();
    s.put(0, "j", "a", CREATED);
    s.get(1, "k", Some("a"));
    let violations = s.check();
    assert_eq!(kinds(&violations), vec![ViolationKind::UnwrittenValue]);
    assert_eq!(shown(&violations[0]), vec![(1, 0), (0, 0)]);
    assert!(violations[0].explanation.contains("written to key j"));
}

#[test]
fn a_value_read_before_its_write_began_is_caught() {
    let mut s = Script::default();
    s.get(1, "k", Some("a"));
    s.put(0, "k", "a", CREATED);
    let violations = s.check();
    assert_eq!(kinds(&violations), vec![ViolationKind::UnwrittenValue]);
    assert!(violations[0].explanation.contains("began after"));
}

// ---- 2. a value overwritten in the causal past ------------------------------------------------

#[test]
fn reading_an_older_write_of_a_session_after_a_newer_one_is_caught() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.put(0, "k", "b", OK);
    s.get(1, "k", Some("b"));
    s.get(1, "k", Some("a"));
    let violations = s.check();
    assert_eq!(kinds(&violations), vec![ViolationKind::StaleRead]);
    // The read, the write it read, the write that overwrote it.
    assert_eq!(shown(&violations[0]), vec![(1, 1), (0, 0), (0, 1)]);
}

#[test]
fn not_reading_your_own_overwrite_is_caught() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.get(1, "k", Some("a"));
    s.put(1, "k", "b", OK);
    s.get(1, "k", Some("a"));
    let violations = s.check();
    assert_eq!(kinds(&violations), vec![ViolationKind::StaleRead]);
    assert_eq!(shown(&violations[0]), vec![(1, 2), (0, 0), (1, 1)]);
}

#[test]
fn staleness_through_another_key_is_caught() {
    let mut s = Script::default();
    s.put(0, "x", "x1", CREATED);
    s.put(0, "x", "x2", OK);
    s.put(0, "y", "y1", CREATED);
    s.get(1, "y", Some("y1"));
    s.put(1, "z", "z1", CREATED);
    s.get(2, "z", Some("z1"));
    // Session 2 depends on x2 through z1 → y1 → x2, yet reads x1.
    s.get(2, "x", Some("x1"));
    let violations = s.check();
    assert_eq!(kinds(&violations), vec![ViolationKind::StaleRead]);
    assert_eq!(shown(&violations[0]), vec![(2, 1), (0, 0), (0, 1)]);
}

#[test]
fn staleness_through_an_indeterminate_write_is_caught() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.put(0, "k", "b", LOST);
    s.get(1, "k", Some("b"));
    // b took effect after all, and depends on a: a is now overwritten for session 1.
    s.get(1, "k", Some("a"));
    let violations = s.check();
    assert_eq!(kinds(&violations), vec![ViolationKind::StaleRead]);
    assert_eq!(shown(&violations[0]), vec![(1, 1), (0, 0), (0, 1)]);
}

#[test]
fn a_value_read_after_its_delete_is_stale() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.delete(0, "k", OK);
    s.get(0, "k", Some("a"));
    let violations = s.check();
    assert_eq!(kinds(&violations), vec![ViolationKind::StaleRead]);
    assert_eq!(shown(&violations[0]), vec![(0, 2), (0, 0), (0, 1)]);
}

// ---- 3. a key missed although written in the causal past --------------------------------------

#[test]
fn missing_your_own_write_is_caught() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.get(0, "k", None);
    let violations = s.check();
    assert_eq!(kinds(&violations), vec![ViolationKind::MissedWrite]);
    assert_eq!(shown(&violations[0]), vec![(0, 1), (0, 0)]);
}

#[test]
fn a_delete_answered_404_after_a_write_in_the_past_is_caught() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.get(1, "k", Some("a"));
    s.delete(1, "k", Status::Http(404));
    let violations = s.check();
    assert_eq!(kinds(&violations), vec![ViolationKind::MissedWrite]);
    assert_eq!(shown(&violations[0]), vec![(1, 1), (0, 0)]);
}

#[test]
fn missing_a_key_written_before_a_value_read_is_caught() {
    let mut s = Script::default();
    s.put(0, "x", "x1", CREATED);
    s.put(0, "y", "y1", CREATED);
    s.get(1, "y", Some("y1"));
    s.get(1, "x", None);
    let violations = s.check();
    assert_eq!(kinds(&violations), vec![ViolationKind::MissedWrite]);
    assert_eq!(shown(&violations[0]), vec![(1, 1), (0, 0)]);
}

#[test]
fn a_delete_overwritten_in_the_past_does_not_excuse_a_404() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.delete(0, "k", OK);
    s.put(0, "k", "b", CREATED);
    s.get(1, "k", Some("b"));
    s.get(1, "k", None);
    let violations = s.check();
    assert_eq!(kinds(&violations), vec![ViolationKind::MissedWrite]);
    assert_eq!(shown(&violations[0]), vec![(1, 1), (0, 2)]);
}

#[test]
fn a_delete_that_began_after_the_read_does_not_excuse_a_404() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.get(0, "k", None);
    s.delete(1, "k", OK);
    assert_eq!(kinds(&s.check()), vec![ViolationKind::MissedWrite]);
}

// ---- 4. write-once durability -----------------------------------------------------------------

fn once_script() -> Script {
    let mut s = Script::default();
    s.put(0, "once-a", "a", CREATED).write_once = true;
    s.put(1, "once-b", "b", LOST).write_once = true;
    s
}

#[test]
fn write_once_values_present_everywhere_are_clean() {
    let s = once_script();
    let store = [("once-a", value("a")), ("once-b", FinalRead::Absent)];
    let end = end_state(&[("r1", &store), ("r2", &store)]);
    assert_eq!(check(&s.history(), &end), vec![]);
}

#[test]
fn a_lost_write_once_value_is_caught() {
    let s = once_script();
    let good = [("once-a", value("a")), ("once-b", FinalRead::Absent)];
    let lost = [("once-a", FinalRead::Absent), ("once-b", FinalRead::Absent)];
    let end = end_state(&[("r1", &good), ("r2", &lost)]);
    let violations = check(&s.history(), &end);
    assert_eq!(
        kinds(&violations),
        vec![ViolationKind::LostWrite, ViolationKind::Divergence]
    );
    assert_eq!(shown(&violations[0]), vec![(0, 0)]);
    assert!(violations[0].explanation.contains("r2 holds absent"));
}

#[test]
fn a_write_once_value_replaced_everywhere_is_caught() {
    let mut s = once_script();
    s.put(2, "other", "x", CREATED);
    let wrong = [("once-a", value("x")), ("once-b", FinalRead::Absent)];
    let end = end_state(&[("r1", &wrong), ("r2", &wrong)]);
    let found = kinds(&check(&s.history(), &end));
    assert_eq!(
        found,
        vec![
            ViolationKind::UnwrittenValue,
            ViolationKind::UnwrittenValue,
            ViolationKind::LostWrite
        ]
    );
}

// ---- 4. no acknowledged write lost at the end (keys written more than once) --------------

#[test]
fn a_final_value_that_no_acknowledged_write_overwrote_is_clean() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.put(1, "k", "b", OK);
    s.put(2, "k", "c", LOST);
    s.put(0, "gone", "x", CREATED);
    s.delete(1, "gone", OK);
    for held in ["a", "b", "c"] {
        let store = [("k", value(held)), ("gone", FinalRead::Absent)];
        let end = end_state(&[("r1", &store), ("r2", &store)]);
        assert_eq!(check(&s.history(), &end), vec![], "holding {held}");
    }
}

#[test]
fn a_final_value_an_acknowledged_write_overwrote_is_a_lost_write() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.get(1, "k", Some("a"));
    s.put(1, "k", "b", OK);
    // After a crash of every replica, both came back with "a" and no later read of k.
    let store = [("k", value("a"))];
    let end = end_state(&[("r1", &store), ("r2", &store)]);
    let violations = check(&s.history(), &end);
    assert_eq!(kinds(&violations), vec![ViolationKind::LostWrite]);
    assert_eq!(shown(&violations[0]), vec![(1, 1)]);
    assert!(
        violations[0]
            .explanation
            .contains("r1 holds \"a\", r2 holds \"a\"")
    );
}

#[test]
fn a_final_absence_after_an_acknowledged_write_is_a_lost_write() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.delete(0, "k", OK);
    s.put(0, "k", "b", CREATED);
    let end = end_state(&[
        ("r1", &[("k", value("b"))]),
        ("r2", &[("k", FinalRead::Absent)]),
    ]);
    let violations = check(&s.history(), &end);
    assert_eq!(
        kinds(&violations),
        vec![ViolationKind::LostWrite, ViolationKind::Divergence]
    );
    assert_eq!(shown(&violations[0]), vec![(0, 2)]);
    assert!(violations[0].explanation.contains("r2 holds absent"));
}

#[test]
fn a_lost_acknowledged_delete_is_caught() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.delete(0, "k", OK);
    let store = [("k", value("a"))];
    let end = end_state(&[("r1", &store), ("r2", &store)]);
    let violations = check(&s.history(), &end);
    assert_eq!(kinds(&violations), vec![ViolationKind::LostWrite]);
    assert_eq!(shown(&violations[0]), vec![(0, 1)]);
}

// ---- 5. convergence ------------------------------------------------------------------------------

#[test]
fn replicas_that_disagree_are_caught() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    s.put(1, "k", "b", OK);
    let end = end_state(&[("r1", &[("k", value("a"))]), ("r2", &[("k", value("b"))])]);
    let violations = check(&s.history(), &end);
    assert_eq!(kinds(&violations), vec![ViolationKind::Divergence]);
    assert_eq!(shown(&violations[0]), vec![(0, 0), (1, 0)]);
    assert!(violations[0].explanation.contains("r1: \"a\", r2: \"b\""));
}

#[test]
fn an_unreadable_replica_is_caught_but_not_as_divergence() {
    let mut s = Script::default();
    s.put(0, "k", "a", CREATED);
    let down = [("k", FinalRead::Failed("connection refused".into()))];
    let end = end_state(&[("r1", &[("k", value("a"))]), ("r2", &down)]);
    let violations = check(&s.history(), &end);
    assert_eq!(kinds(&violations), vec![ViolationKind::Unreadable]);
    assert!(violations[0].explanation.contains("connection refused"));
}

#[test]
fn a_final_value_nobody_wrote_is_caught() {
    let s = Script::default();
    let store = [("k", value("ghost"))];
    let end = end_state(&[("r1", &store), ("r2", &store)]);
    assert_eq!(
        kinds(&check(&s.history(), &end)),
        vec![ViolationKind::UnwrittenValue, ViolationKind::UnwrittenValue]
    );
}

// ---- scale -----------------------------------------------------------------------------------------

/// A linearizable store (one copy, ops one at a time) is causally consistent: a long random
/// history of it, with failed and indeterminate writes, must be clean. It also keeps the
/// checker honest about its cost on tens of thousands of ops.
#[test]
fn a_long_linearizable_history_is_clean() {
    let mut rng = SplitMix64::new(42);
    let mut s = Script::default();
    let mut store: HashMap<String, String> = HashMap::new();
    let keys = ["k0", "k1", "k2", "k3", "k4"];
    for n in 0..30_000u32 {
        let session = rng.below(8) as u32;
        let key = keys[rng.below(keys.len())];
        match rng.below(10) {
            0..=3 => {
                let read = store.get(key).cloned();
                s.get(session, key, read.as_deref());
            }
            4..=6 => {
                let value = format!("v{n}");
                // Some writes fail: 503s never apply, timeouts apply half the time.
                let status = match rng.below(20) {
                    0 => BUSY,
                    1 => LOST,
                    _ => OK,
                };
                if status == OK || (status == LOST && rng.below(2) == 0) {
                    store.insert(key.to_string(), value.clone());
                }
                s.put(session, key, &value, status);
            }
            _ => {
                let status = match store.remove(key) {
                    Some(_) => OK,
                    None => Status::Http(404),
                };
                s.delete(session, key, status);
            }
        }
    }
    let final_store: Vec<(&str, FinalRead)> = keys
        .iter()
        .map(|&k| (k, store.get(k).map_or(FinalRead::Absent, |v| value(v))))
        .collect();
    let end = end_state(&[("r1", &final_store), ("r2", &final_store)]);
    assert_eq!(check(&s.history(), &end), vec![]);
}
