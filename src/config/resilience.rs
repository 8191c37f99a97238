//! Validated health-check, outlier-detection, retry and limit settings of a pool.

use std::time::Duration;

use http::Method;
use toml::Spanned;

use super::file::{HealthCheckSection, PassiveSection, PoolSection, RetriesSection, StatusSpec};
use super::Checker;

/// Active health checks of a pool's backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// What a probe does.
    pub kind: CheckKind,
    /// Time between probes of one backend (with up to 10% jitter).
    pub interval: Duration,
    /// Time one probe may take.
    pub timeout: Duration,
    /// Passing probes in a row that make an unhealthy backend healthy.
    pub healthy_threshold: u32,
    /// Failing probes in a row that make a healthy backend unhealthy.
    pub unhealthy_threshold: u32,
    /// Backends start unhealthy until they pass `healthy_threshold` probes.
    pub start_unhealthy: bool,
}

/// What a health probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// Open a TCP connection.
    Tcp,
    /// Send an HTTP request and check the answer.
    Http {
        /// `GET` or `HEAD`.
        method: Method,
        /// Request path.
        path: String,
        /// `Host` header; the backend's address when absent.
        host: Option<String>,
        /// Accepted statuses.
        expect_status: StatusSet,
        /// A substring the body must contain.
        expect_body: Option<String>,
    },
}

/// A set of HTTP statuses as inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(pub Vec<(u16, u16)>);

impl StatusSet {
    /// True when `status` is in the set.
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

impl Default for StatusSet {
    fn default() -> Self {
        StatusSet(vec![(200, 399)])
    }
}

/// Passive health: eject backends that fail real requests (Envoy's outlier detection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveConfig {
    /// Failures in a row (connect errors, resets, timeouts, and 5xx if `eject_on_5xx`) that
    /// eject a backend. 0 turns passive health off.
    pub consecutive_failures: u32,
    /// Ejection time; the n-th ejection lasts n times this, up to [`MAX_EJECTION_MULTIPLIER`].
    pub base_ejection_time: Duration,
    /// Most backends of the pool ejected at once, in percent.
    pub max_ejection_percent: u32,
    /// Whether 5xx responses count as failures.
    pub eject_on_5xx: bool,
}

/// The n-th ejection lasts n x base, up to this many times.
pub const MAX_EJECTION_MULTIPLIER: u32 = 10;

impl Default for PassiveConfig {
    fn default() -> Self {
        PassiveConfig {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 50,
            eject_on_5xx: false,
        }
    }
}

/// When and how often a failed request is tried again on another backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Retry when the connection could not be opened (always safe: nothing was sent).
    pub on_connect_failure: bool,
    /// Retry when the backend reset or closed the connection before answering.
    pub on_reset: bool,
    /// Retry when response headers did not arrive within `response_header`.
    pub on_timeout: bool,
    /// Retry on these response statuses.
    pub on_status: StatusSet,
    /// Retries allowed as a percentage of requests (a retry budget).
    pub budget_percent: u32,
    /// Largest request body kept in memory so it can be sent again.
    pub buffer_body_bytes: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 1,
            on_connect_failure: true,
            on_reset: false,
            on_timeout: false,
            on_status: StatusSet(Vec::new()),
            budget_percent: 20,
            buffer_body_bytes: 64 * 1024,
        }
    }
}

/// Slow start (Envoy's): a new or recovered backend's weight ramps from
/// `min_weight_percent` to 100% over `window`, as `(elapsed / window) ^ (1 / aggression)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    /// Length of the ramp.
    pub window: Duration,
    /// Curve: 1.0 linear, above 1 faster at first.
    pub aggression: f64,
    /// Starting weight, in percent of the configured one.
    pub min_weight_percent: u32,
}

impl SlowStart {
    /// The share of its weight a backend gets `elapsed` after it became ready.
    pub fn factor(&self, elapsed: Duration) -> f64 {
        if elapsed >= self.window || self.window.is_zero() {
            return 1.0;
        }
        let progress = elapsed.as_secs_f64() / self.window.as_secs_f64();
        progress
            .powf(1.0 / self.aggression)
            .max(f64::from(self.min_weight_percent) / 100.0)
            .min(1.0)
    }
}

