//! The epoll backend, on mio (edge-triggered).
//!
//! # Readiness contract
//! mio registers sockets edge-triggered (EPOLLET) with EPOLLIN|EPOLLRDHUP.
//! An edge fires on every arrival of new data, so after a read that
//! returned less than the scratch buffer the socket was drained at that
//! moment and anything newer brings a new event: we skip the extra read
//! that would only return EAGAIN (one syscall per heartbeat saved). The
//! exception is a read-closed (RDHUP) or error event, where we read on
//! until EOF so the close is never missed. A session that fills the
//! scratch buffer repeatedly is served at most `READS_PER_TURN` reads per
//! loop turn and then queued, so one flooding client cannot starve the
//! rest. Writable interest is added only while a session has replies
//! spilled (rare), and removed when they are written.
//!
//! The listener is drained until EAGAIN, at most `ACCEPTS_PER_TURN` per turn
//! (then the turn ends with a zero poll timeout, to come back). On EMFILE /
//! ENFILE the worker pauses accepting for [`ACCEPT_PAUSE`] rather than
//! spinning on an error that has not gone away, counts it, and tries again.

use super::AdmissionControl;
use super::{
    is_resource_exhaustion, pin_worker, RunningWorker, TickClock, WorkerSetup, ACCEPT_PAUSE,
};
use crate::core::{CloseReason, SessionCore, Verdict};
use crate::handoff;
use crate::stats::WorkerStats;
use crate::table::Token;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Waker};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENER: mio::Token = mio::Token(Token::reserved(0).0 as usize);
const WAKER: mio::Token = mio::Token(Token::reserved(1).0 as usize);

/// Scratch read size. Small enough that the replies to one read stay
/// modest (an unknown command's error is ~9× its request), large enough
/// for any heartbeat burst.
const SCRATCH: usize = 16 * 1024;
const READS_PER_TURN: usize = 8;
const ACCEPTS_PER_TURN: usize = 512;
const EVENTS: usize = 1024;

/// Starts an epoll worker thread.
pub fn spawn(setup: WorkerSetup) -> io::Result<RunningWorker> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let name = format!("c10m-epoll-{}", setup.id);
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        if setup.private_table {
            // The waker's eventfd stays in the spawning thread's table (it
            // writes it); its registration lives in the epoll instance.
            let mut keep = setup.kept_fds();
            keep.push(poll.as_raw_fd());
            super::private_fd_table(&keep)?;
        }
        Worker::new(setup, poll)?.run()
    })?;
    Ok(RunningWorker {
        thread,
        wake: Box::new(move || waker.wake()),
    })
}

struct Worker {
    poll: Poll,
    events: Events,
    state: State,
    /// A process taking over: where the old worker comes (see [`handoff`]).
    takeover: Option<Arc<std::os::fd::OwnedFd>>,
}

/// Everything but the poll and its event buffer, so events can be read
/// while the state is mutated.
struct State {
    registry: mio::Registry,
    listener: Option<TcpListener>,
    core: SessionCore<TcpStream>,
    clock: TickClock,
    control: AdmissionControl,
    stats: Arc<WorkerStats>,
    stop: Arc<AtomicBool>,
    scratch: Box<[u8]>,
    out: Vec<u8>,
    /// Sessions with unread data left after their per-turn read budget.
    requeued: Vec<Token>,
    due: Vec<(u32, CloseReason)>,
    accept_more: bool,
    accept_paused_until: Option<Instant>,
    id: usize,
    handoff: Arc<handoff::Port>,
}

impl Worker {
    fn new(setup: WorkerSetup, poll: Poll) -> io::Result<Worker> {
        pin_worker(setup.id, setup.cpu);
        let clock = TickClock::new(setup.tick);
        let registry = poll.registry().try_clone()?;
        registry.register(
            &mut SourceFd(&setup.listener.as_raw_fd()),
            LISTENER,
            Interest::READABLE,
        )?;
        let now = clock.tick_at(Instant::now());
        Ok(Worker {
            poll,
            events: Events::with_capacity(EVENTS),
            state: State {
                registry,
                listener: Some(setup.listener),
                core: SessionCore::new(setup.core, now),
                clock,
                control: setup.control,
                stats: setup.stats,
                stop: setup.stop,
                scratch: vec![0u8; SCRATCH].into_boxed_slice(),
                out: Vec::with_capacity(SCRATCH),
                requeued: Vec::new(),
                due: Vec::new(),
                accept_more: setup.takeover.is_none(),
                accept_paused_until: None,
                id: setup.id,
                handoff: setup.handoff,
            },
            takeover: setup.takeover,
        })
    }

