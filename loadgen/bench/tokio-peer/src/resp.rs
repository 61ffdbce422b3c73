//! RESP2 requests and their replies, without IO: the session task feeds
//! [`decode`] the bytes it has read and writes what [`reply`] appends.
//!
//! Contract: [`decode`] looks at the start of its input only and returns
//! `Ok(None)` while the first request is incomplete (the caller reads more
//! and calls it again with the same bytes plus the new ones); a complete
//! request comes back with the number of bytes it took, which the caller
//! drops before the next call. `Err` means the stream can no longer be
//! framed: the caller sends [`PROTOCOL_ERROR`] and closes.
//!
//! Requests are what redis accepts: arrays of bulk strings
//! (`*2\r\n$4\r\nPING\r\n$3\r\n123\r\n`, what the loadgen's resp adapter
//! sends) or inline commands (`PING 123\r\n`). A request, whole, is at most
//! [`MAX_REQUEST`] bytes, so a peer that never finishes one costs at most
//! that much buffer.

use std::ops::Range;

/// The largest request accepted, header and arguments included.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Most arguments in one array request.
const MAX_ARGS: usize = 1024;

/// Sent before closing a session whose input cannot be framed.
pub const PROTOCOL_ERROR: &[u8] = b"-ERR protocol error\r\n";

/// Why a request cannot be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// A header (`*N`, `$N`) that is not a decimal number within bounds.
    BadLength,
    /// An array element that is not a bulk string (`$`).
    NotBulk,
    /// A bulk string not followed by `\r\n`.
    MissingCrlf,
    /// The request would be longer than [`MAX_REQUEST`].
    TooLarge,
}

/// One complete request: its arguments as ranges into the decoded input
/// (ranges, so the caller may keep the request while it appends replies).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub args: Vec<Range<usize>>,
}

/// Frames the first request in `input`; see the module doc for the contract.
pub fn decode(input: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
    match input.first() {
        None => Ok(None),
        Some(b'*') => decode_array(input),
        Some(_) => decode_inline(input),
    }
}

fn decode_array(input: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
    let Some((count, mut pos)) = header(input, 0)? else {
        return Ok(None);
    };
    // Redis ignores `*0` and the null array `*-1`; so does this.
    if count <= 0 {
        return Ok(Some((Request::default(), pos)));
    }
    let count = usize::try_from(count).map_err(|_| ProtocolError::BadLength)?;
    if count > MAX_ARGS {
        return Err(ProtocolError::BadLength);
    }
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        match input.get(pos) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(_) => return Err(ProtocolError::NotBulk),
        }
        let Some((len, start)) = header(input, pos)? else {
            return Ok(None);
        };
        let len = usize::try_from(len).map_err(|_| ProtocolError::BadLength)?;
        let end = start + len;
        if end + 2 > MAX_REQUEST {
            return Err(ProtocolError::TooLarge);
        }
        match input.get(end..end + 2) {
            None => return Ok(None),
            Some(b"\r\n") => {}
            Some(_) => return Err(ProtocolError::MissingCrlf),
        }
        args.push(start..end);
        pos = end + 2;
    }
    Ok(Some((Request { args }, pos)))
}

/// Reads the `*N\r\n` or `$N\r\n` header at `at`: `(N, position after it)`.
fn header(input: &[u8], at: usize) -> Result<Option<(i64, usize)>, ProtocolError> {
    let rest = &input[at + 1..];
    let Some(cr) = rest.iter().position(|&b| b == b'\r') else {
        // At most 20 digits and a sign; a longer header will not become valid.
        if rest.len() > 21 {
            return Err(ProtocolError::BadLength);
        }
        return Ok(None);
    };
    let end = at + 1 + cr;
    match input.get(end + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(ProtocolError::BadLength),
    }
    let number = std::str::from_utf8(&rest[..cr])
        .ok()
        .and_then(|digits| digits.parse::<i64>().ok())
        .ok_or(ProtocolError::BadLength)?;
    if end + 2 > MAX_REQUEST {
        return Err(ProtocolError::TooLarge);
    }
    Ok(Some((number, end + 2)))
}

