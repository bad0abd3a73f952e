//! `causalkv status`: the cluster at a glance.
//!
//! Asks each replica given with `--replica` (exactly those, concurrently) for `GET /health`
//! and prints, for people, one row per replica (address, incarnation epoch, uptime,
//! readiness, view size, keys, store bytes, delivery buffer), the view the replicas hold
//! (or, when they differ, the view most of them hold and every other one), a table of
//! each replica's peers (status, queue depth, lag) and a one-line verdict; or, with
//! `--json`, one JSON document:
//! `{"replicas":[{"replica":R,"reachable":true,"health":{..as received..}} |
//! {"replica":R,"reachable":false,"error":E}],"views_agree":B,"healthy":B}`.
//! `--watch` prints again every `--interval` until Ctrl-C (or `--count` refreshes), one
//! JSON document per line with `--json`.
//!
//! The cluster is healthy when every replica answered, every one is ready and their views
//! agree as sets: [`run`] then answers `Ok(true)`, else `Ok(false)` (with `--watch`, the
//! verdict of the last refresh). A replica that does not answer in `--timeout`, answers
//! anything but `200` or sends a body that is not a well-formed health report counts as
//! unreachable, with the reason shown; nothing a replica sends can stop the command.
//! `Err` ([`StatusError`]) is for usage and TLS configuration errors only.
//!
//! Querying ([`observe`]) is apart from judging ([`verdict`]) and printing
//! ([`render_table`], [`render_json`]), which are pure functions of the [`Observed`]
//! replicas.

use std::collections::BTreeSet;
use std::io::{self, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::MissedTickBehavior;

use crate::tools::client::{Client, ClientError, Method, RawReply, StatusCode};

/// `causalkv status`.
#[derive(Args, Debug, Clone)]
#[command(after_help = EXIT_STATUS_HELP)]
pub struct StatusArgs {
    /// Replica to query, IP:PORT (plain HTTP) or https://IP:PORT (with --tls-ca);
    /// repeatable or comma-separated. Exactly these are queried.
    #[arg(
        long = "replica",
        value_name = "[https://]IP:PORT",
        env = "CAUSALKV_REPLICA",
        value_delimiter = ',',
        default_value = "127.0.0.1:8082"
    )]
    pub replicas: Vec<String>,
    /// CA certificate (PEM) that signed the replicas' certificates: needed to talk to
    /// https:// replicas.
    #[arg(long, value_name = "PATH", env = "CAUSALKV_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Print one JSON document (one per line with --watch) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Print again every --interval until Ctrl-C (or --count refreshes).
    #[arg(long)]
    pub watch: bool,
    /// Time between refreshes with --watch.
    #[arg(long, value_name = "DURATION", default_value = "1s", requires = "watch",
          value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Stop after N refreshes with --watch.
    #[arg(long, value_name = "N", requires = "watch",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// How long each replica may take to answer before it counts as unreachable.
    #[arg(long, value_name = "DURATION", default_value = "2s",
          value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// The exit statuses, as `--help` shows them.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  healthy: every replica answered, is ready, and their views agree
  1  a replica is unreachable or not ready, or the views disagree
     (with --watch: as of the last refresh)
  2  usage or TLS configuration error";

/// What stops the command before any replica is asked.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no replica given: pass --replica IP:PORT or https://IP:PORT")]
    NoReplica,
    #[error("{0} must be positive")]
    ZeroDuration(&'static str),
    #[error("{replica} is https:// but no --tls-ca was given to trust it")]
    NoCa { replica: String },
    /// The `--tls-ca` file is unreadable or holds no usable certificate.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A replica's `/health` answer, as far as this command reads it (a mirror of
/// `crate::server::health::Health`; unknown fields are ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    pub replica: String,
    /// `address#epoch`, `null` while bootstrapping.
    pub incarnation: Option<String>,
    pub uptime_seconds: f64,
    pub ready: bool,
    pub view: Vec<String>,
    pub keys: u64,
    pub store_bytes: u64,
    pub delivery_buffer: u64,
    pub peers: Vec<PeerReport>,
}

