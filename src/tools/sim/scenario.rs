//! Story files: membership, timing and causal-delivery scenarios written as data, in the
//! spirit of toyDB's goldenscripts. Each file (`tests/scenarios/*.story`) is a sequence
//! of blocks: one command, a line `---`, and the output the command must print, then a
//! blank line. Lines starting with `#` are comments. [`run_script`] replays the commands
//! on a simulated cluster (fixed latency, nothing lost, no randomness) and returns the
//! file as it should read; a test compares it with the file (`UPDATE_STORIES=1`
//! rewrites the files instead).
//!
//! Commands (replicas are `r0`, `r1`, ...; durations like `500ms`, `3s`):
//!
//! * `cluster N [durable]`: starts N replicas, each configured with all of them
//!   (`durable`: each keeps a journal on a simulated disk, synced by group commit);
//! * `run D`: lets D of simulated time pass;
//! * `put rX KEY VALUE [meta=M] [-> M']`, `get rX KEY [meta=M] [-> M']`,
//!   `delete rX KEY [meta=M] [-> M']`: a client request carrying the metadata saved as M
//!   (none by default); `-> M'` saves the answer's metadata. Prints the status and, for a
//!   read, the value. The request runs until it is answered (or the client's timeout);
//! * `crash rX`, `restart rX|all`, `power-loss rX|all` (a durable replica keeps only what
//!   it synced), `isolate rX [rY...]` (both ways), `cut rX rY` (rX to rY
//!   only), `heal`, `clock rX +D|-D` (a wall-clock jump);
//! * `views`: every replica's view; `status`: every replica's incarnation readiness and
//!   number of keys.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value as Json;

use super::world::{ClientRequest, Network, Session, World};
use super::{Action, act, default_settings};
use crate::protocol::causal::Clock;
use crate::tools::check::history::{OpKind, Status};

/// Replays a story; returns its text with every command's actual output.
pub fn run_script(text: &str) -> Result<String, String> {
    let mut story = Story::default();
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        // A command: skip its recorded output up to the blank line that ends the block.
        if lines.peek().is_some_and(|l| l.trim() == "---") {
            lines.next();
            while lines.peek().is_some_and(|l| !l.trim().is_empty()) {
                lines.next();
            }
        }
        let output = story.command(line.trim())?;
        out.push_str(line);
        out.push_str("\n---\n");
        for line in output {
            out.push_str(&line);
            out.push('\n');
        }
    }
    Ok(out)
}

#[derive(Default)]
struct Story {
    world: Option<World>,
    metadata: BTreeMap<String, Clock>,
}

impl Story {
    fn world(&mut self) -> Result<&mut World, String> {
        self.world
            .as_mut()
            .ok_or_else(|| "no cluster yet: start with `cluster N`".to_string())
    }

