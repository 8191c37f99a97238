//! A pool's rate limit: which requests go, which get 429, and the fields that tell a client
//! why.
//!
//! Local limits ([`RateScope::Local`]) are decided on the spot from a [`GcraTable`]: one
//! compare-and-swap, no lock, no allocation. Global ones are counted in Redis
//! ([`RedisLimit`]), which the request only waits for when this instance has no tokens left
//! from its last batch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::gcra_table::{GcraTable, Verdict};
use super::redis_limit::{RedisClient, RedisLimit};
use crate::config::{RateLimitConfig, RateScope};

/// The limit of one pool, shared by every worker (and kept across reloads that leave it
/// unchanged).
#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitConfig,
    /// `"POOL";q=BURST;w=SECONDS`, the `RateLimit-Policy` of every refusal.
    policy: String,
    /// The pool's name as a quoted policy name, for the `RateLimit` field.
    name: Box<[u8]>,
    local: GcraTable,
    global: Option<RedisLimit>,
    refused: AtomicU64,
}

impl RateLimiter {
    /// A limiter for pool `pool`; `redis` is the process's Redis client (needed for a
    /// global limit).
    pub fn new(pool: &str, config: &RateLimitConfig, redis: Option<&Arc<RedisClient>>) -> RateLimiter {
        let name: String = pool
            .chars()
            .map(|c| {
                if c == '"' || c == '\\' || !c.is_ascii_graphic() {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        let window = (config.interval() * config.burst).as_secs_f64().ceil().max(1.0) as u64;
        let policy = format!("\"{name}\";q={};w={window}", config.burst);
        let global = match (config.scope, redis) {
            (RateScope::Global, Some(client)) => Some(RedisLimit::new(pool, config, Arc::clone(client))),
            _ => None,
        };
        RateLimiter {
            config: config.clone(),
            policy,
            name: format!("\"{name}\"").into_bytes().into_boxed_slice(),
            local: GcraTable::new(config.interval(), config.burst),
            global,
            refused: AtomicU64::new(0),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// Whether it counts in `redis` (or, local, in no Redis at all).
    pub fn uses(&self, redis: Option<&Arc<RedisClient>>) -> bool {
        match (&self.global, redis) {
            (None, _) => self.config.scope == RateScope::Local,
            (Some(g), Some(r)) => g.counts_in(r),
            (Some(_), None) => false,
        }
    }

    /// The verdict for a request whose key hashes to `key`, when it can be given without
    /// waiting (always for local limits; for global ones while this instance holds tokens
    /// from Redis). `None`: ask [`RateLimiter::ask`].
    pub fn check(&self, key: u64) -> Option<Verdict> {
        let verdict = match &self.global {
            None => self.local.take(key, 1, Instant::now()),
            Some(global) => global.take_leased(key, Instant::now())?,
        };
        self.count(&verdict);
        Some(verdict)
    }

    /// The verdict for `key` from Redis (within `redis.timeout`; `on_redis_error` when it
    /// cannot answer in time).
    pub async fn ask(&self, key: u64) -> Verdict {
        let verdict = match &self.global {
            Some(global) => global.ask(key).await,
            None => self.local.take(key, 1, Instant::now()),
        };
        self.count(&verdict);
        verdict
    }

    fn count(&self, verdict: &Verdict) {
        if !verdict.allowed {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Redis errors and timeouts so far, and whether Redis answers now (global limits).
    pub fn redis_state(&self) -> Option<(u64, bool)> {
        self.global.as_ref().map(|g| (g.errors(), g.reachable()))
    }

    /// The fields of a 429, as (name, value): `Retry-After` (whole seconds, at least 1),
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
    pub fn refusal_headers(&self, verdict: &Verdict) -> [(&'static str, String); 3] {
        let name = String::from_utf8_lossy(&self.name);
        [
            ("Retry-After", ceil_secs(verdict.retry_after).max(1).to_string()),
            ("RateLimit-Policy", self.policy.clone()),
            (
                "RateLimit",
                format!("{name};r={};t={}", verdict.remaining, ceil_secs(verdict.reset_after)),
            ),
        ]
    }

    /// [`RateLimiter::refusal_headers`] as header lines, each ending in CRLF.
    pub fn refusal_fields(&self, verdict: &Verdict, out: &mut Vec<u8>) {
        for (name, value) in self.refusal_headers(verdict) {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HashKey, OnRedisError};

    fn config(rate: u32, burst: u32) -> RateLimitConfig {
        RateLimitConfig {
            key: HashKey::ClientIp,
            rate,
            period: Duration::from_secs(1),
            burst,
            scope: RateScope::Local,
            on_redis_error: OnRedisError::Allow,
        }
    }

    #[test]
    fn refusals_carry_retry_after_and_the_ratelimit_fields() {
        let limiter = RateLimiter::new("api", &config(10, 3), None);
        let verdicts: Vec<Verdict> = (0..4).map(|_| limiter.check(9).expect("local")).collect();
        assert_eq!(verdicts.iter().filter(|v| v.allowed).count(), 3);
        assert_eq!(limiter.refused(), 1);
        let mut out = Vec::new();
        limiter.refusal_fields(&verdicts[3], &mut out);
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "Retry-After: 1\r\nRateLimit-Policy: \"api\";q=3;w=1\r\nRateLimit: \"api\";r=0;t=1\r\n"
        );
    }
}
