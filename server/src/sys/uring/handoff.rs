//! Zero-downtime upgrade on the io_uring worker (the protocol is in
//! [`crate::handoff`]).
//!
//! Old side: the worker stops accepting and re-arming, cancels every
//! request of every ring (IORING_ASYNC_CANCEL_ANY), and reaps completions
//! until nothing is in flight. Bytes that completed meanwhile are served
//! as usual (their replies sent): from then on no request of this process
//! reads a socket, and what clients send waits in the kernel. Then it
//! sends its sessions, a batch at a time. Direct descriptors are in no
//! descriptor table: a batch is installed as descriptors
//! (IORING_OP_FIXED_FD_INSTALL, Linux 6.8), sent, and closed, so the
//! process never holds more than a batch of them. On a commit the worker
//! returns and its rings close, dropping its references; otherwise it
//! re-arms everything and serves on.
//!
//! New side: before its loop the worker takes an old worker's sessions:
//! plain descriptors as they come; direct ones registered a batch at a
//! time into a ring with room (IORING_OP_FILES_UPDATE with allocated
//! slots), the received descriptors then closed. Nothing is armed until
//! the commit.

use super::session::SEND_IN_FLIGHT;
use super::userdata::HANDOFF;
use super::{Descriptor, Target, Worker, DRAIN_TIMEOUT};
use crate::core::Verdict;
use crate::handoff::{self, Report};
use io_uring::opcode;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Submits `sqes` on ring `shard` (nothing else in flight there) and
/// returns each one's result, in order.
fn run_batch<D: Descriptor>(
    w: &mut Worker<D>,
    shard: usize,
    sqes: Vec<io_uring::squeue::Entry>,
) -> io::Result<Vec<i32>> {
    let n = sqes.len();
    let ring = &mut w.shards[shard].ring;
    {
        let mut sq = ring.submission();
        for (i, sqe) in sqes.into_iter().enumerate() {
            let sqe = sqe.user_data(HANDOFF | (i as u64) << 32);
            // SAFETY: the entries point only at memory the caller keeps
            // alive until this function returns, after their completions.
            unsafe { sq.push(&sqe) }
                .map_err(|_| io::Error::other("hand-off batch larger than the SQ"))?;
        }
    }
    let mut results = vec![None; n];
    let mut got = 0;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while got < n {
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if super::transient(&e) => {}
            Err(e) => return Err(e),
        }
        for cqe in ring.completion() {
            let ud = cqe.user_data();
            if ud as u32 != HANDOFF as u32 {
                continue; // a cancel's failure: nothing to do
            }
            let i = (ud >> 32) as usize;
            if i < n && results[i].is_none() {
                results[i] = Some(cqe.result());
                got += 1;
            }
        }
        if got < n && Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "{} of {n} hand-off requests did not complete in {DRAIN_TIMEOUT:?}",
                n - got
            )));
        }
    }
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or(-libc::EIO))
        .collect())
}

impl<D: Descriptor> Worker<D> {
    /// Old side: a hand-off was requested. True when the new process now
    /// serves every session (the caller returns); false when this worker
    /// serves on.
    pub(super) fn hand_off(&mut self) -> io::Result<bool> {
        let Some(target) = self.handoff.take_request() else {
            return Ok(false);
        };
        let report = match self.quiesce().and_then(|()| self.send_all(&target)) {
            Ok(report) => report,
            Err(e) => Report::Failed(format!("worker {}: {e}", self.id)),
        };
        let sent = matches!(report, Report::Done { .. });
        // The counters the successor goes on from (upgrade::hand_off).
        self.publish();
        self.handoff.report(report);
        if sent && self.handoff.wait_verdict(handoff::VERDICT_TIMEOUT) {
            return Ok(true);
        }
        self.resume();
        Ok(false)
    }

