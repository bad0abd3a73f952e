//! Unit tests of the machine, driven by hand: one replica, its peers played by the test.

use std::time::Duration;

use super::*;
use crate::protocol::causal::Limits;
use crate::protocol::store::tests::value;

const A: &str = "10.0.0.1:8090";
const B: &str = "10.0.0.2:8090";

fn settings(view: &[&str]) -> Settings {
    Settings {
        me: A.into(),
        view: view.iter().map(|a| Addr::from(*a)).collect(),
        causal_wait: Duration::from_millis(500),
        replication_timeout: Duration::from_secs(1),
        heartbeat_interval: Duration::from_millis(250),
        failure_timeout: Duration::from_millis(1500),
        stability_period: Duration::from_millis(2500),
        anti_entropy_interval: Duration::from_secs(1),
        delivery_buffer: 100,
        peer_queue: 100,
    }
}

fn at(ms: u64) -> Now {
    Now {
        at: Time::from_millis(ms),
        wall_us: 1_800_000_000_000_000 + ms * 1000,
    }
}

/// Replica A, ready, with B in its view (B announced itself after A started alone).
fn a_with_b() -> Machine<u32> {
    let mut m = Machine::new(settings(&[A, B]));
    m.start(at(0));
    let announce = sends(&mut m).pop().expect("announces itself to B").0;
    m.answered(
        announce,
        Err(CallError::Unreachable("refused".into())),
        at(1),
    );
    assert!(m.is_ready(), "no peer answered: starts empty");
    let answer = m.message(Message::Announce(Announce { from: B.into() }), at(2));
    assert!(matches!(answer, Ok(Answer::Status(_))));
    assert!(m.members().in_view(B));
    // B joined: A pulls from it at once. B has nothing.
    for (call, _, message) in sends(&mut m) {
        if let Message::Sync(_) = message {
            m.answered(call, Ok(Answer::Delta(Delta::default())), at(3));
        }
    }
    m.take_outputs();
    m
}

fn sends(m: &mut Machine<u32>) -> Vec<(CallId, Addr, Message)> {
    (m.take_outputs().into_iter())
        .filter_map(|o| match o {
            Output::Send {
                call, to, message, ..
            } => Some((call, to, message)),
            _ => None,
        })
        .collect()
}

fn replies(outputs: Vec<Output<u32>>) -> Vec<(u32, Reply)> {
    (outputs.into_iter())
        .filter_map(|o| match o {
            Output::Reply(w, reply) => Some((w, reply)),
            _ => None,
        })
        .collect()
}

fn put(key: &str, v: &str, deps: Clock) -> Request {
    Request::Put {
        key: key.into(),
        value: value(v),
        deps,
    }
}

#[test]
fn a_lone_replica_answers_in_the_same_step() {
    let mut m = Machine::new(settings(&[A]));
    m.start(at(0));
    assert!(m.is_ready());
    m.request(7, put("k", "1", Clock::new()), at(1));
    let got = replies(m.take_outputs());
    assert!(matches!(
        &got[..],
        [(7, Reply::Written { existed: false, .. })]
    ));
    m.request(
        8,
        Request::Get {
            key: "k".into(),
            deps: Clock::new(),
        },
        at(2),
    );
    let got = replies(m.take_outputs());
    assert!(matches!(&got[..], [(8, Reply::Found { value, .. })] if &**value == "1"));
}

#[test]
fn a_request_waits_for_its_dependencies_then_gives_up() {
    let mut m = a_with_b();
    parked_on_b(&mut m);
    let pulls = sends(&mut m);
    assert!(
        pulls
            .iter()
            .any(|(_, to, msg)| **to == *B && matches!(msg, Message::Sync(_))),
        "a parked request pulls from the view"
    );
    m.tick(at(509));
    assert!(
        replies(m.take_outputs()).is_empty(),
        "still within the causal wait"
    );
    assert_eq!(
        m.next_deadline(),
        Time::from_millis(510),
        "the causal wait ends before the next probe round"
    );
    m.tick(at(510));
    let got = replies(m.take_outputs());
    assert!(matches!(
        &got[..],
        [(1, Reply::Failed(NodeError::CausalTimeout))]
    ));
}

