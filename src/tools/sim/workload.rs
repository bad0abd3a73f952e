//! The simulated clients: sessions that send random requests, one at a time, to a replica
//! they sometimes change, carrying the metadata of each answer into their next request
//! (as the contract's clients do).
//!
//! The mix follows `check`'s: GET 45%, PUT 30%, GET of a write-once key 10%, DELETE 8%,
//! PUT of a new write-once key 7%, over five shared keys. Every value is unique
//! (`s<session>-<index>`), so the checker can tell which write a read saw.

use std::time::Duration;

use super::world::{ClientRequest, World, value_json};
use crate::tools::check::history::OpKind;

/// Shared keys the sessions overwrite and delete.
const KEYS: [&str; 5] = ["k0", "k1", "k2", "k3", "k4"];
/// Longest pause between two requests of a session.
const MAX_THINK: Duration = Duration::from_millis(800);

/// Schedules the session's next request after a random pause.
pub fn schedule_next(world: &mut World, session: u32) {
    if world.sessions[session as usize].stopped {
        return;
    }
    let think = world.rng.next_u64() % (MAX_THINK.as_micros() as u64 + 1);
    let at = world.now + Duration::from_micros(think);
    world.schedule_session(session, at);
}

/// Picks and sends the session's next request.
pub fn next_request(world: &mut World, session: u32) {
    let s = &world.sessions[session as usize];
    if s.stopped || s.in_flight.is_some() {
        return;
    }
    let index = s.next_index;
    let deps = s.metadata.clone();
    let mut replica = s.replica;
    if world.rng.below(100) < 30 {
        replica = world.rng.below(world.replicas());
        world.sessions[session as usize].replica = replica;
    }
    let shared = |world: &mut World| KEYS[world.rng.below(KEYS.len())].to_string();
    let (kind, key, value) = match world.rng.below(100) {
        0..45 => (OpKind::Get, shared(world), None),
        45..75 => (OpKind::Put, shared(world), Some(value_json(session, index))),
        75..85 => {
            let key = once_key_to_read(world).unwrap_or_else(|| shared(world));
            (OpKind::Get, key, None)
        }
        85..93 => (OpKind::Delete, shared(world), None),
        _ => {
            let key = format!("once-s{session}-{index}");
            world.once_keys.push(key.clone());
            (OpKind::Put, key, Some(value_json(session, index)))
        }
    };
    let request = ClientRequest {
        kind,
        key,
        value,
        deps,
    };
    world.send_client_request(session, replica, request);
}

/// A write-once key some session wrote earlier (acknowledged or not).
fn once_key_to_read(world: &mut World) -> Option<String> {
    if world.once_keys.is_empty() {
        return None;
    }
    let pick = world.rng.below(world.once_keys.len());
    Some(world.once_keys[pick].clone())
}
