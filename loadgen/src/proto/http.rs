//! HTTP/1.1 keep-alive GET: the request (constant) and the response,
//! parsed with `httparse`, its body skipped by Content-Length or chunked
//! encoding.

use super::{snippet, Decoded, ProtoError, MAX_MESSAGE};
use crate::stats::ErrorKind;

pub fn request(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: c10m-loadgen\r\n\r\n").into_bytes()
}

fn header<'a>(headers: &'a [httparse::Header<'_>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

fn protocol<T>(text: String) -> Result<T, ProtoError> {
    Err((ErrorKind::Protocol, text))
}

/// The length of a chunked body at the start of `buf` (through its last
/// chunk and trailers), or `None` while incomplete.
fn chunked_len(buf: &[u8]) -> Result<Option<usize>, ProtoError> {
    let mut pos = 0;
    loop {
        let (start, size) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete(c)) => c,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return protocol(format!("malformed chunk size: {:?}", snippet(&buf[pos..]))),
        };
        pos += start;
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size > MAX_MESSAGE || pos + size > MAX_MESSAGE {
            return protocol(format!("chunked body over {MAX_MESSAGE} bytes"));
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return protocol("chunk not followed by CRLF".into());
        }
        pos += size + 2;
    }
    // Trailers: header lines up to an empty line.
    loop {
        let Some(end) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
            return if buf.len() - pos > MAX_MESSAGE {
                protocol("chunked trailers over the limit".into())
            } else {
                Ok(None)
            };
        };
        pos += end + 2;
        if end == 0 {
            return Ok(Some(pos));
        }
    }
}

/// One response at the start of `buf`.
pub fn decode(buf: &[u8]) -> Result<Option<(Decoded, usize)>, ProtoError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_MESSAGE => return Ok(None),
        Ok(httparse::Status::Partial) => {
            return protocol(format!("response head over {MAX_MESSAGE} bytes"))
        }
        Err(e) => return protocol(format!("malformed HTTP response ({e}): {:?}", snippet(buf))),
    };
    let code = response.code.unwrap_or(0);
    if (100..200).contains(&code) {
        // Informational (100 Continue, 103 Early Hints): the real response follows.
        return Ok(decode(&buf[head..])?.map(|(d, used)| (d, head + used)));
    }
    let chunked = header(response.headers, "transfer-encoding").is_some_and(|v| {
        v.rsplit(|&b| b == b',')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
    });
    let body = if code == 204 || code == 304 {
        Some(0)
    } else if chunked {
        chunked_len(&buf[head..])?
    } else if let Some(v) = header(response.headers, "content-length") {
        let len = std::str::from_utf8(v)
            .ok()
            .and_then(|t| t.trim().parse::<usize>().ok());
        match len {
            Some(n) if n <= MAX_MESSAGE => (buf.len() >= head + n).then_some(n),
            Some(n) => {
                return protocol(format!("response body of {n} bytes is over {MAX_MESSAGE}"))
            }
            None => {
                return protocol(format!(
                    "Content-Length {:?} is not a number",
                    String::from_utf8_lossy(v)
                ))
            }
        }
    } else {
        return protocol(format!(
            "HTTP {code} response without Content-Length or chunked encoding: its body ends \
             only when the server closes, so the connection cannot be kept alive"
        ));
    };
    let Some(body) = body else {
        return Ok(None);
    };
    let used = head + body;
    if code >= 400 {
        return Err((
            ErrorKind::ServerError,
            format!("HTTP {code} {}", response.reason.unwrap_or("")),
        ));
    }
    let close = header(response.headers, "connection").is_some_and(|v| has_token(v, b"close"))
        || response.version == Some(0)
            && !header(response.headers, "connection").is_some_and(|v| has_token(v, b"keep-alive"));
    if close {
        return Ok(Some((
            Decoded::ReplyThenClose(format!(
                "HTTP {code} with Connection: close (or HTTP/1.0 without keep-alive)"
            )),
            used,
        )));
    }
    Ok(Some((Decoded::Reply(None), used)))
}