#[test]
fn a_parked_request_is_served_when_its_dependency_arrives() {
    let mut m = a_with_b();
    let mut b = Replica::new(B.into(), 10);
    b.start_incarnation(5);
    let theirs = b
        .write(
            "x".into(),
            Some(value("1")),
            &Clock::new(),
            &Limits::loose(),
        )
        .unwrap();
    m.request(
        1,
        Request::Get {
            key: "x".into(),
            deps: theirs.metadata,
        },
        at(10),
    );
    m.take_outputs();
    let message = Message::Replicate(Replicate {
        from: B.into(),
        writes: vec![Arc::new(theirs.write)],
    });
    assert!(matches!(m.message(message, at(20)), Ok(Answer::Taken(_))));
    let got = replies(m.take_outputs());
    assert!(matches!(&got[..], [(1, Reply::Found { value, .. })] if &**value == "1"));
}

#[test]
fn a_write_is_answered_once_its_peer_acknowledged_it() {
    let mut m = a_with_b();
    m.request(1, put("k", "1", Clock::new()), at(10));
    assert!(replies(m.take_outputs()).is_empty(), "waits for B");
    assert!(m.take_flush_wanted());
    m.flush(at(11));
    let batch = sends(&mut m);
    let [(call, to, Message::Replicate(replicate))] = &batch[..] else {
        panic!("one batch to B: {batch:?}");
    };
    assert_eq!((&**to, replicate.writes.len()), (B, 1));
    m.answered(*call, Ok(Answer::Taken(Received::default())), at(12));
    let got = replies(m.take_outputs());
    assert!(matches!(
        &got[..],
        [(1, Reply::Written { existed: false, .. })]
    ));
}

#[test]
fn a_silent_peer_delays_a_write_by_the_replication_timeout_at_most() {
    let mut m = a_with_b();
    m.request(1, put("k", "1", Clock::new()), at(10));
    m.flush(at(11));
    m.take_outputs();
    let deadline = 10 + 1000 + ACK_SLACK.as_millis() as u64;
    m.tick(at(deadline - 1));
    assert!(replies(m.take_outputs()).is_empty());
    m.tick(at(deadline));
    let got = replies(m.take_outputs());
    assert!(matches!(&got[..], [(1, Reply::Written { .. })]));
}

#[test]
fn a_peer_outside_the_view_gets_no_data() {
    let mut m = Machine::<u32>::new(settings(&[A, B]));
    m.start(at(0));
    let request = SyncRequest {
        from: B.into(),
        clock: Clock::new(),
        after: None,
    };
    let refused = m.message(Message::Sync(request), at(1));
    assert!(matches!(refused, Err(NodeError::NotInView(_))));
}

#[test]
fn a_failed_replication_takes_the_peer_out_of_the_view() {
    let mut m = a_with_b();
    m.request(1, put("k", "1", Clock::new()), at(10));
    m.flush(at(11));
    let (call, ..) = sends(&mut m).pop().unwrap();
    m.answered(call, Err(CallError::Timeout), at(1011));
    assert!(!m.members().in_view(B));
    let got = replies(m.take_outputs());
    assert!(
        matches!(&got[..], [(1, Reply::Written { .. })]),
        "released at once"
    );
}

#[test]
fn a_durable_write_is_answered_only_once_its_record_is_durable() {
    let mut m: Machine<u32> = Machine::durable(settings(&[A]), Vec::new());
    m.start(at(0));
    m.take_outputs();
    m.request(1, put("k", "1", Clock::new()), at(1));
    let outputs = m.take_outputs();
    let upto = outputs
        .iter()
        .find_map(|o| match o {
            Output::Persist { upto, records } if !records.is_empty() => Some(*upto),
            _ => None,
        })
        .expect("the write's record is handed out");
    assert!(
        replies(outputs).is_empty(),
        "no answer before the record is durable"
    );
    // Past every replication deadline, still no answer: durability has none.
    m.tick(at(5_000));
    assert!(replies(m.take_outputs()).is_empty());
    m.persisted(upto - 1);
    assert!(
        replies(m.take_outputs()).is_empty(),
        "an earlier record is not enough"
    );
    m.persisted(upto);
    let got = replies(m.take_outputs());
    assert!(matches!(&got[..], [(1, Reply::Written { .. })]));
}

#[test]
fn a_journal_that_cannot_be_written_refuses_writes_but_not_reads() {
    let mut m: Machine<u32> = Machine::durable(settings(&[A]), Vec::new());
    m.start(at(0));
    m.take_outputs();
    m.request(1, put("k", "1", Clock::new()), at(1));
    m.take_outputs();
    m.storage_failed("disk full".into());
    let got = replies(m.take_outputs());
    assert!(matches!(
        &got[..],
        [(1, Reply::Failed(NodeError::Storage(_)))]
    ));
    m.request(2, put("k", "2", Clock::new()), at(2));
    let got = replies(m.take_outputs());
    assert!(matches!(
        &got[..],
        [(2, Reply::Failed(NodeError::Storage(_)))]
    ));
    let get = Request::Get {
        key: "k".into(),
        deps: Clock::new(),
    };
    m.request(3, get, at(3));
    let got = replies(m.take_outputs());
    assert!(
        matches!(&got[..], [(3, Reply::Found { .. })]),
        "reads go on"
    );
}

