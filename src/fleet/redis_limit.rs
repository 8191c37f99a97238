//! Rate limits shared by every instance through Redis (`scope = "global"`).
//!
//! Redis holds one GCRA state per pool and key (`steelyard:rl:POOL:KEYHASH`, the theoretical
//! arrival time in microseconds of Redis's own clock, expiring when the bucket is full
//! again), updated by one Lua script so that concurrent instances never race. GCRA rather
//! than a sliding window: one number per key instead of a list or two counters, exact
//! (no window-edge bursts), and it hands out several tokens at once as easily as one.
//!
//! Not every request waits for Redis. A key that is busy here asks for a batch of tokens
//! (a tenth of the burst, at most 100) and spends them locally for up to a second; a key
//! Redis refused is refused locally until Redis said it may try again. The price is
//! accuracy on the safe side: tokens an instance took but did not spend before its lease
//! ended are lost (at most a batch per instance and key), and a request admitted from a
//! lease was paid for up to a second earlier. The combined rate is never exceeded.
//!
//! When Redis errs or does not answer within `redis.timeout`, the request gets
//! `on_redis_error` (allow by default); the transition is logged once each way and errors
//! are counted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use super::gcra_table::Verdict;
use crate::config::{OnRedisError, RateLimitConfig, RedisConfig};

/// The GCRA script: KEYS[1] the key; ARGV interval µs, capacity µs (burst intervals),
/// tokens wanted. Grants as many as fit, up to the number wanted. Returns {granted,
/// remaining, retry after µs, reset after µs}. Numbers are written with `%.0f`: Lua's
/// default rendering keeps only 14 digits, and microseconds since 1970 have 16.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local room = math.floor((now + capacity - tat) / interval)
local grant = math.min(want, room)
if grant <= 0 then
  return {0, 0, tat + interval - capacity - now, tat - now}
end
tat = tat + grant * interval
redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.floor((tat - now) / 1000) + 1)
return {grant, math.floor((now + capacity - tat) / interval), 0, tat - now}
";

/// The process's connection to the `[redis]` of its config: one multiplexed connection,
/// opened on first use and reopened after it fails (one attempt at a time; requests that
/// arrive meanwhile get `on_redis_error` at once).
pub struct RedisClient {
    config: RedisConfig,
    client: redis::Client,
    connection: ArcSwapOption<redis::aio::MultiplexedConnection>,
    connecting: AtomicBool,
    script: redis::Script,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

/// Why Redis gave no verdict.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// No answer within `redis.timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Another request is opening the connection.
    #[error("not connected yet")]
    Connecting,
    /// Redis (or the way to it) failed.
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl RedisClient {
    /// A client for `config` (nothing is connected until the first request needs it).
    pub fn new(config: &RedisConfig) -> Result<RedisClient, redis::RedisError> {
        Ok(RedisClient {
            config: config.clone(),
            client: redis::Client::open(config.url.as_str())?,
            connection: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            script: redis::Script::new(GCRA),
        })
    }

    /// Its settings.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Runs the GCRA script for `key`, asking for `want` tokens, within the timeout.
    async fn gcra(&self, key: &str, interval: u64, capacity: u64, want: u32) -> Result<[i64; 4], RedisError> {
        let timeout = self.config.timeout;
        let run = async {
            let mut connection = self.connection().await?;
            let reply: Vec<i64> = self
                .script
                .key(key)
                .arg(interval)
                .arg(capacity)
                .arg(want)
                .invoke_async(&mut connection)
                .await?;
            let mut out = [0i64; 4];
            for (o, r) in out.iter_mut().zip(reply) {
                *o = r;
            }
            Ok(out)
        };
        let result = match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(RedisError::Timeout(timeout)),
        };
        if let Err(e) = &result {
            if !matches!(e, RedisError::Connecting) {
                // A broken or stalled connection is not asked again: the next request opens
                // a new one.
                self.connection.store(None);
            }
        }
        result
    }

