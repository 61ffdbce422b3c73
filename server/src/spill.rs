//! `SpillArea`: the per-worker home of the rare bytes that cannot be
//! handled at once — the tail of a partial frame, and replies a socket
//! would not take (a blocked write).
//!
//! Sessions do not own buffers. A session with spilled bytes holds an index
//! here; everyone else holds `NO_SPILL`. The area counts every byte it
//! holds and refuses to grow past its budget, so the worst a hostile or
//! stuck client can do is get itself closed (counted as an overflow).
//! A partial frame is never longer than the maximum frame (the decoder
//! errors first), and a blocked session is not read until its replies are
//! written, so each session's share is bounded too.
#![forbid(unsafe_code)]

use slab::Slab;

#[derive(Debug, Default)]
struct SpillEntry {
    input: Vec<u8>,
    output: Vec<u8>,
    /// The session key holding this entry.
    owner: u32,
    /// Tick at which the held partial frame began (valid with input).
    input_since: u32,
}

/// The budget would be exceeded: the caller closes the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

#[derive(Debug)]
pub struct SpillArea {
    entries: Slab<SpillEntry>,
    bytes: usize,
    budget: usize,
}

impl SpillArea {
    pub fn new(budget: usize) -> Self {
        SpillArea {
            entries: Slab::new(),
            bytes: 0,
            budget,
        }
    }

    /// Bytes held now, over all sessions.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Number of sessions with spilled bytes.
    pub fn sessions(&self) -> usize {
        self.entries.len()
    }

    fn reserve(&mut self, more: usize) -> Result<(), OverBudget> {
        if self.bytes + more > self.budget {
            return Err(OverBudget);
        }
        self.bytes += more;
        Ok(())
    }

    fn entry(&mut self, index: &mut u32) -> &mut SpillEntry {
        if *index == crate::table::NO_SPILL {
            *index = self.entries.insert(SpillEntry::default()) as u32;
        }
        &mut self.entries[*index as usize]
    }

    /// Frees the entry when it holds nothing, resetting `index`.
    fn release_if_empty(&mut self, index: &mut u32) {
        let e = &self.entries[*index as usize];
        if e.input.is_empty() && e.output.is_empty() {
            self.entries.remove(*index as usize);
            *index = crate::table::NO_SPILL;
        }
    }

    /// Takes the stored partial frame (empty if none), leaving the entry's
    /// input empty. The caller appends new bytes, parses, and gives back
    /// what is left with [`SpillArea::put_input`].
    pub fn take_input(&mut self, index: &mut u32) -> (Vec<u8>, u32) {
        if *index == crate::table::NO_SPILL {
            return (Vec::new(), 0);
        }
        let e = &mut self.entries[*index as usize];
        let input = std::mem::take(&mut e.input);
        let since = e.input_since;
        self.bytes -= input.len();
        self.release_if_empty(index);
        (input, since)
    }

    /// Stores the partial frame of session `owner`, begun at tick `since`
    /// (replacing nothing: input must be empty).
    pub fn put_input(
        &mut self,
        index: &mut u32,
        owner: u32,
        bytes: &[u8],
        since: u32,
    ) -> Result<(), OverBudget> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.reserve(bytes.len())?;
        let e = self.entry(index);
        debug_assert!(e.input.is_empty());
        e.input.extend_from_slice(bytes);
        e.owner = owner;
        e.input_since = since;
        Ok(())
    }

    /// Calls `f` with the owner of every partial frame begun at or before
    /// tick `oldest` (wrapping compare). Scans only spilled sessions, a
    /// small set bounded by the budget.
    pub fn frames_started_before(&self, oldest: u32, mut f: impl FnMut(u32)) {
        for (_, e) in &self.entries {
            if !e.input.is_empty() && oldest.wrapping_sub(e.input_since) <= u32::MAX / 2 {
                f(e.owner);
            }
        }
    }

    /// Appends replies that could not be written.
    pub fn push_output(&mut self, index: &mut u32, bytes: &[u8]) -> Result<(), OverBudget> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.reserve(bytes.len())?;
        self.entry(index).output.extend_from_slice(bytes);
        Ok(())
    }

    /// The held partial frame (empty if none) and the tick it began.
    pub fn input(&self, index: u32) -> (&[u8], u32) {
        if index == crate::table::NO_SPILL {
            return (&[], 0);
        }
        let e = &self.entries[index as usize];
        (&e.input, e.input_since)
    }

    /// Replies waiting to be written (empty if none).
    pub fn output(&self, index: u32) -> &[u8] {
        if index == crate::table::NO_SPILL {
            return &[];
        }
        &self.entries[index as usize].output
    }

    /// Drops `written` bytes from the front of the waiting replies. Returns
    /// true when none are left.
    pub fn consume_output(&mut self, index: &mut u32, written: usize) -> bool {
        if *index == crate::table::NO_SPILL {
            return true;
        }
        let out = &mut self.entries[*index as usize].output;
        let written = written.min(out.len());
        out.drain(..written);
        let drained = out.is_empty();
        self.bytes -= written;
        self.release_if_empty(index);
        drained
    }

    /// Frees everything a closing session held.
    pub fn release(&mut self, index: &mut u32) {
        if *index == crate::table::NO_SPILL {
            return;
        }
        let e = self.entries.remove(*index as usize);
        self.bytes -= e.input.len() + e.output.len();
        *index = crate::table::NO_SPILL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::NO_SPILL;

    #[test]
    fn bytes_are_counted_and_entries_freed_when_empty() {
        let mut area = SpillArea::new(100);
        let mut a = NO_SPILL;
        area.put_input(&mut a, 7, b"PIN", 3).unwrap();
        area.push_output(&mut a, b"+PONG\r\n").unwrap();
        assert_eq!(area.bytes(), 10);
        let mut slow = Vec::new();
        area.frames_started_before(2, |o| slow.push(o));
        assert!(slow.is_empty());
        area.frames_started_before(3, |o| slow.push(o));
        assert_eq!(slow, [7]);
        assert_eq!(area.take_input(&mut a), (b"PIN".to_vec(), 3));
        assert_ne!(a, NO_SPILL, "output still held");
        assert!(!area.consume_output(&mut a, 3));
        assert_eq!(area.output(a), b"NG\r\n");
        assert!(area.consume_output(&mut a, 4));
        assert_eq!((a, area.bytes(), area.sessions()), (NO_SPILL, 0, 0));
    }

    #[test]
    fn the_budget_is_never_exceeded() {
        let mut area = SpillArea::new(8);
        let (mut a, mut b) = (NO_SPILL, NO_SPILL);
        area.push_output(&mut a, b"12345").unwrap();
        assert_eq!(area.push_output(&mut b, b"6789"), Err(OverBudget));
        assert_eq!(b, NO_SPILL, "a refused spill allocates nothing");
        area.release(&mut a);
        assert_eq!(area.bytes(), 0);
        area.push_output(&mut b, b"6789").unwrap();
        assert_eq!(area.bytes(), 4);
    }
}
