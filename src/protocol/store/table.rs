//! The store's records in key order: immutable segments, plus a sorted buffer of recent
//! changes that is merged into them a few segments at a time.
//!
//! # Why this shape
//!
//! Rewriting a packed block on every write churns the allocator, whose free fragments
//! then cost as much as the per-key headers we packed away. So changes go to [`Pending`]
//! (`BTreeMap`s, one small allocation per key) and are merged into the segments by a
//! *pass* that walks them in key order. A pass starts when the buffer reaches a fraction
//! of the store, or when the store is idle ([`Table::maintain`]); from then on every
//! change, and every idle call, runs one *step*: it merges the changes ahead of the pass's
//! cursor into the next few segments they fall in, rewriting a bounded number of bytes
//! (a segment's worth, up to [`MAX_STEP_SEGMENTS`] when the buffer is that many times
//! over its threshold), so no call holds the store for long. A pass completes over many
//! calls; changes made behind its cursor wait for the next one. The steps between two
//! [`Table::end_step`] calls (one step of the protocol machine, one hold of its lock)
//! rewrite at most one step's budget in all, however many changes that machine step made
//! (a replicated batch, a catch-up chunk): merging is spread over machine steps, not
//! stacked into one. Segments no change falls
//! in are not rewritten, and memory never holds the store twice. At rest, the store is
//! its segments' bytes, exactly allocated, and large values in the [`Slab`].
//!
//! # Invariants
//!
//! * Segments are in key order and do not overlap: every key of one is below the first
//!   key of the next. A key below every segment belongs to the first.
//! * A key in `pending` is newer than its record in the segments, if any: reads and
//!   scans look in `pending` first, and a merge drops the segment's record (freeing its
//!   slab slot).
//! * A removal ([`Table::remove`], the collection of a tombstone) is a pending change
//!   too: it hides the segment's record until a merge drops both.
//! * A step rewrites a contiguous run of segments at a time, whole, and replaces it with
//!   the run's output before it returns: between calls, the segments hold every record
//!   not hidden by a pending change, and only those.
//! * A segment of less than half the size is absorbed by a run that reaches it (the run
//!   starts one segment early for a small one, and goes on past its end while its output
//!   would otherwise close small).
//! * `stored` is the number of records in the segments.

use std::ops::{Bound, ControlFlow};

use super::pending::{Change, Pending};
use super::record::{Raw, Stored, Text, Version};
use super::segment::{Builder, Segment};
use super::slab::{LARGE_VALUE_BYTES, Slab};

/// The most bytes a record takes beyond its key and inline value (six varints).
const MAX_RECORD_HEADER: usize = 6 * 10;

/// A step rewrites at most this many segments' worth of bytes (plus the segment it may
/// absorb at its end): when `pending` is this many times over its threshold.
const MAX_STEP_SEGMENTS: usize = 4;

/// The sizes that shape a table (fixed in production; tests shrink them).
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// A segment holds at most this many bytes (unless a single record is larger).
    segment_bytes: usize,
    /// A pass starts when `pending` holds this many keys, or a sixteenth of the store if
    /// that is more...
    min_pending_keys: usize,
    /// ... or this many bytes of values.
    max_pending_bytes: usize,
    /// Values of at least this many bytes are kept in the slab.
    large_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            segment_bytes: 64 * 1024,
            min_pending_keys: 4096,
            max_pending_bytes: 8 * 1024 * 1024,
            large_value_bytes: LARGE_VALUE_BYTES,
        }
    }
}

impl Limits {
    /// True for a segment (or a segment being built) of `bytes` too small to stand alone.
    fn is_small(&self, bytes: usize) -> bool {
        bytes < self.segment_bytes / 2
    }
}

/// A record read in place, its value resolved.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    pub version: Version,
    /// Empty for a tombstone.
    pub value: Text<'a>,
}

#[derive(Debug, Default)]
pub struct Table {
    segments: Vec<Segment>,
    /// Records in the segments.
    stored: usize,
    pending: Pending,
    /// Changes since the last [`Table::maintain`].
    recent_writes: usize,
    /// Bytes merge steps rewrote since the last [`Table::end_step`].
    spent_in_step: usize,
    large: Slab,
    limits: Limits,
}