    fn command(&mut self, line: &str) -> Result<Vec<String>, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let fail = |why: &str| format!("{line:?}: {why}");
        match words.as_slice() {
            ["cluster", n, storage @ ..] => {
                let n: usize = n.parse().map_err(|_| fail("not a number"))?;
                let durable = match storage {
                    [] => false,
                    ["durable"] => true,
                    _ => return Err(fail("expected `cluster N` or `cluster N durable`")),
                };
                let network = Network {
                    min_latency: Duration::from_millis(1),
                    jitter: Duration::ZERO,
                    loss_ppm: 0,
                    dup_ppm: 0,
                };
                let mut world = World::new(0, n, default_settings(n), network);
                world.durable = durable;
                for r in 0..n {
                    world.start(r);
                }
                self.world = Some(world);
                Ok(vec!["ok".into()])
            }
            ["run", d] => {
                let d = duration(d).ok_or_else(|| fail("not a duration"))?;
                let world = self.world()?;
                world.run_until(world.now + d);
                Ok(vec!["ok".into()])
            }
            [kind @ ("put" | "get" | "delete"), rest @ ..] => self.request(kind, rest, line),
            ["crash", r] => self.act(Action::Crash(replica(r)?, false)),
            ["power-loss", "all"] => self.act(Action::CrashAll),
            ["power-loss", r] => {
                let r = replica(r)?;
                let world = self.world()?;
                world.power_loss(r);
                Ok(vec!["ok".into()])
            }
            ["restart", "all"] => {
                let world = self.world()?;
                for r in 0..world.replicas() {
                    act(world, Action::Restart(r));
                }
                Ok(vec!["ok".into()])
            }
            ["restart", r] => self.act(Action::Restart(replica(r)?)),
            ["isolate", rs @ ..] => {
                let side = rs.iter().map(|r| replica(r)).collect::<Result<_, _>>()?;
                self.act(Action::Isolate(side))
            }
            ["cut", a, b] => self.act(Action::CutOneWay(replica(a)?, replica(b)?)),
            ["heal"] => self.act(Action::Heal),
            ["clock", r, by] => {
                let (sign, d) = by.split_at(1);
                let d = duration(d).ok_or_else(|| fail("not a duration"))?;
                let us = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
                let by = if sign == "-" { -us } else { us };
                self.act(Action::JumpClock(replica(r)?, by))
            }
            ["views"] => {
                let world = self.world()?;
                Ok((0..world.replicas()).map(|r| view_line(world, r)).collect())
            }
            ["status"] => {
                let world = self.world()?;
                Ok((0..world.replicas())
                    .map(|r| status_line(world, r))
                    .collect())
            }
            _ => Err(fail("unknown command")),
        }
    }

    fn act(&mut self, action: Action) -> Result<Vec<String>, String> {
        let world = self.world()?;
        act(world, action);
        Ok(vec!["ok".into()])
    }

    /// `put|get|delete rX KEY [VALUE] [meta=M] [-> M']`.
    fn request(&mut self, kind: &str, args: &[&str], line: &str) -> Result<Vec<String>, String> {
        let fail = |why: &str| format!("{line:?}: {why}");
        let (mut positional, mut meta, mut save) = (Vec::new(), None, None);
        let mut words = args.iter();
        while let Some(word) = words.next() {
            if let Some(name) = word.strip_prefix("meta=") {
                meta = Some(name.to_string());
            } else if *word == "->" {
                save = words.next().map(|s| s.to_string());
            } else {
                positional.push(*word);
            }
        }
        let (r, key, value) = match (kind, positional.as_slice()) {
            ("put", [r, key, value]) => {
                let value: Json = serde_json::from_str(value).map_err(|e| fail(&e.to_string()))?;
                (replica(r)?, key.to_string(), Some(value))
            }
            ("get" | "delete", [r, key]) => (replica(r)?, key.to_string(), None),
            _ => return Err(fail("expected REPLICA KEY (and a VALUE for put)")),
        };
        let deps = match &meta {
            Some(name) => (self.metadata.get(name).cloned())
                .ok_or_else(|| fail(&format!("no metadata saved as {name}")))?,
            None => Clock::new(),
        };
        let kind = match kind {
            "put" => OpKind::Put,
            "get" => OpKind::Get,
            _ => OpKind::Delete,
        };
        let world = self.world()?;
        let session = world.sessions.len() as u32;
        world.sessions.push(Session {
            metadata: deps.clone(),
            replica: r,
            next_index: 0,
            in_flight: None,
            stopped: true,
        });
        let request = ClientRequest {
            kind,
            key,
            value,
            deps,
        };
        world.send_client_request(session, r, request);
        let ops_before = world.history.len();
        while world.history.len() == ops_before {
            world.run_until(world.now + Duration::from_millis(1));
        }
        let op = world
            .history
            .last()
            .cloned()
            .ok_or_else(|| fail("no answer"))?;
        let answered = world.sessions[session as usize].metadata.clone();
        if let Some(name) = save {
            self.metadata.insert(name, answered);
        }
        Ok(vec![match (op.status, op.read) {
            (Status::Http(200), Some(value)) => format!("200 {value}"),
            (Status::Http(code @ (200 | 201)), None) if kind != OpKind::Get => {
                let result = match (kind, code) {
                    (OpKind::Delete, _) => "deleted",
                    (_, 201) => "created",
                    _ => "replaced",
                };
                format!("{code} {result}")
            }
            (Status::Http(404), _) => "404 key does not exist".into(),
            (Status::Http(503), _) => "503 causal dependencies not satisfied".into(),
            (status, _) => status.label(),
        }])
    }
}

fn replica(word: &str) -> Result<usize, String> {
    word.strip_prefix('r')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("{word:?} is not a replica (r0, r1, ...)"))
}

fn duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text).ok()
}

fn name(world: &World, addr: &str) -> String {
    (0..world.replicas())
        .find(|&r| &**world.addr(r) == addr)
        .map_or_else(|| addr.to_string(), |r| format!("r{r}"))
}

fn view_line(world: &World, r: usize) -> String {
    match world.machine(r) {
        Some(m) => {
            let view: Vec<String> = m.members().view().iter().map(|a| name(world, a)).collect();
            format!("r{r}: {}", view.join(" "))
        }
        None => format!("r{r}: down"),
    }
}

fn status_line(world: &World, r: usize) -> String {
    match world.machine(r) {
        Some(m) => format!(
            "r{r}: {} keys={}",
            if m.is_ready() {
                "ready"
            } else {
                "bootstrapping"
            },
            m.replica().store().live_keys()
        ),
        None => format!("r{r}: down"),
    }
}
