//! Protocols the loadgen speaks (`--protocol`, scenario key `protocol`):
//! what a session sends after connecting, what a heartbeat is, what
//! answers it, and how a session says goodbye. Sans-IO: a [`Codec`] writes
//! bytes into a buffer and parses the bytes it is given.
//!
//! | protocol | handshake | heartbeat | reply | RTT from |
//! | --- | --- | --- | --- | --- |
//! | `resp` | none | `PING <µs>` | bulk `<µs>` | the echo |
//! | `line` | none | `<µs>\n` | `<µs>\n` | the echo |
//! | `websocket` | RFC 6455 upgrade, accept key checked | masked ping, payload = µs (8 B) | pong echoing it | the echo |
//! | `mqtt` | CONNECT (3.1.1 or 5, clean, keepalive) → CONNACK 0 | PINGREQ | PINGRESP | FIFO |
//! | `memcache` | none | `version` | `VERSION …` | FIFO |
//! | `http` | none | `GET <path>` HTTP/1.1 keep-alive | a 2xx/3xx response | FIFO |
//!
//! "FIFO": the reply cannot carry the send time, so the driver keeps each
//! session's intended times of outstanding heartbeats in order (replies on
//! one connection come in order) and only while they are outstanding.
//!
//! The encoders are hand-rolled: every message is a few constant bytes
//! plus the time (MQTT's PINGREQ is 2 bytes, a websocket ping 14), so a
//! codec crate's framing types would only add allocations to the hot
//! path. Parsing HTTP responses (the `http` replies and the websocket
//! upgrade) uses `httparse`; the websocket accept key `sha1_smol` and
//! `base64`.
//!
//! A handshake (mqtt, websocket) is part of connecting: the session counts
//! as connected, and its connect latency ends, when the handshake's answer
//! arrives, and the connect timeout covers both.
#![forbid(unsafe_code)]

use crate::stats::ErrorKind;
use anyhow::{bail, Result};
use c10m_server::wire::{decode_reply, encode_command, parse_busy, parse_i64, push_decimal, Reply};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

mod http;
mod mqtt;
#[cfg(test)]
mod tests;
mod ws;

/// Which protocol; see the module docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolKind {
    #[default]
    Resp,
    Line,
    Websocket,
    Mqtt,
    Memcache,
    Http,
}

impl ProtocolKind {
    pub const NAMES: &'static str = "resp, line, websocket, mqtt, memcache or http";

    pub fn parse(text: &str) -> Result<ProtocolKind> {
        Ok(match text {
            "resp" | "redis" => ProtocolKind::Resp,
            "line" => ProtocolKind::Line,
            "websocket" | "ws" => ProtocolKind::Websocket,
            "mqtt" => ProtocolKind::Mqtt,
            "memcache" | "memcached" => ProtocolKind::Memcache,
            "http" => ProtocolKind::Http,
            other => bail!("protocol {other:?}: expected {}", Self::NAMES),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ProtocolKind::Resp => "resp",
            ProtocolKind::Line => "line",
            ProtocolKind::Websocket => "websocket",
            ProtocolKind::Mqtt => "mqtt",
            ProtocolKind::Memcache => "memcache",
            ProtocolKind::Http => "http",
        }
    }
}

/// MQTT protocol level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MqttVersion {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

impl MqttVersion {
    pub fn parse(text: &str) -> Result<MqttVersion> {
        Ok(match text {
            "3.1.1" | "3" | "4" => MqttVersion::V311,
            "5" | "5.0" => MqttVersion::V5,
            other => bail!("mqtt version {other:?}: expected 3.1.1 or 5"),
        })
    }
}

/// The resolved protocol settings of a run (part of `RunConfig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtocolConfig {
    pub kind: ProtocolKind,
    /// Request path (http, websocket).
    pub path: String,
    /// Host header (http, websocket); `None`: the target address.
    pub host: Option<String>,
    pub mqtt_version: MqttVersion,
    /// MQTT keepalive in seconds (0: none).
    pub keepalive_s: u16,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        ProtocolConfig {
            kind: ProtocolKind::Resp,
            path: "/".into(),
            host: None,
            mqtt_version: MqttVersion::V311,
            keepalive_s: 0,
        }
    }
}

