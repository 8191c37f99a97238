//! Sticky sessions: a cookie that names, opaquely, the backend a client was sent to.
//!
//! The cookie's value is a keyed hash (SipHash-2-4) of the backend's address: without the key
//! nobody can tell which address a value stands for, even by hashing every private address.
//! Every Steelyard given the same secret computes the same values, so a fleet honours each
//! other's cookies; without a secret each process draws a random key and says so in its log.

use std::hash::Hasher as _;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use http::header::HeaderValue;
use siphasher::sip::SipHasher24;

use super::hash_key::{cookie, Headers};
use super::Backend;
use crate::config::StickyConfig;

/// Per-pool sticky-session state, built with the backend list.
#[derive(Debug)]
pub struct Sticky {
    cookie: String,
    /// `ids[i]` identifies backend `i` in the cookie.
    ids: Vec<u64>,
    /// `set_cookie[i]` is the pre-rendered `Set-Cookie` value sending clients to backend `i`.
    set_cookie: Vec<HeaderValue>,
}

/// The 128-bit SipHash key derived from a secret (itself hashed with two fixed keys, so any
/// length of secret gives a full key).
fn key_from_secret(secret: &[u8]) -> (u64, u64) {
    let half = |k0: u64| {
        let mut h = SipHasher24::new_with_keys(k0, 0x5374_6565_6c79_6172);
        h.write(secret);
        h.finish()
    };
    (half(1), half(2))
}

/// The key used when no secret is configured: random, drawn once per process.
fn process_key() -> (u64, u64) {
    static KEY: OnceLock<(u64, u64)> = OnceLock::new();
    *KEY.get_or_init(|| {
        tracing::warn!(
            "sticky cookies use a random key: they name no backend after a restart and other \
             Steelyard instances ignore them; set sticky.secret or {}",
            crate::config::STICKY_SECRET_ENV
        );
        (fastrand::u64(..), fastrand::u64(..))
    })
}

/// The cookie id of the backend at `address` under `secret`: the same in every process given the
/// same secret, and unguessable without it.
pub fn backend_id(secret: Option<&str>, address: SocketAddr) -> u64 {
    let (k0, k1) = secret.map_or_else(process_key, |s| key_from_secret(s.as_bytes()));
    let mut h = SipHasher24::new_with_keys(k0, k1);
    // Built with the selection, off the hot path.
    h.write(address.to_string().as_bytes());
    h.finish()
}

impl Sticky {
    /// Sticky state for `backends`.
    pub fn new(config: &StickyConfig, backends: &[Arc<Backend>]) -> Sticky {
        let ids: Vec<u64> = backends
            .iter()
            .map(|b| backend_id(config.secret.as_deref(), b.address()))
            .collect();
        let max_age = config
            .ttl
            .map(|t| format!("; Max-Age={}", t.as_secs()))
            .unwrap_or_default();
        let set_cookie = ids
            .iter()
            .map(|id| {
                let v = format!("{}={id:016x}; Path=/{max_age}; HttpOnly; SameSite=Lax", config.cookie);
                HeaderValue::try_from(v).unwrap_or_else(|_| HeaderValue::from_static(""))
            })
            .collect();
        Sticky {
            cookie: config.cookie.clone(),
            ids,
            set_cookie,
        }
    }

    /// The backend index the request's cookie names, if it names one of ours.
    pub fn requested(&self, headers: &Headers) -> Option<usize> {
        let value = cookie(headers, &self.cookie)?;
        let id = u64::from_str_radix(value, 16).ok()?;
        self.ids.iter().position(|&i| i == id)
    }

    /// The `Set-Cookie` value that sends the client to backend `index`.
    pub fn set_cookie(&self, index: usize) -> Option<&HeaderValue> {
        self.set_cookie.get(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned: a fleet mixing versions must agree on these, so changing them is a breaking
    /// change that needs a release note.
    #[test]
    fn ids_are_pinned_for_a_secret() {
        let secret = Some("correct horse battery staple");
        let id = |a: &str| format!("{:016x}", backend_id(secret, a.parse().expect("address")));
        assert_eq!(id("10.0.0.1:8080"), "49b74ba80a1cc971");
        assert_eq!(id("10.0.0.2:8080"), "6ebf71daa4be38fd");
        assert_eq!(id("[2001:db8::1]:443"), "c95eb9dcd9cd4657");
        assert_ne!(
            backend_id(
                Some("another secret of length"),
                "10.0.0.1:8080".parse().expect("address")
            ),
            backend_id(secret, "10.0.0.1:8080".parse().expect("address")),
            "another secret gives other ids"
        );
    }
}
