//! Workload profiles for the simulator: arrival rate, backend latency distributions and
//! timed events, read from TOML. The built-in ones are files in `profiles/`, so a user can
//! copy one as a starting point.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The built-in profiles, by name: their TOML text.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("uniform", include_str!("profiles/uniform.toml")),
    ("one-slow", include_str!("profiles/one-slow.toml")),
    ("bimodal", include_str!("profiles/bimodal.toml")),
    ("outage", include_str!("profiles/outage.toml")),
];

/// Why a profile could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Neither a built-in name nor a readable file.
    #[error("no built-in profile {name:?} (built-in: {builtins}) and no such file: {source}")]
    NotFound {
        /// What was asked for.
        name: String,
        /// The built-in names.
        builtins: String,
        /// Why the file could not be read.
        source: std::io::Error,
    },
    /// The TOML is malformed or has a bad value; the message names the line, column and key.
    #[error("{file}: {message}")]
    Invalid {
        /// The file (or built-in name).
        file: String,
        /// What is wrong and where.
        message: String,
    },
}

/// A workload: Poisson arrivals at `rate` for `duration`, over backends with latency
/// distributions and a bounded number of requests served at once, with timed events.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Its name (built-in name or file name).
    pub name: String,
    /// One line saying what it models.
    pub description: String,
    /// Simulated time.
    pub duration: Duration,
    /// Mean requests per second.
    pub rate: f64,
    /// Seed of every random draw: the same seed gives the same numbers.
    pub seed: u64,
    /// Distinct hash keys (clients) the requests are spread over, for maglev and ring_hash.
    pub keys: u32,
    /// Zipf exponent of how often each key comes: 0 is uniform, 1.1 a few hot clients.
    pub key_skew: f64,
    /// The backends, in order (`count` expanded).
    pub backends: Vec<BackendModel>,
    /// Changes during the run, sorted by time.
    pub events: Vec<Event>,
}

/// How one backend answers.
#[derive(Debug, Clone)]
pub struct BackendModel {
    /// Its service time distribution.
    pub latency: Latency,
    /// Requests it serves at once; later ones wait in its queue.
    pub concurrency: u32,
}

/// A mixture of log-normal distributions: each mode is chosen with its share.
#[derive(Debug, Clone)]
pub struct Latency {
    modes: Vec<Mode>,
}

#[derive(Debug, Clone, Copy)]
struct Mode {
    /// Cumulative share up to and including this mode, in (0, 1].
    upto: f64,
    /// ln of the median, in seconds.
    mu: f64,
    /// Log-normal sigma, from the ratio of p99 to median.
    sigma: f64,
}

/// The 99th percentile of the standard normal distribution.
const Z99: f64 = 2.326_347_874;

impl Latency {
    /// A service time for draws `u` (uniform in [0, 1): picks the mode) and `z` (standard
    /// normal): the same draws give the same time for the same distribution, so every
    /// algorithm sees the same requests.
    pub fn sample(&self, u: f64, z: f64, factor: f64) -> Duration {
        let mode = self
            .modes
            .iter()
            .find(|m| u < m.upto)
            .or(self.modes.last())
            .copied()
            .unwrap_or(Mode {
                upto: 1.0,
                mu: 0.0,
                sigma: 0.0,
            });
        let secs = (mode.mu + mode.sigma * z).exp() * factor;
        Duration::from_secs_f64(secs.clamp(1e-6, 3600.0))
    }

    /// The mean service time, for the profile summary.
    pub fn mean(&self) -> Duration {
        let mut prev = 0.0;
        let mut mean = 0.0;
        for m in &self.modes {
            mean += (m.upto - prev) * (m.mu + m.sigma * m.sigma / 2.0).exp();
            prev = m.upto;
        }
        Duration::from_secs_f64(mean)
    }
}