    /// The open connection, or a new one (only one request opens it at a time).
    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, RedisError> {
        if let Some(c) = self.connection.load_full() {
            return Ok((*c).clone());
        }
        if self.connecting.swap(true, Ordering::AcqRel) {
            return Err(RedisError::Connecting);
        }
        // Cleared however this ends, a timeout dropping it included.
        struct Connecting<'a>(&'a AtomicBool);
        impl Drop for Connecting<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _connecting = Connecting(&self.connecting);
        let c = self.client.get_multiplexed_async_connection().await?;
        self.connection.store(Some(Arc::new(c.clone())));
        Ok(c)
    }
}

/// One pool's global limit.
#[derive(Debug)]
pub struct RedisLimit {
    client: Arc<RedisClient>,
    /// `steelyard:rl:POOL:`.
    prefix: String,
    interval: u64,
    capacity: u64,
    batch: u32,
    lease: Duration,
    on_error: OnRedisError,
    leases: LeaseTable,
    /// Woken whenever an answer from Redis was stored (for requests waiting on one).
    answered: tokio::sync::Notify,
    errors: AtomicU64,
    /// False from the first failure until Redis answers again.
    reachable: AtomicBool,
}

impl RedisLimit {
    /// The global limit of pool `pool`.
    pub fn new(pool: &str, config: &RateLimitConfig, client: Arc<RedisClient>) -> RedisLimit {
        let interval = (config.interval().as_micros() as u64).max(1);
        let batch = (config.burst / 10).clamp(1, 100);
        RedisLimit {
            client,
            prefix: format!("steelyard:rl:{pool}:"),
            interval,
            capacity: interval.saturating_mul(u64::from(config.burst)),
            batch,
            lease: (config.interval() * batch * 2).clamp(Duration::from_millis(10), Duration::from_secs(1)),
            on_error: config.on_redis_error,
            leases: LeaseTable::new(),
            answered: tokio::sync::Notify::new(),
            errors: AtomicU64::new(0),
            reachable: AtomicBool::new(true),
        }
    }

    /// A verdict without asking Redis: a token of this instance's lease for `key`, or the
    /// refusal Redis gave and that still holds. `None`: Redis must be asked.
    pub fn take_leased(&self, key: u64, now: Instant) -> Option<Verdict> {
        match self.leases.take(key, self.leases.ms(now)) {
            Leased::Verdict(v) => Some(v),
            Leased::Ask | Leased::Wait => None,
        }
    }

    /// Asks Redis for `key`'s next token (a batch when the key is busy here). One request per
    /// key asks at a time: the others wait for its answer (within `redis.timeout`) and take
    /// from the lease it brings, so a key busy on many connections costs one round trip per
    /// batch, not one per connection.
    pub async fn ask(&self, key: u64) -> Verdict {
        let timeout = self.client.config.timeout;
        let busy = loop {
            // Registered before looking, so that an answer stored meanwhile still wakes us.
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let now = self.leases.ms(Instant::now());
            match self.leases.take(key, now) {
                Leased::Verdict(v) => return v,
                Leased::Wait => {
                    let _ = tokio::time::timeout(timeout, answered).await;
                }
                Leased::Ask => {
                    let busy = self.leases.recently_used(key, now, self.lease);
                    if self.leases.claim(key, now, now + timeout.as_millis() as u64 + 1) {
                        break busy;
                    }
                }
            }
        };
        let verdict = self.ask_redis(key, busy).await;
        self.answered.notify_waiters();
        verdict
    }

    async fn ask_redis(&self, key: u64, busy: bool) -> Verdict {
        let want = if busy { self.batch } else { 1 };
        let mut name = String::with_capacity(self.prefix.len() + 16);
        name.push_str(&self.prefix);
        name.push_str(&format!("{key:016x}"));
        match self.client.gcra(&name, self.interval, self.capacity, want).await {
            Ok([granted, remaining, retry_us, reset_us]) => {
                if !self.reachable.swap(true, Ordering::AcqRel) {
                    tracing::info!(url = %self.client.config.url, "Redis answers again; global rate limits are enforced");
                }
                let now = self.leases.ms(Instant::now());
                let granted = granted.max(0) as u32;
                let retry_after = Duration::from_micros(retry_us.max(0) as u64);
                if granted == 0 {
                    self.leases.refuse(key, now + retry_after.as_millis() as u64);
                } else if granted > 1 {
                    self.leases.lease(key, granted - 1, now + self.lease.as_millis() as u64);
                } else {
                    self.leases.touch(key, now);
                }
                Verdict {
                    allowed: granted > 0,
                    remaining: remaining.max(0) as u32 + granted.saturating_sub(1),
                    retry_after,
                    reset_after: Duration::from_micros(reset_us.max(0) as u64),
                }
            }
            Err(e) => {
                self.leases.touch(key, self.leases.ms(Instant::now()));
                self.errors.fetch_add(1, Ordering::Relaxed);
                if self.reachable.swap(false, Ordering::AcqRel) {
                    tracing::warn!(url = %self.client.config.url, error = %e, on_redis_error = ?self.on_error, "Redis cannot be asked; global rate limits fall back to on_redis_error");
                }
                let allowed = self.on_error == OnRedisError::Allow;
                Verdict {
                    allowed,
                    remaining: 0,
                    retry_after: if allowed {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(1)
                    },
                    reset_after: Duration::from_secs(1),
                }
            }
        }
    }

