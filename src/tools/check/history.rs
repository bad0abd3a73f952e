//! The recorded history of a workload: one [`Op`] per request, with its answer.
//!
//! A history is plain data (serializable as JSON lines) so that it can be saved, loaded and
//! checked offline. Invariants the recorder keeps and the checker relies on:
//!
//! * `(session, index)` names an operation uniquely; a session's operations are sequential
//!   (each one starts after the previous one ended) and `index` grows with time.
//! * Every value written is unique across the history (a JSON string naming session and op).
//! * Times are microseconds since one common origin (the recorder's start), taken just
//!   before the request was sent and just after its answer (or failure) arrived.
//!
//! The helpers here classify an operation's answer the way the checker reasons about it:
//! what it wrote ([`Op::effect`]), whether it certainly took effect ([`Op::write_status`]),
//! what it read ([`Op::observed`]) and whether it was served at all ([`Op::is_served`]).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kind of a key-value request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Put,
    Get,
    Delete,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Get => "get",
            OpKind::Delete => "delete",
        }
    }
}

/// How a request ended: an HTTP status, or no answer at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "StatusRepr", try_from = "StatusRepr")]
pub enum Status {
    /// The replica answered with this status.
    Http(u16),
    /// The connection failed (refused, reset, unreachable).
    Unreachable,
    /// No answer within the per-request timeout.
    Timeout,
}

impl Status {
    /// A short label for reports: `"201"`, `"unreachable"`, `"timeout"`.
    pub fn label(self) -> String {
        match self {
            Status::Http(code) => code.to_string(),
            Status::Unreachable => "unreachable".into(),
            Status::Timeout => "timeout".into(),
        }
    }
}

/// JSON form of a [`Status`]: the number, or the word.
#[derive(Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum StatusRepr {
    Code(u16),
    Word(String),
}

impl From<Status> for StatusRepr {
    fn from(status: Status) -> Self {
        match status {
            Status::Http(code) => StatusRepr::Code(code),
            other => StatusRepr::Word(other.label()),
        }
    }
}

impl TryFrom<StatusRepr> for Status {
    type Error = String;

    fn try_from(repr: StatusRepr) -> Result<Self, String> {
        match repr {
            StatusRepr::Code(code) => Ok(Status::Http(code)),
            StatusRepr::Word(word) => match word.as_str() {
                "unreachable" => Ok(Status::Unreachable),
                "timeout" => Ok(Status::Timeout),
                _ => Err(format!("unknown status {word:?}")),
            },
        }
    }
}

/// One request and its answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// The session that issued it.
    pub session: u32,
    /// Its position in the session (0, 1, 2, ...).
    pub index: u32,
    /// The replica it was sent to.
    pub replica: String,
    pub kind: OpKind,
    pub key: String,
    /// True for a key written once, by this op alone, and never deleted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub write_once: bool,
    /// The value a PUT wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Microseconds since the history's origin when the request was sent.
    pub start_us: u64,
    /// Microseconds since the history's origin when its answer (or failure) came.
    pub end_us: u64,
    pub status: Status,
    /// The value a GET answered with (status 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<Value>,
    /// Why the request failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_false(flag: &bool) -> bool {
    !*flag
}

/// What a write does to its key.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect<'a> {
    Put(&'a Value),
    Delete,
}

/// Whether a write took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteStatus {
    /// Acknowledged (2xx): it took effect and the session saw its metadata.
    Acknowledged,
    /// Failed without a definite answer (503, no answer, anything unexpected): it may or
    /// may not have taken effect, and the session did not see its metadata.
    Indeterminate,
    /// Certainly wrote nothing (a DELETE answered 404).
    NoEffect,
}

/// What a served read saw.
#[derive(Clone, Debug, PartialEq)]
pub enum Observed<'a> {
    Value(&'a Value),
    Absent,
}

impl Op {
    /// True when a replica served the request (a well-formed 2xx or 404): the session then
    /// carries the answer's metadata (or keeps its own) into its next request. A 2xx whose
    /// body was unusable is not served: its metadata never reached the session.
    pub fn is_served(&self) -> bool {
        matches!(self.status, Status::Http(200..=299 | 404)) && self.error.is_none()
    }

    /// What this op writes, if it is a write (whether or not it took effect).
    pub fn effect(&self) -> Option<Effect<'_>> {
        match self.kind {
            OpKind::Put => self.value.as_ref().map(Effect::Put),
            OpKind::Delete => Some(Effect::Delete),
            OpKind::Get => None,
        }
    }

    /// Whether this write took effect; `None` for reads.
    pub fn write_status(&self) -> Option<WriteStatus> {
        self.effect()?;
        Some(match (self.is_served(), self.kind, self.status) {
            (true, _, Status::Http(200..=299)) => WriteStatus::Acknowledged,
            (true, OpKind::Delete, Status::Http(404)) => WriteStatus::NoEffect,
            _ => WriteStatus::Indeterminate,
        })
    }

    /// True for a write that certainly took effect.
    pub fn is_acknowledged_write(&self) -> bool {
        self.write_status() == Some(WriteStatus::Acknowledged)
    }

    /// True for a write that may or may not have taken effect.
    pub fn is_indeterminate_write(&self) -> bool {
        self.write_status() == Some(WriteStatus::Indeterminate)
    }

    /// What a served read observed: a GET's 200 value or 404, or a DELETE's 404 (which
    /// says the key was absent at that replica).
    pub fn observed(&self) -> Option<Observed<'_>> {
        if !self.is_served() {
            return None;
        }
        match (self.kind, self.status) {
            (OpKind::Get, Status::Http(200)) => self.read.as_ref().map(Observed::Value),
            (OpKind::Get | OpKind::Delete, Status::Http(404)) => Some(Observed::Absent),
            _ => None,
        }
    }
}

