//! Load-balancing algorithms: one file each, all behind [`Select`].
//!
//! A selector is built for a fixed list of backends off the hot path and then only read:
//! picking touches atomics and a thread-local random generator, never a lock.

mod least_connections;
mod least_request;
mod maglev;
mod peak_ewma;
mod random;
mod ring_hash;
mod round_robin;

use std::fmt::Debug;
use std::sync::Arc;

pub use least_connections::LeastConnections;
pub use least_request::LeastRequest;
pub use maglev::Maglev;
pub use peak_ewma::PeakEwma;
pub use random::WeightedRandom;
pub use ring_hash::RingHash;
pub use round_robin::{smooth_weighted_cycle, RoundRobin};

use super::Backend;
use crate::config::Algorithm;

/// What a selector may consider besides the backends' own load figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickContext<'a> {
    /// The hash of the request's hash key, for maglev and ring_hash; `None` when the request
    /// lacks the key (those algorithms then pick at random).
    pub hash: Option<u64>,
    /// Indices of backends not to pick, e.g. those a retry already tried.
    pub exclude: &'a [usize],
}

impl PickContext<'_> {
    /// True when `index` may be picked.
    pub fn allows(&self, index: usize) -> bool {
        !self.exclude.contains(&index)
    }
}

/// Chooses a backend for a request.
pub trait Select: Send + Sync + Debug {
    /// The index into `backends` of the chosen one, never one in `ctx.exclude`; `None` when
    /// every backend is excluded (or there are none).
    ///
    /// `backends` is the list, in the order, that the selector was built for.
    fn pick(&self, backends: &[Arc<Backend>], ctx: &PickContext) -> Option<usize>;

    /// Where a rotating selector is in its rotation, so that a rebuilt one (after a health
    /// change or reload) carries on rather than starting again at the first backend.
    fn position(&self) -> usize {
        0
    }

    /// Continues the rotation from `position` (see [`Select::position`]).
    fn resume_at(&self, position: usize) {
        let _ = position;
    }
}

pub use crate::config::SelectOptions;

/// Builds the selector for `algorithm` over `backends`, using their configured weights.
pub fn build(algorithm: Algorithm, backends: &[Arc<Backend>], options: &SelectOptions) -> Box<dyn Select> {
    let weights: Vec<u32> = backends.iter().map(|b| b.weight()).collect();
    build_weighted(algorithm, backends, &weights, options)
}

/// Builds the selector for `algorithm` over `backends` with the given effective weights
/// (slow start lowers a new backend's). Hashing algorithms use the configured weights: a
/// ramp would move keys back and forth.
pub fn build_weighted(
    algorithm: Algorithm,
    backends: &[Arc<Backend>],
    weights: &[u32],
    options: &SelectOptions,
) -> Box<dyn Select> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::new(weights)),
        Algorithm::LeastConnections => Box::new(LeastConnections::new(weights.to_vec())),
        Algorithm::LeastRequest => Box::new(LeastRequest::new(weights.to_vec())),
        Algorithm::PeakEwma => Box::new(PeakEwma::new(options.ewma_default_rtt, weights.to_vec())),
        Algorithm::Random => Box::new(WeightedRandom::new(weights)),
        Algorithm::Maglev => Box::new(Maglev::new(backends, options.maglev_table_size, options.balance_factor)),
        Algorithm::RingHash => Box::new(RingHash::new(backends, options.balance_factor)),
    }
}

/// Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam; HAProxy's
/// `hash-balance-factor`, Envoy's `hash_balance_factor`): the first of `order` (the key's
/// preference order on the ring or table) that `ctx` allows and whose in-flight requests are
/// under its capacity, `factor` times its weighted share of all in-flight requests counting
/// this one. Capacities add up to more than the load, so one is always under; a key moves
/// only while its backend is over, and comes back when it is not.
pub(super) fn bounded_pick(
    backends: &[Arc<Backend>],
    ctx: &PickContext,
    factor: f64,
    order: impl Iterator<Item = usize>,
) -> Option<usize> {
    let total_weight: f64 = backends.iter().map(|b| f64::from(b.weight().max(1))).sum();
    let load: usize = backends.iter().map(|b| b.in_flight()).sum::<usize>() + 1;
    let mut first = None;
    for i in order {
        if !ctx.allows(i) {
            continue;
        }
        first.get_or_insert(i);
        let share = f64::from(backends[i].weight().max(1)) / total_weight;
        let capacity = (factor * load as f64 * share).ceil() as usize;
        if backends[i].in_flight() < capacity {
            return Some(i);
        }
    }
    first
}

/// A uniformly random allowed index, trying random draws first and then a scan from a random
/// start; shared fallback of the randomised and hashing algorithms.
fn random_allowed(n: usize, ctx: &PickContext) -> Option<usize> {
    if n == 0 {
        return None;
    }
    for _ in 0..4 {
        let i = fastrand::usize(..n);
        if ctx.allows(i) {
            return Some(i);
        }
    }
    let start = fastrand::usize(..n);
    (0..n).map(|k| (start + k) % n).find(|&i| ctx.allows(i))
}

