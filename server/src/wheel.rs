//! `DeadlineWheel`: idle deadlines for every session of a worker, in a
//! coarse hashed wheel with intrusive `u32` links.
//!
//! Time is counted in ticks (the caller picks the tick length and converts
//! its clock; the wheel never reads one). Each session's record embeds a
//! [`Link`] (12 bytes: prev, next, deadline); the wheel keeps only one `u32`
//! list head per slot, so its own memory does not grow with sessions.
//!
//! # Contract
//! - [`DeadlineWheel::insert`] links a new key with deadline `now + timeout`.
//! - [`DeadlineWheel::touch`] moves a key's deadline to `now + timeout` in
//!   O(1) and touches nothing but the key's own link: the key stays filed
//!   in the slot of an earlier deadline, and [`DeadlineWheel::expire`]
//!   re-files it under its real deadline when it gets there. A session
//!   active every few seconds under a timeout of minutes is re-filed once
//!   per timeout instead of unlinked and pushed at every message (which
//!   costs a cache miss on each of its list neighbours).
//! - [`DeadlineWheel::remove`] unlinks a key in O(1) (always call it before
//!   the key's record is freed).
//! - [`DeadlineWheel::expire`] visits only the slots whose tick has passed
//!   since the last call and returns the keys whose deadline is due, still
//!   linked: the caller must [`DeadlineWheel::remove`] (or touch) each of
//!   them before calling `expire` again, as closing a session does. With at
//!   least `timeout + 1` slots (the constructor guarantees it), a slot holds
//!   keys filed at exactly its tick: the work is what expires plus what is
//!   re-filed (each key at most once per timeout). A key whose real
//!   deadline is still ahead is re-filed under it, unless that is the slot
//!   being visited (the caller's clock jumped a whole lap): the real
//!   deadline is always re-checked.
#![forbid(unsafe_code)]

/// End-of-list marker.
pub const NIL: u32 = u32::MAX;

/// A list's first key has `prev = HEAD | slot` (keys are below `HEAD`), so
/// that unlinking it finds its slot whatever its deadline now is.
const HEAD: u32 = 1 << 31;

/// The per-session part of the wheel, embedded in the session record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    /// The previous key in the slot's list, or `HEAD | slot` for the first.
    pub prev: u32,
    pub next: u32,
    /// Tick at which this session is idle for too long.
    pub deadline: u32,
}

impl Default for Link {
    fn default() -> Self {
        Link {
            prev: NIL,
            next: NIL,
            deadline: 0,
        }
    }
}

/// Gives the wheel access to the links stored in the caller's records.
pub trait Links {
    /// The link of a live key. Panics (a bug) for a key that is not live.
    fn link(&mut self, key: u32) -> &mut Link;
}

impl Links for Vec<Link> {
    fn link(&mut self, key: u32) -> &mut Link {
        &mut self[key as usize]
    }
}

/// A hashed timing wheel of idle deadlines, one per worker.
#[derive(Debug)]
pub struct DeadlineWheel {
    heads: Vec<u32>,
    mask: u32,
    timeout: u32,
    /// The last tick whose slot has been expired.
    expired_through: u32,
    len: usize,
}

impl DeadlineWheel {
    /// A wheel for deadlines `timeout_ticks` after the last touch, starting
    /// at tick `now`. Slots: the next power of two above the timeout.
    pub fn new(timeout_ticks: u32, now: u32) -> Self {
        let timeout = timeout_ticks.max(1);
        let slots = (u64::from(timeout) + 1).next_power_of_two();
        let slots = u32::try_from(slots)
            .ok()
            .filter(|&n| n <= HEAD / 2)
            .expect("timeout ticks fit a wheel of at most 2^30 slots");
        DeadlineWheel {
            heads: vec![NIL; slots as usize],
            mask: slots - 1,
            timeout,
            expired_through: now,
            len: 0,
        }
    }

    /// Number of linked keys.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Timeout in ticks.
    pub fn timeout(&self) -> u32 {
        self.timeout
    }

    /// Links a new key, due `timeout` ticks after `now`.
    pub fn insert<L: Links>(&mut self, links: &mut L, key: u32, now: u32) {
        let deadline = now.wrapping_add(self.timeout);
        self.push(links, key, deadline);
        self.len += 1;
    }

    /// Links a key carried over from another process (a zero-downtime
    /// upgrade) with `left` ticks of its idle timeout to go (at most the
    /// timeout, at least 1: a session due now expires at the next tick).
    pub fn insert_with<L: Links>(&mut self, links: &mut L, key: u32, now: u32, left: u32) {
        let deadline = now.wrapping_add(left.clamp(1, self.timeout));
        self.push(links, key, deadline);
        self.len += 1;
    }

    /// Ticks from `now` until a key is due (0 when due already).
    pub fn left<L: Links>(&self, links: &mut L, key: u32, now: u32) -> u32 {
        let left = links.link(key).deadline.wrapping_sub(now);
        if left > u32::MAX / 2 {
            0
        } else {
            left
        }
    }