/// Longest MQTT keepalive (the field is 16 bits of seconds).
const MAX_KEEPALIVE_S: u64 = 65_535;

impl ProtocolConfig {
    /// The keepalive to announce when none was given: the longest gap
    /// between two heartbeats (`max_gap_ms`) plus a second, so that a
    /// broker, which closes a session silent for 1.5 keepalives, never
    /// closes one that keeps its schedule. 0 (no keepalive) when the gap
    /// does not fit the field.
    pub fn default_keepalive_s(max_gap_ms: u64) -> u16 {
        let s = max_gap_ms.div_ceil(1_000) + 1;
        if s > MAX_KEEPALIVE_S {
            0
        } else {
            s as u16
        }
    }

    /// Refuses settings that cannot work; `max_gap_ms` is the longest gap
    /// between two heartbeats of the run's classes.
    pub fn validate(&self, max_gap_ms: u64) -> Result<()> {
        if !self.path.starts_with('/') || self.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            bail!(
                "path {:?}: a request path starts with / and has no spaces or control characters",
                self.path
            );
        }
        if let Some(host) = &self.host {
            if host.is_empty() || host.bytes().any(|b| b <= b' ' || b == 0x7f) {
                bail!("host {host:?}: a Host header value has no spaces or control characters");
            }
        }
        if self.kind == ProtocolKind::Mqtt && self.keepalive_s != 0 {
            // The broker closes a session silent for 1.5 keepalives.
            let limit_ms = u64::from(self.keepalive_s) * 1_500;
            if limit_ms < max_gap_ms {
                bail!(
                    "mqtt keepalive {} s: the broker would close sessions silent for {} ms, \
                     and heartbeats are up to {max_gap_ms} ms apart; raise --keepalive to at \
                     least {} s or leave it unset",
                    self.keepalive_s,
                    limit_ms,
                    max_gap_ms.div_ceil(1_500)
                );
            }
        }
        Ok(())
    }
}

/// What one parsed message from the server was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A heartbeat's answer, carrying its intended time in µs when the
    /// protocol echoes it (`None`: take the session's oldest outstanding).
    Reply(Option<u64>),
    /// The server pinged us (websocket): send `pong` (already encoded).
    Pong(Vec<u8>),
    /// A heartbeat's answer (FIFO) after which the server closes the
    /// connection (HTTP `Connection: close`): count it, then end the
    /// session as a [`ErrorKind::PeerClose`] with this text.
    ReplyThenClose(String),
}

/// A protocol error: its kind and the text for the first-error hint.
pub type ProtoError = (ErrorKind, String);

/// Largest message accepted: replies are ~15 bytes (an HTTP response a few
/// hundred), but a server's error text can be longer.
pub const MAX_MESSAGE: usize = 16 * 1024;

/// One driver's encoder and decoder for its run's protocol.
#[derive(Debug)]
pub struct Codec {
    kind: ProtocolKind,
    mqtt_version: MqttVersion,
    keepalive_s: u16,
    seed: u64,
    /// The HTTP request (constant), or the upgrade request up to its key.
    request: Vec<u8>,
    /// Websocket masking keys: a counter through splitmix64.
    mask_state: u64,
    digits: Vec<u8>,
}

impl Codec {
    /// A codec for `config` against `target`; `seed` makes MQTT client ids
    /// and websocket keys differ between runs.
    pub fn new(config: &ProtocolConfig, target: SocketAddr, seed: u64) -> Codec {
        let host = config.host.clone().unwrap_or_else(|| target.to_string());
        let request = match config.kind {
            ProtocolKind::Http => http::request(&config.path, &host),
            ProtocolKind::Websocket => ws::upgrade_prefix(&config.path, &host),
            _ => Vec::new(),
        };
        Codec {
            kind: config.kind,
            mqtt_version: config.mqtt_version,
            keepalive_s: config.keepalive_s,
            seed,
            request,
            mask_state: seed ^ 0x5bd1_e995,
            digits: Vec::with_capacity(20),
        }
    }