/// One peer as a replica reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerReport {
    pub addr: String,
    /// `up` or `down`.
    pub status: String,
    pub queue_depth: u64,
    pub lag_writes: u64,
}

/// What asking one replica gave.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// A well-formed health report, parsed and as received.
    Answered { health: HealthReport, raw: Value },
    /// No answer, or not a health report: why, in one line.
    Unreachable(String),
}

impl Observation {
    /// A `200` answer's body: a health report, or unreachable when it is not one.
    pub fn from_body(body: Value) -> Observation {
        match HealthReport::deserialize(&body) {
            Ok(health) => Observation::Answered { health, raw: body },
            Err(e) => Observation::Unreachable(one_line(&format!("malformed /health answer: {e}"))),
        }
    }

    /// The outcome of `GET /health`.
    pub fn from_reply(reply: Result<RawReply, ClientError>) -> Observation {
        match reply {
            Ok(reply) if reply.status == StatusCode::OK => Observation::from_body(reply.body),
            Ok(reply) => Observation::Unreachable(one_line(&format!(
                "/health answered {}: {}",
                reply.status, reply.body
            ))),
            Err(error) => Observation::Unreachable(failure_reason(&error)),
        }
    }
}

/// One replica as given on the command line and what it answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub replica: String,
    pub observation: Observation,
}

impl Observed {
    pub fn health(&self) -> Option<&HealthReport> {
        match &self.observation {
            Observation::Answered { health, .. } => Some(health),
            Observation::Unreachable(_) => None,
        }
    }

    fn to_json(&self) -> Value {
        match &self.observation {
            Observation::Answered { raw, .. } => {
                json!({"replica": self.replica, "reachable": true, "health": raw})
            }
            Observation::Unreachable(error) => {
                json!({"replica": self.replica, "reachable": false, "error": error})
            }
        }
    }
}

/// A view, compared as a set.
type ViewSet = BTreeSet<String>;

/// The judgement of one round of observations.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub unreachable: usize,
    /// Reachable replicas that are not ready.
    pub not_ready: usize,
    /// The view most reachable replicas hold (on a tie, the one listed first); `None`
    /// when no replica answered.
    pub majority: Option<ViewSet>,
    /// How many reachable replicas hold `majority`.
    pub majority_holders: usize,
    /// Per observation, in order: whether it answered with a view other than `majority`.
    pub differs: Vec<bool>,
}

impl Verdict {
    pub fn reachable(&self) -> usize {
        self.differs.len() - self.unreachable
    }

    pub fn views_agree(&self) -> bool {
        !self.differs.contains(&true)
    }

    pub fn healthy(&self) -> bool {
        self.unreachable == 0 && self.not_ready == 0 && self.views_agree()
    }

    /// One line: `healthy: ...` or `unhealthy: ` and what is wrong.
    pub fn summary(&self) -> String {
        let total = self.differs.len();
        if self.healthy() {
            let replicas = plural(total, "replica");
            return format!("healthy: {replicas} reachable and ready, views agree");
        }
        let mut wrong = Vec::new();
        if self.unreachable > 0 {
            wrong.push(format!("{} of {total} unreachable", self.unreachable));
        }
        if self.not_ready > 0 {
            wrong.push(format!("{} not ready", self.not_ready));
        }
        if !self.views_agree() {
            wrong.push("views differ".to_string());
        }
        format!("unhealthy: {}", wrong.join(", "))
    }
}

/// Judges a round of observations.
pub fn verdict(observed: &[Observed]) -> Verdict {
    let views: Vec<Option<ViewSet>> = observed
        .iter()
        .map(|o| o.health().map(|h| h.view.iter().cloned().collect()))
        .collect();
    let (majority, majority_holders) = majority(views.iter().flatten());
    let differs = views
        .iter()
        .map(|view| matches!((view, &majority), (Some(v), Some(m)) if v != m))
        .collect();
    Verdict {
        unreachable: views.iter().filter(|v| v.is_none()).count(),
        not_ready: observed
            .iter()
            .filter(|o| o.health().is_some_and(|h| !h.ready))
            .count(),
        majority,
        majority_holders,
        differs,
    }
}

