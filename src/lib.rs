//! Steelyard: a fast HTTP load balancer and reverse proxy.
//!
//! The binary is a thin shell over this library: [`Config`] describes what to run (from a TOML
//! file or quick-mode flags), [`Server::bind`] binds its listeners, and [`Server::run`] serves
//! until the shutdown future completes, then drains. Tests run the same code in-process on
//! port 0.

pub mod admin;
pub mod config;
pub mod demo;
pub mod events;
pub mod fleet;
pub mod health;
pub mod http1;
pub mod memory;
pub mod proxy;
pub mod server;
pub mod simulate;
pub mod stats;
pub mod stream;
pub mod tls;
pub mod upstream;

use std::future::Future;

pub use config::Config;
pub use server::{ReloadError, ReloadHandle, Server, StartError};

/// Binds every listener of `config` and serves until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    Server::bind(config)?.run(shutdown).await
}