    /// Moves a key's deadline to `timeout` ticks after `now`; it is
    /// re-filed when `expire` reaches its old one (see the module docs).
    pub fn touch<L: Links>(&mut self, links: &mut L, key: u32, now: u32) {
        let deadline = now.wrapping_add(self.timeout);
        let link = links.link(key);
        if self.expired_through.wrapping_sub(link.deadline) <= u32::MAX / 2 {
            // Due already, so `expire` has been past its slot: file it
            // under the new deadline now, or it would wait a lap.
            self.unlink(links, key);
            self.push(links, key, deadline);
        } else {
            link.deadline = deadline;
        }
    }

    /// Unlinks a key.
    pub fn remove<L: Links>(&mut self, links: &mut L, key: u32) {
        self.unlink(links, key);
        self.len -= 1;
    }

    /// Appends to `due` every key due at or before `now`. The keys stay
    /// linked until the caller removes them (see the module contract).
    pub fn expire<L: Links>(&mut self, links: &mut L, now: u32, due: &mut Vec<u32>) {
        let behind = now.wrapping_sub(self.expired_through);
        if behind == 0 || behind > u32::MAX / 2 {
            return; // nothing new, or a clock that went backwards
        }
        let slots = behind.min(self.mask + 1);
        for step in 1..=slots {
            let tick = self.expired_through.wrapping_add(step);
            let slot = (tick & self.mask) as usize;
            let mut key = self.heads[slot];
            while key != NIL {
                let link = *links.link(key);
                // Due when the deadline is not after `now` (wrapping compare).
                if now.wrapping_sub(link.deadline) <= u32::MAX / 2 {
                    due.push(key);
                } else if (link.deadline & self.mask) as usize != slot {
                    // Touched since it was filed here: file it under its
                    // deadline, a slot this call does not visit again
                    // unless the clock jumped a lap (then it stays there).
                    self.unlink(links, key);
                    self.push(links, key, link.deadline);
                }
                key = link.next;
            }
        }
        self.expired_through = now;
    }

    fn push<L: Links>(&mut self, links: &mut L, key: u32, deadline: u32) {
        debug_assert!(key < HEAD, "wheel keys are below 2^31");
        let slot = deadline & self.mask;
        let head = self.heads[slot as usize];
        *links.link(key) = Link {
            prev: HEAD | slot,
            next: head,
            deadline,
        };
        if head != NIL {
            links.link(head).prev = key;
        }
        self.heads[slot as usize] = key;
    }