/// The most frequent view and its count; the earliest of equally frequent ones.
fn majority<'a>(views: impl Iterator<Item = &'a ViewSet> + Clone) -> (Option<ViewSet>, usize) {
    let mut best: Option<(&ViewSet, usize)> = None;
    for view in views.clone() {
        let count = views.clone().filter(|other| *other == view).count();
        if best.is_none_or(|(_, most)| count > most) {
            best = Some((view, count));
        }
    }
    match best {
        Some((view, count)) => (Some(view.clone()), count),
        None => (None, 0),
    }
}

/// The document `--json` prints.
pub fn render_json(observed: &[Observed]) -> Value {
    let verdict = verdict(observed);
    let replicas: Vec<Value> = observed.iter().map(Observed::to_json).collect();
    json!({
        "replicas": replicas,
        "views_agree": verdict.views_agree(),
        "healthy": verdict.healthy(),
    })
}

/// The tables for people: replicas, the view(s), peers, and the verdict's summary.
pub fn render_table(observed: &[Observed]) -> String {
    let verdict = verdict(observed);
    let mut out = replica_table(observed, &verdict);
    out.push('\n');
    out.push_str(&views_section(observed, &verdict));
    let peers = peer_table(observed);
    if !peers.is_empty() {
        out.push('\n');
        out.push_str(&peers);
    }
    out.push('\n');
    out.push_str(&verdict.summary());
    out.push('\n');
    out
}

const REPLICA_HEADER: [&str; 8] = [
    "ADDRESS",
    "INCARNATION",
    "UPTIME",
    "READY",
    "VIEW",
    "KEYS",
    "STORE",
    "BUFFER",
];

fn replica_table(observed: &[Observed], verdict: &Verdict) -> String {
    let mut rows = vec![Row::header(&REPLICA_HEADER)];
    for (o, differs) in observed.iter().zip(&verdict.differs) {
        rows.push(match &o.observation {
            Observation::Answered { health, .. } => replica_row(&o.replica, health, *differs),
            Observation::Unreachable(reason) => Row::Note(
                cell(&o.replica),
                format!("unreachable: {}", one_line(reason)),
            ),
        });
    }
    align(&rows)
}

fn replica_row(replica: &str, health: &HealthReport, differs: bool) -> Row {
    let marker = if differs { "*" } else { "" };
    Row::Cells(vec![
        cell(replica),
        cell(&epoch(health.incarnation.as_deref())),
        human_duration(health.uptime_seconds),
        (if health.ready { "yes" } else { "no" }).to_string(),
        format!("{}{marker}", health.view.len()),
        health.keys.to_string(),
        human_bytes(health.store_bytes),
        health.delivery_buffer.to_string(),
    ])
}

/// The epoch of an incarnation `address#epoch`; `-` when there is none yet.
fn epoch(incarnation: Option<&str>) -> String {
    match incarnation {
        Some(inc) => inc
            .rsplit_once('#')
            .map_or(inc, |(_, epoch)| epoch)
            .to_string(),
        None => "-".to_string(),
    }
}

/// The view all reachable replicas hold, or the majority's and every differing one.
fn views_section(observed: &[Observed], verdict: &Verdict) -> String {
    let Some(majority) = &verdict.majority else {
        return "View: unknown (no replica answered)\n".to_string();
    };
    let reachable = verdict.reachable();
    if verdict.views_agree() {
        let all = plural(reachable, "reachable replica");
        return format!("View: {} (all {all} agree)\n", list(majority));
    }
    let holders = verdict.majority_holders;
    let mut out = format!(
        "Views differ: {holders} of {reachable} reachable replicas hold {}; the others (*):\n",
        list(majority)
    );
    let rows: Vec<Row> = observed
        .iter()
        .zip(&verdict.differs)
        .filter(|(_, differs)| **differs)
        .filter_map(|(o, _)| Some((o, o.health()?)))
        .map(|(o, health)| {
            let view: ViewSet = health.view.iter().cloned().collect();
            Row::Cells(vec![format!("  {}", cell(&o.replica)), list(&view)])
        })
        .collect();
    out.push_str(&align(&rows));
    out
}

