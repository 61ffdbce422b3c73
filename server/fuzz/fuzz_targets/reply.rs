//! Fuzz target: the client-side reply decoder (what the loadgen parses
//! every server answer with), on arbitrary bytes split at an arbitrary
//! point. Properties: no panic; a decoded reply never claims more bytes
//! than it was given or than the maximum; decoding the two pieces in
//! sequence (keeping the undecoded tail) yields the same replies as the
//! whole; a busy error's retry-after parses without panic.
#![no_main]

use c10m_server::wire::{decode_reply, parse_busy, Reply};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 128;

fn replies(chunks: &[&[u8]]) -> Vec<String> {
    let mut seen = Vec::new();
    let mut pending = Vec::new();
    for chunk in chunks {
        pending.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            match decode_reply(&pending[pos..], MAX) {
                Ok(Some((reply, len))) => {
                    assert!(len > 0 && len <= MAX && pos + len <= pending.len());
                    if let Reply::Error(text) = reply {
                        let _ = parse_busy(text);
                    }
                    seen.push(format!("{reply:?}"));
                    pos += len;
                }
                Ok(None) => break,
                Err(e) => {
                    seen.push(format!("error {e}"));
                    return seen;
                }
            }
        }
        pending.drain(..pos);
        assert!(pending.len() < MAX);
    }
    seen
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(body.len());
    assert_eq!(replies(&[body]), replies(&[&body[..cut], &body[cut..]]));
});
