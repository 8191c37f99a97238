//! A retry budget: retries may add at most a set share of the requests a pool receives.
//!
//! Every request deposits `percent / 100` of a token and every retry withdraws one whole token,
//! so retries can never exceed that share of traffic (plus a small reserve, which lets a quiet
//! pool retry its first failures). A retry storm therefore cannot multiply the load on
//! backends that are already failing. Lock-free: one atomic per deposit and per withdrawal.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Tokens are counted in thousandths.
const TOKEN: i64 = 1000;
/// Retries available before any request has been seen.
pub const RESERVE_TOKENS: i64 = 10;
/// Most tokens saved up, so a long quiet spell cannot fund a later storm.
const MAX_TOKENS: i64 = 100;

/// The retry budget of one pool.
#[derive(Debug)]
pub struct RetryBudget {
    /// Thousandths of a token each request deposits (a reload may change it).
    deposit: AtomicI64,
    balance: AtomicI64,
    refused: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    /// A budget allowing retries of up to `percent`% of requests.
    pub fn new(percent: u32) -> RetryBudget {
        RetryBudget {
            deposit: AtomicI64::new(i64::from(percent) * TOKEN / 100),
            balance: AtomicI64::new(RESERVE_TOKENS * TOKEN),
            refused: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// Changes the share of requests retries may add (on reload); the balance is kept.
    pub fn set_percent(&self, percent: u32) {
        self.deposit.store(i64::from(percent) * TOKEN / 100, Ordering::Relaxed);
    }

    /// Credits one incoming request.
    pub fn deposit(&self) {
        let deposit = self.deposit.load(Ordering::Relaxed);
        if deposit > 0 && self.balance.load(Ordering::Relaxed) < MAX_TOKENS * TOKEN {
            self.balance.fetch_add(deposit, Ordering::Relaxed);
        }
    }

    /// Takes one retry from the budget; false (and counted as refused) when it is spent.
    pub fn try_withdraw(&self) -> bool {
        let ok = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= TOKEN).then_some(b - TOKEN)
            })
            .is_ok();
        if ok {
            self.retries.fetch_add(1, Ordering::Relaxed);
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Retries taken so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Retries refused because the budget was spent.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_the_share_of_requests_plus_the_reserve() {
        let budget = RetryBudget::new(20);
        let mut granted = 0;
        for _ in 0..1000 {
            budget.deposit();
            // Every request fails and wants a retry.
            if budget.try_withdraw() {
                granted += 1;
            }
        }
        assert_eq!(granted, 200 + RESERVE_TOKENS as u64);
        assert_eq!(budget.retries(), granted);
        assert_eq!(budget.refused(), 1000 - granted);
    }

    #[test]
    fn zero_percent_allows_only_the_reserve() {
        let budget = RetryBudget::new(0);
        for _ in 0..100 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.try_withdraw()).count() as i64;
        assert_eq!(granted, RESERVE_TOKENS);
    }
}
