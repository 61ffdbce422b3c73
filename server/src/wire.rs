//! The wire protocol: a RESP2 subset, sans-IO.
//!
//! Requests come inline (`PING hello\r\n`) or as a multibulk array
//! (`*2\r\n$4\r\nPING\r\n$5\r\nhello\r\n`), the two forms every stock Redis
//! client and `redis-cli` speak. The server understands `PING [payload]`,
//! `ECHO payload` and `QUIT`; anything else gets `-ERR unknown command` and
//! the session stays open. A malformed frame, or one longer than the
//! configured maximum, gets `-ERR Protocol error: <why>` and the session is
//! closed (only that session).
//!
//! # Contract
//!
//! [`decode_request`] looks at the front of a byte slice and returns either a
//! complete frame and its length, `Ok(None)` when more bytes are needed, or a
//! [`ProtocolError`]. It keeps no state between calls: a caller holding a
//! partial frame keeps those bytes (at most `max_frame` of them, since a
//! longer prefix is already an error) and calls again with more appended.
//! Re-parsing the short prefix is cheaper than carrying a parser state in
//! every session, which is the point of this project: a session record has
//! no room for one.
//!
//! The client side (used by the loadgen) lives here too, so the two ends
//! share one definition: [`encode_command`] and [`decode_reply`].
#![forbid(unsafe_code)]

use std::fmt;

/// Default maximum frame size in bytes (`--max-frame`).
pub const DEFAULT_MAX_FRAME: usize = 512;

/// Longest command name echoed back in an error reply.
const MAX_ECHOED_NAME: usize = 64;

/// Longest `*<n>` or `$<n>` header line we accept before calling it malformed.
const MAX_HEADER_LINE: usize = 24;

/// A decoded request. Borrowed from the input buffer: no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    /// `PING` (no payload) or `PING <payload>`.
    Ping(Option<&'a [u8]>),
    /// `ECHO <payload>`.
    Echo(&'a [u8]),
    /// `QUIT`: reply `+OK`, then close.
    Quit,
    /// A command this server does not implement; carries its name.
    Unknown(&'a [u8]),
    /// A known command with the wrong number of arguments; carries its name.
    WrongArity(&'static str),
    /// An empty inline line or an empty multibulk (`*0`): Redis ignores
    /// these, and so do we (no reply).
    Empty,
}

impl Command<'_> {
    /// True for the commands a heartbeat uses (PING and ECHO).
    pub fn is_heartbeat(&self) -> bool {
        matches!(self, Command::Ping(_) | Command::Echo(_))
    }
}

/// Why a frame was rejected. The `Display` text follows Redis's own wording
/// where Redis has one, and goes after `-ERR Protocol error: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("frame exceeds the maximum of {max} bytes")]
    TooLarge { max: usize },
    #[error("invalid multibulk length")]
    InvalidMultibulkLength,
    #[error("invalid bulk length")]
    InvalidBulkLength,
    #[error("expected '$', got '{}'", printable(*.0))]
    ExpectedBulk(u8),
    #[error("expected CRLF after bulk payload")]
    MissingCrlf,
    #[error("unexpected reply type byte '{}'", printable(*.0))]
    UnknownReplyType(u8),
    #[error("invalid integer")]
    InvalidInteger,
}

fn printable(b: u8) -> char {
    if b.is_ascii_graphic() || b == b' ' {
        b as char
    } else {
        '?'
    }
}

/// Decodes one request from the front of `buf`.
///
/// Returns `Ok(Some((command, consumed)))` for a complete frame,
/// `Ok(None)` when `buf` holds only a prefix of a frame (which is shorter
/// than `max_frame`), and `Err` for a malformed or oversize frame.
pub fn decode_request(
    buf: &[u8],
    max_frame: usize,
) -> Result<Option<(Command<'_>, usize)>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let parsed = if first == b'*' {
        decode_multibulk(buf, max_frame)?
    } else {
        decode_inline(buf, max_frame)?
    };
    match parsed {
        Some((_, len)) if len > max_frame => Err(ProtocolError::TooLarge { max: max_frame }),
        None if buf.len() >= max_frame => Err(ProtocolError::TooLarge { max: max_frame }),
        other => Ok(other),
    }
}

