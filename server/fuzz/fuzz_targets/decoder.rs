//! Fuzz target: the request decoder and the reply decoder on arbitrary
//! bytes, whole and split at an arbitrary point. Properties: no panic; a
//! partial frame is never longer than the maximum; the split stream is
//! served exactly like the whole one.
//!
//! Run: `cd server/fuzz && cargo fuzz run decoder` (needs cargo-fuzz and a
//! nightly toolchain, or RUSTC_BOOTSTRAP=1 on stable).
#![no_main]

use c10m_server::wire::{decode_reply, decode_request, encode_protocol_error, encode_reply};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64;

fn serve(chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pending = Vec::new();
    for chunk in chunks {
        pending.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            match decode_request(&pending[pos..], MAX) {
                Ok(Some((cmd, len))) => {
                    assert!(len > 0 && len <= MAX);
                    encode_reply(&cmd, &mut out);
                    pos += len;
                }
                Ok(None) => break,
                Err(e) => {
                    encode_protocol_error(&e, &mut out);
                    return out;
                }
            }
        }
        pending.drain(..pos);
        assert!(pending.len() < MAX);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let cut = (cut as usize).min(body.len());
    assert_eq!(serve(&[body]), serve(&[&body[..cut], &body[cut..]]));
    let mut pos = 0;
    while let Ok(Some((_, len))) = decode_reply(&body[pos..], MAX) {
        assert!(len > 0);
        pos += len;
    }
});