#[test]
fn a_recovered_replica_starts_a_new_life_above_every_earlier_one() {
    let mut first: Machine<u32> = Machine::durable(settings(&[A]), Vec::new());
    first.start(at(0));
    first.request(1, put("k", "1", Clock::new()), at(1));
    let mut disk = Vec::new();
    for output in first.take_outputs() {
        if let Output::Persist { records, .. } = output {
            disk.extend(records);
        }
    }
    let old = first.replica().incarnation().cloned().unwrap();
    // The wall clock went back a whole second: the journal still orders the lives.
    let mut second: Machine<u32> = Machine::durable(settings(&[A]), disk);
    let mut earlier = at(2);
    earlier.wall_us -= 1_000_000;
    second.start(earlier);
    let new = second.replica().incarnation().cloned().unwrap();
    assert!(new.epoch > old.epoch, "{new} after {old}");
    let get = Request::Get {
        key: "k".into(),
        deps: Clock::new(),
    };
    second.request(2, get, at(3));
    let got = replies(second.take_outputs());
    assert!(matches!(&got[..], [(2, Reply::Found { value, .. })] if &**value == "1"));
}

/// The one sync request A sent to B, as its call and the key it asks after.
fn sync_to_b(m: &mut Machine<u32>) -> (CallId, Option<Key>) {
    let syncs: Vec<(CallId, Option<Key>)> = (sends(m).into_iter())
        .filter_map(|(call, to, message)| match message {
            Message::Sync(request) if *to == *B => Some((call, request.after)),
            _ => None,
        })
        .collect();
    assert_eq!(syncs.len(), 1, "one chunk in flight: {syncs:?}");
    syncs.into_iter().next().unwrap()
}

/// B with one write of "x", and a request at A parked on it.
fn parked_on_b(m: &mut Machine<u32>) -> Replica {
    let mut b = Replica::new(B.into(), 10);
    b.start_incarnation(5);
    let theirs = b.write(
        "x".into(),
        Some(value("1")),
        &Clock::new(),
        &Limits::loose(),
    );
    let get = Request::Get {
        key: "x".into(),
        deps: theirs.unwrap().metadata,
    };
    m.request(1, get, at(10));
    b
}

#[test]
fn an_empty_chunk_with_a_next_key_does_not_end_a_pull() {
    let mut m = a_with_b();
    let b = parked_on_b(&mut m);
    let (call, after) = sync_to_b(&mut m);
    assert_eq!(after, None);
    // B scanned up to "a" and found nothing A misses there.
    let empty = Delta {
        clock: b.clock().clone(),
        next: Some("a".into()),
        ..Delta::default()
    };
    m.answered(call, Ok(Answer::Delta(empty)), at(11));
    let (call, after) = sync_to_b(&mut m);
    assert_eq!(
        after.as_deref(),
        Some("a"),
        "continues after the key scanned"
    );
    let rest = b.delta_chunk(&Clock::new(), after.as_deref(), usize::MAX, usize::MAX);
    m.answered(call, Ok(Answer::Delta(rest)), at(12));
    let got = replies(m.take_outputs());
    assert!(
        matches!(&got[..], [(1, Reply::Found { value, .. })] if &**value == "1"),
        "served once the pull is over"
    );
}

#[test]
fn a_chunk_that_does_not_move_on_ends_the_pull() {
    let mut m = a_with_b();
    let b = parked_on_b(&mut m);
    let (call, _) = sync_to_b(&mut m);
    let chunk = |next: &str| Delta {
        clock: b.clock().clone(),
        next: Some(next.into()),
        ..Delta::default()
    };
    m.answered(call, Ok(Answer::Delta(chunk("m"))), at(11));
    let (call, after) = sync_to_b(&mut m);
    assert_eq!(after.as_deref(), Some("m"));
    m.answered(call, Ok(Answer::Delta(chunk("b"))), at(12));
    let outputs = m.take_outputs();
    let again = outputs.iter().any(|o| {
        matches!(
            o,
            Output::Send {
                message: Message::Sync(_),
                ..
            }
        )
    });
    assert!(!again, "no request for the same range again");
    assert!(replies(outputs).is_empty());
}
