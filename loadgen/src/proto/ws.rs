//! RFC 6455 websocket: the opening handshake (client side) and the
//! control frames a heartbeat needs (ping, pong, close).

use super::{snippet, ProtoError, MAX_MESSAGE};
use crate::stats::ErrorKind;
use base64::Engine as _;

pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The upgrade request up to the value of its Sec-WebSocket-Key header.
pub fn upgrade_prefix(path: &str, host: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
    )
    .into_bytes()
}

/// Ends the upgrade request after its key.
pub fn finish_upgrade(key: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Session `sid`'s Sec-WebSocket-Key: 16 bytes, base64, a pure function
/// of the seed and the session (so it need not be stored).
pub fn key(seed: u64, sid: u64) -> String {
    let a = mix(seed ^ sid.wrapping_mul(0xA24B_AED4_963E_E407));
    let b = mix(a);
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&a.to_le_bytes());
    raw[8..].copy_from_slice(&b.to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// The Sec-WebSocket-Accept a server must answer `key` with.
pub fn accept(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

fn header<'a>(headers: &'a [httparse::Header<'_>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// The server's answer to the upgrade request with `key`: the bytes it
/// took once complete and valid.
pub fn decode_upgrade(key: &str, buf: &[u8]) -> Result<Option<usize>, ProtoError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let used = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_MESSAGE => return Ok(None),
        Ok(httparse::Status::Partial) => {
            return Err((
                ErrorKind::Handshake,
                format!("upgrade response over {MAX_MESSAGE} bytes"),
            ))
        }
        Err(e) => {
            return Err((
                ErrorKind::Handshake,
                format!("malformed upgrade response ({e}): {:?}", snippet(buf)),
            ))
        }
    };
    let code = response.code.unwrap_or(0);
    if code != 101 {
        return Err((
            ErrorKind::Handshake,
            format!(
                "HTTP {code} {} instead of 101 Switching Protocols",
                response.reason.unwrap_or("")
            ),
        ));
    }
    let upgrade = header(response.headers, "upgrade");
    if !upgrade.is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"websocket")) {
        return Err((
            ErrorKind::Handshake,
            "101 without Upgrade: websocket".into(),
        ));
    }
    let connection = header(response.headers, "connection").unwrap_or(b"");
    let has_upgrade = connection
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    if !has_upgrade {
        return Err((
            ErrorKind::Handshake,
            "101 without Connection: Upgrade".into(),
        ));
    }
    let want = accept(key);
    match header(response.headers, "sec-websocket-accept") {
        Some(v) if v.trim_ascii() == want.as_bytes() => Ok(Some(used)),
        other => Err((
            ErrorKind::Handshake,
            format!(
                "Sec-WebSocket-Accept {:?}, expected {want:?}",
                other.map(|v| String::from_utf8_lossy(v).into_owned())
            ),
        )),
    }
}

/// A final client frame (masked, as RFC 6455 §5.3 requires of clients)
/// with a payload of at most 125 bytes (a control frame's limit).
pub fn masked_frame(op: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    debug_assert!(payload.len() <= 125);
    out.push(0x80 | op);
    out.push(0x80 | payload.len() as u8);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// A frame from the server that matters to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A pong carrying the intended time of our ping.
    Pong(u64),
    /// The server pinged us with this payload.
    Ping(Vec<u8>),
}

/// One frame at the start of `buf`.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, ProtoError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let protocol = |text: String| Err((ErrorKind::Protocol, text));
    if b0 & 0x70 != 0 {
        return protocol(format!(
            "frame with RSV bits {b0:#04x} (no extension was agreed)"
        ));
    }
    if b1 & 0x80 != 0 {
        return protocol("a masked frame from the server (RFC 6455 §5.1 forbids it)".into());
    }
    let (len, header) = match b1 & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes")),
            10,
        ),
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if len > MAX_MESSAGE as u64 {
        return protocol(format!("frame of {len} bytes is over {MAX_MESSAGE}"));
    }
    let end = header + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let payload = &buf[header..end];
    let op = b0 & 0x0F;
    if op >= 0x8 && b0 & 0x80 == 0 {
        return protocol(format!("fragmented control frame (opcode {op:#x})"));
    }
    match op {
        OP_PONG => match <[u8; 8]>::try_from(payload) {
            Ok(t) => Ok(Some((Message::Pong(u64::from_be_bytes(t)), end))),
            Err(_) => protocol(format!(
                "pong payload {:02x?} is not one of our pings' (8 bytes)",
                payload
            )),
        },
        OP_PING => Ok(Some((Message::Ping(payload.to_vec()), end))),
        OP_CLOSE => {
            let code = payload
                .get(..2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]).to_string())
                .unwrap_or_else(|| "none".into());
            let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or(b""));
            Err((
                ErrorKind::PeerClose,
                format!("the server sent a close frame (code {code}) {reason:?}"),
            ))
        }
        0x0..=0x2 => protocol(format!(
            "a data frame (opcode {op:#x}, {len} bytes): the server should only answer pings"
        )),
        _ => protocol(format!("unknown opcode {op:#x}")),
    }
}
