//! Counters the data path bumps and the admin API reads: kept apart from both so that neither
//! depends on the other for them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Responses counted by status class (1xx to 5xx), without a lock.
#[derive(Debug, Default)]
pub struct StatusCounts([AtomicU64; 5]);

impl StatusCounts {
    /// Counts one response with `status` (anything below 200 is 1xx, above 599 is 5xx).
    pub fn record(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.0[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `counts` (1xx first), e.g. a predecessor process's.
    pub fn add(&self, counts: [u64; 5]) {
        for (c, n) in self.0.iter().zip(counts) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The counts, 1xx first.
    pub fn get(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_land_in_their_class() {
        let c = StatusCounts::default();
        for s in [100, 101, 200, 204, 304, 404, 431, 502, 504, 0, 999] {
            c.record(s);
        }
        assert_eq!(c.get(), [3, 2, 1, 2, 3]);
    }
}
