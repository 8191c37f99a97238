//! Health: active probes of backends ([`active`]) and passive ejection of backends that fail
//! real requests ([`passive`]). Both only mark backends; the pool rebuilds its selection.

pub mod active;
pub mod passive;