/// `a, b, c`, or `(empty)`.
fn list(view: &ViewSet) -> String {
    if view.is_empty() {
        return "(empty)".to_string();
    }
    view.iter()
        .map(|addr| cell(addr))
        .collect::<Vec<_>>()
        .join(", ")
}

const PEER_HEADER: [&str; 5] = ["REPLICA", "PEER", "STATUS", "QUEUE", "LAG"];

/// Every reachable replica's peers; empty when none has any.
fn peer_table(observed: &[Observed]) -> String {
    let rows: Vec<Row> = observed
        .iter()
        .filter_map(|o| Some((o, o.health()?)))
        .flat_map(|(o, health)| {
            health.peers.iter().map(|peer| {
                Row::Cells(vec![
                    cell(&o.replica),
                    cell(&peer.addr),
                    cell(&peer.status),
                    peer.queue_depth.to_string(),
                    peer.lag_writes.to_string(),
                ])
            })
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut all = vec![Row::header(&PEER_HEADER)];
    all.extend(rows);
    align(&all)
}

/// A line of a table: cells in columns, or a first cell and text spanning the rest.
enum Row {
    Cells(Vec<String>),
    Note(String, String),
}

impl Row {
    fn header(names: &[&str]) -> Row {
        Row::Cells(names.iter().map(|name| name.to_string()).collect())
    }
}

/// The rows with every column as wide as its widest cell, two spaces apart, no trailing
/// blanks.
fn align(rows: &[Row]) -> String {
    let width = |text: &str| text.chars().count();
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        let cells: Vec<&str> = match row {
            Row::Cells(cells) => cells.iter().map(String::as_str).collect(),
            Row::Note(first, _) => vec![first.as_str()],
        };
        for (i, text) in cells.into_iter().enumerate() {
            match widths.get_mut(i) {
                Some(w) => *w = (*w).max(width(text)),
                None => widths.push(width(text)),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<&str> = match row {
            Row::Cells(cells) => cells.iter().map(String::as_str).collect(),
            Row::Note(first, rest) => vec![first.as_str(), rest.as_str()],
        };
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(text, &w)| format!("{text:<w$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Longest text a replica can put in one cell.
const MAX_CELL: usize = 80;

/// Text from a replica, fit for a table cell: control characters replaced, bounded.
fn cell(text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    bounded(clean, MAX_CELL)
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn bounded(text: String, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

/// One line of at most 200 characters: whitespace runs and control characters become
/// one space.
fn one_line(text: &str) -> String {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty())
        .collect();
    bounded(words.join(" "), 200)
}

/// Why a request got no usable answer, without the replica's name (the row shows it).
fn failure_reason(error: &ClientError) -> String {
    match error {
        ClientError::Unreachable { reason, .. } => one_line(reason),
        ClientError::Timeout { timeout, .. } => {
            format!("no answer within {}", humantime::format_duration(*timeout))
        }
        ClientError::Unexpected { status, body, .. } if body.trim().is_empty() => {
            format!("/health answered {status} with an empty body")
        }
        ClientError::Unexpected { status, body, .. } => {
            one_line(&format!("/health answered {status}, not JSON: {body}"))
        }
        other => one_line(&other.to_string()),
    }
}

/// `42s`, `3m12s`, `5h07m`, `2d03h`.
pub fn human_duration(seconds: f64) -> String {
    // `as` saturates: negative and NaN become 0, huge values u64::MAX.
    let s = seconds as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m{:02}s", s / 60, s % 60),
        3_600..86_400 => format!("{}h{:02}m", s / 3_600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86_400, s / 3_600 % 24),
    }
}

/// `512 B`, `1.2 KiB`, `3.4 MiB`, ... up to `PiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The `--replica` list: trimmed, without empty entries or repeats, not empty; an
/// `https://` replica needs `--tls-ca`.
fn replica_list(given: &[String], has_ca: bool) -> Result<Vec<String>, StatusError> {
    let mut replicas: Vec<String> = Vec::new();
    for replica in given.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
        if !has_ca && replica.starts_with("https://") {
            return Err(StatusError::NoCa {
                replica: replica.to_string(),
            });
        }
        if !replicas.iter().any(|known| known == replica) {
            replicas.push(replica.to_string());
        }
    }
    if replicas.is_empty() {
        return Err(StatusError::NoReplica);
    }
    Ok(replicas)
}

/// Asks every replica for `/health` at once; the observations are in `replicas`' order.
pub async fn observe(client: &Client, replicas: &[String]) -> Vec<Observed> {
    let queries: Vec<_> = replicas
        .iter()
        .map(|replica| {
            let (client, replica) = (client.clone(), replica.clone());
            tokio::spawn(
                async move { client.request(Method::GET, &replica, "/health", None).await },
            )
        })
        .collect();
    let mut observed = Vec::with_capacity(replicas.len());
    for (replica, query) in replicas.iter().zip(queries) {
        let observation = match query.await {
            Ok(reply) => Observation::from_reply(reply),
            Err(e) => Observation::Unreachable(one_line(&format!("query failed: {e}"))),
        };
        observed.push(Observed {
            replica: replica.clone(),
            observation,
        });
    }
    observed
}

/// Prints the cluster's status; `Ok(true)` when every replica is reachable and ready and
/// their views agree (with `--watch`, at the last refresh).
pub async fn run(args: StatusArgs) -> Result<bool, StatusError> {
    let replicas = replica_list(&args.replicas, args.tls_ca.is_some())?;
    if args.timeout.is_zero() {
        return Err(StatusError::ZeroDuration("--timeout"));
    }
    if args.interval.is_zero() {
        return Err(StatusError::ZeroDuration("--interval"));
    }
    let client = Client::with_tls_ca(args.timeout, args.tls_ca.as_deref())?;
    if !args.watch {
        let observed = observe(&client, &replicas).await;
        print(&render(&observed, args.json));
        return Ok(verdict(&observed).healthy());
    }
    Ok(watch(&client, &replicas, &args).await)
}

/// The tables or the JSON line.
fn render(observed: &[Observed], json: bool) -> String {
    if json {
        format!("{}\n", render_json(observed))
    } else {
        render_table(observed)
    }
}

/// Refreshes every `--interval` until Ctrl-C, `--count` refreshes or a closed stdout;
/// whether the last refresh was healthy.
async fn watch(client: &Client, replicas: &[String], args: &StatusArgs) -> bool {
    let interrupted = interrupted();
    tokio::pin!(interrupted);
    let mut ticks = tokio::time::interval(args.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let terminal = io::stdout().is_terminal();
    let mut healthy = false;
    let mut refreshes = 0;
    loop {
        let observed = tokio::select! {
            () = &mut interrupted => break,
            observed = async {
                ticks.tick().await;
                observe(client, replicas).await
            } => observed,
        };
        refreshes += 1;
        healthy = verdict(&observed).healthy();
        let mut text = render(&observed, args.json);
        if !args.json {
            text = format!("{}{text}", watch_header(args.interval, refreshes, terminal));
        }
        if !print(&text) || args.count == Some(refreshes) {
            break;
        }
    }
    healthy
}

/// What precedes each refresh's tables: the screen cleared on a terminal, else a blank
/// line between refreshes; then when and how often.
fn watch_header(interval: Duration, refresh: u64, terminal: bool) -> String {
    let clear = match (terminal, refresh) {
        (true, _) => "\x1b[H\x1b[2J",
        (false, 1) => "",
        (false, _) => "\n",
    };
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    let every = humantime::format_duration(interval);
    format!("{clear}Every {every}, at {now} (Ctrl-C to stop)\n\n")
}

/// Resolves on Ctrl-C; never, when the signal cannot be listened for.
async fn interrupted() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Writes to stdout; false when stdout is gone (a closed pipe).
fn print(text: &str) -> bool {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    const A: &str = "127.0.0.1:8082";
    const B: &str = "127.0.0.1:8083";
    const C: &str = "127.0.0.1:8084";

    /// The health report `replica` would send with `view` (its peers: the rest of it).
    fn report(replica: &str, view: &[&str]) -> Value {
        let peers: Vec<Value> = view
            .iter()
            .filter(|peer| **peer != replica)
            .map(|peer| json!({"addr": peer, "status": "up", "queue_depth": 0, "lag_writes": 2}))
            .collect();
        json!({
            "replica": replica,
            "incarnation": format!("{replica}#1796115355454680"),
            "uptime_seconds": 192.4,
            "ready": true,
            "view": view,
            "keys": 12,
            "store_bytes": 1_258_291,
            "delivery_buffer": 0,
            "peers": peers,
        })
    }

    fn answered(replica: &str, body: Value) -> Observed {
        let observation = Observation::from_body(body);
        assert!(matches!(observation, Observation::Answered { .. }));
        Observed {
            replica: replica.to_string(),
            observation,
        }
    }

    fn unreachable(replica: &str, reason: &str) -> Observed {
        Observed {
            replica: replica.to_string(),
            observation: Observation::Unreachable(reason.to_string()),
        }
    }

    fn healthy_three() -> Vec<Observed> {
        let view = [A, B, C];
        vec![
            answered(A, report(A, &view)),
            answered(B, report(B, &view)),
            // The same members in another order: views compare as sets.
            answered(C, report(C, &[C, B, A])),
        ]
    }

    /// The character column where `needle` starts in `line`.
    fn column(line: &str, needle: &str) -> usize {
        let at = line
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} in {line:?}"));
        line[..at].chars().count()
    }

    #[test]
    fn a_healthy_cluster_is_one_aligned_row_per_replica() {
        let observed = healthy_three();
        let verdict = verdict(&observed);
        assert!(verdict.healthy() && verdict.views_agree());
        let table = render_table(&observed);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ADDRESS  "), "{table}");
        for (line, addr) in lines[1..4].iter().zip([A, B, C]) {
            assert!(line.starts_with(addr), "{table}");
            assert_eq!(
                column(line, "1796115355454680"),
                column(lines[0], "INCARNATION")
            );
            assert_eq!(column(line, "3m12s"), column(lines[0], "UPTIME"));
            assert_eq!(column(line, "yes"), column(lines[0], "READY"));
            assert_eq!(column(line, "1.2 MiB"), column(lines[0], "STORE"));
            assert!(!line.contains('*'), "{table}");
        }
        assert_eq!(lines[4], "");
        assert_eq!(
            lines[5],
            format!("View: {A}, {B}, {C} (all 3 reachable replicas agree)")
        );
        assert!(lines[7].starts_with("REPLICA  "), "{table}");
        assert_eq!(table.lines().filter(|l| l.contains("  up  ")).count(), 6);
        assert_eq!(
            table.lines().last(),
            Some("healthy: 3 replicas reachable and ready, views agree")
        );
        assert!(table.lines().all(|line| line == line.trim_end()));
    }

    #[test]
    fn an_unreachable_replica_is_a_row_with_its_reason_and_fails() {
        let mut observed = healthy_three();
        observed[2] = unreachable(C, "tcp connect error: Connection refused");
        let verdict = verdict(&observed);
        assert_eq!((verdict.unreachable, verdict.reachable()), (1, 2));
        assert!(verdict.views_agree() && !verdict.healthy());
        let table = render_table(&observed);
        let row = table.lines().find(|l| l.starts_with(C)).expect("C's row");
        assert_eq!(
            column(row, "unreachable: tcp connect error"),
            column(&table, "INCARNATION")
        );
        assert!(
            table.ends_with("unhealthy: 1 of 3 unreachable\n"),
            "{table}"
        );
        let json = render_json(&observed);
        assert_eq!(json["healthy"], json!(false));
        assert_eq!(json["views_agree"], json!(true));
        assert_eq!(
            json["replicas"][2],
            json!({"replica": C, "reachable": false,
                   "error": "tcp connect error: Connection refused"})
        );
    }

    #[test]
    fn a_replica_that_is_not_ready_fails() {
        let mut observed = healthy_three();
        let mut body = report(A, &[A, B, C]);
        body["ready"] = json!(false);
        body["incarnation"] = Value::Null;
        observed[0] = answered(A, body);
        let verdict = verdict(&observed);
        assert_eq!(verdict.not_ready, 1);
        assert!(!verdict.healthy());
        let table = render_table(&observed);
        let row = table.lines().find(|l| l.starts_with(A)).expect("A's row");
        assert_eq!(column(row, "no "), column(&table, "READY"));
        assert_eq!(column(row, "- "), column(&table, "INCARNATION"));
        assert!(table.ends_with("unhealthy: 1 not ready\n"), "{table}");
        assert_eq!(render_json(&observed)["healthy"], json!(false));
    }

    #[test]
    fn disagreeing_views_are_marked_and_listed() {
        let observed = vec![
            answered(A, report(A, &[A, B])),
            answered(B, report(B, &[B, A])),
            answered(C, report(C, &[C])),
        ];
        let verdict = verdict(&observed);
        assert_eq!(verdict.differs, [false, false, true]);
        assert_eq!(verdict.majority_holders, 2);
        assert!(!verdict.views_agree() && !verdict.healthy());
        let table = render_table(&observed);
        let row = table.lines().find(|l| l.starts_with(C)).expect("C's row");
        assert_eq!(column(row, "1*"), column(&table, "VIEW"));
        assert!(
            table.contains(&format!(
                "Views differ: 2 of 3 reachable replicas hold {A}, {B}; the others (*):\n  {C}  {C}\n"
            )),
            "{table}"
        );
        assert!(table.ends_with("unhealthy: views differ\n"), "{table}");
        let json = render_json(&observed);
        assert_eq!(json["views_agree"], json!(false));
        assert_eq!(json["healthy"], json!(false));
    }

    #[test]
    fn on_a_tie_the_first_reachable_view_is_the_reference() {
        let observed = vec![
            unreachable(A, "down"),
            answered(B, report(B, &[B])),
            answered(C, report(C, &[C])),
        ];
        let verdict = verdict(&observed);
        assert_eq!(verdict.majority, Some(ViewSet::from([B.to_string()])));
        assert_eq!(verdict.differs, [false, false, true]);
        assert_eq!(
            verdict.summary(),
            "unhealthy: 1 of 3 unreachable, views differ"
        );
    }

    #[test]
    fn nobody_answering_is_unhealthy_without_a_view() {
        let observed = vec![unreachable(A, "timeout")];
        let verdict = verdict(&observed);
        assert_eq!(verdict.majority, None);
        assert!(!verdict.healthy());
        let table = render_table(&observed);
        assert!(table.contains("View: unknown (no replica answered)"));
        assert!(!table.contains("REPLICA"), "no peer table: {table}");
    }

    #[test]
    fn json_echoes_the_health_report_as_received() {
        let mut body = report(A, &[A]);
        body["a_field_from_the_future"] = json!([1, 2]);
        let observed = vec![answered(A, body.clone())];
        assert_eq!(
            render_json(&observed),
            json!({
                "replicas": [{"replica": A, "reachable": true, "health": body}],
                "views_agree": true,
                "healthy": true,
            })
        );
    }

    #[test]
    fn whatever_a_replica_sends_is_judged_not_panicked_on() {
        for body in [json!("hello"), json!({"replica": 5}), json!({}), {
            let mut negative = report(A, &[A]);
            negative["keys"] = json!(-1);
            negative
        }] {
            let observation = Observation::from_body(body);
            assert!(
                matches!(&observation, Observation::Unreachable(why) if why.starts_with("malformed /health answer")),
                "{observation:?}"
            );
        }
        let not_ok = Observation::from_reply(Ok(RawReply {
            status: StatusCode::NOT_FOUND,
            body: json!({"error": "no\nsuch"}),
        }));
        assert_eq!(
            not_ok,
            Observation::Unreachable(
                r#"/health answered 404 Not Found: {"error":"no\nsuch"}"#.into()
            )
        );
        let html = Observation::from_reply(Err(ClientError::Unexpected {
            replica: A.into(),
            status: 200,
            body: format!("<html>\n\t<body>{}", "x".repeat(500)),
        }));
        let Observation::Unreachable(why) = html else {
            panic!("{html:?}")
        };
        assert!(why.starts_with("/health answered 200, not JSON: <html> <body>xxx"));
        assert_eq!(why.chars().count(), 201);
        let timeout = Observation::from_reply(Err(ClientError::Timeout {
            replica: A.into(),
            timeout: Duration::from_secs(2),
        }));
        assert_eq!(
            timeout,
            Observation::Unreachable("no answer within 2s".into())
        );
    }

    #[test]
    fn odd_text_from_a_replica_stays_in_its_cell() {
        let mut body = report(A, &[A, B]);
        body["peers"][0]["status"] = json!("\x1b[2Jevil\nstatus");
        body["peers"][0]["addr"] = json!("p".repeat(300));
        body["uptime_seconds"] = json!(-5.0);
        let table = render_table(&[answered(A, body)]);
        assert!(table.contains("?[2Jevil?status"), "{table}");
        assert!(table.contains(&format!("{}…", "p".repeat(MAX_CELL))));
        assert!(!table.contains('\x1b'));
        assert!(table.contains("  0s  "), "{table}");
    }

    #[test]
    fn durations_and_sizes_are_humanized() {
        assert_eq!(human_duration(1.5), "1s");
        assert_eq!(human_duration(192.4), "3m12s");
        assert_eq!(human_duration(3_605.0), "1h00m");
        assert_eq!(human_duration(2.0 * 86_400.0 + 7_300.0), "2d02h");
        assert_eq!(human_duration(f64::NAN), "0s");
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1_258_291), "1.2 MiB");
        assert_eq!(human_bytes(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn incarnations_show_their_epoch() {
        assert_eq!(epoch(Some("127.0.0.1:8082#17961")), "17961");
        assert_eq!(epoch(Some("odd")), "odd");
        assert_eq!(epoch(None), "-");
    }

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: StatusArgs,
    }

    fn parse(args: &[&str]) -> Result<StatusArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("status").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flags_parse_with_their_defaults() {
        let args = parse(&["--replica", "a:1,b:2", "--replica", "c:3"]).expect("parses");
        assert_eq!(args.replicas, ["a:1", "b:2", "c:3"]);
        assert_eq!(args.timeout, Duration::from_secs(2));
        assert_eq!(args.interval, Duration::from_secs(1));
        assert!(!args.watch && !args.json && args.count.is_none());
        let watching = parse(&["--watch", "--count", "2", "--interval", "100ms"]).expect("parses");
        assert_eq!(watching.count, Some(2));
        assert_eq!(watching.interval, Duration::from_millis(100));
        assert!(parse(&["--count", "2"]).is_err(), "--count needs --watch");
        assert!(
            parse(&["--interval", "2s"]).is_err(),
            "--interval needs --watch"
        );
        assert!(parse(&["--watch", "--count", "0"]).is_err());
    }

    #[test]
    fn the_replica_list_is_checked() {
        let given = |list: &[&str]| list.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        assert_eq!(
            replica_list(&given(&[" a:1", "a:1", "", "b:2"]), false).expect("valid"),
            ["a:1", "b:2"]
        );
        assert!(matches!(
            replica_list(&given(&[" ", ""]), false),
            Err(StatusError::NoReplica)
        ));
        assert!(matches!(
            replica_list(&given(&["https://a:1"]), false),
            Err(StatusError::NoCa { .. })
        ));
        assert!(replica_list(&given(&["https://a:1"]), true).is_ok());
    }
}
