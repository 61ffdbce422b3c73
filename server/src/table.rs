//! `SessionTable`: every session of one worker, in a slab, at ≤ 32 bytes each.
//!
//! The record holds only what an idle session needs: the backend's handle
//! (a socket, 4 bytes), its link in the [`DeadlineWheel`](crate::wheel), a
//! generation, an index into the worker's spill area (`NO_SPILL` nearly
//! always) and a flag byte. No buffer, no heap allocation: a session that
//! is between heartbeats costs its slab slot and nothing else.
//!
//! Keys are slab indices (`u32`). The [`Token`] handed to the OS (mio's
//! token, io_uring's `user_data`) packs the key with the session's
//! generation, so an event for a slot that was freed and reused is dropped
//! instead of reaching the new session. The top key values are never slab
//! keys; backends use them for their listener and wakeup tokens.
#![forbid(unsafe_code)]

use crate::wheel::{Link, Links};
use slab::Slab;

/// Index into the spill area meaning "no spill".
pub const NO_SPILL: u32 = u32::MAX;

/// Keys at or above this value are never sessions (reserved for backends).
pub const FIRST_RESERVED_KEY: u32 = u32::MAX - 16;

/// Session flag: replies are waiting in the spill area; do not read more
/// from this session until they are written.
pub const WRITE_BLOCKED: u8 = 1;

/// One session. 28 bytes with a 4-byte handle (a test checks it), 32 in
/// the slab with its entry tag.
#[derive(Debug)]
pub struct Session<H> {
    pub handle: H,
    pub link: Link,
    pub generation: u32,
    pub spill: u32,
    pub flags: u8,
    /// The backend's own per-session IO state (the io_uring backend keeps
    /// its in-flight request bits here; epoll leaves it 0). It lives in
    /// what would otherwise be padding: the record stays 28 bytes.
    pub io: u8,
}

/// A slab key with its generation: what the OS carries back in events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(pub u64);

impl Token {
    pub const fn new(key: u32, generation: u32) -> Self {
        Token((generation as u64) << 32 | key as u64)
    }

    /// A token for a reserved (non-session) key, generation 0.
    pub const fn reserved(offset: u32) -> Self {
        Token::new(FIRST_RESERVED_KEY + offset, 0)
    }

    pub fn key(self) -> u32 {
        self.0 as u32
    }

    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// The sessions of one worker.
#[derive(Debug)]
pub struct SessionTable<H> {
    slab: Slab<Session<H>>,
    next_generation: u32,
}

impl<H> SessionTable<H> {
    /// A table that can grow to `capacity` sessions without reallocating.
    /// The reservation is virtual memory: pages become resident only as
    /// sessions are stored in them.
    pub fn with_capacity(capacity: usize) -> Self {
        SessionTable {
            slab: Slab::with_capacity(capacity),
            next_generation: 1,
        }
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Stores a new session and returns its token. Panics only if a worker
    /// holds more than `FIRST_RESERVED_KEY` sessions, far above any fd limit.
    pub fn insert(&mut self, handle: H) -> Token {
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let key = self.slab.insert(Session {
            handle,
            link: Link::default(),
            generation,
            spill: NO_SPILL,
            flags: 0,
            io: 0,
        });
        let key = u32::try_from(key)
            .ok()
            .filter(|k| *k < FIRST_RESERVED_KEY)
            .expect("session key below the reserved range");
        Token::new(key, generation)
    }

    /// The key of a live session for this token; `None` when the token is
    /// stale (its session closed, perhaps replaced by a newer one).
    pub fn resolve(&self, token: Token) -> Option<u32> {
        let key = token.key();
        match self.slab.get(key as usize) {
            Some(s) if s.generation == token.generation() => Some(key),
            _ => None,
        }
    }

    pub fn get(&self, key: u32) -> &Session<H> {
        &self.slab[key as usize]
    }

    pub fn get_mut(&mut self, key: u32) -> &mut Session<H> {
        &mut self.slab[key as usize]
    }

    pub fn token(&self, key: u32) -> Token {
        Token::new(key, self.slab[key as usize].generation)
    }

    /// Removes a session and returns it (its handle is the caller's to close).
    pub fn remove(&mut self, key: u32) -> Session<H> {
        self.slab.remove(key as usize)
    }

    /// Keys of all live sessions (for shutdown).
    pub fn keys(&self) -> Vec<u32> {
        self.slab.iter().map(|(k, _)| k as u32).collect()
    }
}

impl<H> Links for SessionTable<H> {
    fn link(&mut self, key: u32) -> &mut Link {
        &mut self.slab[key as usize].link
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// Mirrors `slab::Entry<T>` (`Vacant(usize) | Occupied(T)`), which is
    /// private to the slab crate, to check the per-slot footprint.
    #[allow(dead_code)]
    enum SlabEntry<T> {
        Vacant(usize),
        Occupied(T),
    }

    #[test]
    fn a_session_fits_in_32_bytes_with_its_slab_entry() {
        assert!(size_of::<Session<std::net::TcpStream>>() <= 28);
        assert!(size_of::<SlabEntry<Session<std::net::TcpStream>>>() <= 32);
        assert!(size_of::<SlabEntry<Session<std::os::fd::OwnedFd>>>() <= 32);
        assert!(size_of::<SlabEntry<Session<u32>>>() <= 32);
    }

    #[test]
    fn stale_tokens_do_not_resolve_to_a_reused_slot() {
        let mut table = SessionTable::with_capacity(4);
        let first = table.insert(10u32);
        assert_eq!(table.resolve(first), Some(first.key()));
        table.remove(first.key());
        assert_eq!(table.resolve(first), None);
        let second = table.insert(11u32);
        assert_eq!(second.key(), first.key(), "slab reuses the slot");
        assert_ne!(second, first);
        assert_eq!(table.resolve(first), None);
        assert_eq!(table.resolve(second), Some(second.key()));
        assert_eq!(table.resolve(Token::reserved(0)), None);
    }

    #[test]
    fn tokens_pack_key_and_generation() {
        let t = Token::new(0xdead_beef, 7);
        assert_eq!((t.key(), t.generation()), (0xdead_beef, 7));
        assert!(Token::reserved(1).key() >= FIRST_RESERVED_KEY);
    }
}
