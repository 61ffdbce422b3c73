//! `DeadlineWheel`: a hashed timing wheel of per-session deadlines, sans-IO.
//!
//! One slot per millisecond, `SLOTS` slots (65.5 s) per turn; a deadline
//! further out than one turn sits in its slot and is skipped by earlier
//! passes (each pass re-checks the real deadline). Entries are intrusive
//! doubly linked lists through `u32` indices, one entry per session index,
//! so scheduling, moving and cancelling are O(1) and expiry is O(expired +
//! slots walked). A bitmap of non-empty slots lets [`next_deadline`] skip
//! empty stretches.
//!
//! Per-session cost: 12 bytes (two links and the deadline). Fixed cost:
//! 256 KiB of heads and 8 KiB of bitmap per wheel, allocated and touched at
//! construction so that they count in the loadgen's warm baseline.
//!
//! [`next_deadline`]: DeadlineWheel::next_deadline
#![forbid(unsafe_code)]

const SLOTS: usize = 1 << 16;
const MASK: u32 = (SLOTS - 1) as u32;
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Entry {
    next: u32,
    prev: u32,
    at_ms: u32,
}

const UNLINKED: Entry = Entry {
    next: NIL,
    prev: NIL,
    at_ms: NIL,
};

/// Deadlines for session indices `0..len()`; see the module docs.
pub struct DeadlineWheel {
    heads: Vec<u32>,
    occupied: Vec<u64>,
    entries: Vec<Entry>,
    /// Every slot before this time has been expired.
    cursor_ms: u32,
    scheduled: usize,
}

impl DeadlineWheel {
    /// An empty wheel whose clock starts at `now_ms`; `capacity` entries are
    /// reserved (not touched).
    pub fn new(now_ms: u32, capacity: usize) -> Self {
        DeadlineWheel {
            heads: vec![NIL; SLOTS],
            occupied: crate::resident::resident(SLOTS / 64, 0u64),
            entries: Vec::with_capacity(capacity),
            cursor_ms: now_ms,
            scheduled: 0,
        }
    }

