//! State a binary upgrade carries to the new process (HAProxy's server-state file, handed
//! over in memory): each backend's health, ejection, drain, slow-start progress, peak-EWMA
//! and counters, each pool's own responses, and the event log. The old process writes it
//! as JSON into an anonymous in-memory file whose descriptor the new one inherits; the new
//! one applies it right after its first commit. A format it cannot read is logged and
//! ignored: the upgrade goes on with fresh state.

use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::events::Event;
use crate::upstream::backend::{clock_nanos, BackendSnapshot};
use crate::upstream::Pool;

/// The version of the format below; a process ignores any other.
const VERSION: u32 = 1;

/// Everything carried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Carried {
    version: u32,
    backends: Vec<CarriedBackend>,
    pools: Vec<CarriedPool>,
    events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CarriedBackend {
    pool: String,
    address: SocketAddr,
    #[serde(flatten)]
    state: BackendSnapshot,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct CarriedPool {
    pool: String,
    /// Responses Steelyard wrote itself for the pool's requests, by class.
    local_responses: [u64; 5],
}

impl Carried {
    /// The state of `pools` and the event log now.
    pub fn snapshot(pools: &[Arc<Pool>]) -> Carried {
        let now = clock_nanos();
        let mut backends = Vec::new();
        for pool in pools {
            for m in pool.members() {
                backends.push(CarriedBackend {
                    pool: pool.name().to_owned(),
                    address: m.backend.address(),
                    state: m.backend.snapshot(now),
                });
            }
        }
        Carried {
            version: VERSION,
            backends,
            pools: pools
                .iter()
                .map(|p| CarriedPool {
                    pool: p.name().to_owned(),
                    local_responses: p.stats().local_responses.get(),
                })
                .collect(),
            events: crate::events::recent(),
        }
    }

    /// Gives each backend of `pools` the state carried for the same pool name and address,
    /// and rebuilds the pools' selections. Returns how many backends took on carried state.
    pub fn apply(self, pools: &[Arc<Pool>]) -> usize {
        let now = clock_nanos();
        let mut restored = 0;
        for pool in pools {
            for m in pool.members() {
                let carried = self
                    .backends
                    .iter()
                    .find(|c| c.pool == pool.name() && c.address == m.backend.address());
                if let Some(c) = carried {
                    m.backend.restore(&c.state, now);
                    restored += 1;
                }
            }
            if let Some(c) = self.pools.iter().find(|c| c.pool == pool.name()) {
                pool.stats().local_responses.add(c.local_responses);
            }
            pool.rebuild();
        }
        crate::events::restore(self.events);
        restored
    }

    /// Writes it into a new anonymous in-memory file (close-on-exec), positioned at the
    /// start, for the new process to read.
    pub fn to_memfd(&self) -> std::io::Result<OwnedFd> {
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new
        // descriptor or -1.
        let fd = unsafe { libc::memfd_create(c"steelyard-state".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        file.write_all(&json)?;
        file.rewind()?;
        Ok(file.into())
    }

    /// Reads what a predecessor handed on descriptor `fd` (and closes it). `Err` says why it
    /// cannot be used.
    ///
    /// # Safety
    /// `fd` must be an open descriptor handed to this process for it alone to own.
    pub unsafe fn from_fd(fd: RawFd) -> Result<Carried, String> {
        // SAFETY: the caller promises `fd` is open and ours alone.
        let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(|e| e.to_string())?;
        let carried: Carried = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
        if carried.version != VERSION {
            return Err(format!(
                "format version {} (this binary reads {VERSION})",
                carried.version
            ));
        }
        Ok(carried)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn it_survives_the_trip_through_a_memfd() {
        let carried = Carried {
            version: VERSION,
            backends: vec![CarriedBackend {
                pool: "web".into(),
                address: ([127, 0, 0, 1], 8081).into(),
                state: BackendSnapshot {
                    probed_down: true,
                    ejected_for_ms: 1500,
                    ejections: 2,
                    requests: 42,
                    responses: [0, 40, 0, 1, 1],
                    latency_buckets: vec![1; 16],
                    ..BackendSnapshot::default()
                },
            }],
            pools: vec![CarriedPool {
                pool: "web".into(),
                local_responses: [0, 0, 0, 0, 3],
            }],
            events: Vec::new(),
        };
        let fd = carried.to_memfd().expect("memfd").into_raw_fd();
        // SAFETY: the descriptor was just made here and handed over.
        let back = unsafe { Carried::from_fd(fd) }.expect("read back");
        assert_eq!(back, carried);
    }

    #[test]
    fn another_version_is_refused() {
        let carried = Carried {
            version: VERSION + 1,
            backends: Vec::new(),
            pools: Vec::new(),
            events: Vec::new(),
        };
        let fd = carried.to_memfd().expect("memfd").into_raw_fd();
        // SAFETY: as above.
        let e = unsafe { Carried::from_fd(fd) }.expect_err("refused");
        assert!(e.contains("format version 2"), "{e}");
    }
}