impl Table {
    fn segment_for(&self, key: &[u8]) -> usize {
        self.segments
            .partition_point(|segment| segment.first_key() <= key)
            .saturating_sub(1)
    }

    fn resolve<'a>(&'a self, raw: Raw<'a>) -> RecordRef<'a> {
        let value = match raw.value {
            Stored::Inline(text) => Text::json(text),
            Stored::String(text) => Text::unquoted(text),
            Stored::Slot(slot) => Text::json(self.large.get(slot)),
        };
        RecordRef {
            version: raw.version,
            value,
        }
    }

    /// Bytes the records take: packed segments, keys and values of pending changes, large
    /// values.
    pub fn bytes(&self) -> usize {
        let segments: usize = self.segments.iter().map(Segment::bytes).sum();
        let pending = self.pending.key_bytes() + self.pending.value_bytes();
        segments + pending + self.large.bytes()
    }

    pub fn get(&self, key: &[u8]) -> Option<RecordRef<'_>> {
        if let Some(change) = self.pending.get(key) {
            return change.as_ref();
        }
        let segment = self.segments.get(self.segment_for(key))?;
        segment.get(key).map(|raw| self.resolve(raw))
    }

    /// Stores the record of `key`, replacing the one it had.
    pub fn upsert(&mut self, key: &[u8], version: Version, value: &[u8]) {
        let value = value.into();
        self.change(key, Change::Write { version, value });
    }

    /// Removes the record of `key`, if it has one.
    pub fn remove(&mut self, key: &[u8]) {
        if self.get(key).is_some() {
            self.change(key, Change::Removed);
        }
    }

    fn change(&mut self, key: &[u8], change: Change) {
        self.pending.insert(key, change);
        self.recent_writes += 1;
        self.keep_up();
    }

    /// Runs a merge step if a pass is under way, starting one if `pending` is full, unless
    /// the steps since the last [`Table::end_step`] used a step's budget already (while
    /// `pending` is [`MAX_STEP_SEGMENTS`] times over its threshold, merging is behind:
    /// then every change steps, so that `pending` stays bounded); returns the bytes it
    /// spent.
    fn keep_up(&mut self) -> usize {
        let fullness = self.fullness();
        if fullness >= 1 {
            self.pending.start_pass();
        }
        let budget = match fullness >= MAX_STEP_SEGMENTS {
            true => self.step_budget(),
            false => self.step_budget().saturating_sub(self.spent_in_step),
        };
        if !self.pending.in_pass() || budget == 0 {
            return 0;
        }
        let spent = self.step(budget);
        self.spent_in_step += spent;
        spent
    }

    /// Ends a step of the protocol machine: the next change may run a merge step again.
    pub fn end_step(&mut self) {
        self.spent_in_step = 0;
    }

    /// Runs a merge step of a segment's worth (a request may be waiting behind it) if the
    /// store has been idle since the last call and has pending changes; returns whether `pending` is now empty after such a
    /// step (the store is packed). Meant to be called periodically (the replica's
    /// background loop does, every probe interval): an idle store packs itself over a
    /// number of calls.
    pub fn maintain(&mut self) -> bool {
        let idle = self.recent_writes == 0 && !self.pending.is_empty();
        self.recent_writes = 0;
        if !idle {
            return false;
        }
        self.pending.start_pass();
        self.step(self.limits.segment_bytes);
        self.pending.is_empty()
    }

    /// How many times over its threshold `pending` is (rounded down).
    fn fullness(&self) -> usize {
        let limits = &self.limits;
        let keys = limits.min_pending_keys.max(self.stored / 16).max(1);
        let bytes = limits.max_pending_bytes.max(1);
        (self.pending.len() / keys).max(self.pending.value_bytes() / bytes)
    }

    /// The bytes a step triggered by a change may rewrite: a segment's worth, more when
    /// changes come faster than passes complete.
    fn step_budget(&self) -> usize {
        self.limits.segment_bytes * self.fullness().clamp(1, MAX_STEP_SEGMENTS)
    }

    /// Calls `visit` with every record whose key is above `after` (all for `None`), in key
    /// order, until it breaks.
    pub fn visit_after(
        &self,
        after: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], RecordRef<'_>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let mut pending = self.pending.after(after).peekable();
        let first = after.map_or(0, |key| self.segment_for(key));
        for (index, segment) in self.segments.iter().enumerate().skip(first) {
            let mut cursor = match after {
                Some(key) if index == first => segment.cursor_near(key),
                _ => segment.cursor(),
            };
            while let Some(raw) = cursor.next() {
                let key = cursor.key();
                if after.is_some_and(|after| key <= after) {
                    continue;
                }
                while let Some((pending_key, change)) = pending.next_if(|(k, _)| *k < key) {
                    visit_change(pending_key, change, &mut visit)?;
                }
                if let Some((pending_key, change)) = pending.next_if(|(k, _)| *k == key) {
                    visit_change(pending_key, change, &mut visit)?;
                    continue;
                }
                visit(key, self.resolve(raw))?;
            }
        }
        for (key, change) in pending {
            visit_change(key, change, &mut visit)?;
        }
        ControlFlow::Continue(())
    }

    /// Merges the changes ahead of the cursor, run after run, until about `budget` bytes
    /// are rewritten or the pass is over; returns the bytes it spent.
    fn step(&mut self, budget: usize) -> usize {
        let mut spent = 0;
        while spent < budget && self.pending.in_pass() {
            spent += self.merge_run(budget - spent);
            self.pending.advance();
        }
        spent
    }

    /// Rewrites the contiguous run of segments that starts where the first change ahead
    /// falls (a segment earlier if that one is small), taking the changes ahead while
    /// `budget` allows; returns the bytes it spent. Does nothing with nothing ahead.
    fn merge_run(&mut self, budget: usize) -> usize {
        let Some(first) = self.pending.first_ahead() else {
            return 0;
        };
        let mut start = self.segment_for(first);
        if start > 0 && self.limits.is_small(self.segments[start - 1].bytes()) {
            start -= 1;
        }
        let mut run = Run {
            merged: Merged::new(self.limits),
            pending: &mut self.pending,
            large: &mut self.large,
            budget,
            spent: 0,
            taken: false,
        };
        let end = run.merge_from(&self.segments, start);
        let spent = run.spent;
        let merged = run.merged.finish();
        let old: usize = self.segments[start..end].iter().map(Segment::records).sum();
        let new: usize = merged.iter().map(Segment::records).sum();
        self.stored = self.stored + new - old;
        self.segments.splice(start..end, merged);
        spent
    }
}