    /// Whether it counts in `client`.
    pub fn counts_in(&self, client: &Arc<RedisClient>) -> bool {
        Arc::ptr_eq(&self.client, client)
    }

    /// Failed or late answers so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Whether the last answer came in time.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }
}

/// What the lease table says of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leased {
    /// Decided here: a leased token, or a refusal that still holds.
    Verdict(Verdict),
    /// Nothing held: Redis must be asked.
    Ask,
    /// Another request is asking Redis for this key now.
    Wait,
}

/// The tokens value marking a slot whose key is being asked about.
const ASKING: u64 = 0xfff;

/// Per-key leases of this instance, in the same fixed, lock-free shape as
/// [`super::gcra_table::GcraTable`]: each slot the key's hash and a word of a 12-bit check,
/// 12 bits of tokens and 40 bits of expiry in milliseconds (tokens 0 with a future expiry:
/// refused until then; a spent lease expires at once).
#[derive(Debug)]
struct LeaseTable {
    keys: Box<[AtomicU64]>,
    slots: Box<[AtomicU64]>,
    seed: u64,
    epoch: Instant,
}

const LEASE_SETS: usize = 4096;
const LEASE_WAYS: usize = 4;
const EXPIRY_MASK: u64 = (1 << 40) - 1;

impl LeaseTable {
    fn new() -> LeaseTable {
        LeaseTable {
            keys: (0..LEASE_SETS * LEASE_WAYS).map(|_| AtomicU64::new(0)).collect(),
            slots: (0..LEASE_SETS * LEASE_WAYS).map(|_| AtomicU64::new(0)).collect(),
            seed: fastrand::u64(..),
            epoch: Instant::now(),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    /// The set of `key`: its slots' key hashes and words, the hash and the check.
    fn place(&self, key: u64) -> (&[AtomicU64], &[AtomicU64], u64, u64) {
        let h = (key ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let set = (h >> 20) as usize % LEASE_SETS * LEASE_WAYS;
        (
            &self.keys[set..set + LEASE_WAYS],
            &self.slots[set..set + LEASE_WAYS],
            h,
            h >> 52,
        )
    }

    /// The slot holding `key`, with its word.
    fn find<'a>(&self, keys: &[AtomicU64], ways: &'a [AtomicU64], h: u64, tag: u64) -> Option<(&'a AtomicU64, u64)> {
        ways.iter().zip(keys).find_map(|(slot, k)| {
            let word = slot.load(Ordering::Acquire);
            (word != 0 && word >> 52 == tag && k.load(Ordering::Acquire) == h).then_some((slot, word))
        })
    }

    fn take(&self, key: u64, now: u64) -> Leased {
        let (keys, ways, h, tag) = self.place(key);
        let Some((slot, word)) = self.find(keys, ways, h, tag) else {
            return Leased::Ask;
        };
        let (tokens, expiry) = ((word >> 40) & 0xfff, word & EXPIRY_MASK);
        if expiry <= now {
            return Leased::Ask;
        }
        if tokens == ASKING {
            return Leased::Wait;
        }
        if tokens == 0 {
            return Leased::Verdict(Verdict {
                allowed: false,
                remaining: 0,
                retry_after: Duration::from_millis(expiry - now),
                reset_after: Duration::from_millis(expiry - now),
            });
        }
        // The last token ends the lease (it must not read as a refusal).
        let new = if tokens == 1 {
            (tag << 52) | now
        } else {
            word - (1 << 40)
        };
        // Losing the race sends this request to Redis: always safe.
        match slot.compare_exchange(word, new, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => Leased::Verdict(Verdict {
                allowed: true,
                remaining: (tokens - 1) as u32,
                retry_after: Duration::ZERO,
                reset_after: Duration::ZERO,
            }),
            Err(_) => Leased::Ask,
        }
    }

    /// Marks `key` as being asked about until `until` (when a lost answer stops holding the
    /// others back); false when another request marked it first.
    fn claim(&self, key: u64, now: u64, until: u64) -> bool {
        let (keys, ways, h, tag) = self.place(key);
        let word = (tag << 52) | (ASKING << 40) | (until & EXPIRY_MASK);
        match self.find(keys, ways, h, tag) {
            Some((slot, old)) if (old >> 40) & 0xfff != ASKING || old & EXPIRY_MASK <= now => slot
                .compare_exchange(old, word, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok(),
            Some(_) => false,
            None => {
                self.store(key, ASKING, until);
                true
            }
        }
    }

    /// Whether `key` asked within the last `window` (it is busy: worth a batch).
    fn recently_used(&self, key: u64, now: u64, window: Duration) -> bool {
        let (keys, ways, h, tag) = self.place(key);
        self.find(keys, ways, h, tag)
            .is_some_and(|(_, word)| (word & EXPIRY_MASK) + window.as_millis() as u64 > now)
    }

    fn lease(&self, key: u64, tokens: u32, expiry: u64) {
        self.store(key, u64::from(tokens.min(0xfff)), expiry);
    }

    fn refuse(&self, key: u64, until: u64) {
        self.store(key, 0, until);
    }

    /// Records that `key` asked just now, with nothing leased.
    fn touch(&self, key: u64, now: u64) {
        // Expired at once: no tokens, no refusal; only `recently_used` reads it.
        self.store(key, 0, now);
    }

    fn store(&self, key: u64, tokens: u64, expiry: u64) {
        let (keys, ways, h, tag) = self.place(key);
        let word = (tag << 52) | (tokens << 40) | (expiry & EXPIRY_MASK);
        // Its own slot, else the one that expired first.
        let i = ways
            .iter()
            .zip(keys)
            .position(|(s, k)| {
                let w = s.load(Ordering::Relaxed);
                w != 0 && w >> 52 == tag && k.load(Ordering::Relaxed) == h
            })
            .or_else(|| (0..ways.len()).min_by_key(|&i| ways[i].load(Ordering::Relaxed) & EXPIRY_MASK));
        if let Some(i) = i {
            ways[i].store(word, Ordering::Release);
            keys[i].store(h, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_spent_then_refusals_held_until_they_end() {
        let table = LeaseTable::new();
        let now = table.ms(Instant::now());
        let verdict = |l: Leased| match l {
            Leased::Verdict(v) => v,
            other => panic!("expected a verdict, got {other:?}"),
        };
        assert_eq!(table.take(5, now), Leased::Ask, "nothing leased: ask Redis");
        assert!(table.claim(5, now, now + 50));
        assert!(!table.claim(5, now + 1, now + 51), "one request asks at a time");
        assert_eq!(table.take(5, now + 1), Leased::Wait);
        table.lease(5, 2, now + 100);
        assert!(verdict(table.take(5, now)).allowed);
        assert!(verdict(table.take(5, now + 1)).allowed);
        assert_eq!(table.take(5, now + 2), Leased::Ask, "lease spent");
        assert!(table.recently_used(5, now + 2, Duration::from_millis(10)));
        table.refuse(5, now + 50);
        let refused = verdict(table.take(5, now + 10));
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_millis(40));
        assert_eq!(table.take(5, now + 50), Leased::Ask, "refusal over: ask again");
        assert!(!table.recently_used(6, now, Duration::from_secs(1)));
        assert!(table.claim(6, now, now + 10));
        assert_eq!(
            table.take(6, now + 10),
            Leased::Ask,
            "a lost asker holds the others back only until its mark ends"
        );
        assert!(table.claim(6, now + 10, now + 20));
    }
}
