//! Ring hash: ketama-style consistent hashing (nginx `hash ... consistent`, Envoy `RING_HASH`).
//!
//! Every backend places 160 points per unit of weight on a 64-bit ring, at hashes of its
//! address and the point's number; a key goes to the first point at or after its own hash.
//! Removing a backend moves only the keys that were on its points: about 1/N of them.

use std::sync::Arc;

use super::{bounded_pick, random_allowed, PickContext, Select};
use crate::upstream::hash::hash64;
use crate::upstream::Backend;

/// Ring points per unit of weight (ketama's 160).
pub const POINTS_PER_WEIGHT: usize = 160;
/// Upper bound on ring points, so thousands of heavy backends stay in memory; weights are
/// scaled down together beyond it.
const MAX_POINTS: usize = 1 << 22;

/// A sorted hash ring.
#[derive(Debug)]
pub struct RingHash {
    /// Point hashes, ascending.
    points: Vec<u64>,
    /// `owners[i]` is the backend index of `points[i]`.
    owners: Vec<u32>,
    /// `buckets[p]` is the first point whose top `bucket_bits` bits are >= `p`, so a lookup
    /// binary-searches one small bucket instead of the whole ring (which misses cache).
    buckets: Vec<u32>,
    bucket_bits: u32,
    /// Bounded loads: see [`bounded_pick`].
    balance_factor: Option<f64>,
}

impl RingHash {
    /// Builds the ring for `backends`, with loads bounded by `balance_factor` if given.
    pub fn new(backends: &[Arc<Backend>], balance_factor: Option<f64>) -> RingHash {
        let total_weight: usize = backends.iter().map(|b| b.weight().max(1) as usize).sum();
        let scale = if total_weight * POINTS_PER_WEIGHT > MAX_POINTS {
            MAX_POINTS as f64 / (total_weight * POINTS_PER_WEIGHT) as f64
        } else {
            1.0
        };
        let mut ring: Vec<(u64, u32)> = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let count = ((b.weight().max(1) as usize * POINTS_PER_WEIGHT) as f64 * scale).max(1.0) as usize;
            // One buffer per backend: `ADDRESS-POINT` rewritten in place, not formatted anew.
            let mut name = b.address().to_string().into_bytes();
            name.push(b'-');
            let prefix = name.len();
            let mut digits = itoa::Buffer::new();
            for point in 0..count {
                name.truncate(prefix);
                name.extend_from_slice(digits.format(point).as_bytes());
                ring.push((hash64(&name), i as u32));
            }
        }
        ring.sort_unstable();
        let (points, owners): (Vec<u64>, Vec<u32>) = ring.into_iter().unzip();
        // About one point per bucket.
        let bucket_bits = points.len().max(2).next_power_of_two().trailing_zeros().clamp(1, 20);
        let buckets = (0..=(1u64 << bucket_bits))
            .map(|p| {
                let start = if p == 1 << bucket_bits {
                    u64::MAX
                } else {
                    p << (64 - bucket_bits)
                };
                points.partition_point(|&h| h < start) as u32
            })
            .collect();
        RingHash {
            points,
            owners,
            buckets,
            bucket_bits,
            balance_factor,
        }
    }

    /// Index of the first point at or after `hash` (may be `points.len()`: wrap to 0).
    fn first_at_or_after(&self, hash: u64) -> usize {
        let bucket = (hash >> (64 - self.bucket_bits)) as usize;
        let (lo, hi) = (self.buckets[bucket] as usize, self.buckets[bucket + 1] as usize);
        lo + self.points[lo..hi].partition_point(|&p| p < hash)
    }
}

impl Select for RingHash {
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize> {
        if self.points.is_empty() || backends.is_empty() {
            return None;
        }
        let Some(hash) = ctx.hash else {
            return random_allowed(backends.len(), ctx);
        };
        let start = self.first_at_or_after(hash);
        if let Some(factor) = self.balance_factor {
            let len = self.points.len();
            return bounded_pick(
                backends,
                ctx,
                factor,
                (0..len).map(|k| self.owners[(start + k) % len] as usize),
            );
        }
        // Walk clockwise past excluded backends (a retry's stable second choice).
        (0..self.points.len())
            .map(|k| self.owners[(start + k) % self.points.len()] as usize)
            .find(|&i| ctx.allows(i))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::backends;
    use super::*;

    fn owners(backends: &[Arc<Backend>], keys: u64) -> Vec<std::net::SocketAddr> {
        let ring = RingHash::new(backends, None);
        (0..keys)
            .map(|k| {
                let ctx = PickContext {
                    hash: Some(hash64(format!("user-{k}").as_bytes())),
                    exclude: &[],
                };
                backends[ring.pick(backends, &ctx).expect("pick")].address()
            })
            .collect()
    }

    /// Pinned across versions, like Maglev's: changing these remaps keys across a fleet.
    const PIN_PICKS: [usize; 16] = [2, 0, 2, 0, 0, 2, 1, 0, 2, 2, 2, 1, 2, 1, 0, 1];
    const PIN_POINTS: [u64; 4] = [
        12_628_503_733_129_856,
        42_399_581_193_194_627,
        57_863_553_006_860_118,
        72_317_707_980_708_861,
    ];

    #[test]
    fn picks_are_pinned() {
        let backends = backends(&[1, 1, 2]);
        let ring = RingHash::new(&backends, None);
        let picks: Vec<usize> = (0..16)
            .map(|k| {
                let ctx = PickContext {
                    hash: Some(hash64(format!("user-{k}").as_bytes())),
                    exclude: &[],
                };
                ring.pick(&backends, &ctx).expect("pick")
            })
            .collect();
        assert_eq!(picks, PIN_PICKS);
        assert_eq!(ring.points[..4], PIN_POINTS);
    }

    #[test]
    fn removing_one_of_ten_moves_only_its_keys() {
        let all = backends(&[1; 10]);
        let before = owners(&all, 20_000);
        let removed = all[6].address();
        let rest: Vec<_> = all.iter().filter(|b| b.address() != removed).cloned().collect();
        let after = owners(&rest, 20_000);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / 20_000.0;
        assert!(before.iter().zip(&after).all(|(a, b)| a == b || *a == removed));
        // 160 points per backend balance keys to within a few percent of 1/N.
        assert!((0.07..=0.13).contains(&moved), "moved {moved}");
    }

    #[test]
    fn bucketed_lookup_matches_a_full_binary_search() {
        let ring = RingHash::new(&backends(&[1, 2, 3, 1]), None);
        for k in 0..50_000u64 {
            let h = crate::upstream::hash::mix(k);
            assert_eq!(ring.first_at_or_after(h), ring.points.partition_point(|&p| p < h));
        }
        for h in [0, 1, u64::MAX, ring.points[0], ring.points[ring.points.len() - 1]] {
            assert_eq!(ring.first_at_or_after(h), ring.points.partition_point(|&p| p < h));
        }
    }

    #[test]
    fn heavier_backends_own_more_keys() {
        let backends = backends(&[1, 3]);
        let owners = owners(&backends, 20_000);
        let heavy = owners.iter().filter(|a| **a == backends[1].address()).count() as f64 / 20_000.0;
        assert!((heavy - 0.75).abs() < 0.06, "heavy share {heavy}");
    }
}
