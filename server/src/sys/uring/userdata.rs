//! `user_data`: what every io_uring request carries back in its completion.
//!
//! The session [`Token`] (key | generation << 32) is the io_uring
//! `user_data`, as it is the mio token, with the request's kind in the top
//! two bits of the key half:
//!
//! ```text
//! bits 63..32  generation (sessions) or 0
//! bits 31..30  kind: 00 recv, 01 send, 10 poll-out, 11 reserved range
//! bits 29..0   session key (recv, poll-out) or send slot (send)
//! ```
//!
//! Session keys therefore stop at 2^30 per worker (a billion sessions: far
//! past any descriptor limit); the backend refuses a session whose key
//! would not fit rather than mislabel it. The reserved values are exactly
//! [`Token::reserved`]`(n)` (keys at or above `FIRST_RESERVED_KEY`, whose
//! top bits are `11`), so they never collide with a session request. A
//! completion whose generation no longer matches the slot's session is
//! stale (the slot was freed, perhaps reused) and is dropped, after giving
//! back any buffer it holds.
#![forbid(unsafe_code)]

use crate::table::{Token, FIRST_RESERVED_KEY};

/// Session keys and send slots must be below this.
pub const MAX_INDEX: u32 = 1 << 30;

const KIND_SHIFT: u32 = 30;
const INDEX_MASK: u32 = MAX_INDEX - 1;
const KIND_RECV: u32 = 0;
const KIND_SEND: u32 = 1;
const KIND_POLL_OUT: u32 = 2;

/// The listener's multishot accept.
pub const ACCEPT: u64 = Token::reserved(0).0;
/// The poll on the worker's wake eventfd.
pub const WAKE: u64 = Token::reserved(1).0;
/// Requests whose completion needs no handling (cancels, closes); they are
/// submitted with CQE_SKIP_SUCCESS, so only their failures come back.
pub const IGNORE: u64 = Token::reserved(2).0;
/// A hand-off request (descriptor install, file-table update): the entry's
/// index in its batch is in the high half. Reaped by the hand-off's own
/// loop ([`super::handoff`]), while nothing else is in flight.
pub const HANDOFF: u64 = Token::reserved(3).0;

/// A decoded `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserData {
    /// A session's multishot recv.
    Recv(Token),
    /// A send, by its slot in the worker's in-flight send table.
    Send(u32),
    /// A session's one-shot poll for writability (while write-blocked).
    PollOut(Token),
    Accept,
    Wake,
    Ignore,
    /// Nothing this backend submits (a bug if it ever appears).
    Unknown(u64),
}

impl UserData {
    /// Encodes a request's `user_data`; `None` when the key or slot is past
    /// [`MAX_INDEX`].
    pub fn encode(self) -> Option<u64> {
        let session = |kind: u32, t: Token| {
            (t.key() < MAX_INDEX)
                .then(|| u64::from(t.generation()) << 32 | u64::from(kind << KIND_SHIFT | t.key()))
        };
        match self {
            UserData::Recv(t) => session(KIND_RECV, t),
            UserData::PollOut(t) => session(KIND_POLL_OUT, t),
            UserData::Send(slot) => {
                (slot < MAX_INDEX).then_some(u64::from(KIND_SEND << KIND_SHIFT | slot))
            }
            UserData::Accept => Some(ACCEPT),
            UserData::Wake => Some(WAKE),
            UserData::Ignore => Some(IGNORE),
            UserData::Unknown(v) => Some(v),
        }
    }

    pub fn decode(value: u64) -> UserData {
        let low = value as u32;
        if low >= FIRST_RESERVED_KEY {
            return match value {
                ACCEPT => UserData::Accept,
                WAKE => UserData::Wake,
                IGNORE => UserData::Ignore,
                other => UserData::Unknown(other),
            };
        }
        let index = low & INDEX_MASK;
        let generation = (value >> 32) as u32;
        match low >> KIND_SHIFT {
            KIND_RECV => UserData::Recv(Token::new(index, generation)),
            KIND_POLL_OUT => UserData::PollOut(Token::new(index, generation)),
            KIND_SEND if generation == 0 => UserData::Send(index),
            _ => UserData::Unknown(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips() {
        let t = Token::new(MAX_INDEX - 1, u32::MAX);
        for ud in [
            UserData::Recv(t),
            UserData::Recv(Token::new(0, 1)),
            UserData::PollOut(t),
            UserData::Send(0),
            UserData::Send(MAX_INDEX - 1),
            UserData::Accept,
            UserData::Wake,
            UserData::Ignore,
        ] {
            assert_eq!(UserData::decode(ud.encode().unwrap()), ud, "{ud:?}");
        }
    }

    #[test]
    fn reserved_values_are_the_tables_reserved_tokens_and_never_a_session() {
        assert_eq!(ACCEPT, Token::reserved(0).0);
        assert_eq!(WAKE, Token::reserved(1).0);
        assert_eq!(IGNORE, Token::reserved(2).0);
        let mut all = vec![ACCEPT, WAKE, IGNORE];
        for key in [0, 1, MAX_INDEX - 1] {
            for generation in [0, 1, u32::MAX] {
                let t = Token::new(key, generation);
                all.push(UserData::Recv(t).encode().unwrap());
                all.push(UserData::PollOut(t).encode().unwrap());
            }
            all.push(UserData::Send(key).encode().unwrap());
        }
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "two requests share a user_data");
    }

    #[test]
    fn the_generation_travels_so_a_reused_slot_is_told_apart() {
        let old = UserData::Recv(Token::new(7, 1)).encode().unwrap();
        let new = UserData::Recv(Token::new(7, 2)).encode().unwrap();
        assert_ne!(old, new);
        assert_eq!(UserData::decode(old), UserData::Recv(Token::new(7, 1)));
    }

    #[test]
    fn keys_past_the_index_space_are_refused_not_mislabelled() {
        assert_eq!(UserData::Recv(Token::new(MAX_INDEX, 1)).encode(), None);
        assert_eq!(UserData::Send(MAX_INDEX).encode(), None);
        assert_eq!(
            UserData::decode(Token::reserved(9).0),
            UserData::Unknown(Token::reserved(9).0)
        );
        // A send slot never carries a generation.
        let bogus = 5u64 << 32 | u64::from(KIND_SEND << KIND_SHIFT);
        assert_eq!(UserData::decode(bogus), UserData::Unknown(bogus));
    }
}
