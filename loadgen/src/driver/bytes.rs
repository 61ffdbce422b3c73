//! Reply parsing, shared by both socket interfaces: the bytes a session's
//! connection delivered, taken through the run's protocol ([`Codec`]).
#![forbid(unsafe_code)]

use crate::proto::{Codec, Decoded, ProtoError};
use crate::session::ClientSession;
use crate::stats::{Counters, ErrorKind, Histos};
use std::collections::VecDeque;

/// One session's view of the driver while its bytes are parsed.
pub(super) struct Replies<'a> {
    pub codec: &'a mut Codec,
    pub session: &'a mut ClientSession,
    pub sid: u64,
    /// The session's outstanding intended times (ms), for protocols whose
    /// replies do not echo them.
    pub fifo: Option<&'a mut VecDeque<u32>>,
    pub counters: &'a mut Counters,
    pub histos: &'a mut Histos,
    /// When these bytes arrived (µs of the run clock): the kernel's
    /// receive time on io_uring, the read's time on epoll. Round trips
    /// end here.
    pub arrived_us: u64,
    /// Set when the bytes completed the protocol's handshake.
    pub connected: bool,
    /// Bytes to send back (a websocket pong to the server's ping).
    pub send: Vec<u8>,
}

impl Replies<'_> {
    /// Parses every complete message in `buf`; returns the bytes consumed.
    pub fn consume(&mut self, buf: &[u8]) -> Result<usize, ProtoError> {
        let mut pos = 0;
        if self.session.handshaking() {
            match self.codec.decode_handshake(self.sid, buf)? {
                Some(used) => {
                    self.session.set_handshaking(false);
                    self.connected = true;
                    pos = used;
                }
                None => return Ok(0),
            }
        }
        loop {
            match self.codec.decode(&buf[pos..])? {
                Some((Decoded::Reply(echo), used)) => {
                    self.answered(echo)?;
                    pos += used;
                }
                Some((Decoded::Pong(bytes), used)) => {
                    self.send.extend_from_slice(&bytes);
                    pos += used;
                }
                Some((Decoded::ReplyThenClose(text), _)) => {
                    self.answered(None)?;
                    return Err((ErrorKind::PeerClose, text));
                }
                None => return Ok(pos),
            }
        }
    }

    /// A heartbeat's answer, echoing its intended time (µs) or not.
    fn answered(&mut self, echo: Option<u64>) -> Result<(), ProtoError> {
        let intended_us = match echo {
            Some(t) => t,
            None => {
                let oldest = self.fifo.as_mut().and_then(|q| q.pop_front());
                match oldest {
                    Some(ms) => u64::from(ms) * 1_000,
                    None => {
                        return Err((
                            ErrorKind::Protocol,
                            format!(
                                "an answer ({}) with no heartbeat outstanding",
                                self.codec.kind().name()
                            ),
                        ))
                    }
                }
            }
        };
        self.histos
            .rtt
            .saturating_record(self.arrived_us.saturating_sub(intended_us));
        self.session.answered();
        self.counters.heartbeats_answered += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ProtocolConfig, ProtocolKind};

    fn codec(kind: ProtocolKind) -> Codec {
        let config = ProtocolConfig {
            kind,
            ..ProtocolConfig::default()
        };
        Codec::new(&config, "127.0.0.1:1".parse().unwrap(), 1)
    }

    /// Consumes `buf`; returns the result and whether it completed the
    /// handshake.
    fn consume(
        codec: &mut Codec,
        s: &mut ClientSession,
        fifo: Option<&mut VecDeque<u32>>,
        c: &mut Counters,
        h: &mut Histos,
        buf: &[u8],
        now_us: u64,
    ) -> (Result<usize, ProtoError>, bool) {
        let mut r = Replies {
            codec,
            session: s,
            sid: 0,
            fifo,
            counters: c,
            histos: h,
            arrived_us: now_us,
            connected: false,
            send: Vec::new(),
        };
        let result = r.consume(buf);
        (result, r.connected)
    }

    fn run(
        codec: &mut Codec,
        s: &mut ClientSession,
        fifo: Option<&mut VecDeque<u32>>,
        c: &mut Counters,
        h: &mut Histos,
        buf: &[u8],
        now_us: u64,
    ) -> Result<usize, ProtoError> {
        consume(codec, s, fifo, c, h, buf, now_us).0
    }

    #[test]
    fn replies_are_parsed_across_splits_and_rtt_comes_from_the_payload() {
        let mut codec = codec(ProtocolKind::Resp);
        let mut s = ClientSession::new(0);
        let mut c = Counters::default();
        let mut h = Histos::new();
        let bytes = b"$4\r\n1000\r\n$4\r\n2000\r\n$4\r\n30";
        let used = run(&mut codec, &mut s, None, &mut c, &mut h, bytes, 5_000).unwrap();
        assert_eq!(used, 20);
        assert_eq!(c.heartbeats_answered, 2);
        // 5000 - 1000 and 5000 - 2000, at 3 significant digits.
        assert!((3_996..=4_004).contains(&h.rtt.max()), "{}", h.rtt.max());
        assert_eq!(h.rtt.min(), 3_000);
        let mut err = |bytes: &[u8]| {
            run(&mut codec, &mut s, None, &mut c, &mut h, bytes, 0)
                .unwrap_err()
                .0
        };
        assert_eq!(err(b"-ERR max clients\r\n"), ErrorKind::ServerError);
        assert_eq!(err(b"-ERR BUSY retry-after=3\r\n"), ErrorKind::Busy);
        assert_eq!(err(b"+PONG\r\n"), ErrorKind::Protocol);
        assert_eq!(err(b"$3\r\nabc\r\n"), ErrorKind::Protocol);
    }

    #[test]
    fn fifo_replies_take_the_oldest_intended_time_and_refuse_extra_answers() {
        let mut codec = codec(ProtocolKind::Memcache);
        let mut s = ClientSession::new(0);
        let mut c = Counters::default();
        let mut h = Histos::new();
        let mut q: VecDeque<u32> = [1, 3].into_iter().collect();
        let bytes = b"VERSION 1.6.18\r\nVERSION 1.6.18\r\nVERS";
        let used = run(
            &mut codec,
            &mut s,
            Some(&mut q),
            &mut c,
            &mut h,
            bytes,
            10_000,
        )
        .unwrap();
        assert_eq!(used, 32);
        assert_eq!(c.heartbeats_answered, 2);
        assert!(q.is_empty());
        // 10 ms - 1 ms and 10 ms - 3 ms.
        assert_eq!(h.rtt.min(), 7_000);
        assert!((8_990..=9_010).contains(&h.rtt.max()), "{}", h.rtt.max());
        let err = run(
            &mut codec,
            &mut s,
            Some(&mut q),
            &mut c,
            &mut h,
            b"VERSION 1\r\n",
            0,
        );
        assert_eq!(err.unwrap_err().0, ErrorKind::Protocol);
    }

    #[test]
    fn a_handshake_answer_connects_then_replies_follow() {
        let mut codec = codec(ProtocolKind::Mqtt);
        let mut s = ClientSession::new(0);
        s.set_handshaking(true);
        let mut c = Counters::default();
        let mut h = Histos::new();
        let mut q: VecDeque<u32> = [1].into_iter().collect();
        // Half a CONNACK: nothing taken, still handshaking.
        let used = run(
            &mut codec,
            &mut s,
            Some(&mut q),
            &mut c,
            &mut h,
            &[0x20, 0x02],
            0,
        );
        assert_eq!(used, Ok(0));
        assert!(s.handshaking());
        let bytes = [0x20, 0x02, 0, 0, 0xD0, 0x00];
        let (used, connected) = consume(
            &mut codec,
            &mut s,
            Some(&mut q),
            &mut c,
            &mut h,
            &bytes,
            2_000,
        );
        assert_eq!(used, Ok(6));
        assert!(connected);
        assert!(!s.handshaking());
        assert_eq!(c.heartbeats_answered, 1);
        assert_eq!(h.rtt.max(), 1_000);
    }
}