/// Two distinct random allowed indices (or one, when only one is allowed): the candidates of
/// the power-of-two-choices algorithms.
fn two_choices(n: usize, ctx: &PickContext) -> Option<(usize, usize)> {
    let a = random_allowed(n, ctx)?;
    if n == 1 {
        return Some((a, a));
    }
    for _ in 0..4 {
        // Uniform over the other n - 1 indices.
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        if ctx.allows(b) {
            return Some((a, b));
        }
    }
    let b = (1..n).map(|k| (a + k) % n).find(|&i| ctx.allows(i)).unwrap_or(a);
    Some((a, b))
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// Backends on 127.0.0.1:9000.. with the given weights.
    pub fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(Backend::new(([127, 0, 0, 1], 9000 + i as u16).into(), w)))
            .collect()
    }

    /// The configured weights of `backends`.
    pub fn weights(backends: &[Arc<Backend>]) -> Vec<u32> {
        backends.iter().map(|b| b.weight()).collect()
    }

    /// How often each index is picked in `n` picks with `ctx`.
    pub fn histogram(s: &dyn Select, backends: &[Arc<Backend>], ctx: &PickContext, n: usize) -> Vec<usize> {
        let mut counts = vec![0; backends.len()];
        for _ in 0..n {
            counts[s.pick(backends, ctx).expect("pick")] += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn every_algorithm_honours_exclusions_and_runs_out() {
        let backends = backends(&[1, 2, 3]);
        for &(name, algorithm) in Algorithm::ALL {
            let s = build(algorithm, &backends, &SelectOptions::default());
            for hash in [None, Some(42)] {
                for _ in 0..200 {
                    let ctx = PickContext { hash, exclude: &[0, 2] };
                    assert_eq!(s.pick(&backends, &ctx), Some(1), "{name}");
                }
                let ctx = PickContext {
                    hash,
                    exclude: &[0, 1, 2],
                };
                assert_eq!(s.pick(&backends, &ctx), None, "{name}");
            }
            assert_eq!(s.pick(&[], &PickContext::default()), None, "{name}");
        }
    }

    #[test]
    fn two_choices_are_distinct() {
        for _ in 0..1000 {
            let (a, b) = two_choices(5, &PickContext::default()).expect("choices");
            assert_ne!(a, b);
        }
        assert_eq!(two_choices(1, &PickContext::default()), Some((0, 0)));
    }
}

#[cfg(test)]
mod bounded_tests {
    use super::test_support::backends;
    use super::*;
    use crate::upstream::hash::hash64;

    /// Key `k`'s hash.
    fn key(k: usize) -> u64 {
        hash64(format!("user-{k}").as_bytes())
    }

    /// Zipf-distributed key numbers (s = 1.1 over 1,000 keys), from a fixed seed.
    fn zipf(n: usize) -> Vec<usize> {
        let weights: Vec<f64> = (1..=1000).map(|r| 1.0 / f64::powf(r as f64, 1.1)).collect();
        let total: f64 = weights.iter().sum();
        let mut rng = fastrand::Rng::with_seed(7);
        (0..n)
            .map(|_| {
                let mut x = rng.f64() * total;
                weights
                    .iter()
                    .position(|w| {
                        x -= w;
                        x <= 0.0
                    })
                    .unwrap_or(999)
            })
            .collect()
    }

    /// Picks for every key of `keys` while all earlier requests are still in flight; returns
    /// the most in flight on one backend.
    fn hottest(s: &dyn Select, b: &[Arc<Backend>], keys: &[usize]) -> usize {
        let mut held = Vec::new();
        let mut max = 0;
        for &k in keys {
            let ctx = PickContext {
                hash: Some(key(k)),
                exclude: &[],
            };
            let i = s.pick(b, &ctx).expect("pick");
            held.push(b[i].start_request(0));
            max = max.max(b[i].in_flight());
        }
        max
    }

    #[test]
    fn a_zipf_load_stays_within_the_factor_of_the_mean() {
        let keys = zipf(1000);
        for algorithm in [Algorithm::Maglev, Algorithm::RingHash] {
            let b = backends(&[1, 1, 1, 1, 1]);
            let unbounded = build(algorithm, &b, &SelectOptions::default());
            let plain = hottest(&*unbounded, &b, &keys);
            let bounded_options = SelectOptions {
                balance_factor: Some(1.25),
                ..SelectOptions::default()
            };
            let bounded = build(algorithm, &b, &bounded_options);
            let max = hottest(&*bounded, &b, &keys);
            // 1,000 in flight over 5 backends: a mean of 200, at most 250 each.
            assert!(max <= 250, "{algorithm:?}: hottest backend held {max}");
            assert!(plain > 250, "{algorithm:?}: without the bound the hottest held {plain}");
        }
    }

    #[test]
    fn keys_stay_put_when_nothing_is_overloaded() {
        for algorithm in [Algorithm::Maglev, Algorithm::RingHash] {
            let b = backends(&[1, 2, 1, 1]);
            let plain = build(algorithm, &b, &SelectOptions::default());
            let bounded = build(
                algorithm,
                &b,
                &SelectOptions {
                    balance_factor: Some(1.25),
                    ..SelectOptions::default()
                },
            );
            for k in 0..2000 {
                let ctx = PickContext {
                    hash: Some(key(k)),
                    exclude: &[],
                };
                assert_eq!(plain.pick(&b, &ctx), bounded.pick(&b, &ctx), "{algorithm:?} key {k}");
            }
        }
    }
}
