//! One backend server and its live load figures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use http::uri::Authority;

/// A server that receives traffic, with atomics the hot path updates without locking.
#[derive(Debug)]
pub struct Backend {
    address: SocketAddr,
    weight: u32,
    /// `address` pre-rendered as a URI authority, so requests need no formatting.
    authority: Authority,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
}

impl Backend {
    /// A backend at `address` with relative `weight`.
    pub fn new(address: SocketAddr, weight: u32) -> Backend {
        let authority =
            Authority::try_from(address.to_string()).unwrap_or_else(|_| Authority::from_static("invalid.invalid"));
        Backend {
            address,
            weight,
            authority,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its configured weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// `ip:port` as a URI authority.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Requests sent to it and not yet finished (response body included).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests ever sent to it.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests that failed at this backend (connect error, reset, timeout).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records a failed request.
    pub fn record_failure(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request as started; it stays in flight until the returned guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// Keeps one request counted in its backend's in-flight figure until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    /// The backend this request went to.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
