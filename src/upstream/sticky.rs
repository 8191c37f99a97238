//! Sticky sessions: a cookie that names, opaquely, the backend a client was sent to.

use std::sync::Arc;

use http::header::HeaderValue;

use super::hash::hash64_seeded;
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

/// The cookie id of a backend: a hash of its address, the same in every Steelyard process, so
/// a fleet of balancers honours each other's cookies, yet not the address in clear.
pub fn backend_id(backend: &Backend) -> u64 {
    hash64_seeded(backend.address().to_string().as_bytes(), 3)
}

impl Sticky {
    /// Sticky state for `backends`.
    pub fn new(config: &StickyConfig, backends: &[Arc<Backend>]) -> Sticky {
        let ids: Vec<u64> = backends.iter().map(|b| backend_id(b)).collect();
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
