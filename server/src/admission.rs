//! Admission: the process-wide `--max-sessions` cap, shared by all workers.
//!
//! This is the one piece of state workers share: one atomic add per accept
//! and one subtract per close, so the cap holds across workers however
//! SO_REUSEPORT spreads connections among them (it hashes; it does not
//! balance).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct Admission {
    open: AtomicU64,
    max: u64,
}

impl Admission {
    pub fn new(max: u64) -> Self {
        Admission {
            open: AtomicU64::new(0),
            max,
        }
    }

    /// Claims a slot for a new session; false when the cap is reached.
    pub fn try_admit(&self) -> bool {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        if before >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Counts sessions carried over from another process (a zero-downtime
    /// upgrade): they were admitted there, so the cap does not refuse
    /// them here; it only counts them.
    pub fn adopt(&self, sessions: u64) {
        self.open.fetch_add(sessions, Ordering::Relaxed);
    }

    /// Gives back the slot of a closed session.
    pub fn release(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_holds_and_released_slots_are_reused() {
        let a = Admission::new(2);
        assert!(a.try_admit());
        assert!(a.try_admit());
        assert!(!a.try_admit());
        assert_eq!(a.open(), 2);
        a.release();
        assert!(a.try_admit());
        assert!(!a.try_admit());
    }

    #[test]
    fn concurrent_admission_never_exceeds_the_cap() {
        let a = std::sync::Arc::new(Admission::new(1000));
        let admitted: u64 = (0..4)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || (0..1000).filter(|_| a.try_admit()).count() as u64)
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, 1000);
        assert_eq!(a.open(), 1000);
    }
}