    pub fn kind(&self) -> ProtocolKind {
        self.kind
    }

    /// True when a reply carries the intended time of its heartbeat.
    pub fn echoes(&self) -> bool {
        matches!(
            self.kind,
            ProtocolKind::Resp | ProtocolKind::Line | ProtocolKind::Websocket
        )
    }

    /// True when connecting includes a handshake (written by
    /// [`handshake`](Self::handshake), answered as parsed by
    /// [`decode_handshake`](Self::decode_handshake)).
    pub fn has_handshake(&self) -> bool {
        matches!(self.kind, ProtocolKind::Mqtt | ProtocolKind::Websocket)
    }

    /// Writes session `sid`'s handshake into `out` (cleared first).
    pub fn handshake(&self, sid: u64, out: &mut Vec<u8>) {
        out.clear();
        match self.kind {
            ProtocolKind::Mqtt => mqtt::connect(
                self.mqtt_version,
                self.keepalive_s,
                &self.client_id(sid),
                out,
            ),
            ProtocolKind::Websocket => {
                out.extend_from_slice(&self.request);
                ws::finish_upgrade(&ws::key(self.seed, sid), out);
            }
            _ => {}
        }
    }

    fn client_id(&self, sid: u64) -> String {
        format!("c10m-{:x}-{sid}", self.seed)
    }

    /// Parses the handshake's answer at the start of `buf`: the bytes it
    /// took, or `None` while incomplete.
    pub fn decode_handshake(&self, sid: u64, buf: &[u8]) -> Result<Option<usize>, ProtoError> {
        match self.kind {
            ProtocolKind::Mqtt => mqtt::decode_connack(self.mqtt_version, buf),
            ProtocolKind::Websocket => ws::decode_upgrade(&ws::key(self.seed, sid), buf),
            _ => Ok(Some(0)),
        }
    }

    /// Writes a heartbeat intended at `intended_us` into `out` (cleared first).
    pub fn heartbeat(&mut self, intended_us: u64, out: &mut Vec<u8>) {
        out.clear();
        match self.kind {
            ProtocolKind::Resp => {
                self.digits.clear();
                push_decimal(intended_us, &mut self.digits);
                encode_command(&[b"PING", &self.digits], out);
            }
            ProtocolKind::Line => {
                push_decimal(intended_us, out);
                out.push(b'\n');
            }
            ProtocolKind::Websocket => {
                let mask = self.next_mask();
                ws::masked_frame(ws::OP_PING, &intended_us.to_be_bytes(), mask, out);
            }
            ProtocolKind::Mqtt => out.extend_from_slice(&mqtt::PINGREQ),
            ProtocolKind::Memcache => out.extend_from_slice(b"version\r\n"),
            ProtocolKind::Http => out.extend_from_slice(&self.request),
        }
    }

    /// True when the protocol says goodbye before closing.
    pub fn has_goodbye(&self) -> bool {
        matches!(self.kind, ProtocolKind::Mqtt | ProtocolKind::Websocket)
    }

    /// What to send before a planned close, if anything: MQTT DISCONNECT,
    /// a websocket close frame (1000, normal closure).
    pub fn goodbye(&mut self, out: &mut Vec<u8>) -> bool {
        out.clear();
        match self.kind {
            ProtocolKind::Mqtt => out.extend_from_slice(&mqtt::DISCONNECT),
            ProtocolKind::Websocket => {
                let mask = self.next_mask();
                ws::masked_frame(ws::OP_CLOSE, &1000u16.to_be_bytes(), mask, out);
            }
            _ => return false,
        }
        true
    }

