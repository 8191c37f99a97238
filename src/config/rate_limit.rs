//! Validated rate limits (`[pools.NAME.rate_limit]`) and the Redis they can share
//! (`[redis]`).

use std::time::Duration;

use toml::Spanned;

use super::file::{RateLimitSection, RedisSection};
use super::{Checker, HashKey};

/// A pool's rate limit: `rate` requests per `period` for each value of `key`, with bursts
/// of up to `burst` requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// What tells clients apart (`client_ip` by default).
    pub key: HashKey,
    /// Requests allowed per `period`, sustained.
    pub rate: u32,
    /// The period of `rate`: a second, a minute or an hour.
    pub period: Duration,
    /// Requests a key may make at once after being quiet (the bucket's size).
    pub burst: u32,
    /// Counted in this process, or shared by every instance through Redis.
    pub scope: RateScope,
    /// What a request gets when the shared limit cannot be asked in time.
    pub on_redis_error: OnRedisError,
}

impl RateLimitConfig {
    /// The time one request's token takes to come back: `period / rate`.
    pub fn interval(&self) -> Duration {
        self.period / self.rate.max(1)
    }
}

/// Where a rate limit is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateScope {
    /// In this process (each instance enforces the whole limit on its own).
    Local,
    /// In the Redis of `[redis]`, shared by every instance using it.
    Global,
}

/// What a globally limited request gets when Redis errs or answers too late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// Let it through (fail open, the default: a Redis outage must not become an outage).
    Allow,
    /// Refuse it with 429.
    Deny,
}

/// `[redis]`: the Redis shared rate limits are counted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Longest a request waits for Redis before `on_redis_error` applies.
    pub timeout: Duration,
}

/// Default of `redis.timeout`.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

/// Validates `[redis]`.
pub(super) fn redis(section: &Option<Spanned<RedisSection>>, check: &mut Checker) -> Option<RedisConfig> {
    let s = section.as_ref()?.get_ref();
    let url = s.url.get_ref().trim();
    let host = url
        .strip_prefix("redis://")
        .map(|rest| rest.split('/').next().unwrap_or(""));
    match host {
        Some(h) if !h.is_empty() => {}
        _ => check.error(
            s.url.span(),
            format!("redis.url: {url:?} is not a redis://HOST:PORT URL (rediss:// and unix sockets are not supported)"),
        ),
    }
    let timeout = check.duration("redis.timeout", &s.timeout, DEFAULT_REDIS_TIMEOUT);
    if !(Duration::from_millis(1)..=Duration::from_secs(5)).contains(&timeout) {
        let span = s.timeout.as_ref().map_or(0..0, |t| t.span());
        check.error(span, "redis.timeout: must be from 1ms to 5s");
    }
    Some(RedisConfig {
        url: url.to_owned(),
        timeout,
    })
}

/// Validates `{key}.rate_limit`; `has_redis` tells whether `[redis]` is configured.
pub(super) fn rate_limit(
    key: &str,
    section: &Option<Spanned<RateLimitSection>>,
    has_redis: bool,
    check: &mut Checker,
) -> Option<RateLimitConfig> {
    let s = section.as_ref()?.get_ref();
    let key = format!("{key}.rate_limit");
    let by = match &s.key {
        None => HashKey::ClientIp,
        Some(k) => match HashKey::parse(k.get_ref()) {
            Ok(h) => h,
            Err(msg) => {
                check.error(k.span(), format!("{key}.key: {}", msg.replace("hash_key", "key")));
                HashKey::ClientIp
            }
        },
    };
    let (rate, period) = match parse_rate(s.rate.get_ref()) {
        Ok(r) => r,
        Err(msg) => {
            check.error(s.rate.span(), format!("{key}.rate: {msg}"));
            (1, Duration::from_secs(1))
        }
    };
    let burst = match &s.burst {
        None => rate,
        Some(b) if (1..=1_000_000).contains(b.get_ref()) => *b.get_ref() as u32,
        Some(b) => {
            check.error(
                b.span(),
                format!("{key}.burst: must be from 1 to 1000000, got {}", b.get_ref()),
            );
            rate
        }
    };
    let scope = match s.scope.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
        None | Some(("local", _)) => RateScope::Local,
        Some(("global", span)) => {
            if !has_redis {
                check.error(
                    span,
                    format!("{key}.scope: \"global\" counts in Redis; add [redis] url = \"redis://HOST:PORT\""),
                );
            }
            RateScope::Global
        }
        Some((other, span)) => {
            check.error(span, format!("{key}.scope: {other:?} is not \"local\" or \"global\""));
            RateScope::Local
        }
    };
    let on_redis_error = match s.on_redis_error.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
        None | Some(("allow", _)) => OnRedisError::Allow,
        Some(("deny", _)) => OnRedisError::Deny,
        Some((other, span)) => {
            check.error(
                span,
                format!("{key}.on_redis_error: {other:?} is not \"allow\" or \"deny\""),
            );
            OnRedisError::Allow
        }
    };
    Some(RateLimitConfig {
        key: by,
        rate,
        period,
        burst,
        scope,
        on_redis_error,
    })
}

/// Parses `"100/s"`, `"600/m"` or `"10000/h"`.
fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let expected = "write it like \"100/s\", \"600/m\" or \"10000/h\"";
    let (n, unit) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} has no period; {expected}"))?;
    let n: u32 = n
        .trim()
        .parse()
        .ok()
        .filter(|n| (1..=10_000_000).contains(n))
        .ok_or_else(|| format!("{:?} is not a count from 1 to 10000000; {expected}", n.trim()))?;
    let period = match unit.trim() {
        "s" | "sec" | "second" => Duration::from_secs(1),
        "m" | "min" | "minute" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        other => return Err(format!("{other:?} is not a period (s, m or h); {expected}")),
    };
    Ok((n, period))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_per_second_minute_and_hour() {
        assert_eq!(parse_rate("100/s"), Ok((100, Duration::from_secs(1))));
        assert_eq!(parse_rate(" 600 / m "), Ok((600, Duration::from_secs(60))));
        assert_eq!(parse_rate("10000/h"), Ok((10_000, Duration::from_secs(3600))));
        assert!(parse_rate("100").unwrap_err().contains("no period"));
        assert!(parse_rate("0/s").unwrap_err().contains("not a count"));
        assert!(parse_rate("5/d").unwrap_err().contains("not a period"));
    }
}
