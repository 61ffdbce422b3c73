//! `SendArena`: where replies wait while their send request is in flight.
//!
//! A send SQE points at memory the kernel reads when it runs the request,
//! which may be after the loop turn that staged it. So replies are copied
//! (a few bytes per heartbeat) from the worker's scratch `Vec` into
//! fixed-capacity chunks that never reallocate; each chunk counts the
//! sends staged in it and is reused only when that count is back to 0,
//! after the last of their completions. The worker submits its sends with
//! MSG_DONTWAIT, so they complete within the `io_uring_enter` that submits
//! them and a chunk is normally free again one turn later: the arena stays
//! one chunk in steady state. A reply larger than a chunk gets a chunk of
//! its own, freed when its send completes.

use std::ptr;

/// Chunk capacity: the replies of one loop turn, typically.
pub const CHUNK: usize = 64 * 1024;

/// Where a staged reply lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Staged {
    chunk: u32,
    off: u32,
    len: u32,
}

impl Staged {
    pub fn len(self) -> usize {
        self.len as usize
    }
}

#[derive(Debug)]
struct Chunk {
    /// Allocated once with a fixed capacity; its `len` stays 0 (we track
    /// `used` ourselves) so no `&mut` to bytes the kernel reads is formed.
    buf: Vec<u8>,
    used: usize,
    in_flight: u32,
    /// A [`CHUNK`]-sized chunk (reused) rather than one reply's own.
    regular: bool,
}

impl Chunk {
    fn new(capacity: usize, regular: bool) -> Chunk {
        Chunk {
            buf: Vec::with_capacity(capacity),
            used: 0,
            in_flight: 0,
            regular,
        }
    }
}

#[derive(Debug, Default)]
pub struct SendArena {
    chunks: Vec<Chunk>,
    current: Option<usize>,
    /// Regular chunks with nothing in flight.
    free: Vec<usize>,
    /// Indices whose (oversized) chunk was freed, for reuse.
    vacant: Vec<usize>,
}

impl SendArena {
    /// An arena whose first chunk is allocated and resident now (part of
    /// the worker's fixed memory, before the RSS baseline).
    pub fn with_resident_chunk() -> SendArena {
        let mut chunk = Chunk::new(CHUNK, true);
        chunk.buf.resize(CHUNK, 0);
        chunk.buf.clear();
        SendArena {
            chunks: vec![chunk],
            current: Some(0),
            ..SendArena::default()
        }
    }

