//! `steelyard simulate`: replays a workload against every load-balancing algorithm in
//! simulated time, so a user can compare them on their own latency profile before deploying.
//!
//! The simulation drives the real selectors (`upstream::select`) and the real backend load
//! figures (in-flight counts, peak-EWMA, ejections) with a clock of its own: requests arrive
//! as a Poisson process, each backend serves a bounded number at once and queues the rest,
//! and a refused connection is retried on another backend and counts towards passive
//! ejection, as the proxy does. Every algorithm sees the same requests: the same arrival
//! times, hash keys and service-time draws, from one seed.

mod profile;
mod report;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

pub use profile::{BackendModel, Event, Latency, Profile, ProfileError, BUILT_IN};
pub use report::{svg, table};

use crate::config::{Algorithm, PassiveConfig, PoolConfig, SelectOptions};
use crate::health::passive;
use crate::upstream::hash::hash64;
use crate::upstream::select::{self, PickContext};
use crate::upstream::{Backend, InFlight};

/// What the simulated balancer is configured with: a pool's weights and settings.
#[derive(Debug, Clone)]
pub struct Setup {
    /// One weight per backend; their number sets the number of backends.
    pub weights: Vec<u32>,
    /// Algorithm settings (peak-EWMA default latency, maglev table, balance factor).
    pub select: SelectOptions,
    /// Peak-EWMA decay window.
    pub ewma_decay: Duration,
    /// Passive health: when a backend that refuses connections is ejected.
    pub passive: PassiveConfig,
    /// Retries on another backend after a refused connection.
    pub retries: u32,
    /// What a refused connection costs before the balancer knows (a round trip).
    pub refused_after: Duration,
}

impl Setup {
    /// The defaults of a `[pools.NAME]` table with `n` backends of weight 1.
    pub fn defaults(n: usize) -> Setup {
        Setup {
            weights: vec![1; n],
            select: SelectOptions::default(),
            ewma_decay: crate::config::pool::DEFAULT_EWMA_DECAY,
            passive: PassiveConfig::default(),
            retries: crate::config::RetryConfig::default().attempts,
            refused_after: Duration::from_micros(200),
        }
    }

    /// The weights and settings of `pool`.
    pub fn from_pool(pool: &PoolConfig) -> Setup {
        Setup {
            weights: pool.backends.iter().map(|b| b.weight).collect(),
            select: pool.select,
            ewma_decay: pool.ewma_decay,
            passive: pool.passive,
            retries: if pool.retries.on_connect_failure {
                pool.retries.attempts
            } else {
                0
            },
            ..Setup::defaults(pool.backends.len())
        }
    }
}

/// What one algorithm did with the workload.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Requests that arrived.
    pub requests: u64,
    /// Latency of every answered request, from arrival to response (retries included),
    /// sorted.
    pub latencies: Vec<Duration>,
    /// Requests that got no answer: every attempt refused.
    pub errors: u64,
    /// Attempts made again on another backend.
    pub retries: u64,
    /// Times passive health ejected a backend.
    pub ejections: u64,
    /// Requests each backend answered.
    pub served: Vec<u64>,
}

impl Outcome {
    /// The `q`-quantile (0..=1) of the answered requests' latency (nearest rank).
    pub fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = (q * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }
}

/// Runs the workload once per algorithm of [`Algorithm::ALL`].
pub fn simulate_all(profile: &Profile, setup: &Setup) -> Vec<Outcome> {
    Algorithm::ALL
        .iter()
        .map(|&(_, algorithm)| simulate(profile, setup, algorithm))
        .collect()
}

/// What happens next, ordered by time and then by the order it was scheduled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// The next request arrives.
    Arrival,
    /// `backend` finishes request `req`.
    Done { backend: usize, req: usize },
    /// `backend` refused request `req`'s connection.
    Refused { backend: usize, req: usize },
    /// The profile's event number `n` happens.
    Change(usize),
}