/// Visits a pending change unless it is a removal.
fn visit_change(
    key: &[u8],
    change: &Change,
    visit: &mut impl FnMut(&[u8], RecordRef<'_>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    match change.as_ref() {
        Some(record) => visit(key, record),
        None => ControlFlow::Continue(()),
    }
}

/// One run of a merge step: segments from one on, in order, merged with the changes
/// ahead of the cursor.
struct Run<'a> {
    merged: Merged,
    pending: &'a mut Pending,
    large: &'a mut Slab,
    /// The bytes the run may spend: segments read and changes taken.
    budget: usize,
    spent: usize,
    /// Whether a change was taken: a run takes at least one, so that passes progress.
    taken: bool,
}

impl Run<'_> {
    /// Merges `segments[start]` and those after it for as long as [`Run::goes_on`];
    /// returns the index after the last one merged.
    fn merge_from(&mut self, segments: &[Segment], start: usize) -> usize {
        let empty = Segment::default();
        let mut index = start;
        loop {
            let segment = segments.get(index).unwrap_or(&empty);
            let upper = segments.get(index + 1).map(Segment::first_key);
            self.merge(segment, upper);
            index += 1;
            if index >= segments.len() {
                return index.min(segments.len());
            }
            if !self.goes_on(segments.get(index + 1).map(Segment::first_key)) {
                return index;
            }
        }
    }

    /// Whether the run takes in the next segment (whose keys are below `upper`): until it
    /// has taken a change; then, within budget, if a change ahead falls in it or the
    /// output would close small; and, over budget by less than a segment, only to absorb
    /// a segment without changes when the output would close small (a run starting at
    /// the next change absorbs a small segment before it).
    fn goes_on(&self, upper: Option<&[u8]>) -> bool {
        if !self.taken {
            return true;
        }
        let limits = &self.merged.limits;
        let small =
            !self.merged.builder.is_empty() && limits.is_small(self.merged.builder.byte_len());
        let touched = self
            .pending
            .first_ahead()
            .is_some_and(|key| below(key, upper));
        match self.spent < self.budget {
            true => touched || small,
            false => small && !touched && self.spent < self.budget + limits.segment_bytes,
        }
    }

    /// The next change ahead, if its key is within `upper` and the budget allows.
    fn take(&mut self, upper: Bound<&[u8]>) -> Option<(Box<[u8]>, Change)> {
        if self.taken && self.spent >= self.budget {
            return None;
        }
        let (key, change) = self.pending.take_first(upper)?;
        self.taken = true;
        self.spent += key.len() + change.value_len() + 1;
        Some((key, change))
    }

    /// Merges `segment` (the segment of the keys below `upper`) with the changes ahead
    /// that fall in it: a change replaces the segment's record of its key (freeing its
    /// slab slot), a removal drops it.
    fn merge(&mut self, segment: &Segment, upper: Option<&[u8]>) {
        let mut cursor = segment.cursor();
        // The first key ahead, copied: most records have no change, and comparing each
        // with a copy costs less than looking the key up in the map.
        let mut next: Option<Box<[u8]>> = self.pending.first_ahead().map(Box::from);
        while let Some(raw) = cursor.next() {
            let key = cursor.key();
            let mut replaced = false;
            if next.as_deref().is_some_and(|next| at_or_below(next, key)) {
                while let Some((k, change)) = self.take(Bound::Included(key)) {
                    replaced = *k == *key;
                    if let (true, Stored::Slot(slot)) = (replaced, raw.value) {
                        self.large.remove(slot);
                    }
                    self.merged.push_change(&k, change, self.large);
                }
                next = self.pending.first_ahead().map(Box::from);
            }
            if !replaced {
                self.merged.push(key, &raw);
            }
        }
        let upper = upper.map_or(Bound::Unbounded, Bound::Excluded);
        while let Some((k, change)) = self.take(upper) {
            self.merged.push_change(&k, change, self.large);
        }
        // Counted last, so that the budget checks only the changes taken: a segment
        // begun within budget takes all of its own, up to the budget's worth.
        self.spent += segment.bytes();
    }
}

