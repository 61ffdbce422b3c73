//! The core on simulated time, with integers standing in for sockets.

use super::*;

fn core(idle_ticks: u32, spill_budget: usize) -> SessionCore<u32> {
    SessionCore::new(
        CoreConfig {
            max_frame: 64,
            idle_timeout_ticks: idle_ticks,
            frame_timeout_ticks: 3,
            spill_budget,
            capacity: 16,
        },
        0,
    )
}

#[test]
fn pipelined_and_split_requests_are_answered_in_order() {
    let mut c = core(10, 1024);
    let key = c.open(7, 0).key();
    let mut out = Vec::new();
    assert_eq!(
        c.ingest(key, 0, b"PING\r\nPING a\r\nPI", &mut out),
        Verdict::Open
    );
    assert_eq!(out, b"+PONG\r\n$1\r\na\r\n");
    assert_eq!(c.spill_bytes(), 2, "the partial frame is spilled");
    out.clear();
    assert_eq!(c.ingest(key, 1, b"NG\r\n", &mut out), Verdict::Open);
    assert_eq!(out, b"+PONG\r\n");
    assert_eq!(c.spill_bytes(), 0, "and released once complete");
    assert_eq!(c.counters.heartbeats, 3);
    assert_eq!(c.counters.spilled_frames, 1);
}

#[test]
fn quit_and_protocol_errors_close_only_that_session() {
    let mut c = core(10, 1024);
    let a = c.open(1, 0).key();
    let b = c.open(2, 0).key();
    let mut out = Vec::new();
    assert_eq!(
        c.ingest(a, 0, b"*1\r\n?", &mut out),
        Verdict::Close(CloseReason::Protocol)
    );
    assert!(out.starts_with(b"-ERR Protocol error:"));
    assert_eq!(c.close(a, CloseReason::Protocol), 1);
    out.clear();
    assert_eq!(
        c.ingest(b, 0, b"QUIT\r\n", &mut out),
        Verdict::Close(CloseReason::Peer)
    );
    assert_eq!(out, b"+OK\r\n");
    c.close(b, CloseReason::Peer);
    assert_eq!(c.counters.closed(CloseReason::Protocol), 1);
    assert_eq!(c.counters.closed(CloseReason::Peer), 1);
    assert_eq!(c.sessions(), 0);
}

#[test]
fn a_blocked_write_spills_and_unblocks_when_flushed() {
    let mut c = core(10, 1024);
    let key = c.open(1, 0).key();
    let mut out = Vec::new();
    c.ingest(key, 0, b"PING\r\nPING\r\n", &mut out);
    assert_eq!(c.after_write(key, &out, 3), Verdict::Open);
    assert!(c.is_write_blocked(key));
    assert_eq!(c.pending_output(key), b"NG\r\n+PONG\r\n");
    assert!(!c.flushed(key, 4));
    assert!(c.flushed(key, 7));
    assert!(!c.is_write_blocked(key));
    assert_eq!(c.counters.bytes_out, 14);
}

#[test]
fn a_session_over_the_spill_budget_is_closed_as_overflow() {
    let mut c = core(10, 8);
    let key = c.open(1, 0).key();
    let mut out = Vec::new();
    c.ingest(key, 0, b"PING\r\nPING\r\n", &mut out);
    assert_eq!(
        c.after_write(key, &out, 0),
        Verdict::Close(CloseReason::Overflow)
    );
    c.close(key, CloseReason::Overflow);
    assert_eq!(c.spill_bytes(), 0, "closing frees what it held");
}

#[test]
fn idle_sessions_are_evicted_and_heartbeats_keep_them() {
    let mut c = core(5, 1024);
    let quiet = c.open(1, 0).key();
    let chatty = c.open(2, 0).key();
    let mut due = Vec::new();
    let mut out = Vec::new();
    for now in 1..=20 {
        if now % 3 == 0 {
            c.ingest(chatty, now, b"PING\r\n", &mut out);
        }
        c.expire(now, &mut due);
        for &(key, reason) in &due {
            c.close(key, reason);
        }
        if now < 5 {
            assert!(
                due.is_empty(),
                "nothing due before the timeout (tick {now})"
            );
        }
        if now == 5 {
            assert_eq!(due, [(quiet, CloseReason::Evicted)]);
        }
        due.clear();
    }
    assert_eq!(c.sessions(), 1);
    assert_eq!(c.resolve(c.token(chatty)), Some(chatty));
    assert_eq!(c.counters.closed(CloseReason::Evicted), 1);
}