fn decode_inline(
    buf: &[u8],
    max_frame: usize,
) -> Result<Option<(Command<'_>, usize)>, ProtocolError> {
    let window = &buf[..buf.len().min(max_frame.saturating_add(1))];
    let Some(nl) = memchr(b'\n', window) else {
        return Ok(None);
    };
    let mut line = &buf[..nl];
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    let mut words = line
        .split(|b| *b == b' ' || *b == b'\t')
        .filter(|w| !w.is_empty());
    let command = match words.next() {
        None => Command::Empty,
        Some(name) => {
            let second = words.next();
            let extra = words.count();
            let argc = 1 + usize::from(second.is_some()) + extra;
            classify(name, second, argc)
        }
    };
    Ok(Some((command, nl + 1)))
}

fn decode_multibulk(
    buf: &[u8],
    max_frame: usize,
) -> Result<Option<(Command<'_>, usize)>, ProtocolError> {
    let Some((count, mut pos)) = header_line(buf, 0, ProtocolError::InvalidMultibulkLength)? else {
        return Ok(None);
    };
    if count <= 0 {
        return Ok(Some((Command::Empty, pos)));
    }
    // Each argument takes at least 4 bytes ("$0\r\n" + "\r\n" is 6), so a
    // count that cannot fit in a frame is malformed rather than incomplete.
    if count > (max_frame / 4 + 1) as i64 {
        return Err(ProtocolError::InvalidMultibulkLength);
    }
    let mut name: &[u8] = &[];
    let mut second = None;
    for i in 0..count as usize {
        let Some(&marker) = buf.get(pos) else {
            return Ok(None);
        };
        if marker != b'$' {
            return Err(ProtocolError::ExpectedBulk(marker));
        }
        let Some((len, start)) = header_line(buf, pos, ProtocolError::InvalidBulkLength)? else {
            return Ok(None);
        };
        if len < 0 || len as usize > max_frame {
            return Err(ProtocolError::InvalidBulkLength);
        }
        let end = start + len as usize;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtocolError::MissingCrlf);
        }
        match i {
            0 => name = &buf[start..end],
            1 => second = Some(&buf[start..end]),
            _ => {}
        }
        pos = end + 2;
    }
    Ok(Some((classify(name, second, count as usize), pos)))
}

/// Parses a `<marker><integer>\r\n` line starting at `at`. Returns the
/// integer and the offset just past the line, `None` if the line is not
/// complete yet.
fn header_line(
    buf: &[u8],
    at: usize,
    malformed: ProtocolError,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let rest = &buf[at + 1..];
    let window = &rest[..rest.len().min(MAX_HEADER_LINE)];
    let Some(cr) = memchr(b'\r', window) else {
        return if rest.len() >= MAX_HEADER_LINE {
            Err(malformed)
        } else {
            Ok(None)
        };
    };
    match rest.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(malformed),
    }
    let value = parse_i64(&window[..cr]).ok_or(malformed)?;
    Ok(Some((value, at + 1 + cr + 2)))
}

fn classify<'a>(name: &'a [u8], second: Option<&'a [u8]>, argc: usize) -> Command<'a> {
    if name.eq_ignore_ascii_case(b"PING") {
        match argc {
            1 => Command::Ping(None),
            2 => Command::Ping(second),
            _ => Command::WrongArity("ping"),
        }
    } else if name.eq_ignore_ascii_case(b"ECHO") {
        match (argc, second) {
            (2, Some(payload)) => Command::Echo(payload),
            _ => Command::WrongArity("echo"),
        }
    } else if name.eq_ignore_ascii_case(b"QUIT") {
        Command::Quit
    } else {
        Command::Unknown(name)
    }
}

/// Appends the reply to `command` to `out`. `Command::Empty` appends nothing.
pub fn encode_reply(command: &Command<'_>, out: &mut Vec<u8>) {
    match command {
        Command::Ping(None) => out.extend_from_slice(b"+PONG\r\n"),
        Command::Ping(Some(payload)) | Command::Echo(payload) => encode_bulk(payload, out),
        Command::Quit => out.extend_from_slice(b"+OK\r\n"),
        Command::Unknown(name) => {
            out.extend_from_slice(b"-ERR unknown command '");
            push_sanitized(name, out);
            out.extend_from_slice(b"'\r\n");
        }
        Command::WrongArity(name) => {
            out.extend_from_slice(b"-ERR wrong number of arguments for '");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"' command\r\n");
        }
        Command::Empty => {}
    }
}