/// `a <= b`, byte by byte: keys are short, and a call to `memcmp` per record costs more
/// than the comparison.
fn at_or_below(a: &[u8], b: &[u8]) -> bool {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x < y;
        }
    }
    a.len() <= b.len()
}

/// True when `key` is below `upper` (a segment's first key; `None`: no segment follows).
fn below(key: &[u8], upper: Option<&[u8]>) -> bool {
    upper.is_none_or(|upper| key < upper)
}

/// The output of a merge run: closed segments and the one being built.
struct Merged {
    segments: Vec<Segment>,
    builder: Builder,
    limits: Limits,
}

impl Merged {
    fn new(limits: Limits) -> Self {
        Merged {
            segments: Vec::new(),
            builder: Builder::default(),
            limits,
        }
    }

    /// Adds a record, closing the segment first if the record might not fit: segments
    /// stay within `segment_bytes`, a size the allocator has a class for.
    fn push(&mut self, key: &[u8], raw: &Raw<'_>) {
        let inline = match raw.value {
            Stored::Inline(text) | Stored::String(text) => text.len(),
            Stored::Slot(_) => 0,
        };
        let most = key.len() + inline + MAX_RECORD_HEADER;
        if self.builder.byte_len() + most > self.limits.segment_bytes {
            self.close();
        }
        self.builder.push(key, raw);
    }

    /// Adds the record a change leaves, if any.
    fn push_change(&mut self, key: &[u8], change: Change, large: &mut Slab) {
        let Change::Write { version, value } = change else {
            return;
        };
        let value = match value.len() >= self.limits.large_value_bytes {
            true => Stored::Slot(large.insert(value)),
            false => Stored::inline(&value),
        };
        self.push(key, &Raw { version, value });
    }

    fn close(&mut self) {
        self.segments.extend(self.builder.finish());
    }