    fn unlink<L: Links>(&mut self, links: &mut L, key: u32) {
        let Link { prev, next, .. } = *links.link(key);
        if prev & HEAD != 0 {
            self.heads[(prev & !HEAD) as usize] = next;
        } else {
            links.link(prev).next = next;
        }
        if next != NIL {
            links.link(next).prev = prev;
        }
        let link = links.link(key);
        link.prev = NIL;
        link.next = NIL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn remove_all(wheel: &mut DeadlineWheel, links: &mut Vec<Link>, due: &mut Vec<u32>) {
        for key in due.drain(..) {
            wheel.remove(links, key);
        }
    }

    #[test]
    fn idle_keys_expire_exactly_at_their_deadline() {
        let mut links = vec![Link::default(); 4];
        let mut wheel = DeadlineWheel::new(10, 0);
        for key in 0..4 {
            wheel.insert(&mut links, key, key); // key k inserted at tick k
        }
        let mut due = Vec::new();
        wheel.expire(&mut links, 9, &mut due);
        assert!(due.is_empty());
        wheel.expire(&mut links, 10, &mut due);
        assert_eq!(due, [0]);
        remove_all(&mut wheel, &mut links, &mut due);
        wheel.expire(&mut links, 12, &mut due);
        due.sort_unstable();
        assert_eq!(due, [1, 2]);
        remove_all(&mut wheel, &mut links, &mut due);
        assert_eq!(wheel.len(), 1);
    }

    #[test]
    fn a_touched_key_moves_and_a_removed_key_never_fires() {
        let mut links = vec![Link::default(); 3];
        let mut wheel = DeadlineWheel::new(5, 0);
        for key in 0..3 {
            wheel.insert(&mut links, key, 0);
        }
        wheel.touch(&mut links, 0, 4); // now due at 9
        wheel.remove(&mut links, 1);
        let mut due = Vec::new();
        wheel.expire(&mut links, 5, &mut due);
        assert_eq!(due, [2]);
        remove_all(&mut wheel, &mut links, &mut due);
        wheel.expire(&mut links, 8, &mut due);
        assert!(due.is_empty());
        wheel.expire(&mut links, 9, &mut due);
        assert_eq!(due, [0]);
        remove_all(&mut wheel, &mut links, &mut due);
        assert!(wheel.is_empty());
    }

    /// Simulated time: random touches and removals over many laps of the
    /// wheel; each expiry must match a brute-force model exactly.
    #[test]
    fn matches_a_brute_force_model_over_many_laps() {
        let mut rng = StdRng::seed_from_u64(7);
        let n = 2000u32;
        let timeout = 37;
        let mut links = vec![Link::default(); n as usize];
        let mut model: Vec<Option<u32>> = vec![None; n as usize];
        let mut wheel = DeadlineWheel::new(timeout, 0);
        let mut due = Vec::new();
        for now in 0..2000u32 {
            for _ in 0..20 {
                let key = rng.gen_range(0..n);
                match (model[key as usize], rng.gen_range(0..4)) {
                    (None, _) => {
                        wheel.insert(&mut links, key, now);
                        model[key as usize] = Some(now + timeout);
                    }
                    (Some(_), 0) => {
                        wheel.remove(&mut links, key);
                        model[key as usize] = None;
                    }
                    (Some(_), _) => {
                        wheel.touch(&mut links, key, now);
                        model[key as usize] = Some(now + timeout);
                    }
                }
            }
            due.clear();
            wheel.expire(&mut links, now, &mut due);
            due.sort_unstable();
            let mut want: Vec<u32> = (0..n)
                .filter(|&k| model[k as usize].is_some_and(|d| d <= now))
                .collect();
            want.sort_unstable();
            assert_eq!(due, want, "tick {now}");
            // Most due keys are closed; some got a message in the same
            // turn and are touched instead.
            for k in due.drain(..) {
                if rng.gen_range(0..4) == 0 {
                    wheel.touch(&mut links, k, now);
                    model[k as usize] = Some(now + timeout);
                } else {
                    wheel.remove(&mut links, k);
                    model[k as usize] = None;
                }
            }
            assert_eq!(wheel.len(), model.iter().filter(|d| d.is_some()).count());
        }
    }

    /// A touch writes only the key's own link: its list neighbours and the
    /// slot heads are untouched until `expire` reaches the old slot, which
    /// re-files the key under its deadline (then exact, as ever).
    #[test]
    fn a_touch_writes_only_its_own_link_and_expire_refiles_it() {
        let mut links = vec![Link::default(); 3];
        let mut wheel = DeadlineWheel::new(10, 0);
        for key in 0..3 {
            wheel.insert(&mut links, key, 0); // one list in slot 10: 2, 1, 0
        }
        let (heads, before) = (wheel.heads.clone(), links.clone());
        wheel.touch(&mut links, 1, 4); // due at 14
        assert_eq!(wheel.heads, heads);
        assert_eq!(links[0], before[0]);
        assert_eq!(links[2], before[2]);
        assert_eq!(
            (links[1].prev, links[1].next),
            (before[1].prev, before[1].next)
        );
        assert_eq!(links[1].deadline, 14);
        let mut due = Vec::new();
        wheel.expire(&mut links, 10, &mut due);
        due.sort_unstable();
        assert_eq!(due, [0, 2]);
        assert_eq!(wheel.heads[14 & 15], 1, "re-filed under its deadline");
        remove_all(&mut wheel, &mut links, &mut due);
        wheel.expire(&mut links, 13, &mut due);
        assert!(due.is_empty());
        wheel.expire(&mut links, 14, &mut due);
        assert_eq!(due, [1]);
        // Due and touched instead of closed: filed anew at once, so it
        // fires at its new deadline, not a lap later.
        due.clear();
        wheel.touch(&mut links, 1, 14);
        wheel.expire(&mut links, 23, &mut due);
        assert!(due.is_empty());
        wheel.expire(&mut links, 24, &mut due);
        assert_eq!(due, [1]);
        remove_all(&mut wheel, &mut links, &mut due);
        assert!(wheel.is_empty() && wheel.heads.iter().all(|&h| h == NIL));
    }

    #[test]
    fn a_stalled_caller_catches_up_in_one_call() {
        let mut links = vec![Link::default(); 100];
        let mut wheel = DeadlineWheel::new(3, 0);
        for key in 0..100 {
            wheel.insert(&mut links, key, key);
        }
        let mut due = Vec::new();
        // Jump far past a whole lap of the wheel.
        wheel.expire(&mut links, 1000, &mut due);
        assert_eq!(due.len(), 100);
        remove_all(&mut wheel, &mut links, &mut due);
        assert!(wheel.is_empty());
    }

    #[test]
    fn ticks_wrap_around_u32() {
        let start = u32::MAX - 5;
        let mut links = vec![Link::default(); 1];
        let mut wheel = DeadlineWheel::new(10, start);
        wheel.insert(&mut links, 0, start);
        let mut due = Vec::new();
        wheel.expire(&mut links, start.wrapping_add(9), &mut due);
        assert!(due.is_empty());
        wheel.expire(&mut links, start.wrapping_add(10), &mut due);
        assert_eq!(due, [0]);
    }
}
