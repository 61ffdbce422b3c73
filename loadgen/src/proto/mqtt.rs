//! MQTT 3.1.1 and 5 control packets: CONNECT, CONNACK, PINGREQ,
//! PINGRESP, DISCONNECT (OASIS MQTT 3.1.1 §3, MQTT 5.0 §3).

use super::{snippet, Decoded, MqttVersion, ProtoError, MAX_MESSAGE};
use crate::stats::ErrorKind;

pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];
const CONNACK: u8 = 0x20;
const PINGRESP: u8 = 0xD0;
const TYPE_DISCONNECT: u8 = 0xE0;

/// Remaining length: 7 bits a byte, low first, high bit = more.
fn push_varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A CONNECT with a clean session, no will, no credentials.
pub fn connect(version: MqttVersion, keepalive_s: u16, client_id: &str, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(32 + client_id.len());
    body.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T']);
    body.push(match version {
        MqttVersion::V311 => 4,
        MqttVersion::V5 => 5,
    });
    body.push(0x02); // clean session / clean start
    body.extend_from_slice(&keepalive_s.to_be_bytes());
    if version == MqttVersion::V5 {
        body.push(0); // no properties
    }
    body.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    body.extend_from_slice(client_id.as_bytes());
    out.push(0x10);
    push_varint(body.len(), out);
    out.extend_from_slice(&body);
}

/// A packet: its first byte, its body, the bytes it took.
type Packet<'a> = (u8, &'a [u8], usize);

/// One packet at the start of `buf`.
fn packet(buf: &[u8]) -> Result<Option<Packet<'_>>, ProtoError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut len = 0usize;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7F) << shift;
        i += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
        if i > 4 {
            return Err((
                ErrorKind::Protocol,
                format!("malformed MQTT remaining length: {:02x?}", &buf[..i]),
            ));
        }
    }
    if len > MAX_MESSAGE {
        return Err((
            ErrorKind::Protocol,
            format!(
                "MQTT packet of {len} bytes (type {:#04x}) is over {MAX_MESSAGE}",
                first
            ),
        ));
    }
    if buf.len() < i + len {
        return Ok(None);
    }
    Ok(Some((first, &buf[i..i + len], i + len)))
}

fn connack_code(version: MqttVersion, code: u8) -> &'static str {
    match (version, code) {
        (MqttVersion::V311, 1) => "unacceptable protocol version",
        (MqttVersion::V311, 2) => "identifier rejected",
        (MqttVersion::V311, 3) => "server unavailable",
        (MqttVersion::V311, 4) => "bad user name or password",
        (MqttVersion::V311, 5) => "not authorized",
        (MqttVersion::V5, 0x84) => "unsupported protocol version",
        (MqttVersion::V5, 0x85) => "client identifier not valid",
        (MqttVersion::V5, 0x86) => "bad user name or password",
        (MqttVersion::V5, 0x87) => "not authorized",
        (MqttVersion::V5, 0x88) => "server unavailable",
        (MqttVersion::V5, 0x89) => "server busy",
        (MqttVersion::V5, 0x8A) => "banned",
        (MqttVersion::V5, 0x9F) => "connection rate exceeded",
        _ => "refused",
    }
}

/// The CONNACK that answers our CONNECT.
pub fn decode_connack(version: MqttVersion, buf: &[u8]) -> Result<Option<usize>, ProtoError> {
    let Some((first, body, used)) = packet(buf)? else {
        return Ok(None);
    };
    if first != CONNACK || body.len() < 2 {
        return Err((
            ErrorKind::Handshake,
            format!(
                "expected CONNACK, got packet type {:#04x} ({} bytes): {:?}",
                first,
                body.len(),
                snippet(buf)
            ),
        ));
    }
    let code = body[1];
    let ok = match version {
        MqttVersion::V311 => code == 0,
        MqttVersion::V5 => code < 0x80,
    };
    if !ok {
        return Err((
            ErrorKind::Handshake,
            format!(
                "CONNACK refused the session: code {code:#04x} ({})",
                connack_code(version, code)
            ),
        ));
    }
    Ok(Some(used))
}

/// A PINGRESP; a DISCONNECT from the server ends the session.
pub fn decode(buf: &[u8]) -> Result<Option<(Decoded, usize)>, ProtoError> {
    let Some((first, body, used)) = packet(buf)? else {
        return Ok(None);
    };
    match first {
        PINGRESP if body.is_empty() => Ok(Some((Decoded::Reply(None), used))),
        TYPE_DISCONNECT => {
            let reason = body.first().map_or(0, |r| *r);
            Err((
                ErrorKind::PeerClose,
                format!("the broker sent DISCONNECT (reason {reason:#04x})"),
            ))
        }
        _ => Err((
            ErrorKind::Protocol,
            format!(
                "expected PINGRESP, got packet type {first:#04x} ({} bytes)",
                body.len()
            ),
        )),
    }
}
