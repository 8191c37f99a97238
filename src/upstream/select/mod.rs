//! Load-balancing algorithms: one file each, all behind [`Select`].
//!
//! A selector is built from a pool's backend list off the hot path and then only read: picking
//! touches atomics, never a lock.

mod round_robin;

use std::fmt::Debug;
use std::sync::Arc;

pub use round_robin::RoundRobin;

use super::Backend;
use crate::config::Algorithm;

/// Chooses a backend for a request.
pub trait Select: Send + Sync + Debug {
    /// The index into `backends` of the chosen one; `None` only when `backends` is empty.
    ///
    /// `backends` is the same list, in the same order, that the selector was built for.
    fn pick(&self, backends: &[Arc<Backend>]) -> Option<usize>;
}

/// Builds the selector for `algorithm` over `backends`.
pub fn build(algorithm: Algorithm, backends: &[Arc<Backend>]) -> Box<dyn Select> {
    match algorithm {
        Algorithm::RoundRobin => Box::new(RoundRobin::new(backends)),
    }
}
