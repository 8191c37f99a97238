//! Steelyard's own HTTP/1 engine, for both sides of the proxy.
//!
//! One task per client connection parses each request head once ([`head`]), writes the
//! forwarded head by copying the client's bytes with the proxy's edits ([`write`](mod@write)), streams
//! bodies with strict framing ([`chunked`], [`exchange`]) and keeps buffers only while bytes
//! are in flight ([`buffer`], [`recycle`]): an idle keep-alive connection holds no buffer and
//! no request state. What a request does between head and response (routing, picking,
//! retries) lives in [`crate::proxy::h1`].

pub mod buffer;
pub mod chunked;
pub mod connection;
pub mod exchange;
pub mod h2_guard;
pub mod head;
pub mod io;
pub mod recycle;
pub mod write;
