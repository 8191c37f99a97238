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

/// Makes a certificate for `localhost` and `127.0.0.1` and writes it, its key and the
/// certificate to trust into a fresh temporary directory; returns the TLS settings and the
/// trusted certificate's path.
fn demo_certificate() -> Result<(crate::config::TlsConfig, std::path::PathBuf), DemoError> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .map_err(|e| DemoError::Options(format!("cannot make a demo certificate: {e}")))?;
    let dir = std::env::temp_dir().join(format!("steelyard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = (dir.join("localhost.pem"), dir.join("localhost.key"));
    std::fs::write(&cert, made.cert.pem())?;
    std::fs::write(&key, made.signing_key.serialize_pem())?;
    let tls = crate::config::TlsConfig {
        certificates: vec![crate::config::CertificateFiles {
            cert: cert.clone(),
            key,
            at: "demo".into(),
            key_name: "demo certificate".into(),
        }],
        client_auth: None,
    };
    Ok((tls, cert))
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
    https: Option<SocketAddr>,
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
            backup: false,
        });
    }
    let mut config = Config::quick(listen, backends.clone(), Algorithm::RoundRobin, Timeouts::default());
    let ca = match https {
        None => None,
        Some(addr) => {
            let (tls, ca) = demo_certificate()?;
            let mut secure = config.listeners[0].clone();
            secure.name = "https".into();
            secure.listen = addr;
            secure.tls = Some(tls);
            config.listeners.push(secure);
            Some(ca)
        }
    };
    adjust(&mut config).map_err(DemoError::Options)?;
    let server = Server::bind(config)?;
    let addrs = server.local_addrs();
    let addr = addrs[0];
    println!("Steelyard demo: a balancer in front of {origins} origins, all on loopback.\n");
    println!("  balancer  http://{addr}/");
    if let (Some(secure), Some(ca)) = (addrs.get(1), &ca) {
        println!(
            "  HTTPS     https://localhost:{}/   (certificate made now: curl --cacert {} https://localhost:{}/hello)",
            secure.port(),
            ca.display(),
            secure.port()
        );
    }
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
