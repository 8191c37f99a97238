//! The request path: route, pick a backend, rewrite, forward, stream back.

pub mod access_log;
pub mod body;
pub mod client_hello;
pub mod error;
pub mod forward;
pub mod h1;
pub mod headers;
pub mod proxy_protocol;
pub mod retry;
pub mod router;
pub mod tcp;

pub use body::ProxyBody;
pub use error::ProxyError;
pub use router::Router;
