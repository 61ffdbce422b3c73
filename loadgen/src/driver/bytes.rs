//! Reply parsing, shared by both socket interfaces.
#![forbid(unsafe_code)]

use crate::session::ClientSession;
use crate::stats::{Counters, ErrorKind, Histos};
use c10m_server::wire::{decode_reply, parse_busy, parse_i64, Reply};

/// Largest reply accepted: ours are ~15 bytes, but a server's error text
/// (e.g. Redis's protected-mode notice) can be a few hundred.
const MAX_REPLY: usize = 4096;

/// Parses every complete reply in `buf`; returns the bytes consumed.
pub(super) fn consume_replies(
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