/// A request in the system.
#[derive(Debug)]
struct Request {
    arrived: u64,
    hash: u64,
    /// Draws that fix its service time on any backend.
    u: f64,
    z: f64,
    /// Backends already tried.
    tried: Vec<usize>,
    /// Counts it in its backend's in-flight figure.
    held: Option<InFlight<Arc<Backend>>>,
    /// When it was sent to its current backend.
    sent: u64,
}

/// A simulated backend server.
#[derive(Debug)]
struct Server {
    model: BackendModel,
    busy: u32,
    queue: VecDeque<usize>,
    factor: f64,
    down: bool,
}

/// The state of one run.
struct Run<'a> {
    profile: &'a Profile,
    setup: &'a Setup,
    /// The selector over the backends not ejected (all of them when every one is), rebuilt
    /// whenever that set changes, as the proxy's pools do.
    selector: Box<dyn select::Select>,
    backends: Vec<Arc<Backend>>,
    /// Indices into `backends` of those the selector was built over, in its order.
    live: Vec<usize>,
    live_backends: Vec<Arc<Backend>>,
    /// Which backends were ejected when the selector was built.
    ejected: Vec<bool>,
    servers: Vec<Server>,
    requests: Vec<Option<Request>>,
    free: Vec<usize>,
    queue: BinaryHeap<Reverse<(u64, u64, Step)>>,
    seq: u64,
    rng: fastrand::Rng,
    /// Cumulative weights of the keys when they are skewed (Zipf); empty when uniform.
    key_cdf: Vec<f64>,
    exclude: Vec<usize>,
    outcome: Outcome,
}