/// A change at a point of simulated time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    /// When, from the start.
    pub at: Duration,
    /// Which backend (0-based).
    pub backend: usize,
    /// New latency multiplier, if it changes.
    pub latency_factor: Option<f64>,
    /// Refuses connections from now (`true`) or accepts them again (`false`).
    pub down: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    #[serde(default)]
    description: String,
    duration: String,
    rate: f64,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default = "default_keys")]
    keys: u32,
    #[serde(default)]
    key_skew: f64,
    backends: Vec<RawBackend>,
    #[serde(default)]
    events: Vec<RawEvent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    #[serde(default = "one")]
    count: usize,
    latency: RawLatency,
    #[serde(default = "default_concurrency")]
    concurrency: u32,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawLatency {
    One(RawMode),
    Mix(Vec<RawMode>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMode {
    #[serde(default = "unit")]
    share: f64,
    median: String,
    p99: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    at: String,
    backend: usize,
    latency_factor: Option<f64>,
    down: Option<bool>,
}

fn default_seed() -> u64 {
    1
}
fn default_keys() -> u32 {
    10_000
}
fn one() -> usize {
    1
}
fn unit() -> f64 {
    1.0
}
fn default_concurrency() -> u32 {
    16
}

/// Largest number of backends a profile may describe.
const MAX_BACKENDS: usize = 1000;

impl Profile {
    /// The built-in profile `name`, or else the TOML file at that path.
    pub fn find(name: &str) -> Result<Profile, ProfileError> {
        if let Some((n, text)) = BUILT_IN.iter().find(|(n, _)| *n == name) {
            return Profile::parse(text, n);
        }
        let path = Path::new(name);
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::NotFound {
            name: name.to_owned(),
            builtins: BUILT_IN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
            source,
        })?;
        Profile::parse(&text, &path.display().to_string())
    }

    /// Parses profile TOML; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Profile, ProfileError> {
        let invalid = |message: String| ProfileError::Invalid {
            file: file.to_owned(),
            message,
        };
        let raw: RawProfile = toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;
        let duration =
            |key: &str, v: &str| crate::config::parse_duration(v).map_err(|e| invalid(format!("{key}: {e}")));
        let run = duration("duration", &raw.duration)?;
        if run.is_zero() || run > Duration::from_secs(24 * 3600) {
            return Err(invalid("duration: must be above 0 and at most 24h".into()));
        }
        if !(raw.rate > 0.0 && raw.rate <= 1e6) {
            return Err(invalid(
                "rate: must be above 0 and at most 1000000 requests per second".into(),
            ));
        }
        if raw.keys == 0 || raw.keys > 1_000_000 {
            return Err(invalid("keys: must be from 1 to 1000000".into()));
        }
        if !(0.0..=5.0).contains(&raw.key_skew) {
            return Err(invalid("key_skew: must be from 0 (uniform) to 5".into()));
        }
        let mut backends = Vec::new();
        for (i, b) in raw.backends.iter().enumerate() {
            let key = format!("backends[{i}]");
            if b.count == 0 || b.concurrency == 0 {
                return Err(invalid(format!("{key}: count and concurrency must be at least 1")));
            }
            let modes = match &b.latency {
                RawLatency::One(m) => std::slice::from_ref(m),
                RawLatency::Mix(ms) => ms.as_slice(),
            };
            if modes.is_empty() {
                return Err(invalid(format!("{key}.latency: give median and p99")));
            }
            let total: f64 = modes.iter().map(|m| m.share).sum();
            let mut upto = 0.0;
            let mut parsed = Vec::new();
            for (j, m) in modes.iter().enumerate() {
                let mkey = format!("{key}.latency[{j}]");
                let median = duration(&format!("{mkey}.median"), &m.median)?;
                let p99 = duration(&format!("{mkey}.p99"), &m.p99)?;
                if median.is_zero() || p99 < median {
                    return Err(invalid(format!(
                        "{mkey}: median must be above 0 and p99 at least the median"
                    )));
                }
                if !(m.share > 0.0 && m.share.is_finite()) {
                    return Err(invalid(format!("{mkey}.share: must be above 0")));
                }
                upto += m.share / total;
                parsed.push(Mode {
                    upto,
                    mu: median.as_secs_f64().ln(),
                    sigma: (p99.as_secs_f64() / median.as_secs_f64()).ln() / Z99,
                });
            }
            if let Some(last) = parsed.last_mut() {
                last.upto = 1.0;
            }
            let model = BackendModel {
                latency: Latency { modes: parsed },
                concurrency: b.concurrency,
            };
            if backends.len() + b.count > MAX_BACKENDS {
                return Err(invalid(format!("backends: at most {MAX_BACKENDS} in all")));
            }
            backends.extend(std::iter::repeat_n(model, b.count));
        }
        if backends.is_empty() {
            return Err(invalid("backends: give at least one".into()));
        }
        let mut events = Vec::new();
        for (i, e) in raw.events.iter().enumerate() {
            let key = format!("events[{i}]");
            let at = duration(&format!("{key}.at"), &e.at)?;
            if e.backend >= backends.len() {
                return Err(invalid(format!(
                    "{key}.backend: {} is not a backend (0 to {})",
                    e.backend,
                    backends.len() - 1
                )));
            }
            if e.latency_factor.is_none() && e.down.is_none() {
                return Err(invalid(format!("{key}: give latency_factor, down, or both")));
            }
            if let Some(f) = e.latency_factor {
                if !(f > 0.0 && f <= 1e4) {
                    return Err(invalid(format!(
                        "{key}.latency_factor: must be above 0 and at most 10000"
                    )));
                }
            }
            events.push(Event {
                at,
                backend: e.backend,
                latency_factor: e.latency_factor,
                down: e.down,
            });
        }
        events.sort_by_key(|e| e.at);
        Ok(Profile {
            name: file.to_owned(),
            description: raw.description,
            duration: run,
            rate: raw.rate,
            seed: raw.seed,
            keys: raw.keys,
            key_skew: raw.key_skew,
            backends,
            events,
        })
    }

    /// Uses `n` backends: the profile's list repeated or cut to that length (when a config's
    /// pool says how many there are). Events on backends beyond `n` are dropped.
    pub fn resize(&mut self, n: usize) {
        let models: Vec<BackendModel> = self.backends.iter().cycle().take(n).cloned().collect();
        self.backends = models;
        self.events.retain(|e| e.backend < n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_parses() {
        for (name, _) in BUILT_IN {
            let p = Profile::find(name).expect(name);
            assert!(!p.description.is_empty(), "{name}");
            assert_eq!(p.backends.len(), 5, "{name}");
        }
    }

    #[test]
    fn a_log_normal_has_the_median_and_p99_it_was_given() {
        let p = Profile::parse(
            "duration = \"1s\"\nrate = 1\n[[backends]]\nlatency = { median = \"10ms\", p99 = \"40ms\" }\n",
            "t",
        )
        .expect("parse");
        let l = &p.backends[0].latency;
        assert_eq!(l.sample(0.5, 0.0, 1.0), Duration::from_millis(10));
        let p99 = l.sample(0.5, Z99, 1.0).as_secs_f64();
        assert!((p99 - 0.040).abs() < 1e-9, "{p99}");
        assert!((l.sample(0.5, 0.0, 3.0).as_secs_f64() - 0.030).abs() < 1e-9);
    }

    #[test]
    fn a_mixture_picks_modes_by_share() {
        let p = Profile::parse(
            "duration = \"1s\"\nrate = 1\n[[backends]]\nlatency = [\
             { share = 9, median = \"2ms\", p99 = \"2ms\" }, { share = 1, median = \"80ms\", p99 = \"80ms\" }]\n",
            "t",
        )
        .expect("parse");
        let l = &p.backends[0].latency;
        assert_eq!(l.sample(0.89, 0.0, 1.0), Duration::from_millis(2));
        assert_eq!(l.sample(0.91, 0.0, 1.0), Duration::from_millis(80));
        let mean = l.mean().as_secs_f64();
        assert!((mean - (0.9 * 0.002 + 0.1 * 0.080)).abs() < 1e-9, "{mean}");
    }

    #[test]
    fn errors_name_the_key_and_place() {
        let err = |text: &str| Profile::parse(text, "p.toml").expect_err(text).to_string();
        let e = err(
            "duration = \"1s\"\nrate = 1\nbogus = 2\n[[backends]]\nlatency = { median = \"1ms\", p99 = \"2ms\" }\n",
        );
        assert!(
            e.starts_with("p.toml: ") && e.contains("line 3") && e.contains("bogus"),
            "{e}"
        );
        let e = err("duration = \"1s\"\nrate = 1\n[[backends]]\nlatency = { median = \"1ms\", p99 = \"soon\" }\n");
        assert!(e.contains("backends[0].latency[0].p99"), "{e}");
        let e = err(
            "duration = \"1s\"\nrate = 1\n[[backends]]\nlatency = { median = \"1ms\", p99 = \"2ms\" }\n\
                     [[events]]\nat = \"1s\"\nbackend = 3\ndown = true\n",
        );
        assert!(e.contains("events[0].backend: 3 is not a backend (0 to 0)"), "{e}");
        let e = Profile::find("no-such-profile").expect_err("missing").to_string();
        assert!(e.contains("built-in: uniform, one-slow, bimodal, outage"), "{e}");
    }

    #[test]
    fn resizing_repeats_the_models_and_drops_events_beyond() {
        let mut p = Profile::find("outage").expect("outage");
        p.resize(2);
        assert_eq!(p.backends.len(), 2);
        assert!(p.events.iter().all(|e| e.backend < 2));
        p.resize(7);
        assert_eq!(p.backends.len(), 7);
    }
}