/// Validates the slow start keys.
pub(super) fn slow_start(key: &str, p: &PoolSection, check: &mut Checker) -> Option<SlowStart> {
    let Some(window) = &p.slow_start else {
        for span in [
            p.slow_start_aggression.as_ref().map(|v| v.span()),
            p.slow_start_min_weight_percent.as_ref().map(|v| v.span()),
        ]
        .into_iter()
        .flatten()
        {
            check.error(
                span,
                format!("{key}: slow_start_* settings need slow_start = \"DURATION\""),
            );
        }
        return None;
    };
    let window = check.duration(
        &format!("{key}.slow_start"),
        &Some(window.clone()),
        Duration::from_secs(30),
    );
    let aggression = match &p.slow_start_aggression {
        None => 1.0,
        Some(a) if *a.get_ref() > 0.0 && a.get_ref().is_finite() => *a.get_ref(),
        Some(a) => {
            check.error(a.span(), format!("{key}.slow_start_aggression: must be greater than 0"));
            1.0
        }
    };
    let min_weight_percent = check.count(
        &format!("{key}.slow_start_min_weight_percent"),
        &p.slow_start_min_weight_percent,
        1..=100,
        10,
    );
    Some(SlowStart {
        window,
        aggression,
        min_weight_percent,
    })
}

/// Default time a request may wait for a backend slot under `max_connections`.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default panic threshold, in percent.
pub const DEFAULT_PANIC_THRESHOLD: u32 = 50;

impl Checker<'_> {
    fn count(
        &mut self,
        key: &str,
        v: &Option<Spanned<i64>>,
        range: std::ops::RangeInclusive<i64>,
        default: u32,
    ) -> u32 {
        match v {
            None => default,
            Some(n) if range.contains(n.get_ref()) => *n.get_ref() as u32,
            Some(n) => {
                self.error(
                    n.span(),
                    format!(
                        "{key}: must be from {} to {}, got {}",
                        range.start(),
                        range.end(),
                        n.get_ref()
                    ),
                );
                default
            }
        }
    }
}

/// Validates `[pools.NAME.health_check]`.
pub(super) fn health_check(key: &str, section: &Spanned<HealthCheckSection>, check: &mut Checker) -> HealthCheckConfig {
    let s = section.get_ref();
    let key = format!("{key}.health_check");
    let kind_name = s.kind.as_ref().map_or("http", |k| k.get_ref().as_str());
    let http_only = [
        ("path", s.path.as_ref().map(|v| v.span())),
        ("method", s.method.as_ref().map(|v| v.span())),
        ("host", s.host.as_ref().map(|v| v.span())),
        ("expect_status", s.expect_status.as_ref().map(|v| v.span())),
        ("expect_body", s.expect_body.as_ref().map(|v| v.span())),
    ];
    let kind = match kind_name {
        "tcp" => {
            for (name, span) in http_only {
                if let Some(span) = span {
                    check.error(span, format!("{key}.{name}: only applies to kind = \"http\""));
                }
            }
            CheckKind::Tcp
        }
        "http" => {
            let method = match &s.method {
                None => Method::GET,
                Some(m) => match m.get_ref().to_ascii_uppercase().as_str() {
                    "GET" => Method::GET,
                    "HEAD" => Method::HEAD,
                    other => {
                        check.error(m.span(), format!("{key}.method: {other:?} is not GET or HEAD"));
                        Method::GET
                    }
                },
            };
            let path = match &s.path {
                None => "/".to_owned(),
                Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
                Some(p) => {
                    check.error(p.span(), format!("{key}.path: {:?} must start with '/'", p.get_ref()));
                    "/".to_owned()
                }
            };
            let expect_status = match &s.expect_status {
                None => StatusSet::default(),
                Some(spec) => parse_status_spec(spec.get_ref()).unwrap_or_else(|msg| {
                    check.error(spec.span(), format!("{key}.expect_status: {msg}"));
                    StatusSet::default()
                }),
            };
            CheckKind::Http {
                method,
                path,
                host: s.host.as_ref().map(|h| h.get_ref().clone()),
                expect_status,
                expect_body: s.expect_body.as_ref().map(|b| b.get_ref().clone()),
            }
        }
        other => {
            let span = s.kind.as_ref().map_or(section.span(), |k| k.span());
            check.error(span, format!("{key}.kind: {other:?} is not \"http\" or \"tcp\""));
            CheckKind::Tcp
        }
    };
    let interval = check.duration(&format!("{key}.interval"), &s.interval, Duration::from_secs(5));
    let timeout = check.duration(&format!("{key}.timeout"), &s.timeout, Duration::from_secs(2));
    for (name, value, span) in [
        ("interval", interval, s.interval.as_ref().map(|v| v.span())),
        ("timeout", timeout, s.timeout.as_ref().map(|v| v.span())),
    ] {
        if value.is_zero() {
            check.error(span.unwrap_or(0..0), format!("{key}.{name}: must be greater than zero"));
        }
    }
    HealthCheckConfig {
        kind,
        interval,
        timeout,
        healthy_threshold: check.count(&format!("{key}.healthy_threshold"), &s.healthy_threshold, 1..=100, 2),
        unhealthy_threshold: check.count(
            &format!("{key}.unhealthy_threshold"),
            &s.unhealthy_threshold,
            1..=100,
            3,
        ),
        start_unhealthy: s.start_unhealthy.unwrap_or(false),
    }
}