    /// Cancels every request of every ring and reaps until none is in
    /// flight, serving what completes meanwhile without re-arming.
    fn quiesce(&mut self) -> io::Result<()> {
        self.exporting = true;
        // Accepts and the wake poll: one cancel per user_data, for all of
        // its requests. Sessions: one cancel each, by user_data. Not one
        // IORING_ASYNC_CANCEL_ANY for the whole ring: the kernel finds each
        // request it cancels by walking the ring's poll table from the
        // start, O(requests) per request; measured here, 17 000 recvs per
        // ring kept the canceling enter busy for over 2 s.
        self.cancel_accepts_and_wake();
        for key in self.core.keys() {
            self.cancel_requests(key);
            self.push_if_long();
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.in_flight() > 0 || self.pending_any() || !self.deferred.is_empty() {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "{} io_uring requests still in flight after {DRAIN_TIMEOUT:?} \
                     (recvs {}, sends {}, pollouts {}, accepts {}, wake {})",
                    self.in_flight(),
                    self.recvs_armed,
                    self.sends.len(),
                    self.polls_armed,
                    self.shards.iter().map(|sh| sh.accepts_armed).sum::<usize>(),
                    self.wake_armed
                )));
            }
            self.wait(Duration::from_millis(10))?;
            let now = self.clock.tick_at(Instant::now());
            self.turn(now)?;
        }
        Ok(())
    }

    fn send_all(&mut self, target: &str) -> io::Result<Report> {
        let now = self.clock.tick_at(Instant::now());
        let keys = self.core.keys();
        let begin = handoff::Begin::new(self.id, keys.len(), self.clock.tick());
        let mut sender = handoff::Sender::connect(target, begin)?;
        let (mut partial, mut blocked) = (0, 0);
        for chunk in keys.chunks(handoff::BATCH) {
            let carried: Vec<_> = chunk.iter().map(|&k| self.core.export(k, now)).collect();
            handoff::tally(&carried, &mut partial, &mut blocked);
            let targets: Vec<Target> = chunk.iter().map(|&k| self.target(k)).collect();
            if D::DIRECT {
                let fds = self.install(&targets)?;
                let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
                sender.batch(&raw, &carried)?;
                // `fds` close here; the slots still hold the sockets.
            } else {
                let raw: Vec<RawFd> = targets
                    .iter()
                    .map(|t| match t {
                        Target::Fd(fd) => fd.0,
                        Target::Fixed(..) => unreachable!("plain descriptors"),
                    })
                    .collect();
                sender.batch(&raw, &carried)?;
            }
        }
        let sessions = sender.finish()?;
        Ok(Report::Done {
            sessions,
            partial,
            blocked,
        })
    }

    /// Direct descriptors: installs these slots as descriptors of this
    /// thread's table (close-on-exec).
    fn install(&mut self, targets: &[Target]) -> io::Result<Vec<OwnedFd>> {
        let mut fds: Vec<Option<OwnedFd>> = (0..targets.len()).map(|_| None).collect();
        for shard in 0..self.shards.len() {
            let mine: Vec<usize> = (0..targets.len())
                .filter(|&i| targets[i].shard() == shard)
                .collect();
            if mine.is_empty() {
                continue;
            }
            let sqes = mine
                .iter()
                .map(|&i| match targets[i] {
                    Target::Fixed(_, slot) => opcode::FixedFdInstall::new(slot, 0).build(),
                    Target::Fd(_) => unreachable!("direct descriptors"),
                })
                .collect();
            let results = run_batch(self, shard, sqes)?;
            for (&i, res) in mine.iter().zip(results) {
                if res < 0 {
                    let e = io::Error::from_raw_os_error(-res);
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "installing a direct descriptor as a file descriptor: {e} \
                             (IORING_OP_FIXED_FD_INSTALL needs Linux 6.8)"
                        ),
                    ));
                }
                // SAFETY: a successful install returns a new descriptor of
                // this thread's table that nothing else owns.
                fds[i] = Some(unsafe { OwnedFd::from_raw_fd(res) });
            }
        }
        Ok(fds
            .into_iter()
            .map(|f| f.expect("every slot installed"))
            .collect())
    }

    /// The hand-off failed: re-arm every session, the wake poll and the
    /// accepts, and serve on.
    fn resume(&mut self) {
        self.exporting = false;
        for key in self.core.keys() {
            if self.core.is_write_blocked(key) {
                if self.io(key) & SEND_IN_FLIGHT == 0 {
                    self.flush_blocked(key);
                }
            } else {
                self.resume_reading(key);
            }
            self.push_if_long();
        }
        if !self.sharded() && !self.wake_armed {
            self.arm_wake();
        }
        self.arm_accept();
    }

    /// Pushes rings' queued SQEs to their SQs once they grow long, so that
    /// arming many sessions at once keeps the queue at its resident size.
    fn push_if_long(&mut self) {
        for shard in 0..self.shards.len() {
            if self.shards[shard].pending.len() >= 256 {
                // An SQ that is full is submitted inside; an error here
                // leaves the SQEs queued for the next turn.
                let _ = self.push_pending(shard);
            }
        }
    }

    /// New side: takes one old worker's sessions before the loop starts,
    /// waits for the commit, then arms them. An error stops the worker
    /// (and the process: the old one serves on).
    pub(super) fn take_over(&mut self, listener: &OwnedFd) -> io::Result<()> {
        let now = self.clock.tick_at(Instant::now());
        let mut adopted = Vec::new();
        let received = self.receive_all(listener, now, &mut adopted);
        self.handoff.settle(self.id, received)?;
        self.control.adopt(adopted.len() as u64);
        for (token, verdict) in adopted {
            let key = token.key();
            match verdict {
                Verdict::Close(reason) => self.close(key, reason),
                Verdict::Open if self.core.is_write_blocked(key) => self.flush_blocked(key),
                Verdict::Open => self.resume_reading(key),
            }
            self.push_if_long();
        }
        // Submitted: the recvs are armed at the loop's first enter, next.
        for shard in 0..self.shards.len() {
            self.shards[shard].pending_sends = 0;
            self.push_pending(shard)?;
            self.enter_nowait(shard)?;
        }
        self.publish();
        self.handoff.mark_armed();
        Ok(())
    }

    fn receive_all(
        &mut self,
        listener: &OwnedFd,
        now: u32,
        adopted: &mut Vec<(crate::table::Token, Verdict)>,
    ) -> io::Result<Report> {
        let mut r =
            handoff::Receiver::accept(listener.as_fd(), handoff::STEP_TIMEOUT, self.clock.tick())?;
        adopted.reserve(r.begin.sessions as usize);
        let (mut partial, mut blocked) = (0, 0);
        while let Some(batch) = r.next_batch()? {
            let (fds, carried): (Vec<OwnedFd>, Vec<_>) = batch.into_iter().unzip();
            handoff::tally(&carried, &mut partial, &mut blocked);
            let handles = self.register(fds)?;
            for (handle, carried) in handles.into_iter().zip(carried) {
                let (token, verdict) = self.core.adopt(handle, now, &carried);
                if super::userdata::UserData::Recv(token).encode().is_none() {
                    return Err(io::Error::other("more sessions than user_data can number"));
                }
                adopted.push((token, verdict));
            }
        }
        r.ack()?;
        Ok(Report::Done {
            sessions: r.received(),
            partial,
            blocked,
        })
    }

    /// Turns received descriptors into session handles: plain ones as they
    /// are; direct ones registered into a ring with room for the whole
    /// batch, the received descriptors then closed.
    fn register(&mut self, fds: Vec<OwnedFd>) -> io::Result<Vec<D>> {
        if !D::DIRECT {
            return Ok(fds.into_iter().map(D::from_plain).collect());
        }
        let per_ring = self.direct_capacity / self.shards.len().max(1);
        let Some(shard) =
            (0..self.shards.len()).find(|&s| self.shards[s].occupied + fds.len() <= per_ring)
        else {
            return Err(io::Error::other(format!(
                "this worker's {} rings hold {per_ring} sessions each and are full \
                 (the new process's layout holds fewer sessions than the old one's)",
                self.shards.len()
            )));
        };
        let mut slots: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let sqe = opcode::FilesUpdate::new(slots.as_mut_ptr().cast_const(), slots.len() as u32)
            .offset(-1) // IORING_FILE_INDEX_ALLOC: the kernel picks the slots
            .build();
        let res = run_batch(self, shard, vec![sqe])?[0];
        if res < 0 || res as usize != slots.len() {
            return Err(io::Error::other(format!(
                "registering {} received sockets as direct descriptors: {}",
                slots.len(),
                if res < 0 {
                    io::Error::from_raw_os_error(-res).to_string()
                } else {
                    format!("only {res} registered")
                }
            )));
        }
        self.shards[shard].occupied += slots.len();
        drop(fds); // the ring's table holds the sockets now
                   // The kernel wrote each allocated slot over its descriptor.
        Ok(slots
            .into_iter()
            // SAFETY: each value is a slot of this ring's table that the
            // update just filled and that no other handle names.
            .map(|slot| unsafe { D::from_accept(shard, slot) })
            .collect())
    }

    /// A write-blocked session: flush its waiting replies (the POLLOUT
    /// wait follows if the socket will not take them).
    fn flush_blocked(&mut self, key: u32) {
        self.flush(key);
    }
}