    fn run(mut self) -> io::Result<()> {
        let s = &mut self.state;
        if let Some(listener) = self.takeover.take() {
            s.take_over(&listener)?;
        }
        loop {
            let timeout = s.poll_timeout(Instant::now());
            if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            let woke = Instant::now();
            s.control.on_wake(s.clock.elapsed_ns(woke));
            let now = s.clock.tick_at(woke);
            for event in self.events.iter() {
                match event.token() {
                    LISTENER => s.accept_more = true,
                    WAKER => {}
                    token => s.on_event(Token(token.0 as u64), event, now),
                }
            }
            s.serve_requeued(now);
            if s.accept_more && s.accept_paused_until.is_none() {
                s.accept(now);
            }
            s.expire(now);
            s.publish();
            if s.handoff.requested() && s.hand_off(now) {
                return Ok(()); // the new process serves every session now
            }
            if s.stop.load(Ordering::Relaxed) {
                s.shutdown();
                return Ok(());
            }
        }
    }
}

impl State {
    fn poll_timeout(&mut self, at: Instant) -> Duration {
        if let Some(until) = self.accept_paused_until {
            if at >= until {
                self.accept_paused_until = None;
                self.accept_more = true;
            }
        }
        if !self.requeued.is_empty() || (self.accept_more && self.accept_paused_until.is_none()) {
            return Duration::ZERO;
        }
        let next_tick = self.clock.until_next_tick(at);
        match self.accept_paused_until {
            Some(until) => next_tick.min(until - at),
            None => next_tick,
        }
    }

    fn publish(&self) {
        self.stats.publish(
            &self.core.counters,
            self.core.sessions(),
            self.core.spill_bytes(),
            self.control.lag(),
        );
    }