/// Parses `"200-399"`, `"200"`, `200` or `[200, 204]`.
pub fn parse_status_spec(spec: &StatusSpec) -> Result<StatusSet, String> {
    let status = |n: i64| -> Result<u16, String> {
        u16::try_from(n)
            .ok()
            .filter(|n| (100..=599).contains(n))
            .ok_or_else(|| format!("{n} is not an HTTP status (100 to 599)"))
    };
    match spec {
        StatusSpec::Code(n) => Ok(StatusSet(vec![(status(*n)?, status(*n)?)])),
        StatusSpec::Codes(list) if !list.is_empty() => list
            .iter()
            .map(|&n| status(n).map(|s| (s, s)))
            .collect::<Result<Vec<_>, _>>()
            .map(StatusSet),
        StatusSpec::Codes(_) => Err("the list is empty".into()),
        StatusSpec::Text(text) => {
            let parse = |t: &str| {
                t.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("{text:?} is not a status or a range like \"200-399\""))
                    .and_then(status)
            };
            let (lo, hi) = match text.split_once('-') {
                Some((lo, hi)) => (parse(lo)?, parse(hi)?),
                None => (parse(text)?, parse(text)?),
            };
            if lo > hi {
                return Err(format!("{text:?} is an empty range"));
            }
            Ok(StatusSet(vec![(lo, hi)]))
        }
    }
}

/// Validates `passive = { ... }`.
pub(super) fn passive(key: &str, section: &Option<Spanned<PassiveSection>>, check: &mut Checker) -> PassiveConfig {
    let d = PassiveConfig::default();
    let Some(section) = section else { return d };
    let s = section.get_ref();
    let key = format!("{key}.passive");
    PassiveConfig {
        consecutive_failures: check.count(
            &format!("{key}.consecutive_failures"),
            &s.consecutive_failures,
            0..=1000,
            d.consecutive_failures,
        ),
        base_ejection_time: check.duration(
            &format!("{key}.base_ejection_time"),
            &s.base_ejection_time,
            d.base_ejection_time,
        ),
        max_ejection_percent: check.count(
            &format!("{key}.max_ejection_percent"),
            &s.max_ejection_percent,
            0..=100,
            d.max_ejection_percent,
        ),
        eject_on_5xx: s.eject_on_5xx.unwrap_or(d.eject_on_5xx),
    }
}

