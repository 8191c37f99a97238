//! Backends, pools of backends, and the algorithms that choose among them.

pub mod backend;
pub mod connect;
pub mod connection;
pub mod hash;
pub mod hash_key;
pub mod idle;
pub mod pool;
pub mod registry;
pub mod retry_budget;
pub mod select;
pub mod sticky;

pub use backend::{Backend, InFlight};
pub use hash_key::{HashKey, Headers, RequestView};
pub use pool::{Member, Picked, Pool, Selection};