    fn accept(&mut self, now: u32) {
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, _)) => self.admit(stream, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_more = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_resource_exhaustion(&e) => {
                    self.core.counters.accept_errors_fd += 1;
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
                // ECONNABORTED and the like concern one connection only.
                Err(_) => {}
            }
        }
        // Budget used: more may be waiting; `accept_more` stays set.
    }

    fn admit(&mut self, stream: TcpStream, now: u32) {
        let now_ns = self.clock.elapsed_ns(Instant::now());
        let spill = self.core.spill_bytes();
        if !self
            .control
            .admit(now_ns, spill, &mut self.core.counters, &stream)
        {
            return; // dropping the stream closes it
        }
        if stream.set_nonblocking(true).is_err() || stream.set_nodelay(true).is_err() {
            self.control.release();
            return;
        }
        let fd = stream.as_raw_fd();
        let token = self.core.open(stream, now);
        let registered = self.registry.register(
            &mut SourceFd(&fd),
            mio::Token(token.0 as usize),
            Interest::READABLE,
        );
        if registered.is_err() {
            self.close(token.key(), CloseReason::Reset);
        }
    }

    fn on_event(&mut self, token: Token, event: &mio::event::Event, now: u32) {
        let Some(key) = self.core.resolve(token) else {
            return; // stale: the session closed earlier in this batch
        };
        if event.is_writable() && self.core.is_write_blocked(key) && !self.flush(key) {
            return;
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            let to_eof = event.is_read_closed() || event.is_error();
            self.read(key, now, to_eof);
        }
    }

    fn serve_requeued(&mut self, now: u32) {
        for token in std::mem::take(&mut self.requeued) {
            if let Some(key) = self.core.resolve(token) {
                self.read(key, now, false);
            }
        }
    }

    /// Reads and serves a session until it is drained, blocked, closed, or
    /// has used its per-turn budget (then it is requeued).
    fn read(&mut self, key: u32, now: u32, to_eof: bool) {
        for _ in 0..READS_PER_TURN {
            if self.core.is_write_blocked(key) {
                return;
            }
            let n = match self.core.handle(key).read(&mut self.scratch) {
                Ok(0) => return self.close(key, CloseReason::Peer),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(key, CloseReason::Reset),
            };
            self.out.clear();
            let verdict = self
                .core
                .ingest(key, now, &self.scratch[..n], &mut self.out);
            let written = match self.core.handle(key).write(&self.out) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(_) if verdict == Verdict::Open => return self.close(key, CloseReason::Reset),
                Err(_) => 0,
            };
            if let Verdict::Close(reason) = verdict {
                // Best effort: the error or +OK went out if the socket took it.
                return self.close(key, reason);
            }
            if let Verdict::Close(reason) = self.core.after_write(key, &self.out, written) {
                return self.close(key, reason);
            }
            if self.core.is_write_blocked(key) {
                return self.want_writable(key, true);
            }
            if n < self.scratch.len() && !to_eof {
                return;
            }
        }
        self.requeued.push(self.core.token(key));
    }

    /// Writes spilled replies; true when the session is unblocked.
    fn flush(&mut self, key: u32) -> bool {
        loop {
            let pending = self.core.pending_output(key);
            let written = match self.core.handle(key).write(pending) {
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(key, CloseReason::Reset);
                    return false;
                }
            };
            if self.core.flushed(key, written) {
                self.want_writable(key, false);
                return true;
            }
            if written == 0 {
                return false;
            }
        }
    }

    fn want_writable(&mut self, key: u32, writable: bool) {
        let interest = if writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let fd = self.core.handle(key).as_raw_fd();
        let token = mio::Token(self.core.token(key).0 as usize);
        if self
            .registry
            .reregister(&mut SourceFd(&fd), token, interest)
            .is_err()
        {
            self.close(key, CloseReason::Reset);
        }
    }

    fn expire(&mut self, now: u32) {
        self.due.clear();
        self.core.expire(now, &mut self.due);
        for i in 0..self.due.len() {
            let (key, reason) = self.due[i];
            self.close(key, reason);
        }
    }

    fn close(&mut self, key: u32, reason: CloseReason) {
        // Closing the descriptor removes it from the epoll set.
        drop(self.core.close(key, reason));
        self.control.release();
    }

    /// Old process: sends every session to the new process's worker named
    /// in the request, then waits for the main thread's verdict. True when
    /// the new process serves them (this worker then stops, dropping its
    /// references: nothing is closed for the client); false when this
    /// worker serves on (the hand-off failed somewhere: nothing was lost,
    /// and events that arrived meanwhile wait in the epoll instance).
    fn hand_off(&mut self, now: u32) -> bool {
        let Some(target) = self.handoff.take_request() else {
            return false;
        };
        let report = match self.send_all(&target, now) {
            Ok(report) => report,
            Err(e) => handoff::Report::Failed(format!("worker {}: {e}", self.id)),
        };
        let sent = matches!(report, handoff::Report::Done { .. });
        // The counters the successor goes on from (upgrade::hand_off).
        self.publish();
        self.handoff.report(report);
        if sent && self.handoff.wait_verdict(handoff::VERDICT_TIMEOUT) {
            return true;
        }
        self.accept_more = true;
        false
    }

    fn send_all(&mut self, target: &str, now: u32) -> io::Result<handoff::Report> {
        let keys = self.core.keys();
        let begin = handoff::Begin::new(self.id, keys.len(), self.clock.tick());
        let mut sender = handoff::Sender::connect(target, begin)?;
        let (mut partial, mut blocked) = (0, 0);
        for chunk in keys.chunks(handoff::BATCH) {
            let fds: Vec<_> = chunk
                .iter()
                .map(|&k| self.core.handle(k).as_raw_fd())
                .collect();
            let carried: Vec<_> = chunk.iter().map(|&k| self.core.export(k, now)).collect();
            handoff::tally(&carried, &mut partial, &mut blocked);
            sender.batch(&fds, &carried)?;
        }
        let sessions = sender.finish()?;
        Ok(handoff::Report::Done {
            sessions,
            partial,
            blocked,
        })
    }

    /// New process: takes one old worker's sessions (without reading from
    /// them), reports, and waits for the commit; then registers them and
    /// starts accepting. An error stops the worker (and the process: the
    /// old one serves on).
    fn take_over(&mut self, listener: &std::os::fd::OwnedFd) -> io::Result<()> {
        use std::os::fd::AsFd;
        let now = self.clock.tick_at(Instant::now());
        let mut adopted = Vec::new();
        let received = (|| {
            let mut r = handoff::Receiver::accept(
                listener.as_fd(),
                handoff::STEP_TIMEOUT,
                self.clock.tick(),
            )?;
            adopted.reserve(r.begin.sessions as usize);
            let (mut partial, mut blocked) = (0, 0);
            while let Some(batch) = r.next_batch()? {
                for (fd, carried) in batch {
                    handoff::tally(std::slice::from_ref(&carried), &mut partial, &mut blocked);
                    adopted.push(self.core.adopt(TcpStream::from(fd), now, &carried));
                }
            }
            r.ack()?;
            io::Result::Ok(handoff::Report::Done {
                sessions: r.received(),
                partial,
                blocked,
            })
        })();
        self.handoff.settle(self.id, received)?;
        self.control.adopt(adopted.len() as u64);
        for (token, verdict) in adopted {
            let key = token.key();
            if let Verdict::Close(reason) = verdict {
                self.close(key, reason);
                continue;
            }
            // Edge-triggered: a socket with bytes already waiting is
            // reported ready by the registration itself.
            let interest = if self.core.is_write_blocked(key) {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let fd = self.core.handle(key).as_raw_fd();
            if self
                .registry
                .register(&mut SourceFd(&fd), mio::Token(token.0 as usize), interest)
                .is_err()
            {
                self.close(key, CloseReason::Reset);
            }
        }
        self.accept_more = true;
        self.publish();
        self.handoff.mark_armed();
        Ok(())
    }

    /// Stops accepting, closes every session, publishes final counters.
    fn shutdown(&mut self) {
        if let Some(listener) = self.listener.take() {
            let _ = self
                .registry
                .deregister(&mut SourceFd(&listener.as_raw_fd()));
        }
        for key in self.core.keys() {
            self.close(key, CloseReason::Shutdown);
        }
        self.publish();
    }
}