    /// Copies `bytes` into the arena for one send.
    pub fn stage(&mut self, bytes: &[u8]) -> Staged {
        let index = self.chunk_for(bytes.len());
        let chunk = &mut self.chunks[index];
        // SAFETY: `chunk_for` made room: `used + len ≤ capacity`. The
        // destination is past every byte staged earlier (which in-flight
        // sends may be reading), and the source is a separate buffer.
        unsafe {
            ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                chunk.buf.as_mut_ptr().add(chunk.used),
                bytes.len(),
            );
        }
        let staged = Staged {
            chunk: index as u32,
            off: chunk.used as u32,
            len: bytes.len() as u32,
        };
        chunk.used += bytes.len();
        chunk.in_flight += 1;
        staged
    }

    /// A chunk with room for `len` more bytes: the current one, a free
    /// one, or a new one; a reply over [`CHUNK`] gets a dedicated chunk
    /// that never becomes current.
    fn chunk_for(&mut self, len: usize) -> usize {
        if len > CHUNK {
            return self.insert(Chunk::new(len, false));
        }
        if let Some(i) = self.current {
            let c = &mut self.chunks[i];
            if c.in_flight == 0 {
                c.used = 0;
            }
            if c.used + len <= CHUNK {
                return i;
            }
            // Full with sends in flight: `release` frees it after the last.
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.chunks[i].used = 0;
                i
            }
            None => self.insert(Chunk::new(CHUNK, true)),
        };
        self.current = Some(i);
        i
    }

    fn insert(&mut self, chunk: Chunk) -> usize {
        match self.vacant.pop() {
            Some(i) => {
                self.chunks[i] = chunk;
                i
            }
            None => {
                self.chunks.push(chunk);
                self.chunks.len() - 1
            }
        }
    }

    /// The staged bytes (valid until [`Self::release`]).
    pub fn bytes(&self, s: Staged) -> &[u8] {
        let chunk = &self.chunks[s.chunk as usize];
        debug_assert!(chunk.in_flight > 0 && s.off as usize + s.len as usize <= chunk.used);
        // SAFETY: `stage` initialised these bytes and they are not
        // overwritten while the staging is live (its chunk's count > 0).
        unsafe {
            std::slice::from_raw_parts(chunk.buf.as_ptr().add(s.off as usize), s.len as usize)
        }
    }

    /// Pointer for the send SQE: stays valid until [`Self::release`].
    pub fn ptr(&self, s: Staged, skip: usize) -> *const u8 {
        debug_assert!(skip <= s.len as usize);
        self.chunks[s.chunk as usize]
            .buf
            .as_ptr()
            .wrapping_add(s.off as usize + skip)
    }

    /// The send of `s` completed: its bytes may be reused.
    pub fn release(&mut self, s: Staged) {
        let i = s.chunk as usize;
        let chunk = &mut self.chunks[i];
        chunk.in_flight -= 1;
        if chunk.in_flight > 0 || self.current == Some(i) {
            return;
        }
        if chunk.regular {
            self.free.push(i);
        } else {
            chunk.buf = Vec::new();
            self.vacant.push(i);
        }
    }

    /// Sends staged and not yet released.
    pub fn in_flight(&self) -> usize {
        self.chunks.iter().map(|c| c.in_flight as usize).sum()
    }

    /// Bytes allocated for chunks.
    #[cfg(test)]
    pub fn memory_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.buf.capacity()).sum()
    }

    /// Forgets every chunk without freeing it: for a worker that could not
    /// reap all its sends, whose memory the kernel may still read.
    pub fn leak(&mut self) {
        for chunk in self.chunks.drain(..) {
            std::mem::forget(chunk.buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_bytes_stay_put_while_later_replies_are_staged() {
        let mut a = SendArena::default();
        let first = a.stage(b"+PONG\r\n");
        let p = a.ptr(first, 0);
        let mut others = Vec::new();
        for i in 0..20_000u32 {
            others.push(a.stage(format!("${}\r\n{i}\r\n", i.to_string().len()).as_bytes()));
        }
        assert_eq!(a.ptr(first, 0), p, "no chunk moved");
        assert_eq!(a.bytes(first), b"+PONG\r\n");
        assert_eq!(a.bytes(others[19_999]), b"$5\r\n19999\r\n");
        assert_eq!(a.in_flight(), 20_001);
        assert!(a.chunks.len() > 1, "full chunks were sealed, not grown");
    }

    #[test]
    fn a_chunk_is_reused_only_when_every_send_in_it_completed() {
        let mut a = SendArena::default();
        let x = a.stage(b"abc");
        let y = a.stage(b"def");
        a.release(x);
        let z = a.stage(b"ghi");
        assert_eq!(a.bytes(y), b"def", "y is still in flight: not overwritten");
        assert_eq!(a.bytes(z), b"ghi");
        a.release(y);
        a.release(z);
        assert_eq!(a.in_flight(), 0);
        let w = a.stage(b"jkl");
        assert_eq!((w.chunk, w.off), (0, 0), "an idle chunk starts over");
        a.release(w);
        assert_eq!(a.memory_bytes(), CHUNK, "one chunk in steady state");
    }

    #[test]
    fn an_oversized_reply_gets_its_own_chunk_freed_after_its_send() {
        let mut a = SendArena::default();
        let small = a.stage(b"x");
        let big = a.stage(&vec![7u8; CHUNK * 2]);
        assert_eq!(a.bytes(big).len(), CHUNK * 2);
        assert_eq!(a.memory_bytes(), CHUNK * 3);
        let after = a.stage(b"y");
        a.release(big);
        assert_eq!(a.memory_bytes(), CHUNK, "the big chunk was freed");
        assert_eq!(a.bytes(small), b"x");
        assert_eq!(a.bytes(after), b"y");
        a.release(small);
        a.release(after);
        assert_eq!(a.in_flight(), 0);
    }
}
