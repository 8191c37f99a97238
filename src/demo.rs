//! `steelyard demo`: three built-in origins on loopback with the balancer in front of them.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::{Algorithm, BackendConfig, Config, Timeouts};
use crate::server::{Server, StartError};

/// Starts a tiny origin on `127.0.0.1:0` that answers every request with its own `name`.
pub async fn spawn_origin(name: String) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let text = format!("Hello from {name} (you asked for {})\n", req.uri());
                    async move {
                        let mut res = Response::new(Full::new(Bytes::from(text)));
                        res.headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
                        Ok::<_, Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// An origin could not bind.
    #[error("cannot start a demo origin: {0}")]
    Origin(#[from] std::io::Error),
    /// The balancer could not bind.
    #[error("{0} (is something else on that port? try --listen 127.0.0.1:0)")]
    Start(#[from] StartError),
    /// A command-line option does not apply.
    #[error("{0}")]
    Options(String),
}

/// Starts `origins` demo origins and the balancer on `listen`, prints how to try it, and serves
/// until `shutdown` completes. `adjust` may change the balancer's config before it starts
/// (the command line's `--admin`, say).
pub async fn run(
    listen: SocketAddr,
    origins: usize,
    adjust: impl FnOnce(&mut Config) -> Result<(), String>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DemoError> {
    let mut backends = Vec::new();
    for i in 1..=origins {
        let address = spawn_origin(format!("origin-{i}")).await?;
        backends.push(BackendConfig {
            address,
            weight: 1,
            dns_name: None,
        });
    }
    let mut config = Config::quick(listen, backends.clone(), Algorithm::RoundRobin, Timeouts::default());
    adjust(&mut config).map_err(DemoError::Options)?;
    let server = Server::bind(config)?;
    let addr = server.local_addrs()[0];
    println!("Steelyard demo: a balancer in front of {origins} origins, all on loopback.\n");
    println!("  balancer  http://{addr}/");
    for (i, b) in backends.iter().enumerate() {
        println!("  origin-{}  http://{}/", i + 1, b.address);
    }
    if let Some(admin) = server.admin_addr() {
        println!("  dashboard http://{admin}/   (metrics: http://{admin}/metrics)");
    }
    println!("\nTry it (each answer names the origin that served it; they take turns):\n");
    println!("  for i in 1 2 3 4 5 6; do curl -s http://{addr}/hello; done\n");
    println!("Ctrl-C stops it.");
    server.run(shutdown).await?;
    Ok(())
}