/// Cumulative Zipf weights `1 / rank^skew` of `keys` keys; empty for `skew` 0 (uniform).
fn zipf_cdf(keys: u32, skew: f64) -> Vec<f64> {
    if skew <= 0.0 {
        return Vec::new();
    }
    let mut total = 0.0;
    (1..=keys)
        .map(|rank| {
            total += 1.0 / f64::from(rank).powf(skew);
            total
        })
        .collect()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Runs the workload of `profile` through `algorithm` configured by `setup`.
///
/// The number of backends is the number of weights in `setup`; the profile's backend models
/// are used in order, repeated if there are fewer.
pub fn simulate(profile: &Profile, setup: &Setup, algorithm: Algorithm) -> Outcome {
    let n = setup.weights.len().max(1);
    let mut profile = profile.clone();
    profile.resize(n);
    let backends: Vec<Arc<Backend>> = (0..n)
        .map(|i| {
            // Addresses that are never connected to; they only tell the hashing
            // algorithms' tables apart.
            let port = 10_000 + u16::try_from(i).unwrap_or(u16::MAX - 10_000);
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            Arc::new(Backend::new(address, setup.weights.get(i).copied().unwrap_or(1)))
        })
        .collect();
    // The selectors draw from the thread's generator: seed it so that runs repeat exactly.
    fastrand::seed(profile.seed);
    let selector = select::build(algorithm, &backends, &setup.select);
    let live = (0..n).collect();
    let live_backends = backends.clone();
    let servers = profile
        .backends
        .iter()
        .map(|model| Server {
            model: model.clone(),
            busy: 0,
            queue: VecDeque::new(),
            factor: 1.0,
            down: false,
        })
        .collect();
    let mut run = Run {
        profile: &profile,
        setup,
        selector,
        backends,
        live,
        live_backends,
        ejected: vec![false; n],
        servers,
        requests: Vec::new(),
        free: Vec::new(),
        queue: BinaryHeap::new(),
        seq: 0,
        rng: fastrand::Rng::with_seed(profile.seed),
        key_cdf: zipf_cdf(profile.keys, profile.key_skew),
        exclude: Vec::new(),
        outcome: Outcome {
            algorithm,
            requests: 0,
            latencies: Vec::new(),
            errors: 0,
            retries: 0,
            ejections: 0,
            served: vec![0; n],
        },
    };
    run.go();
    run.outcome.latencies.sort_unstable();
    run.outcome
}

impl Run<'_> {
    fn schedule(&mut self, at: u64, step: Step) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, step)));
    }

    fn go(&mut self) {
        let first = self.next_gap();
        self.schedule(first, Step::Arrival);
        for (i, e) in self.profile.events.iter().enumerate() {
            self.schedule(nanos(e.at), Step::Change(i));
        }
        let end = nanos(self.profile.duration);
        while let Some(Reverse((now, _, step))) = self.queue.pop() {
            match step {
                Step::Arrival => {
                    if now >= end {
                        continue;
                    }
                    let gap = self.next_gap();
                    self.schedule(now.saturating_add(gap), Step::Arrival);
                    self.arrive(now);
                }
                Step::Done { backend, req } => self.done(now, backend, req),
                Step::Refused { backend, req } => self.refused(now, backend, req),
                Step::Change(i) => {
                    let e = self.profile.events[i];
                    let server = &mut self.servers[e.backend];
                    if let Some(f) = e.latency_factor {
                        server.factor = f;
                    }
                    if let Some(down) = e.down {
                        server.down = down;
                    }
                }
            }
        }
    }

    /// Nanoseconds to the next arrival: exponential with mean 1 / rate.
    fn next_gap(&mut self) -> u64 {
        let u = 1.0 - self.rng.f64(); // in (0, 1]
        let secs = -u.ln() / self.profile.rate;
        (secs * 1e9) as u64
    }

    /// A standard normal draw (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.rng.f64();
        let u2 = self.rng.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    fn arrive(&mut self, now: u64) {
        self.outcome.requests += 1;
        let key = if self.key_cdf.is_empty() {
            self.rng.u32(..self.profile.keys)
        } else {
            let x = self.rng.f64() * self.key_cdf.last().copied().unwrap_or(1.0);
            u32::try_from(self.key_cdf.partition_point(|&c| c < x)).unwrap_or(0)
        };
        let request = Request {
            arrived: now,
            hash: hash64(&key.to_le_bytes()),
            u: self.rng.f64(),
            z: self.normal(),
            tried: Vec::new(),
            held: None,
            sent: now,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.requests[id] = Some(request);
                id
            }
            None => {
                self.requests.push(Some(request));
                self.requests.len() - 1
            }
        };
        self.dispatch(now, id);
    }

    /// Rebuilds the selector over the backends not ejected at `now`, if that set changed
    /// since the last build; the rotation carries on where it was.
    fn follow_ejections(&mut self, now: u64) {
        let changed = self
            .backends
            .iter()
            .zip(&self.ejected)
            .any(|(b, &was)| b.is_ejected(now) != was);
        if !changed {
            return;
        }
        for (flag, b) in self.ejected.iter_mut().zip(&self.backends) {
            *flag = b.is_ejected(now);
        }
        self.live = (0..self.backends.len()).filter(|&i| !self.ejected[i]).collect();
        if self.live.is_empty() {
            // Every backend ejected: the pool's panic mode uses them all.
            self.live = (0..self.backends.len()).collect();
        }
        self.live_backends = self.live.iter().map(|&i| Arc::clone(&self.backends[i])).collect();
        let position = self.selector.position();
        self.selector = select::build(self.outcome.algorithm, &self.live_backends, &self.setup.select);
        self.selector.resume_at(position);
    }

    /// Picks a backend for request `id` and sends it there.
    fn dispatch(&mut self, now: u64, id: usize) {
        self.follow_ejections(now);
        let Some(req) = self.requests[id].as_mut() else {
            return;
        };
        // Backends this request already tried are not tried again (retries go elsewhere).
        self.exclude.clear();
        for (k, i) in self.live.iter().enumerate() {
            if req.tried.contains(i) {
                self.exclude.push(k);
            }
        }
        let ctx = PickContext {
            hash: Some(req.hash),
            exclude: &self.exclude,
        };
        let Some(b) = self.selector.pick(&self.live_backends, &ctx).map(|k| self.live[k]) else {
            self.fail(id);
            return;
        };
        req.held = Some(self.backends[b].start_request_owned(0));
        req.sent = now;
        let server = &mut self.servers[b];
        if server.down {
            let at = now + nanos(self.setup.refused_after);
            self.schedule(at, Step::Refused { backend: b, req: id });
        } else if server.busy < server.model.concurrency {
            server.busy += 1;
            let service = server.model.latency.sample(req.u, req.z, server.factor);
            self.schedule(now + nanos(service), Step::Done { backend: b, req: id });
        } else {
            server.queue.push_back(id);
        }
    }

    fn done(&mut self, now: u64, backend: usize, id: usize) {
        if let Some(mut req) = self.requests[id].take() {
            self.free.push(id);
            let b = &self.backends[backend];
            b.observe_latency_at(Duration::from_nanos(now - req.sent), self.setup.ewma_decay, now);
            b.record_success();
            req.held = None;
            self.outcome.served[backend] += 1;
            self.outcome.latencies.push(Duration::from_nanos(now - req.arrived));
        }
        let server = &mut self.servers[backend];
        server.busy -= 1;
        if let Some(next) = server.queue.pop_front() {
            server.busy += 1;
            let factor = server.factor;
            let service = match self.requests[next].as_ref() {
                Some(r) => server.model.latency.sample(r.u, r.z, factor),
                None => Duration::ZERO,
            };
            self.schedule(now + nanos(service), Step::Done { backend, req: next });
        }
    }

    fn refused(&mut self, now: u64, backend: usize, id: usize) {
        let Some(req) = self.requests[id].as_mut() else {
            return;
        };
        req.held = None;
        req.tried.push(backend);
        let attempts = req.tried.len();
        self.record_failure(now, backend);
        if attempts <= self.setup.retries as usize && attempts < self.backends.len() {
            self.outcome.retries += 1;
            self.dispatch(now, id);
        } else {
            self.fail(id);
        }
    }

    fn fail(&mut self, id: usize) {
        if self.requests[id].take().is_some() {
            self.free.push(id);
            self.outcome.errors += 1;
        }
    }

    /// Passive health: the proxy's own decision ([`passive::count_failure`]).
    fn record_failure(&mut self, now: u64, index: usize) {
        let all = self.backends.iter().map(|b| &**b);
        if passive::count_failure(&self.backends[index], all, &self.setup.passive, || now).is_some() {
            self.outcome.ejections += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(text: &str) -> Profile {
        Profile::parse(text, "test").expect("profile")
    }

    const FIVE_EQUAL: &str = "duration = \"10s\"\nrate = 1000\n[[backends]]\ncount = 5\n\
                              latency = { median = \"5ms\", p99 = \"20ms\" }\n";

    #[test]
    fn every_request_is_answered_or_counted_as_an_error() {
        let p = profile(&format!(
            "{FIVE_EQUAL}[[events]]\nat = \"2s\"\nbackend = 1\ndown = true\n\
             [[events]]\nat = \"6s\"\nbackend = 2\nlatency_factor = 10\n"
        ));
        for o in simulate_all(&p, &Setup::defaults(5)) {
            let answered: u64 = o.served.iter().sum();
            assert_eq!(answered + o.errors, o.requests, "{:?}", o.algorithm);
            assert_eq!(o.latencies.len() as u64, answered);
            // 1,000 req/s for 10 s, Poisson: within 5 standard deviations (~500).
            assert!((9_500..=10_500).contains(&o.requests), "{}", o.requests);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_outcome_and_every_algorithm_the_same_requests() {
        let p = profile(FIVE_EQUAL);
        let a = simulate(&p, &Setup::defaults(5), Algorithm::PeakEwma);
        let b = simulate(&p, &Setup::defaults(5), Algorithm::PeakEwma);
        assert_eq!(a.latencies, b.latencies);
        assert_eq!(a.served, b.served);
        let c = simulate(&p, &Setup::defaults(5), Algorithm::RoundRobin);
        assert_eq!(a.requests, c.requests);
    }

    #[test]
    fn round_robin_spreads_by_weight_exactly() {
        let p = profile(FIVE_EQUAL);
        let mut setup = Setup::defaults(3);
        setup.weights = vec![1, 2, 3];
        let o = simulate(&p, &setup, Algorithm::RoundRobin);
        // Smooth weighted round robin: every 6 requests go 1:2:3, so the counts differ from
        // exact shares by less than one cycle.
        let total = o.requests as f64;
        for (served, weight) in o.served.iter().zip([1.0, 2.0, 3.0]) {
            let expected = total * weight / 6.0;
            assert!((*served as f64 - expected).abs() <= 6.0, "{:?}", o.served);
        }
    }

    #[test]
    fn an_idle_pool_answers_in_the_service_time() {
        // 10 req/s on five backends never queues: latency is the service time, whatever the
        // algorithm, so the median is the distribution's.
        let p = profile(
            "duration = \"60s\"\nrate = 10\n[[backends]]\ncount = 5\n\
                         latency = { median = \"5ms\", p99 = \"5ms\" }\n",
        );
        for o in simulate_all(&p, &Setup::defaults(5)) {
            assert_eq!(o.quantile(0.5), Duration::from_millis(5), "{:?}", o.algorithm);
            assert_eq!(o.quantile(0.999), Duration::from_millis(5), "{:?}", o.algorithm);
        }
    }

    #[test]
    fn a_refusing_backend_is_retried_then_ejected() {
        let p = profile(&format!(
            "{FIVE_EQUAL}[[events]]\nat = \"0s\"\nbackend = 0\ndown = true\n"
        ));
        let o = simulate(&p, &Setup::defaults(5), Algorithm::RoundRobin);
        // Five refusals in a row eject it for 30 s (longer than the run); each was retried.
        assert_eq!(o.ejections, 1);
        assert_eq!(o.retries, 5);
        assert_eq!(o.errors, 0);
        assert_eq!(o.served[0], 0);
        let mut no_retries = Setup::defaults(5);
        no_retries.retries = 0;
        let o = simulate(&p, &no_retries, Algorithm::RoundRobin);
        assert_eq!((o.errors, o.retries), (5, 0));
    }

    #[test]
    fn load_aware_algorithms_avoid_a_slow_backend() {
        let p = Profile::find("one-slow").expect("one-slow");
        let setup = Setup::defaults(5);
        let rr = simulate(&p, &setup, Algorithm::RoundRobin);
        let ewma = simulate(&p, &setup, Algorithm::PeakEwma);
        let least = simulate(&p, &setup, Algorithm::LeastRequest);
        // Round robin gives the slow backend its fifth; the others send it far less.
        let share = |o: &Outcome| o.served[4] as f64 / o.requests as f64;
        assert!((share(&rr) - 0.2).abs() < 0.001, "{}", share(&rr));
        assert!(share(&ewma) < 0.05, "{}", share(&ewma));
        assert!(share(&least) < 0.1, "{}", share(&least));
        assert!(ewma.quantile(0.99) * 3 < rr.quantile(0.99));
    }

    #[test]
    fn skewed_keys_make_hot_spots_that_a_balance_factor_bounds() {
        let text = |skew: f64| {
            format!(
                "duration = \"20s\"\nrate = 2000\nkeys = 1000\nkey_skew = {skew}\n[[backends]]\ncount = 5\n\
                 concurrency = 32\nlatency = {{ median = \"5ms\", p99 = \"20ms\" }}\n"
            )
        };
        let hottest = |o: &Outcome| *o.served.iter().max().expect("backends") as f64 / o.requests as f64;
        let uniform = simulate(&profile(&text(0.0)), &Setup::defaults(5), Algorithm::Maglev);
        let skewed = simulate(&profile(&text(1.1)), &Setup::defaults(5), Algorithm::Maglev);
        // Zipf 1.1 over 1,000 keys: the top key alone is about a seventh of all requests.
        assert!(hottest(&uniform) < 0.22, "{:?}", uniform.served);
        assert!(hottest(&skewed) > 0.25, "{:?}", skewed.served);
        let mut bounded = Setup::defaults(5);
        bounded.select.balance_factor = Some(1.25);
        let spread = simulate(&profile(&text(1.1)), &bounded, Algorithm::Maglev);
        assert!(
            hottest(&spread) < hottest(&skewed),
            "{:?} vs {:?}",
            spread.served,
            skewed.served
        );
    }
}