impl fmt::Display for Op {
    /// `s3#17 PUT k1="s3-17" at 10.0.0.2:8090 [12.345-12.350 ms] -> 201`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "s{}#{} {} {}",
            self.session,
            self.index,
            self.kind.name().to_uppercase(),
            self.key
        )?;
        if let Some(value) = &self.value {
            write!(f, "={value}")?;
        }
        write!(
            f,
            " at {} [{:.3}-{:.3} s] -> {}",
            self.replica,
            self.start_us as f64 / 1e6,
            self.end_us as f64 / 1e6,
            self.status.label()
        )?;
        if let Some(read) = &self.read {
            write!(f, " {read}")?;
        }
        if let Some(error) = &self.error {
            write!(f, " ({error})")?;
        }
        Ok(())
    }
}

/// Every operation of a run, in no particular order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    pub fn new(ops: Vec<Op>) -> Self {
        History { ops }
    }

    /// Every key an operation touched.
    pub fn keys(&self) -> BTreeSet<String> {
        self.ops.iter().map(|op| op.key.clone()).collect()
    }

    /// The history as JSON lines, one op per line, in start order.
    pub fn to_jsonl(&self) -> String {
        let mut ops: Vec<&Op> = self.ops.iter().collect();
        ops.sort_by_key(|op| (op.start_us, op.session, op.index));
        let mut out = String::new();
        for op in ops {
            // An `Op` holds only strings, numbers and JSON values: it always serializes.
            if let Ok(line) = serde_json::to_string(op) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    /// Parses JSON lines written by [`History::to_jsonl`]; blank lines are skipped.
    pub fn from_jsonl(text: &str) -> Result<Self, String> {
        let ops = text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(n, line)| serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1)))
            .collect::<Result<_, _>>()?;
        Ok(History { ops })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(kind: OpKind, status: Status) -> Op {
        Op {
            session: 1,
            index: 2,
            replica: "r1".into(),
            kind,
            key: "k".into(),
            write_once: false,
            value: (kind == OpKind::Put).then(|| json!("s1-2")),
            start_us: 10,
            end_us: 20,
            status,
            read: None,
            error: None,
        }
    }

    #[test]
    fn jsonl_round_trips() {
        let mut get = op(OpKind::Get, Status::Http(200));
        get.read = Some(json!("s0-0"));
        let mut put = op(OpKind::Put, Status::Timeout);
        put.error = Some("slow".into());
        put.write_once = true;
        let history = History::new(vec![get, put, op(OpKind::Delete, Status::Unreachable)]);
        let text = history.to_jsonl();
        assert_eq!(text.lines().count(), 3);
        assert!(text.contains("\"status\":\"timeout\""));
        assert!(text.contains("\"status\":200"));
        let back = History::from_jsonl(&text).unwrap();
        assert_eq!(back, history);
    }

    #[test]
    fn bad_lines_are_reported() {
        let err = History::from_jsonl("\n{\"nope\": 1}\n").unwrap_err();
        assert!(err.starts_with("line 2"), "{err}");
    }

    #[test]
    fn answers_are_classified() {
        use WriteStatus::*;
        let put = |s| op(OpKind::Put, s).write_status();
        assert_eq!(put(Status::Http(201)), Some(Acknowledged));
        assert_eq!(put(Status::Http(503)), Some(Indeterminate));
        assert_eq!(put(Status::Timeout), Some(Indeterminate));
        let delete = |s| op(OpKind::Delete, s);
        assert_eq!(delete(Status::Http(404)).write_status(), Some(NoEffect));
        assert_eq!(delete(Status::Http(404)).observed(), Some(Observed::Absent));
        assert_eq!(delete(Status::Http(200)).observed(), None);
        assert!(delete(Status::Http(404)).is_served());
        assert!(!delete(Status::Http(503)).is_served());
        assert_eq!(op(OpKind::Get, Status::Http(200)).write_status(), None);
        let mut garbled = op(OpKind::Put, Status::Http(200));
        garbled.error = Some("unexpected answer: not JSON".into());
        assert!(!garbled.is_served());
        assert_eq!(garbled.write_status(), Some(Indeterminate));
        assert_eq!(
            op(OpKind::Get, Status::Http(404)).observed(),
            Some(Observed::Absent)
        );
    }

    #[test]
    fn ops_display_compactly() {
        let shown = op(OpKind::Put, Status::Http(201)).to_string();
        assert_eq!(shown, "s1#2 PUT k=\"s1-2\" at r1 [0.000-0.000 s] -> 201");
    }
}
