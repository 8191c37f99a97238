//! A fixed-size, lock-free table of GCRA states: the local half of rate limiting.
//!
//! GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp) needs a
//! single number per key: its theoretical arrival time (TAT), the moment the key's bucket
//! will be full again. Each slot is two `AtomicU64`s: the key's 64-bit hash, and a word of 16
//! bits of that hash (a check) with 48 bits of TAT in microseconds since the table was made
//! (8.9 years). A request updates the word with one compare-and-swap, which fails if another
//! key took the slot meanwhile: no lock, no allocation, and memory fixed when the table is
//! made.
//!
//! Keys map to a set of [`WAYS`] slots by a hash mixed with a per-process random seed (so a
//! client cannot aim its keys at another client's set). A new key takes a free slot, or one
//! whose bucket is already full again (forgetting it loses nothing), or else the slot whose
//! bucket is fullest: an attacker cycling through keys evicts only other keys' state, and
//! memory never grows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::upstream::hash::mix;

/// Slots per set.
pub const WAYS: usize = 4;
/// Sets in a table: 16,384 sets of 4 slots, 65,536 keys in 1 MiB.
pub const SETS: usize = 16 * 1024;

const TAT_BITS: u32 = 48;
const TAT_MASK: u64 = (1 << TAT_BITS) - 1;

/// The outcome of asking for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request may go.
    pub allowed: bool,
    /// Requests the key may still make right now.
    pub remaining: u32,
    /// Until the next request would be allowed (zero when allowed).
    pub retry_after: Duration,
    /// Until the key's bucket is full again.
    pub reset_after: Duration,
}

/// GCRA states of many keys, for one limit.
#[derive(Debug)]
pub struct GcraTable {
    /// Each slot's key hash (0: free).
    keys: Box<[AtomicU64]>,
    /// Each slot's check and TAT.
    slots: Box<[AtomicU64]>,
    seed: u64,
    /// Microseconds one request's token takes to come back.
    interval: u64,
    /// Microseconds of credit a full bucket holds: `burst` intervals.
    capacity: u64,
    epoch: Instant,
}

impl GcraTable {
    /// A table for `burst` requests at once, one more every `interval`.
    pub fn new(interval: Duration, burst: u32) -> GcraTable {
        let interval = (interval.as_micros() as u64).max(1);
        GcraTable {
            keys: (0..SETS * WAYS).map(|_| AtomicU64::new(0)).collect(),
            slots: (0..SETS * WAYS).map(|_| AtomicU64::new(0)).collect(),
            seed: fastrand::u64(..),
            interval,
            capacity: interval.saturating_mul(u64::from(burst.max(1))),
            epoch: Instant::now(),
        }
    }

    /// Microseconds since the table was made, plus one (a TAT of 0 marks a free slot).
    fn now(&self, at: Instant) -> u64 {
        (at.saturating_duration_since(self.epoch).as_micros() as u64 + 1) & TAT_MASK
    }

    /// Takes `cost` tokens for `key` (a hash of the client's key) at `at`, all or none.
    pub fn take(&self, key: u64, cost: u32, at: Instant) -> Verdict {
        let now = self.now(at);
        let h = mix(key ^ self.seed) | 1; // never 0, the mark of a free slot
        let set = (h as usize % SETS) * WAYS;
        let tag = h >> TAT_BITS;
        let ways = &self.slots[set..set + WAYS];
        let keys = &self.keys[set..set + WAYS];
        let cost = self.interval.saturating_mul(u64::from(cost.max(1)));
        loop {
            let mut mine = None;
            let (mut victim, mut victim_word, mut victim_score) = (0, 0, u64::MAX);
            for (i, slot) in ways.iter().enumerate() {
                let word = slot.load(Ordering::Acquire);
                let tat = word & TAT_MASK;
                if tat != 0 && word >> TAT_BITS == tag && keys[i].load(Ordering::Acquire) == h {
                    mine = Some((i, word, tat));
                    break;
                }
                // Free or full-again slots first, then the fullest bucket (earliest TAT).
                let score = if tat <= now { 0 } else { tat };
                if score < victim_score {
                    (victim, victim_word, victim_score) = (i, word, score);
                }
            }
            let found = mine.is_some();
            let (i, word, tat) = mine.unwrap_or((victim, victim_word, now));
            let start = tat.max(now);
            let next = start + cost;
            if next > now + self.capacity {
                // Refused: nothing is taken, so nothing is written.
                let allowed_at = next - self.capacity;
                return Verdict {
                    allowed: false,
                    remaining: 0,
                    retry_after: Duration::from_micros(allowed_at - now),
                    reset_after: Duration::from_micros(start - now),
                };
            }
            let new = (tag << TAT_BITS) | (next & TAT_MASK);
            if ways[i]
                .compare_exchange(word, new, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                if !found {
                    keys[i].store(h, Ordering::Release);
                }
                return Verdict {
                    allowed: true,
                    remaining: ((now + self.capacity - next) / self.interval) as u32,
                    retry_after: Duration::ZERO,
                    reset_after: Duration::from_micros(next - now),
                };
            }
            // Another worker changed the set meanwhile: look again.
        }
    }

    /// Bytes the table holds (fixed when it is made).
    pub fn memory(&self) -> usize {
        (self.keys.len() + self.slots.len()) * std::mem::size_of::<AtomicU64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let table = GcraTable::new(Duration::from_millis(100), 5);
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> = (0..6).map(|_| table.take(42, 1, t0)).collect();
        assert_eq!(
            verdicts.iter().map(|v| v.allowed).collect::<Vec<_>>(),
            [true, true, true, true, true, false]
        );
        assert_eq!(
            verdicts.iter().map(|v| v.remaining).collect::<Vec<_>>(),
            [4, 3, 2, 1, 0, 0]
        );
        assert_eq!(verdicts[5].retry_after, Duration::from_millis(100));
        assert_eq!(verdicts[4].reset_after, Duration::from_millis(500));
        // 99 ms later: still refused; 100 ms later: one more.
        assert!(!table.take(42, 1, t0 + Duration::from_millis(99)).allowed);
        let later = table.take(42, 1, t0 + Duration::from_millis(100));
        assert!(later.allowed);
        assert_eq!(later.remaining, 0);
        // Another key has its own bucket.
        assert_eq!(table.take(7, 1, t0).remaining, 4);
        // A long pause refills the whole bucket, no more.
        let refilled = table.take(42, 1, t0 + Duration::from_secs(60));
        assert_eq!(refilled.remaining, 4);
    }

    #[test]
    fn a_cost_is_taken_whole_or_not_at_all() {
        let table = GcraTable::new(Duration::from_millis(10), 10);
        let t0 = Instant::now();
        assert_eq!(table.take(1, 7, t0).remaining, 3);
        let refused = table.take(1, 4, t0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_millis(10));
        assert_eq!(table.take(1, 3, t0).remaining, 0);
    }

    #[test]
    fn many_keys_keep_memory_fixed_and_fresh_keys_are_never_refused() {
        let table = GcraTable::new(Duration::from_secs(1), 1);
        let t0 = Instant::now();
        let before = table.memory();
        for key in 0..200_000u64 {
            assert!(
                table.take(key, 1, t0).allowed,
                "key {key}: a fresh key has a full bucket"
            );
        }
        assert_eq!(table.memory(), before);
        assert_eq!(before, SETS * WAYS * 16);
        // A key that was just limited and not evicted stays limited.
        assert!(!table.take(199_999, 1, t0).allowed);
    }
}