#[test]
fn a_partial_frame_held_past_the_frame_timeout_closes_its_session() {
    let mut c = core(100, 1024);
    let slow = c.open(1, 0).key();
    let steady = c.open(2, 0).key();
    let mut out = Vec::new();
    let mut due = Vec::new();
    // One byte a tick: the idle deadline keeps moving, the frame never ends.
    for (now, byte) in (0..).zip(b"PING") {
        c.ingest(slow, now, &[*byte], &mut out);
        // A complete frame each tick, then a new partial one: its clock restarts.
        c.ingest(steady, now, b"PING\r\nPI", &mut out);
        c.ingest(steady, now, b"NG\r\nP", &mut out);
        c.expire(now, &mut due);
        if now < 3 {
            assert!(due.is_empty(), "tick {now}: {due:?}");
        }
    }
    assert_eq!(due, [(slow, CloseReason::FrameTimeout)]);
    c.close(slow, CloseReason::FrameTimeout);
    assert_eq!(c.counters.closed(CloseReason::FrameTimeout), 1);
}

#[test]
fn a_session_both_idle_and_slow_is_closed_once() {
    let mut c = core(3, 1024);
    let key = c.open(1, 0).key();
    let mut out = Vec::new();
    c.ingest(key, 0, b"PI", &mut out);
    let mut due = Vec::new();
    c.expire(3, &mut due);
    assert_eq!(due, [(key, CloseReason::Evicted)]);
}

#[test]
fn a_carried_session_keeps_its_deadlines_partial_frame_and_replies() {
    let mut old = core(10, 1024);
    let key = old.open(7, 0).key();
    let mut out = Vec::new();
    // A partial frame begun at tick 2, replies the socket did not take.
    assert_eq!(old.ingest(key, 2, b"PING\r\nPI", &mut out), Verdict::Open);
    assert_eq!(old.after_write(key, &out, 3), Verdict::Open);
    let carried = old.export(key, 4);
    assert_eq!(carried.idle_left, 8, "touched at 2, 10 ticks of timeout");
    assert_eq!(carried.frame_age, 2);
    assert_eq!(carried.input, b"PI");
    assert_eq!(carried.output, b"NG\r\n");
    assert_eq!(old.sessions(), 1, "exporting does not close it");

    // The new process's clock starts elsewhere: tick 100.
    let mut new = SessionCore::new(
        CoreConfig {
            max_frame: 64,
            idle_timeout_ticks: 10,
            frame_timeout_ticks: 3,
            spill_budget: 1024,
            capacity: 16,
        },
        100,
    );
    let (token, verdict) = new.adopt(7, 100, &carried);
    assert_eq!(verdict, Verdict::Open);
    let key = token.key();
    assert!(new.is_write_blocked(key));
    assert_eq!(new.pending_output(key), b"NG\r\n");
    assert_eq!(new.counters.accepted, 0, "carried, not accepted");
    // The frame began 2 ticks before the hand-off: its 3-tick timeout
    // fires at 101, not 103.
    let mut due = Vec::new();
    new.expire(101, &mut due);
    assert_eq!(due, [(key, CloseReason::FrameTimeout)]);
    // The rest of the frame completes it, behind the waiting replies.
    assert!(new.flushed(key, 4));
    out.clear();
    assert_eq!(new.ingest(key, 101, b"NG\r\n", &mut out), Verdict::Open);
    assert_eq!(out, b"+PONG\r\n");

    // An idle one keeps its remaining idle time: due at 100 + 8.
    let idle = old.open(8, 4).key();
    let c = old.export(idle, 6);
    assert_eq!((c.idle_left, c.input.len(), c.output.len()), (8, 0, 0));
    let (t, _) = new.adopt(8, 100, &c);
    due.clear();
    new.expire(107, &mut due);
    assert!(!due.iter().any(|d| d.0 == t.key()));
    new.expire(108, &mut due);
    assert!(due.contains(&(t.key(), CloseReason::Evicted)));
}

#[test]
fn a_carried_session_over_the_spill_budget_is_closed_as_overflow() {
    let mut new = core(10, 4);
    let carried = Carried {
        idle_left: 5,
        output: b"+PONG\r\n".to_vec(),
        ..Carried::default()
    };
    assert_eq!(
        new.adopt(1, 0, &carried).1,
        Verdict::Close(CloseReason::Overflow)
    );
}
