//! The epoll side of a `Driver`: a mio loop, a timerfd, a `TcpStream` per
//! session in the driver thread's own descriptor table.
//!
//! - **Tokens.** `gen << 32 | index`; `TIMER` is the top value.
//! - **Reads.** Edge-triggered: read until `WouldBlock`, except that a read
//!   shorter than the buffer proves the socket drained (as tokio also
//!   relies on with epoll), which saves a syscall per reply.
//! - **Writes.** A heartbeat is written at once; the rare short write
//!   spills and asks for WRITABLE until flushed.
#![forbid(unsafe_code)]

use super::{Driver, Sent, SocketIo};
use crate::session::State;
use crate::stats::ErrorKind;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

const TIMER: Token = Token(usize::MAX);

fn token(idx: u32, gen: u16) -> Token {
    Token((usize::from(gen) << 32) | idx as usize)
}

/// See the module docs.
pub struct EpollIo {
    poll: Poll,
    events: Events,
    timer: TimerFd,
    armed_ms: Option<u32>,
    sockets: Vec<Option<TcpStream>>,
}

impl EpollIo {
    /// Gives the calling (driver) thread its own descriptor table, then
    /// makes its poller and timer.
    pub fn new(sessions: usize) -> io::Result<EpollIo> {
        // RLIMIT_NOFILE bounds each descriptor table: with one of its own,
        // this driver holds up to RLIMIT_NOFILE sockets whatever the
        // process's other drivers hold.
        c10m_server::sys::private_fd_table(&[]).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("giving a driver thread its own descriptor table: {e}"),
            )
        })?;
        let poll = Poll::new()?;
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        poll.registry().register(
            &mut SourceFd(&timer.as_fd().as_raw_fd()),
            TIMER,
            Interest::READABLE,
        )?;
        Ok(EpollIo {
            poll,
            events: Events::with_capacity(1024),
            timer,
            armed_ms: None,
            sockets: Vec::with_capacity(sessions),
        })
    }

    fn stream(&mut self, idx: u32) -> io::Result<&mut TcpStream> {
        self.sockets[idx as usize]
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

/// Opens a nonblocking socket and starts connecting it.
fn open_socket(source: Option<SocketAddrV4>, target: SocketAddrV4) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::IPV4,
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    socket.set_nodelay(true)?;
    if let Some(src) = source {
        // Port 0 + IP_BIND_ADDRESS_NO_PORT: the port is chosen at connect(),
        // per destination, so each (source, target) pair has the whole
        // ephemeral range.
        // (socket2 0.5 has no setter for it; nix does.)
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        )?;
        socket.bind(&SocketAddr::V4(src).into())?;
    }
    match socket.connect(&SocketAddr::V4(target).into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINPROGRESS as i32) => {}
        Err(e) => return Err(e),
    }
    Ok(socket.into())
}

impl SocketIo for EpollIo {
    fn open(
        &mut self,
        idx: u32,
        gen: u16,
        source: Option<SocketAddrV4>,
        target: SocketAddrV4,
    ) -> io::Result<()> {
        let stream = open_socket(source, target)?;
        let fd = stream.as_raw_fd();
        let both = Interest::READABLE | Interest::WRITABLE;
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), token(idx, gen), both)?;
        self.sockets[idx as usize] = Some(stream);
        Ok(())
    }

    fn send(&mut self, idx: u32, _gen: u16, bytes: &[u8]) -> io::Result<Sent> {
        match self.stream(idx)?.write(bytes) {
            Ok(n) if n == bytes.len() => Ok(Sent::All),
            Ok(n) => Ok(Sent::Partial(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(Sent::Partial(0))
            }
            Err(e) => Err(e),
        }
    }

    fn want_writable(&mut self, idx: u32, gen: u16, on: bool) -> io::Result<()> {
        let interest = if on {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let fd = self.stream(idx)?.as_raw_fd();
        self.poll
            .registry()
            .reregister(&mut SourceFd(&fd), token(idx, gen), interest)
    }

    fn close(&mut self, idx: u32, _gen: u16, _state: State) {
        // Closing also leaves the epoll set.
        self.sockets[idx as usize] = None;
    }

    fn added(&mut self) {
        self.sockets.push(None);
    }

    fn late_connect(d: &mut Driver<Self>, idx: u32, now_us: u64) -> bool {
        let established = d.io.sockets[idx as usize]
            .as_ref()
            .is_some_and(|s| matches!(s.take_error(), Ok(None)) && s.peer_addr().is_ok());
        if established {
            d.on_connect_event(idx, now_us);
        }
        established
    }

    fn turn(d: &mut Driver<Self>, wake_ms: u32) -> io::Result<()> {
        d.arm(wake_ms)?;
        let mut events = std::mem::replace(&mut d.io.events, Events::with_capacity(0));
        let polled =
            d.io.poll
                .poll(&mut events, Some(Duration::from_millis(250)));
        match polled {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                d.io.events = events;
                return Err(e);
            }
        }
        let now_us = d.clock.now_us();
        // A reply read now may let a planned close (a drain's first)
        // go ahead: what was held at the hold's end is counted first.
        d.record_held((now_us / 1_000) as u32);
        for event in events.iter() {
            d.dispatch(event, now_us);
        }
        d.io.events = events;
        Ok(())
    }

    fn close_all(d: &mut Driver<Self>) {
        d.io.sockets.clear();
    }
}