    /// Makes room for index `len()`; returns it.
    pub fn push_entry(&mut self) -> u32 {
        self.entries.push(UNLINKED);
        (self.entries.len() - 1) as u32
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of scheduled entries.
    pub fn scheduled(&self) -> usize {
        self.scheduled
    }

    /// Schedules (or moves) `idx` to `at_ms`. A deadline in the past fires
    /// at the next expiry.
    pub fn schedule(&mut self, idx: u32, at_ms: u32) {
        self.cancel(idx);
        let at_ms = at_ms.max(self.cursor_ms);
        let slot = (at_ms & MASK) as usize;
        let head = self.heads[slot];
        self.entries[idx as usize] = Entry {
            next: head,
            prev: NIL,
            at_ms,
        };
        if head != NIL {
            self.entries[head as usize].prev = idx;
        }
        self.heads[slot] = idx;
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.scheduled += 1;
    }

    /// Removes `idx` if scheduled.
    pub fn cancel(&mut self, idx: u32) {
        let e = self.entries[idx as usize];
        if e.at_ms == NIL {
            return;
        }
        if e.prev != NIL {
            self.entries[e.prev as usize].next = e.next;
        } else {
            let slot = (e.at_ms & MASK) as usize;
            self.heads[slot] = e.next;
            if e.next == NIL {
                self.occupied[slot / 64] &= !(1 << (slot % 64));
            }
        }
        if e.next != NIL {
            self.entries[e.next as usize].prev = e.prev;
        }
        self.entries[idx as usize] = UNLINKED;
        self.scheduled -= 1;
    }

    /// The deadline of `idx`, if scheduled.
    pub fn deadline(&self, idx: u32) -> Option<u32> {
        let at = self.entries[idx as usize].at_ms;
        (at != NIL).then_some(at)
    }

    /// Moves every entry due at or before `now_ms` into `due` (unscheduled).
    pub fn expire(&mut self, now_ms: u32, due: &mut Vec<u32>) {
        if now_ms < self.cursor_ms {
            return;
        }
        // Walk at most one full turn: a longer gap revisits the same slots.
        let span = (now_ms - self.cursor_ms).min(SLOTS as u32 - 1);
        let mut t = self.cursor_ms;
        let last = self.cursor_ms + span;
        while t <= last {
            let slot = (t & MASK) as usize;
            if self.occupied[slot / 64] & (1 << (slot % 64)) == 0 {
                // Skip the rest of an empty bitmap word in one step.
                let word = self.occupied[slot / 64] >> (slot % 64);
                let skip = if word == 0 {
                    64 - (slot % 64) as u32
                } else {
                    word.trailing_zeros()
                };
                t = t.saturating_add(skip.max(1));
                continue;
            }
            let mut idx = self.heads[slot];
            while idx != NIL {
                let e = self.entries[idx as usize];
                if e.at_ms <= now_ms {
                    self.cancel(idx);
                    due.push(idx);
                }
                idx = e.next;
            }
            t += 1;
        }
        self.cursor_ms = now_ms.saturating_add(1);
    }

    /// A lower bound of the earliest deadline: the time of the next
    /// non-empty slot. Entries of a later turn in that slot make the wake
    /// spurious, never late.
    pub fn next_deadline(&self) -> Option<u32> {
        if self.scheduled == 0 {
            return None;
        }
        let start = (self.cursor_ms & MASK) as usize;
        for step in 0..=(SLOTS / 64) {
            let word_idx = (start / 64 + step) % (SLOTS / 64);
            let mut word = self.occupied[word_idx];
            if step == 0 {
                word &= !0u64 << (start % 64);
            }
            if word != 0 {
                let slot = word_idx * 64 + word.trailing_zeros() as usize;
                let ahead = (slot as u32).wrapping_sub(start as u32) & MASK;
                return Some(self.cursor_ms + ahead);
            }
        }
        // Unreachable: the last step revisits `start`'s word unmasked.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wheel_with(n: usize) -> DeadlineWheel {
        let mut w = DeadlineWheel::new(0, n);
        for _ in 0..n {
            w.push_entry();
        }
        w
    }

    #[test]
    fn expires_in_order_and_only_when_due() {
        let mut w = wheel_with(4);
        w.schedule(0, 10);
        w.schedule(1, 5);
        w.schedule(2, 10 + SLOTS as u32); // same slot, next turn
        w.schedule(3, 70_000);
        let mut due = vec![];
        assert_eq!(w.next_deadline(), Some(5));
        w.expire(4, &mut due);
        assert!(due.is_empty());
        w.expire(10, &mut due);
        due.sort();
        assert_eq!(due, vec![0, 1]);
        assert_eq!(w.scheduled(), 2);
        due.clear();
        w.expire(SLOTS as u32 + 9, &mut due);
        assert!(due.is_empty());
        w.expire(SLOTS as u32 + 10, &mut due);
        assert_eq!(due, vec![2]);
        due.clear();
        w.expire(200_000, &mut due);
        assert_eq!(due, vec![3]);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn reschedule_and_cancel_unlink_cleanly() {
        let mut w = wheel_with(3);
        w.schedule(0, 7);
        w.schedule(1, 7);
        w.schedule(2, 7);
        w.cancel(1);
        w.schedule(0, 9);
        assert_eq!(w.deadline(0), Some(9));
        assert_eq!(w.deadline(1), None);
        let mut due = vec![];
        w.expire(8, &mut due);
        assert_eq!(due, vec![2]);
        due.clear();
        w.expire(9, &mut due);
        assert_eq!(due, vec![0]);
        assert_eq!(w.scheduled(), 0);
    }

    #[test]
    fn next_deadline_wraps_and_never_lies_late() {
        let mut w = wheel_with(2);
        let mut due = vec![];
        w.expire(SLOTS as u32 - 3, &mut due);
        w.schedule(0, SLOTS as u32 + 2); // wraps past slot 0
        assert_eq!(w.next_deadline(), Some(SLOTS as u32 + 2));
        w.schedule(1, SLOTS as u32 - 2 + SLOTS as u32); // a full turn ahead
        assert_eq!(w.next_deadline(), Some(SLOTS as u32 - 2)); // spurious but early
    }

    #[test]
    fn past_deadlines_fire_at_next_expiry() {
        let mut w = wheel_with(1);
        let mut due = vec![];
        w.expire(100, &mut due);
        w.schedule(0, 50);
        assert_eq!(w.next_deadline(), Some(101));
        w.expire(101, &mut due);
        assert_eq!(due, vec![0]);
    }
}
