//! Codec tests: a table of cases, then random splits of valid and invalid
//! streams (the same property the cargo-fuzz target checks, run here on a
//! fixed seed so `cargo test` covers it).

use super::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

const MAX: usize = DEFAULT_MAX_FRAME;

/// Decodes a whole stream in one go, returning every reply the server
/// would send and whether it would close the session.
fn serve(stream: &[u8], max: usize) -> (Vec<u8>, bool) {
    serve_split(stream, &[], max)
}

/// The same stream delivered in arbitrary pieces, the way a session sees
/// it: a partial frame is kept (never more than `max` bytes of it) and the
/// next piece is appended.
fn serve_split(stream: &[u8], cuts: &[usize], max: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut start = 0;
    let mut ends: Vec<usize> = cuts.to_vec();
    ends.push(stream.len());
    for end in ends {
        pending.extend_from_slice(&stream[start..end]);
        start = end;
        let mut pos = 0;
        loop {
            match decode_request(&pending[pos..], max) {
                Ok(Some((cmd, len))) => {
                    encode_reply(&cmd, &mut out);
                    pos += len;
                    if cmd == Command::Quit {
                        return (out, true);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    encode_protocol_error(&e, &mut out);
                    return (out, true);
                }
            }
        }
        pending.drain(..pos);
        assert!(
            pending.len() < max,
            "kept a partial frame of {} bytes",
            pending.len()
        );
    }
    (out, false)
}

#[test]
fn table_of_cases() {
    let cases: &[(&[u8], &[u8], bool)] = &[
        (b"PING\r\n", b"+PONG\r\n", false),
        (b"ping\n", b"+PONG\r\n", false),
        (b"PING hello\r\n", b"$5\r\nhello\r\n", false),
        (b"  PING \t  x  \r\n", b"$1\r\nx\r\n", false),
        (b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n", false),
        (
            b"*2\r\n$4\r\nping\r\n$3\r\n1 2\r\n",
            b"$3\r\n1 2\r\n",
            false,
        ),
        (b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", b"$0\r\n\r\n", false),
        (b"ECHO hi\r\n", b"$2\r\nhi\r\n", false),
        (
            b"ECHO\r\n",
            b"-ERR wrong number of arguments for 'echo' command\r\n",
            false,
        ),
        (
            b"PING a b\r\n",
            b"-ERR wrong number of arguments for 'ping' command\r\n",
            false,
        ),
        (b"QUIT\r\nPING\r\n", b"+OK\r\n", true),
        (
            b"GET k\r\nPING\r\n",
            b"-ERR unknown command 'GET'\r\n+PONG\r\n",
            false,
        ),
        (
            b"*1\r\n$3\r\na\rb\r\n",
            b"-ERR unknown command 'a?b'\r\n",
            false,
        ),
        (b"\r\n\r\nPING\r\n", b"+PONG\r\n", false),
        (b"*0\r\n*-1\r\nPING\r\n", b"+PONG\r\n", false),
        (
            b"PING\r\nPING\r\nPING x\r\n",
            b"+PONG\r\n+PONG\r\n$1\r\nx\r\n",
            false,
        ),
        (
            b"*x\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
            true,
        ),
        (
            b"*1\r\n%4\r\nPING\r\n",
            b"-ERR Protocol error: expected '$', got '%'\r\n",
            true,
        ),
        (
            b"*1\r\n$-3\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
            true,
        ),
        (
            b"*1\r\n$4\r\nPINGxx",
            b"-ERR Protocol error: expected CRLF after bulk payload\r\n",
            true,
        ),
        (
            b"*99999999\r\n",
            b"-ERR Protocol error: invalid multibulk length\r\n",
            true,
        ),
        (
            b"*1\r\n$9999\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
            true,
        ),
        (
            b"*1\rx",
            b"-ERR Protocol error: invalid multibulk length\r\n",
            true,
        ),
        // Incomplete frames: no reply, session stays.
        (b"PIN", b"", false),
        (b"*2\r\n$4\r\nPING\r\n$5\r\nhel", b"", false),
        (b"*1\r\n$4", b"", false),
    ];
    for (input, want, closes) in cases {
        let (got, closed) = serve(input, MAX);
        assert_eq!(
            Printable(&got).to_string(),
            Printable(want).to_string(),
            "input {}",
            Printable(input)
        );
        assert_eq!(closed, *closes, "close flag for {}", Printable(input));
    }
}

#[test]
fn oversize_frames_are_refused_at_the_limit() {
    let max = 32;
    let mut line = b"PING ".to_vec();
    line.resize(max - 2, b'x');
    line.extend_from_slice(b"\r\n");
    assert_eq!(line.len(), max);
    let (out, closed) = serve(&line, max);
    assert!(
        out.starts_with(b"$25\r\n"),
        "a frame of exactly max bytes is served"
    );
    assert!(!closed);

    let mut long = b"PING ".to_vec();
    long.resize(max - 1, b'x');
    long.extend_from_slice(b"\r\n");
    let (out, closed) = serve(&long, max);
    assert_eq!(
        out,
        b"-ERR Protocol error: frame exceeds the maximum of 32 bytes\r\n"
    );
    assert!(closed);

    // No newline at all: refused as soon as max bytes are buffered.
    assert_eq!(
        decode_request(&[b'a'; 32], max),
        Err(ProtocolError::TooLarge { max: 32 })
    );
    assert_eq!(decode_request(&[b'a'; 31], max), Ok(None));

    let mut bulk = Vec::new();
    encode_command(&[b"PING", &[b'y'; 40]], &mut bulk);
    let (out, closed) = serve(&bulk, max);
    assert!(out.starts_with(b"-ERR Protocol error:"));
    assert!(closed);
}

#[test]
fn replies_round_trip() {
    let mut buf = Vec::new();
    buf.extend_from_slice(b"+PONG\r\n-ERR nope\r\n:42\r\n$-1\r\n");
    encode_bulk(b"123456", &mut buf);
    let mut pos = 0;
    let mut got = Vec::new();
    while let Some((reply, len)) = decode_reply(&buf[pos..], MAX).unwrap() {
        got.push(format!("{reply:?}"));
        pos += len;
    }
    assert_eq!(pos, buf.len());
    assert_eq!(
        got,
        [
            "Simple([80, 79, 78, 71])",
            "Error([69, 82, 82, 32, 110, 111, 112, 101])",
            "Integer(42)",
            "Bulk(None)",
            "Bulk(Some([49, 50, 51, 52, 53, 54]))"
        ]
    );
    for cut in 0..buf.len() {
        // Every strict prefix of a reply decodes as incomplete, never garbage.
        let first_len = decode_reply(&buf, MAX).unwrap().unwrap().1;
        if cut < first_len {
            assert_eq!(decode_reply(&buf[..cut], MAX), Ok(None));
        }
    }
    assert_eq!(
        decode_reply(b"?x\r\n", MAX),
        Err(ProtocolError::UnknownReplyType(b'?'))
    );
    assert_eq!(
        decode_reply(b":1x\r\n", MAX),
        Err(ProtocolError::InvalidInteger)
    );
}

#[test]
fn encode_command_is_what_stock_clients_send() {
    let mut buf = Vec::new();
    encode_command(&[b"PING", b"1700000000123"], &mut buf);
    assert_eq!(buf, b"*2\r\n$4\r\nPING\r\n$13\r\n1700000000123\r\n");
    assert_eq!(
        decode_request(&buf, MAX),
        Ok(Some((Command::Ping(Some(b"1700000000123")), buf.len())))
    );
}

#[test]
fn integers_parse_strictly() {
    assert_eq!(parse_i64(b"0"), Some(0));
    assert_eq!(parse_i64(b"-17"), Some(-17));
    assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
    for bad in [&b""[..], b"-", b"1a", b" 1", b"+1", b"99999999999999999999"] {
        assert_eq!(parse_i64(bad), None, "{}", Printable(bad));
    }
    let mut out = Vec::new();
    push_decimal(0, &mut out);
    out.push(b' ');
    push_decimal(u64::MAX, &mut out);
    assert_eq!(out, b"0 18446744073709551615");
}

/// A random valid stream: a mix of inline and multibulk requests.
fn random_valid_stream(rng: &mut StdRng) -> Vec<u8> {
    let mut s = Vec::new();
    for _ in 0..rng.gen_range(1..30) {
        let payload: Vec<u8> = (0..rng.gen_range(0..40))
            .map(|_| rng.gen_range(b'a'..=b'z'))
            .collect();
        match rng.gen_range(0..6) {
            0 => s.extend_from_slice(b"PING\r\n"),
            1 if !payload.is_empty() => {
                s.extend_from_slice(b"PING ");
                s.extend_from_slice(&payload);
                s.extend_from_slice(b"\n");
            }
            2 => encode_command(&[b"PING", &payload], &mut s),
            3 => encode_command(&[b"ECHO", &payload], &mut s),
            4 => encode_command(&[b"SET", b"k", &payload], &mut s),
            _ => encode_command(&[b"ping"], &mut s),
        }
    }
    s
}

fn random_cuts(rng: &mut StdRng, len: usize) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..rng.gen_range(0..12))
        .map(|_| rng.gen_range(0..=len))
        .collect();
    cuts.sort_unstable();
    cuts
}

#[test]
fn random_splits_of_valid_streams_give_the_same_replies() {
    let mut rng = StdRng::seed_from_u64(0xc10_0000);
    for _ in 0..3000 {
        let stream = random_valid_stream(&mut rng);
        let whole = serve(&stream, MAX);
        assert!(!whole.1, "a valid stream does not close");
        // Every single-byte split, for some streams; random multi-splits for all.
        let cuts = random_cuts(&mut rng, stream.len());
        assert_eq!(serve_split(&stream, &cuts, MAX), whole);
    }
    let stream = random_valid_stream(&mut rng);
    let every_byte: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(serve_split(&stream, &every_byte, MAX), serve(&stream, MAX));
}

#[test]
fn random_splits_of_invalid_streams_close_the_same_way() {
    let mut rng = StdRng::seed_from_u64(0xbad);
    for _ in 0..3000 {
        let mut stream = random_valid_stream(&mut rng);
        // Corrupt a few bytes, or append junk: the decoder must never panic,
        // never keep more than `max` bytes, and agree with itself whatever
        // the split.
        for _ in 0..rng.gen_range(1..4) {
            let at = rng.gen_range(0..stream.len());
            stream[at] = rng.gen();
        }
        if rng.gen_bool(0.3) {
            stream.extend((0..rng.gen_range(0..600)).map(|_| rng.gen::<u8>()));
        }
        let whole = serve(&stream, MAX);
        let cuts = random_cuts(&mut rng, stream.len());
        assert_eq!(
            serve_split(&stream, &cuts, MAX),
            whole,
            "stream {}",
            Printable(&stream)
        );
        let mut pos = 0;
        while let Ok(Some((_, len))) = decode_reply(&stream[pos..], MAX) {
            pos += len;
        }
    }
}

#[test]
fn busy_replies_round_trip() {
    let mut out = Vec::new();
    encode_busy(3, &mut out);
    assert_eq!(out, b"-ERR BUSY retry-after=3\r\n");
    let Ok(Some((Reply::Error(text), _))) = decode_reply(&out, MAX) else {
        panic!("not an error reply");
    };
    assert_eq!(parse_busy(text), Some(3));
    assert_eq!(parse_busy(b"ERR unknown command 'x'"), None);
    assert_eq!(parse_busy(b"ERR BUSY retry-after=x"), None);
}
