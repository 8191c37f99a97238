//! Health: active probes of backends. (Passive health, ejecting backends that fail real
//! requests, lives with the pool: [`crate::upstream::Pool::record_failure`].)

pub mod active;