impl Driver<EpollIo> {
    fn arm(&mut self, wake_ms: u32) -> io::Result<()> {
        if self.io.armed_ms == Some(wake_ms) {
            return Ok(());
        }
        let at = TimeSpec::from(Duration::from_nanos(self.clock.abs_ns(wake_ms)));
        self.io.timer.set(
            Expiration::OneShot(at),
            TimerSetTimeFlags::TFD_TIMER_ABSTIME,
        )?;
        self.io.armed_ms = Some(wake_ms);
        Ok(())
    }

    fn dispatch(&mut self, event: &mio::event::Event, now_us: u64) {
        if event.token() == TIMER {
            // Not read: the expiration count is reset by the re-arm that
            // always follows (timerfd_settime zeroes it), and every expiry
            // wakes the edge-triggered registration anew. Saves a read per
            // timer wake-up (~0.7 syscalls per heartbeat in the million
            // layout).
            self.io.armed_ms = None;
            return;
        }
        let idx = (event.token().0 & 0xFFFF_FFFF) as u32;
        let gen = (event.token().0 >> 32) as u16;
        let Some(s) = self.sessions.get(idx as usize) else {
            return;
        };
        if s.gen() != gen {
            return; // stale: that connection is gone
        }
        match s.wire_state() {
            State::Connecting => self.on_connect_event(idx, now_us),
            State::Open => {
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.on_readable(idx, now_us);
                }
                let s = &self.sessions[idx as usize];
                if event.is_writable() && s.gen() == gen && s.has_write_spill() {
                    self.flush_write(idx, now_us);
                }
            }
            State::Waiting | State::Done => {}
        }
    }

    fn on_connect_event(&mut self, idx: u32, now_us: u64) {
        let now = (now_us / 1_000) as u32;
        let Some(stream) = self.io.sockets[idx as usize].as_mut() else {
            return;
        };
        let status = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => stream.peer_addr().map(drop),
        };
        match status {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
            Err(e) => return self.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string())),
        }
        if self.set_write_interest(idx, false, now) {
            self.on_tcp_connected(idx, now_us);
        }
    }

    fn flush_write(&mut self, idx: u32, now_us: u64) {
        let now = (now_us / 1_000) as u32;
        let (Some(stream), Some(spill)) = (
            self.io.sockets[idx as usize].as_mut(),
            self.write_spill.get_mut(&idx),
        ) else {
            return;
        };
        match stream.write(spill) {
            Ok(n) => {
                spill.drain(..n);
                if spill.is_empty() {
                    self.write_spill.remove(&idx);
                    self.set_write_interest(idx, false, now);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => self.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string())),
        }
    }

    fn on_readable(&mut self, idx: u32, now_us: u64) {
        let now = (now_us / 1_000) as u32;
        loop {
            let Some(stream) = self.io.sockets[idx as usize].as_mut() else {
                return;
            };
            let n = match stream.read(&mut self.scratch) {
                Ok(0) => return self.fail(idx, ErrorKind::Eof, now, None),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string())),
            };
            if !self.ingest(idx, n, now_us, now_us) {
                return;
            }
            if n < self.scratch.len() {
                return; // drained: a short read means the socket buffer is empty
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_index_and_generation() {
        let t = token(123_456, 7);
        assert_eq!(t.0 & 0xFFFF_FFFF, 123_456);
        assert_eq!(t.0 >> 32, 7);
        assert_ne!(token(u32::MAX - 1, u16::MAX), TIMER);
    }
}