/// Validates `retries = { ... }`.
pub(super) fn retries(key: &str, section: &Option<Spanned<RetriesSection>>, check: &mut Checker) -> RetryConfig {
    let d = RetryConfig::default();
    let Some(section) = section else { return d };
    let s = section.get_ref();
    let key = format!("{key}.retries");
    let mut config = RetryConfig {
        attempts: check.count(&format!("{key}.attempts"), &s.attempts, 0..=10, d.attempts),
        budget_percent: check.count(
            &format!("{key}.budget_percent"),
            &s.budget_percent,
            0..=100,
            d.budget_percent,
        ),
        buffer_body_bytes: u64::from(check.count(
            &format!("{key}.buffer_body_bytes"),
            &s.buffer_body_bytes,
            0..=16 * 1024 * 1024,
            d.buffer_body_bytes as u32,
        )),
        ..d
    };
    if let Some(on) = &s.on {
        config.on_connect_failure = false;
        for cond in on {
            match cond.get_ref().as_str() {
                "connect-failure" => config.on_connect_failure = true,
                "reset" => config.on_reset = true,
                "timeout" => config.on_timeout = true,
                "5xx" => config.on_status.0.push((500, 599)),
                code => match code.parse::<u16>() {
                    Ok(c) if (500..=599).contains(&c) => config.on_status.0.push((c, c)),
                    _ => check.error(
                        cond.span(),
                        format!(
                            "{key}.on: unknown condition {code:?} (expected connect-failure, reset, timeout, 5xx or a status from 500 to 599)"
                        ),
                    ),
                },
            }
        }
    }
    config
}

/// Validates `max_connections`, `queue_timeout` and `panic_threshold`.
pub(super) fn limits(key: &str, p: &PoolSection, check: &mut Checker) -> (Option<u32>, Duration, u32) {
    let max_connections = p
        .max_connections
        .as_ref()
        .map(|_| check.count(&format!("{key}.max_connections"), &p.max_connections, 1..=1_000_000, 1));
    let queue_timeout = check.duration(&format!("{key}.queue_timeout"), &p.queue_timeout, DEFAULT_QUEUE_TIMEOUT);
    let panic_threshold = check.count(
        &format!("{key}.panic_threshold"),
        &p.panic_threshold,
        0..=100,
        DEFAULT_PANIC_THRESHOLD,
    );
    (max_connections, queue_timeout, panic_threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_start_follows_envoys_curve() {
        let linear = SlowStart {
            window: Duration::from_secs(10),
            aggression: 1.0,
            min_weight_percent: 10,
        };
        assert_eq!(linear.factor(Duration::ZERO), 0.1, "starts at the minimum");
        assert!((linear.factor(Duration::from_secs(5)) - 0.5).abs() < 1e-9);
        assert_eq!(linear.factor(Duration::from_secs(10)), 1.0);
        assert_eq!(linear.factor(Duration::from_secs(60)), 1.0);
        let aggressive = SlowStart {
            aggression: 2.0,
            ..linear
        };
        assert!(
            (aggressive.factor(Duration::from_millis(2500)) - 0.5).abs() < 1e-9,
            "sqrt(0.25)"
        );
    }

    #[test]
    fn status_specs() {
        let set = |s: StatusSpec| parse_status_spec(&s).map(|s| s.0);
        assert_eq!(set(StatusSpec::Text("200-399".into())), Ok(vec![(200, 399)]));
        assert_eq!(set(StatusSpec::Text("204".into())), Ok(vec![(204, 204)]));
        assert_eq!(set(StatusSpec::Codes(vec![200, 204])), Ok(vec![(200, 200), (204, 204)]));
        assert_eq!(set(StatusSpec::Code(200)), Ok(vec![(200, 200)]));
        assert!(set(StatusSpec::Text("399-200".into())).is_err());
        assert!(set(StatusSpec::Text("ok".into())).is_err());
        assert!(set(StatusSpec::Codes(vec![700])).is_err());
        assert!(StatusSet::default().contains(301) && !StatusSet::default().contains(404));
    }
}