    fn next_mask(&mut self) -> [u8; 4] {
        self.mask_state = self.mask_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.mask_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) as u32).to_le_bytes()
    }

    /// Parses one message at the start of `buf`: what it was and the bytes
    /// it took, or `None` while incomplete.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Option<(Decoded, usize)>, ProtoError> {
        match self.kind {
            ProtocolKind::Resp => decode_resp(buf),
            ProtocolKind::Line => decode_line(buf),
            ProtocolKind::Websocket => match ws::decode(buf)? {
                Some((ws::Message::Pong(t), used)) => Ok(Some((Decoded::Reply(Some(t)), used))),
                Some((ws::Message::Ping(payload), used)) => {
                    let mut pong = Vec::with_capacity(payload.len() + 6);
                    let mask = self.next_mask();
                    ws::masked_frame(ws::OP_PONG, &payload, mask, &mut pong);
                    Ok(Some((Decoded::Pong(pong), used)))
                }
                None => Ok(None),
            },
            ProtocolKind::Mqtt => mqtt::decode(buf),
            ProtocolKind::Memcache => decode_memcache(buf),
            ProtocolKind::Http => http::decode(buf),
        }
    }
}

/// The intended time an echo carries.
fn echoed_time(payload: &[u8], what: &str) -> Result<u64, ProtoError> {
    parse_i64(payload)
        .filter(|v| *v >= 0)
        .map(|v| v as u64)
        .ok_or_else(|| {
            let text = format!(
                "{what} {:?} is not a send time",
                payload.escape_ascii().to_string()
            );
            (ErrorKind::Protocol, text)
        })
}

fn snippet(buf: &[u8]) -> String {
    String::from_utf8_lossy(&buf[..buf.len().min(80)]).into_owned()
}

fn decode_resp(buf: &[u8]) -> Result<Option<(Decoded, usize)>, ProtoError> {
    match decode_reply(buf, MAX_MESSAGE) {
        Ok(Some((Reply::Bulk(Some(payload)), used))) => {
            let t = echoed_time(payload, "bulk reply")?;
            Ok(Some((Decoded::Reply(Some(t)), used)))
        }
        Ok(Some((Reply::Error(text), _))) => {
            let kind = if parse_busy(text).is_some() {
                ErrorKind::Busy
            } else {
                ErrorKind::ServerError
            };
            Err((kind, String::from_utf8_lossy(text).into_owned()))
        }
        Ok(Some((other, _))) => Err((ErrorKind::Protocol, format!("unexpected reply {other:?}"))),
        Ok(None) => Ok(None),
        Err(e) => Err((ErrorKind::Protocol, format!("{e}: {:?}", snippet(buf)))),
    }
}

/// The first line of `buf` (without its `\n` and an optional `\r`) and
/// the bytes it takes; an error past `max` bytes without one.
fn split_line(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, ProtoError> {
    match buf.iter().take(max + 1).position(|&b| b == b'\n') {
        Some(end) => {
            let line = &buf[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Ok(Some((line, end + 1)))
        }
        None if buf.len() > max => Err((
            ErrorKind::Protocol,
            format!("no end of line within {max} bytes: {:?}", snippet(buf)),
        )),
        None => Ok(None),
    }
}

fn decode_line(buf: &[u8]) -> Result<Option<(Decoded, usize)>, ProtoError> {
    let Some((line, used)) = split_line(buf, 64)? else {
        return Ok(None);
    };
    let t = echoed_time(line, "echoed line")?;
    Ok(Some((Decoded::Reply(Some(t)), used)))
}

fn decode_memcache(buf: &[u8]) -> Result<Option<(Decoded, usize)>, ProtoError> {
    let Some((line, used)) = split_line(buf, 1024)? else {
        return Ok(None);
    };
    if line.starts_with(b"VERSION ") {
        return Ok(Some((Decoded::Reply(None), used)));
    }
    let text = String::from_utf8_lossy(line).into_owned();
    if line == b"ERROR" || line.starts_with(b"SERVER_ERROR") || line.starts_with(b"CLIENT_ERROR") {
        return Err((ErrorKind::ServerError, text));
    }
    Err((
        ErrorKind::Protocol,
        format!("unexpected reply {text:?} to version"),
    ))
}