    /// The segments built.
    fn finish(mut self) -> Vec<Segment> {
        self.close();
        self.segments
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn tiny() -> Table {
        Table {
            limits: Limits {
                segment_bytes: 64,
                min_pending_keys: 3,
                max_pending_bytes: 200,
                large_value_bytes: 12,
            },
            ..Table::default()
        }
    }

    fn version(seq: u64) -> Version {
        Version {
            lamport: seq,
            incarnation: 0,
            seq,
        }
    }

    fn contents(table: &Table, after: Option<&str>) -> Vec<(String, String, u64)> {
        let mut all = Vec::new();
        let _ = table.visit_after(after.map(str::as_bytes), |key, record| {
            let key = String::from_utf8(key.to_vec()).unwrap();
            let value = record.value.to_json();
            all.push((key, value, record.version.seq));
            ControlFlow::Continue(())
        });
        all
    }

    /// Checks the invariants of the module header that reads do not show: segments in
    /// order, disjoint and not empty; `stored`; a slab slot for every record naming one.
    fn check_invariants(table: &Table) -> Result<(), TestCaseError> {
        let mut previous: Option<Vec<u8>> = None;
        let (mut records, mut slots) = (0, 0);
        for segment in &table.segments {
            prop_assert!(segment.records() > 0);
            let mut cursor = segment.cursor();
            while let Some(raw) = cursor.next() {
                let key = cursor.key().to_vec();
                prop_assert!(previous.as_ref().is_none_or(|p| *p < key));
                previous = Some(key);
                records += 1;
                slots += usize::from(matches!(raw.value, Stored::Slot(_)));
            }
        }
        prop_assert_eq!(table.stored, records);
        prop_assert_eq!(table.large.live(), slots);
        Ok(())
    }

    /// A change of the model test: a write of key and value (empty: tombstone), the
    /// removal of a key (`None` value), or an idle moment (one call or two).
    fn arb_op() -> impl Strategy<Value = Result<(String, Option<String>), bool>> {
        let value = proptest::option::weighted(0.85, "\"?[0-9]{0,20}\"?");
        prop_oneof![
            9 => ("[a-d]{1,3}", value).prop_map(Ok),
            1 => any::<bool>().prop_map(Err),
        ]
    }

    proptest! {
        #[test]
        fn at_or_below_is_the_order_of_byte_strings(
            a in prop::collection::vec(0u8..4, 0..6),
            b in prop::collection::vec(0u8..4, 0..6),
        ) {
            prop_assert_eq!(at_or_below(&a, &b), a <= b);
        }

        /// Whatever the writes, removals and idle moments, the table reads and scans like
        /// a map after every call, in the middle of a pass as between passes.
        #[test]
        fn behaves_as_an_ordered_map(ops in prop::collection::vec(arb_op(), 0..200)) {
            let mut table = tiny();
            let mut model: BTreeMap<String, (String, u64)> = BTreeMap::new();
            for (seq, op) in ops.into_iter().enumerate() {
                let seq = seq as u64 + 1;
                match op {
                    Ok((key, Some(value))) => {
                        table.upsert(key.as_bytes(), version(seq), value.as_bytes());
                        model.insert(key, (value, seq));
                    }
                    Ok((key, None)) => {
                        table.remove(key.as_bytes());
                        model.remove(&key);
                    }
                    Err(twice) => {
                        table.maintain();
                        if twice {
                            table.maintain();
                        }
                    }
                }
                check_like(&table, &model)?;
                check_invariants(&table)?;
            }
            settle(&mut table);
            check_like(&table, &model)?;
            check_invariants(&table)?;
        }
    }

    /// Reads and scans of `table` give what `model` holds.
    fn check_like(
        table: &Table,
        model: &BTreeMap<String, (String, u64)>,
    ) -> Result<(), TestCaseError> {
        for (key, (value, seq)) in model {
            let record = table.get(key.as_bytes());
            prop_assert!(record.is_some(), "{key} missing");
            let record = record.unwrap();
            prop_assert_eq!(record.value.to_json(), value.clone());
            prop_assert_eq!(record.version, version(*seq));
        }
        for key in ["a", "b", "c", "d", "aa", "ab", "ba", "dd", "e"] {
            prop_assert_eq!(table.get(key.as_bytes()).is_some(), model.contains_key(key));
        }
        let want: Vec<(String, String, u64)> = model
            .iter()
            .map(|(k, (v, s))| (k.clone(), v.clone(), *s))
            .collect();
        prop_assert_eq!(contents(table, None), want.clone());
        for (i, key) in model.keys().enumerate() {
            prop_assert_eq!(contents(table, Some(key)), want[i + 1..].to_vec());
        }
        Ok(())
    }

    /// Lets `table` idle until its pending changes are merged.
    fn settle(table: &mut Table) {
        for _ in 0..1000 {
            if table.pending.is_empty() {
                return;
            }
            table.maintain();
        }
        panic!("an idle table packs itself");
    }

    #[test]
    fn idle_tables_hold_no_pending_writes() {
        let mut table = Table::default();
        for i in 0..100_000u64 {
            table.upsert(
                format!("k{i}").as_bytes(),
                version(i + 1),
                b"\"0123456789abcdef\"",
            );
            table.end_step();
        }
        assert!(table.pending.len() < 2 * 100_000 / 16);
        assert!(
            !table.maintain(),
            "written to since the last call: not idle yet"
        );
        let mut calls = 1;
        while !table.maintain() {
            calls += 1;
            assert!(calls < 1000, "an idle table packs itself");
        }
        assert!(table.pending.is_empty());
        assert_eq!(table.stored, 100_000);
        assert_eq!(
            table.get(b"k99999").map(|r| r.version),
            Some(version(100_000))
        );
    }

    /// A table with small segments and thresholds, so that passes come often.
    fn small_table(max_pending_bytes: usize) -> Table {
        let limits = Limits {
            segment_bytes: 1024,
            min_pending_keys: 64,
            max_pending_bytes,
            large_value_bytes: 100,
        };
        Table {
            limits,
            ..Table::default()
        }
    }

    /// The most one merge step may rewrite: its largest budget, the segment a run may
    /// absorb at each end, and a record past the budget.
    fn most_in_one_step(limits: &Limits) -> usize {
        limits.segment_bytes * (MAX_STEP_SEGMENTS + 2) + 200
    }

    /// Machine steps that each make many changes (replicated batches, catch-up chunks)
    /// merge one step's budget each, not one per change, until merging falls behind; and
    /// `pending` stays bounded all the same.
    #[test]
    fn a_machine_step_merges_a_bounded_amount_and_pending_stays_bounded() {
        let mut table = small_table(1 << 20);
        let limits = table.limits;
        let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(5);
        let one_step = most_in_one_step(&limits);
        let (mut capped, mut most_pending, mut seq) = (0, 0, 0);
        for _ in 0..400 {
            let (mut spent, mut behind) = (0, false);
            for _ in 0..50 {
                seq += 1;
                let key = format!("k{}", rand::Rng::random_range(&mut rng, 0..20_000));
                table
                    .pending
                    .insert(key.as_bytes(), write(seq, "\"value\""));
                behind |= table.fullness() >= MAX_STEP_SEGMENTS;
                spent += table.keep_up();
                most_pending = most_pending.max(table.pending.len());
            }
            table.end_step();
            if !behind {
                assert!(spent <= one_step, "{spent} bytes in one machine step");
                capped += 1;
            }
        }
        assert!(capped > 100, "{capped} machine steps were capped");
        let threshold = limits.min_pending_keys.max(table.stored / 16);
        let bound = (MAX_STEP_SEGMENTS + 1) * threshold + 50;
        assert!(
            most_pending <= bound,
            "{most_pending} pending keys, bound {bound}"
        );
    }

    /// Under a stream of random writes, every step rewrites a bounded number of bytes and
    /// `pending` stays within a few times its threshold.
    #[test]
    fn steps_and_pending_stay_bounded() {
        let mut table = small_table(4096);
        let limits = table.limits;
        let mut rng = <rand::rngs::SmallRng as rand::SeedableRng>::seed_from_u64(3);
        let most_spent = most_in_one_step(&limits);
        let (mut passes, mut most_pending) = (0, 0);
        for seq in 1..=50_000u64 {
            let key = format!("k{}", rand::Rng::random_range(&mut rng, 0..5000));
            let value = format!("\"{}\"", "v".repeat(seq as usize % 120));
            table.pending.insert(key.as_bytes(), write(seq, &value));
            passes += usize::from(!table.pending.in_pass() && table.fullness() >= 1);
            let spent = table.keep_up();
            table.end_step();
            assert!(spent <= most_spent, "{spent} bytes in one step");
            most_pending = most_pending.max(table.pending.len());
        }
        assert!(passes > 10, "{passes} passes");
        let threshold = limits.min_pending_keys.max(table.stored / 16);
        assert!(most_pending <= 2 * threshold, "{most_pending} pending keys");
    }

    fn write(seq: u64, value: &str) -> Change {
        let value = value.as_bytes().into();
        Change::Write {
            version: version(seq),
            value,
        }
    }

    /// The longest calls on a store of 1,000,000 keys of 32-byte values: loads it in a
    /// random order, then overwrites 200,000 random keys, timing every call, and prints
    /// the maximum and the 99.9th percentile of each phase, the write rate and the bytes
    /// per key. A measurement, not a check (run it with `--release --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement: slow in debug builds"]
    fn call_durations_at_a_million_keys() {
        use rand::seq::SliceRandom;
        use rand::{Rng, SeedableRng};
        const KEYS: u64 = 1_000_000;
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let value = b"\"0123456789abcdef0123456789abcd\"";
        let mut keys: Vec<u64> = (0..KEYS).collect();
        keys.shuffle(&mut rng);
        let mut table = Table::default();
        let mut seq = 0;
        let mut timed = |table: &mut Table, key: u64| {
            seq += 1;
            let key = format!("k{key}");
            let start = std::time::Instant::now();
            table.upsert(key.as_bytes(), version(seq), value);
            start.elapsed()
        };
        let load: Vec<_> = keys.iter().map(|&key| timed(&mut table, key)).collect();
        report("load, 1M upserts", load);
        let idle: Vec<_> = (0..10_000)
            .map(|_| timed_call(|| table.maintain()))
            .collect();
        report("maintain x 10,000", idle);
        let raw: usize = (0..KEYS)
            .map(|key| format!("k{key}").len() + value.len())
            .sum();
        println!(
            "at rest: {} segments, {:.1} bytes per key, {:.2}x raw",
            table.segments.len(),
            table.bytes() as f64 / KEYS as f64,
            table.bytes() as f64 / raw as f64
        );
        let writes: Vec<_> = (0..200_000)
            .map(|_| timed(&mut table, rng.random_range(0..KEYS)))
            .collect();
        report("200k random overwrites", writes);
        let reads: Vec<_> = (0..200_000)
            .map(|_| {
                let key = format!("k{}", rng.random_range(0..KEYS));
                timed_call(|| table.get(key.as_bytes()).is_some())
            })
            .collect();
        report("200k random reads", reads);
        println!(
            "after the overwrites: {:.1} bytes per key",
            table.bytes() as f64 / KEYS as f64
        );
    }

    fn timed_call<T>(call: impl FnOnce() -> T) -> std::time::Duration {
        let start = std::time::Instant::now();
        std::hint::black_box(call());
        start.elapsed()
    }

    /// Prints the maximum, 99.9th percentile and total of `durations`.
    fn report(what: &str, mut durations: Vec<std::time::Duration>) {
        let total: std::time::Duration = durations.iter().sum();
        durations.sort();
        let at = |q: f64| durations[((durations.len() - 1) as f64 * q) as usize];
        println!(
            "{what}: max {:?}, p99.9 {:?}, p99 {:?}, {:.0} calls/s",
            at(1.0),
            at(0.999),
            at(0.99),
            durations.len() as f64 / total.as_secs_f64()
        );
    }

    #[test]
    fn overwritten_large_values_free_their_slots() {
        let mut table = tiny();
        let big = [b'x'; 40];
        for round in 0..10u64 {
            for key in ["a", "b", "c", "d"] {
                table.upsert(key.as_bytes(), version(round + 1), &big);
            }
        }
        settle(&mut table);
        let used = table.large.live();
        assert_eq!(used, 4);
        table.remove(b"a");
        settle(&mut table);
        assert_eq!(table.large.live(), 3, "a removed record frees its slot");
        assert!(table.get(b"a").is_none());
    }
}