/// Appends `-ERR Protocol error: <why>\r\n` to `out`.
pub fn encode_protocol_error(error: &ProtocolError, out: &mut Vec<u8>) {
    out.extend_from_slice(b"-ERR Protocol error: ");
    out.extend_from_slice(error.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The error a refused connection gets before it is closed.
pub const BUSY_PREFIX: &[u8] = b"BUSY retry-after=";

/// Appends `-ERR BUSY retry-after=<s>\r\n` to `out`.
pub fn encode_busy(retry_after_s: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(b"-ERR ");
    out.extend_from_slice(BUSY_PREFIX);
    push_decimal(u64::from(retry_after_s), out);
    out.extend_from_slice(b"\r\n");
}

/// The retry-after seconds of a busy error reply's text (client side):
/// `Some(s)` for `ERR BUSY retry-after=<s>`.
pub fn parse_busy(error_text: &[u8]) -> Option<u32> {
    let rest = error_text
        .strip_prefix(b"ERR ")?
        .strip_prefix(BUSY_PREFIX)?;
    u32::try_from(parse_i64(rest)?).ok()
}

/// Appends a bulk string `$<len>\r\n<payload>\r\n` to `out`.
pub fn encode_bulk(payload: &[u8], out: &mut Vec<u8>) {
    out.push(b'$');
    push_decimal(payload.len() as u64, out);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Appends a request as a multibulk array, the way stock clients send it.
pub fn encode_command(args: &[&[u8]], out: &mut Vec<u8>) {
    out.push(b'*');
    push_decimal(args.len() as u64, out);
    out.extend_from_slice(b"\r\n");
    for arg in args {
        encode_bulk(arg, out);
    }
}

/// A decoded reply (client side). Borrowed from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply<'a> {
    /// `+<text>`
    Simple(&'a [u8]),
    /// `-<text>`
    Error(&'a [u8]),
    /// `:<n>`
    Integer(i64),
    /// `$<len>` payload, or `None` for the null bulk `$-1`.
    Bulk(Option<&'a [u8]>),
}

/// Decodes one reply from the front of `buf` (client side). Same contract as
/// [`decode_request`]: complete reply and its length, `None` for a prefix,
/// or an error for a malformed or oversize reply.
pub fn decode_reply(
    buf: &[u8],
    max_frame: usize,
) -> Result<Option<(Reply<'_>, usize)>, ProtocolError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let reply = match kind {
        b'+' | b'-' | b':' => {
            let window = &buf[..buf.len().min(max_frame.saturating_add(1))];
            match memchr(b'\n', window) {
                None => None,
                Some(nl) => {
                    if nl == 0 || buf[nl - 1] != b'\r' {
                        return Err(ProtocolError::MissingCrlf);
                    }
                    let text = &buf[1..nl - 1];
                    let reply = match kind {
                        b'+' => Reply::Simple(text),
                        b'-' => Reply::Error(text),
                        _ => Reply::Integer(parse_i64(text).ok_or(ProtocolError::InvalidInteger)?),
                    };
                    Some((reply, nl + 1))
                }
            }
        }
        b'$' => match header_line(buf, 0, ProtocolError::InvalidBulkLength)? {
            None => None,
            Some((-1, start)) => Some((Reply::Bulk(None), start)),
            Some((len, _)) if len < 0 || len as usize > max_frame => {
                return Err(ProtocolError::InvalidBulkLength)
            }
            Some((len, start)) => {
                let end = start + len as usize;
                if buf.len() < end + 2 {
                    None
                } else if &buf[end..end + 2] != b"\r\n" {
                    return Err(ProtocolError::MissingCrlf);
                } else {
                    Some((Reply::Bulk(Some(&buf[start..end])), end + 2))
                }
            }
        },
        other => return Err(ProtocolError::UnknownReplyType(other)),
    };
    match reply {
        Some((_, len)) if len > max_frame => Err(ProtocolError::TooLarge { max: max_frame }),
        None if buf.len() >= max_frame => Err(ProtocolError::TooLarge { max: max_frame }),
        other => Ok(other),
    }
}

/// Appends the decimal digits of `n`.
pub fn push_decimal(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Parses an optionally signed decimal integer; `None` on anything else
/// (empty, stray bytes, overflow).
pub fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if negative { -value } else { value })
}

fn push_sanitized(name: &[u8], out: &mut Vec<u8>) {
    for &b in name.iter().take(MAX_ECHOED_NAME) {
        out.push(if b.is_ascii_graphic() && b != b'\'' {
            b
        } else {
            b'?'
        });
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// Human-readable rendering of a byte string for logs and test failures.
pub struct Printable<'a>(pub &'a [u8]);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.escape_ascii())
    }
}

#[cfg(test)]
mod tests;