fn decode_inline(input: &[u8]) -> Result<Option<(Request, usize)>, ProtocolError> {
    let Some(newline) = input.iter().position(|&b| b == b'\n') else {
        if input.len() >= MAX_REQUEST {
            return Err(ProtocolError::TooLarge);
        }
        return Ok(None);
    };
    if newline + 1 > MAX_REQUEST {
        return Err(ProtocolError::TooLarge);
    }
    let mut args = Vec::new();
    let mut start = None;
    for (i, &b) in input[..newline].iter().enumerate() {
        match (b.is_ascii_whitespace(), start) {
            (false, None) => start = Some(i),
            (true, Some(s)) => {
                args.push(s..i);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        args.push(s..newline);
    }
    Ok(Some((Request { args }, newline + 1)))
}

/// Appends the reply to `request` (whose ranges index `input`) to `out`. An
/// empty request (blank inline line, `*0`) gets none, as in redis.
pub fn reply(input: &[u8], request: &Request, out: &mut Vec<u8>) {
    let Some(name) = request.args.first() else {
        return;
    };
    if !input[name.clone()].eq_ignore_ascii_case(b"PING") {
        out.extend_from_slice(b"-ERR unknown command\r\n");
        return;
    }
    match &request.args[1..] {
        [] => out.extend_from_slice(b"+PONG\r\n"),
        [payload] => {
            let payload = &input[payload.clone()];
            out.push(b'$');
            out.extend_from_slice(payload.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(payload);
            out.extend_from_slice(b"\r\n");
        }
        _ => out.extend_from_slice(b"-ERR wrong number of arguments for 'ping' command\r\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes every request in `input` and returns the replies, or the
    /// error that stopped it; panics if `input` ends inside a request.
    fn replies(input: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let (request, used) = decode(&input[pos..])?.expect("complete request");
            reply(&input[pos..], &request, &mut out);
            pos += used;
        }
        Ok(out)
    }

    #[test]
    fn ping_without_payload_is_pong() {
        assert_eq!(replies(b"*1\r\n$4\r\nPING\r\n").unwrap(), b"+PONG\r\n");
        assert_eq!(replies(b"*1\r\n$4\r\nping\r\n").unwrap(), b"+PONG\r\n");
    }

    #[test]
    fn ping_with_payload_echoes_it_as_bulk() {
        assert_eq!(
            replies(b"*2\r\n$4\r\nPING\r\n$5\r\n12345\r\n").unwrap(),
            b"$5\r\n12345\r\n"
        );
        assert_eq!(
            replies(b"*2\r\n$4\r\nPING\r\n$0\r\n\r\n").unwrap(),
            b"$0\r\n\r\n"
        );
    }

    #[test]
    fn inline_commands_are_accepted() {
        assert_eq!(replies(b"PING\r\n").unwrap(), b"+PONG\r\n");
        assert_eq!(replies(b"ping  42\n").unwrap(), b"$2\r\n42\r\n");
        assert_eq!(replies(b"\r\n").unwrap(), b"");
    }

    #[test]
    fn other_commands_are_unknown() {
        assert_eq!(
            replies(b"*1\r\n$4\r\nQUIT\r\n").unwrap(),
            b"-ERR unknown command\r\n"
        );
        assert_eq!(
            replies(b"PING a b\r\n").unwrap(),
            b"-ERR wrong number of arguments for 'ping' command\r\n"
        );
    }

    #[test]
    fn empty_and_null_arrays_get_no_reply() {
        assert_eq!(replies(b"*0\r\n*-1\r\n").unwrap(), b"");
    }

    #[test]
    fn every_prefix_of_a_request_is_incomplete() {
        let request = b"*2\r\n$4\r\nPING\r\n$3\r\n123\r\n";
        for end in 0..request.len() {
            assert_eq!(decode(&request[..end]), Ok(None), "prefix of {end} bytes");
        }
        let (_, used) = decode(request).unwrap().unwrap();
        assert_eq!(used, request.len());
    }

    #[test]
    fn pipelined_requests_decode_one_at_a_time() {
        let input = b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nPING\r\n$1\r\n7\r\nPING 88\r\n";
        assert_eq!(replies(input).unwrap(), b"+PONG\r\n$1\r\n7\r\n$2\r\n88\r\n");
    }

    #[test]
    fn malformed_requests_are_protocol_errors() {
        assert_eq!(decode(b"*x\r\n"), Err(ProtocolError::BadLength));
        assert_eq!(decode(b"*1\rX"), Err(ProtocolError::BadLength));
        assert_eq!(decode(b"*1\r\n+PING\r\n"), Err(ProtocolError::NotBulk));
        assert_eq!(decode(b"*1\r\n$-1\r\n"), Err(ProtocolError::BadLength));
        assert_eq!(
            decode(b"*1\r\n$4\r\nPINGxx"),
            Err(ProtocolError::MissingCrlf)
        );
        assert_eq!(decode(b"*2000\r\n"), Err(ProtocolError::BadLength));
        assert_eq!(
            decode(b"*1111111111111111111111111"),
            Err(ProtocolError::BadLength)
        );
    }

    #[test]
    fn requests_past_the_limit_are_refused_before_they_arrive() {
        let header = format!("*1\r\n${}\r\n", MAX_REQUEST);
        assert_eq!(decode(header.as_bytes()), Err(ProtocolError::TooLarge));
        assert_eq!(
            decode(&vec![b'a'; MAX_REQUEST]),
            Err(ProtocolError::TooLarge)
        );
        assert_eq!(decode(&vec![b'a'; MAX_REQUEST - 1]), Ok(None));
    }
}
