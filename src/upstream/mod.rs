//! Backends, pools of backends, and the algorithms that choose among them.

pub mod backend;
pub mod pool;
pub mod select;

pub use backend::{Backend, InFlight};
pub use pool::Pool;
