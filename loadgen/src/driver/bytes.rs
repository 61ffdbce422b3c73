//! The byte side of a `Driver`: opening sockets, writing heartbeats (with
//! the rare short write spilled until WRITABLE), reading and parsing
//! replies (with the rare partial reply spilled until more arrives).
#![forbid(unsafe_code)]

use super::{token, Driver};
use crate::session::ClientSession;
use crate::stats::{Counters, ErrorKind, Histos};
use c10m_server::wire::{decode_reply, encode_command, parse_busy, parse_i64, push_decimal, Reply};
use mio::unix::SourceFd;
use mio::Interest;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;

/// Largest reply accepted: ours are ~15 bytes, but a server's error text
/// (e.g. Redis's protected-mode notice) can be a few hundred.
const MAX_REPLY: usize = 4096;

/// Opens a nonblocking socket and starts connecting it.
pub(super) fn open_socket(
    source: Option<SocketAddrV4>,
    target: SocketAddrV4,
) -> io::Result<TcpStream> {
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

impl Driver {
    /// Sends one heartbeat; false if the connection failed doing so.
    pub(super) fn send_heartbeat(
        &mut self,
        idx: u32,
        intended_ms: u32,
        now: u32,
        now_us: u64,
    ) -> bool {
        let intended_us = u64::from(intended_ms) * 1_000;
        self.histos
            .send_lag
            .saturating_record(now_us.saturating_sub(intended_us));
        self.digits.clear();
        push_decimal(intended_us, &mut self.digits);
        self.out.clear();
        encode_command(&[b"PING", &self.digits], &mut self.out);
        self.counters.heartbeats_sent += 1;
        if self.sessions[idx as usize].has_write_spill() {
            if let Some(spill) = self.write_spill.get_mut(&idx) {
                spill.extend_from_slice(&self.out);
            }
            return true;
        }
        let Some(stream) = self.sockets[idx as usize].as_mut() else {
            return false;
        };
        let written = match stream.write(&self.out) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                0
            }
            Err(e) => {
                self.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string()));
                return false;
            }
        };
        if written < self.out.len() {
            self.counters.write_spills += 1;
            let rest = self.out[written..].to_vec();
            self.write_spill.insert(idx, rest);
            return self.set_write_interest(idx, true, now);
        }
        true
    }

    pub(super) fn set_write_interest(&mut self, idx: u32, on: bool, now: u32) -> bool {
        let s = &mut self.sessions[idx as usize];
        s.set_write_spill(on);
        let interest = if on {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let tok = token(idx, s.gen());
        let Some(stream) = self.sockets[idx as usize].as_mut() else {
            return false;
        };
        let fd = stream.as_raw_fd();
        if let Err(e) = self
            .poll
            .registry()
            .reregister(&mut SourceFd(&fd), tok, interest)
        {
            self.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string()));
            return false;
        }
        true
    }

    pub(super) fn flush_write(&mut self, idx: u32, now_us: u64) {
        let now = (now_us / 1_000) as u32;
        let (Some(stream), Some(spill)) = (
            self.sockets[idx as usize].as_mut(),
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

    pub(super) fn on_readable(&mut self, idx: u32, now_us: u64) {
        let now = (now_us / 1_000) as u32;
        loop {
            let Some(stream) = self.sockets[idx as usize].as_mut() else {
                return;
            };
            let n = match stream.read(&mut self.scratch) {
                Ok(0) => return self.fail(idx, ErrorKind::Eof, now, None),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(idx, ErrorKind::of_io(&e), now, Some(e.to_string())),
            };
            let s = &mut self.sessions[idx as usize];
            let result = if s.has_read_spill() {
                let mut buf = self.read_spill.remove(&idx).unwrap_or_default();
                buf.extend_from_slice(&self.scratch[..n]);
                let r = consume_replies(s, &mut self.counters, &mut self.histos, &buf, now_us);
                r.map(|used| buf[used..].to_vec())
            } else {
                let buf = &self.scratch[..n];
                let r = consume_replies(s, &mut self.counters, &mut self.histos, buf, now_us);
                r.map(|used| buf[used..].to_vec())
            };
            match result {
                Ok(rest) => {
                    let s = &mut self.sessions[idx as usize];
                    s.set_read_spill(!rest.is_empty());
                    if !rest.is_empty() {
                        self.counters.read_spills += 1;
                        self.read_spill.insert(idx, rest);
                    }
                }
                Err((kind, text)) => return self.fail(idx, kind, now, text),
            }
            if self.sessions[idx as usize].close_due(now) {
                // A planned close was waiting for these replies.
                self.wheel.cancel(idx);
                return self.advance(idx, now, now_us);
            }
            if n < self.scratch.len() {
                return; // drained: a short read means the socket buffer is empty
            }
        }
    }
}

/// Parses every complete reply in `buf`; returns the bytes consumed.
fn consume_replies(
    s: &mut ClientSession,
    counters: &mut Counters,
    histos: &mut Histos,
    buf: &[u8],
    now_us: u64,
) -> Result<usize, (ErrorKind, Option<String>)> {
    let mut pos = 0;
    loop {
        match decode_reply(&buf[pos..], MAX_REPLY) {
            Ok(Some((Reply::Bulk(Some(payload)), used))) => {
                let Some(intended_us) = parse_i64(payload).filter(|v| *v >= 0) else {
                    let text = format!(
                        "bulk reply {:?} is not a send time",
                        payload.escape_ascii().to_string()
                    );
                    return Err((ErrorKind::Protocol, Some(text)));
                };
                histos
                    .rtt
                    .saturating_record(now_us.saturating_sub(intended_us as u64));
                s.answered();
                counters.heartbeats_answered += 1;
                pos += used;
            }
            Ok(Some((Reply::Error(text), _))) => {
                let kind = if parse_busy(text).is_some() {
                    ErrorKind::Busy
                } else {
                    ErrorKind::ServerError
                };
                return Err((kind, Some(String::from_utf8_lossy(text).into_owned())));
            }
            Ok(Some((other, _))) => {
                return Err((
                    ErrorKind::Protocol,
                    Some(format!("unexpected reply {other:?}")),
                ));
            }
            Ok(None) => return Ok(pos),
            Err(e) => {
                return Err((
                    ErrorKind::Protocol,
                    Some(format!(
                        "{e}: {:?}",
                        String::from_utf8_lossy(&buf[pos..buf.len().min(pos + 80)])
                    )),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_parsed_across_splits_and_rtt_comes_from_the_payload() {
        let mut s = ClientSession::new(0);
        let mut c = Counters::default();
        let mut h = Histos::new();
        let bytes = b"$4\r\n1000\r\n$4\r\n2000\r\n$4\r\n30";
        let used = consume_replies(&mut s, &mut c, &mut h, bytes, 5_000).unwrap();
        assert_eq!(used, 20);
        assert_eq!(c.heartbeats_answered, 2);
        // 5000 - 1000 and 5000 - 2000, at 3 significant digits.
        assert!((3_996..=4_004).contains(&h.rtt.max()), "{}", h.rtt.max());
        assert_eq!(h.rtt.min(), 3_000);
        let err = consume_replies(&mut s, &mut c, &mut h, b"-ERR max clients\r\n", 0).unwrap_err();
        assert_eq!(err.0, ErrorKind::ServerError);
        let err = consume_replies(&mut s, &mut c, &mut h, b"+PONG\r\n", 0).unwrap_err();
        assert_eq!(err.0, ErrorKind::Protocol);
        let err = consume_replies(&mut s, &mut c, &mut h, b"$3\r\nabc\r\n", 0).unwrap_err();
        assert_eq!(err.0, ErrorKind::Protocol);
    }
}
