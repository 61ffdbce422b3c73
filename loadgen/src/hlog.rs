//! `ReusedDeflate`: the HdrHistogram "V2 compressed" encoding (the one
//! interval logs carry, as the crate's `V2DeflateSerializer` writes it:
//! cookie 0x1c849314, compressed length, zlib stream of the V2 bytes), with
//! one zlib compressor kept for the whole run.
//!
//! Why not the crate's serializer: it builds a fresh compressor (~300 KiB of
//! state) for every histogram, so the writer's heap rises and falls every
//! second, and the RSS samples taken for the per-session figure would see
//! that churn instead of sessions. Reusing the compressor keeps the memory
//! of the results pipeline constant after warm-up.
#![forbid(unsafe_code)]

use flate2::{Compress, Compression, FlushCompress, Status};
use hdrhistogram::serialization::{Serializer, V2SerializeError, V2Serializer};
use hdrhistogram::{Counter, Histogram};
use std::io;

const V2_COMPRESSED_COOKIE: u32 = 0x1c84_9304 | 0x10;

/// See the module docs.
pub struct ReusedDeflate {
    v2: V2Serializer,
    plain: Vec<u8>,
    packed: Vec<u8>,
    zlib: Compress,
}

/// Why encoding failed.
#[derive(Debug)]
pub enum ReusedDeflateError {
    V2(V2SerializeError),
    Zlib(String),
    Io(io::Error),
}

impl Default for ReusedDeflate {
    fn default() -> Self {
        ReusedDeflate {
            v2: V2Serializer::new(),
            plain: Vec::new(),
            packed: Vec::new(),
            zlib: Compress::new(Compression::default(), true),
        }
    }
}

impl Serializer for ReusedDeflate {
    type SerializeError = ReusedDeflateError;

    fn serialize<T: Counter, W: io::Write>(
        &mut self,
        h: &Histogram<T>,
        writer: &mut W,
    ) -> Result<usize, ReusedDeflateError> {
        self.plain.clear();
        self.v2
            .serialize(h, &mut self.plain)
            .map_err(ReusedDeflateError::V2)?;
        self.packed.clear();
        self.packed
            .extend_from_slice(&V2_COMPRESSED_COOKIE.to_be_bytes());
        self.packed.extend_from_slice(&[0; 4]);
        self.packed.reserve(self.plain.len() / 2 + 64);
        self.zlib.reset();
        let mut consumed = 0;
        loop {
            let before = self.zlib.total_in();
            let status = self
                .zlib
                .compress_vec(
                    &self.plain[consumed..],
                    &mut self.packed,
                    FlushCompress::Finish,
                )
                .map_err(|e| ReusedDeflateError::Zlib(e.to_string()))?;
            consumed += (self.zlib.total_in() - before) as usize;
            match status {
                Status::StreamEnd => break,
                Status::Ok | Status::BufError => {
                    self.packed.reserve(self.packed.capacity().max(64))
                }
            }
        }
        let len = (self.packed.len() - 8) as u32;
        self.packed[4..8].copy_from_slice(&len.to_be_bytes());
        writer
            .write_all(&self.packed)
            .map_err(ReusedDeflateError::Io)?;
        Ok(self.packed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};

    #[test]
    fn reads_back_like_the_crates_own_encoding() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 0..50_000u64 {
            h.record(1 + v * 37 % 1_000_000).unwrap();
        }
        let mut ours = ReusedDeflate::default();
        let mut de = Deserializer::new();
        for _ in 0..3 {
            let mut buf = Vec::new();
            ours.serialize(&h, &mut buf).unwrap();
            let back: Histogram<u64> = de.deserialize(&mut &buf[..]).unwrap();
            assert_eq!(back, h);
            let mut theirs = Vec::new();
            V2DeflateSerializer::new()
                .serialize(&h, &mut theirs)
                .unwrap();
            assert_eq!(buf[..4], theirs[..4]);
        }
    }
}
