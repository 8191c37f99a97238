//! TLS termination on a listener: certificates chosen by SNI (exact, wildcard, default),
//! HTTP/1.1 and HTTP/2 by ALPN, `X-Forwarded-Proto: https`, certificates swapped by a reload
//! without dropping an open connection, and `check` naming bad certificate entries. Real
//! certificates from a test CA (rcgen), a real rustls client, real sockets.

mod support;

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use support::*;

fn tls_toml(pki: &Pki, certs: &[&str], origin: &Origin) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|c| {
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                pki.path(&format!("{c}.pem")),
                pki.path(&format!("{c}.key"))
            )
        })
        .collect();
    format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\ntls = {{ certificates = [{}] }}\nroutes = [{{ pool = \"main\" }}]\n\n[pools.main]\nbackends = [\"{}\"]\n",
        list.join(", "),
        origin.addr
    )
}

async fn connect(pki: &Pki, alpn: &[&[u8]], addr: std::net::SocketAddr, sni: &str) -> TlsStream<TcpStream> {
    let name = match sni.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(sni.to_owned()).expect("name"),
    };
    let tcp = TcpStream::connect(addr).await.expect("connect");
    pki.connector(alpn).connect(name, tcp).await.expect("handshake")
}

fn leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().expect("certificates")[0].clone()
}

/// One HTTP/1.1 request on an open TLS stream; returns the response's body.
async fn get_over(stream: &mut TlsStream<TcpStream>, host: &str) -> String {
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .expect("content-length")
                .trim()
                .parse()
                .expect("length");
            if got.len() >= end + 4 + length {
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                return text[end + 4..end + 4 + length].to_owned();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_and_requests_are_proxied() {
    let origin = spawn_origin("a").await;
    let pki = Pki::new("sni");
    let default = pki.issue("default", &["default.test", "127.0.0.1"]);
    let exact = pki.issue("exact", &["a.test"]);
    let wildcard = pki.issue("wildcard", &["*.b.test"]);
    let sy = spawn_steelyard(config(&tls_toml(&pki, &["default", "exact", "wildcard"], &origin))).await;

    for (sni, expected, what) in [
        ("a.test", &exact, "exact name"),
        ("x.b.test", &wildcard, "wildcard"),
        ("127.0.0.1", &default, "no SNI (an IP address)"),
    ] {
        let mut stream = connect(&pki, &[b"http/1.1"], sy.addr, sni).await;
        assert_eq!(&leaf(&stream), expected, "{what}");
        assert_eq!(get_over(&mut stream, sni).await, "a", "{what}");
        assert_eq!(origin.last_headers()["x-forwarded-proto"], "https", "{what}");
        // Keep-alive: a second request on the same session.
        assert_eq!(get_over(&mut stream, sni).await, "a", "{what}: second request");
    }
    // An unknown name gets the default certificate, which does not cover it: the client
    // refuses it, as it should.
    let tcp = TcpStream::connect(sy.addr).await.expect("connect");
    let refused = pki
        .connector(&[b"http/1.1"])
        .connect(ServerName::try_from("unknown.test").expect("name"), tcp)
        .await;
    assert!(refused.is_err(), "the default certificate does not cover unknown.test");
    // Plain HTTP on a TLS listener is not served.
    let plain = raw_exchange(sy.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(!plain.starts_with("HTTP/1.1 200"), "{plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_h2_is_served_over_http2() {
    let origin = spawn_origin("a").await;
    let pki = Pki::new("alpn");
    pki.issue("site", &["a.test"]);
    let sy = spawn_steelyard(config(&tls_toml(&pki, &["site"], &origin))).await;
    let stream = connect(&pki, &[b"h2", b"http/1.1"], sy.addr, "a.test").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    for _ in 0..3 {
        let req = http::Request::get("https://a.test/")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let res = sender.send_request(req).await.expect("response");
        assert_eq!(res.status(), 200);
        assert_eq!(res.version(), http::Version::HTTP_2);
        let body = http_body_util::BodyExt::collect(res.into_body()).await.expect("body");
        assert_eq!(&body.to_bytes()[..], b"a");
        assert_eq!(origin.last_headers()["x-forwarded-proto"], "https");
    }
}

/// A reload with a new certificate: new handshakes get it, a session opened before keeps
/// working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_certificates_without_dropping_connections() {
    let origin = spawn_origin("a").await;
    let pki = Pki::new("reload");
    let first = pki.issue("one", &["a.test"]);
    let second = pki.issue("two", &["a.test"]);
    let sy = spawn_steelyard(config(&tls_toml(&pki, &["one"], &origin))).await;
    let mut open = connect(&pki, &[b"http/1.1"], sy.addr, "a.test").await;
    assert_eq!(leaf(&open), first);
    assert_eq!(get_over(&mut open, "a.test").await, "a");

    sy.reload
        .apply(config(&tls_toml(&pki, &["two"], &origin)))
        .await
        .expect("reload");
    let fresh = connect(&pki, &[b"http/1.1"], sy.addr, "a.test").await;
    assert_eq!(leaf(&fresh), second, "new handshakes use the new certificate");
    assert_eq!(
        get_over(&mut open, "a.test").await,
        "a",
        "the open session keeps working"
    );
}

/// Bad certificate entries are reported by `check` (and refused by a reload) at their
/// `FILE:LINE:COL`, naming the file.
#[tokio::test]
async fn bad_certificates_are_reported_at_their_entry() {
    let origin = spawn_origin("a").await;
    let pki = Pki::new("bad");
    pki.issue("one", &["a.test"]);
    pki.issue("two", &["a.test"]);
    // A key that belongs to another certificate.
    std::fs::copy(pki.dir.join("two.key"), pki.dir.join("mismatch.key")).expect("copy");
    std::fs::copy(pki.dir.join("one.pem"), pki.dir.join("mismatch.pem")).expect("copy");
    let cases = [
        (&["mismatch"][..], "does not belong to"),
        (&["missing"][..], "cannot read certificates from"),
        (
            &["one", "two"][..],
            "claims \"a.test\", which listeners[0].tls.certificates[0] already serves",
        ),
    ];
    for (certs, expected) in cases {
        let file = pki.dir.join("check.toml");
        std::fs::write(&file, tls_toml(&pki, certs, &origin)).expect("write");
        let out = run_check(&file);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{certs:?}: {stderr}");
        let entry = certs.len() - 1;
        let prefix = format!(
            "{}:3:{}: listeners[0].tls.certificates[{entry}]: ",
            file.display(),
            column_of_entry(&file, entry)
        );
        assert!(
            stderr.starts_with(&prefix),
            "{certs:?}: expected {prefix:?} in {stderr}"
        );
        assert!(stderr.contains(expected), "{certs:?}: {stderr}");
    }
}

/// The 1-based column where the `index`th `{ cert = ... }` entry starts on line 3.
fn column_of_entry(file: &Path, index: usize) -> usize {
    let text = std::fs::read_to_string(file).expect("read");
    let line = text.lines().nth(2).expect("line 3");
    line.match_indices("{ cert =").nth(index).expect("entry").0 + 1
}

/// Bodies through the HTTP/1 engine over TLS, both ways at once and large: a 4 MiB download,
/// a 1 MiB echo (the request body goes up while the response comes down) and a 3 MiB upload,
/// all on one kept-alive session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_over_tls() {
    use http_body_util::{BodyExt, Full};
    let origin = spawn_origin("a").await;
    let pki = Pki::new("bodies");
    pki.issue("site", &["a.test"]);
    let sy = spawn_steelyard(config(&tls_toml(&pki, &["site"], &origin))).await;
    let stream = connect(&pki, &[b"http/1.1"], sy.addr, "a.test").await;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let send = |method: &str, path: &str, body: Vec<u8>| {
        http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "a.test")
            .body(Full::new(bytes::Bytes::from(body)))
            .expect("request")
    };

    let res = sender
        .send_request(send("GET", "/download?bytes=4194304", Vec::new()))
        .await
        .expect("download");
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body.len(), 4 << 20);
    assert_eq!(&body[..], &pattern_chunk(0, 4 << 20)[..], "every byte in place");

    let echo: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
    let res = sender
        .send_request(send("POST", "/echo", echo.clone()))
        .await
        .expect("echo");
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], &echo[..]);

    let upload = vec![7u8; 3 << 20];
    let expected = format!("{} {}", upload.len(), checksum(CHECKSUM_SEED, &upload));
    let res = sender
        .send_request(send("POST", "/upload", upload))
        .await
        .expect("upload");
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(String::from_utf8_lossy(&body), expected);
}

/// An expired certificate is a warning, not an error: `check` names it and passes.
#[tokio::test]
async fn an_expired_certificate_is_a_warning() {
    let origin = spawn_origin("a").await;
    let pki = Pki::new("expired");
    pki.issue_with("old", &["a.test"], |p| {
        p.not_before = rcgen::date_time_ymd(1999, 1, 1);
        p.not_after = rcgen::date_time_ymd(2000, 1, 1);
    });
    let file = pki.dir.join("expired.toml");
    std::fs::write(&file, tls_toml(&pki, &["old"], &origin)).expect("write");
    let out = run_check(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let expected = format!(
        "warning: {}:3:{}: listeners[0].tls.certificates[0]: {} expired on 2000-01-01",
        file.display(),
        column_of_entry(&file, 0),
        pki.path("old.pem")
    );
    assert!(stderr.contains(&expected), "expected {expected:?} in {stderr}");
}

/// A plain listener with `redirect_https = true` sends every request to its `https://` URL
/// (308, the host without its port, the target kept) and forwards nothing.
#[tokio::test]
async fn a_plain_listener_can_redirect_to_https() {
    let origin = spawn_origin("a").await;
    let toml = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\nredirect_https = true\nroutes = [{{ pool = \"main\" }}]\n[pools.main]\nbackends = [\"{}\"]\n",
        origin.addr
    );
    let sy = spawn_steelyard(config(&toml)).await;
    for (host, target, location) in [
        ("shop.test:8080", "/cart?item=1", "https://shop.test/cart?item=1"),
        ("[::1]:80", "/", "https://[::1]/"),
        ("plain.test", "http://plain.test/abs", "https://plain.test/abs"),
    ] {
        let response = raw_exchange(
            sy.addr,
            format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            response.starts_with("HTTP/1.1 308 Permanent Redirect\r\n"),
            "{response}"
        );
        assert_eq!(raw_header_map(&response)["location"], location, "{response}");
    }
    let h2_no_follow = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let h2 = h2_no_follow.get(sy.url("/over/h2?x=1")).send().await.expect("h2");
    assert_eq!(h2.status(), 308);
    assert_eq!(h2.headers()["location"], "https://127.0.0.1/over/h2?x=1");
    assert_eq!(origin.requests(), 0, "nothing is forwarded");

    let both = toml.replace(
        "redirect_https = true",
        "redirect_https = true\ntls = { certificates = [{ cert = \"a.pem\", key = \"a.key\" }] }",
    );
    let errors = steelyard::Config::from_toml(&both, "r.toml", &steelyard::config::LiteralsOnly)
        .expect_err("both")
        .to_string();
    assert!(
        errors.contains("r.toml:3:18: listeners[0].redirect_https: this listener already terminates TLS"),
        "{errors}"
    );
}

/// Quick mode takes `--tls-cert`/`--tls-key`; `--watch` follows the PEM files a config names:
/// new files at the same paths are used by the next handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_mode_and_watch_through_the_binary() {
    let origin = spawn_origin("a").await;
    let pki = Pki::new("binary");
    let first = pki.issue("site", &["a.test"]);
    let mut quick = Process::start(&[
        "--listen",
        "127.0.0.1:0",
        "--backend",
        &origin.addr.to_string(),
        "--tls-cert",
        &pki.path("site.pem"),
        "--tls-key",
        &pki.path("site.key"),
    ]);
    let addr = quick.listening_addr();
    let mut stream = connect(&pki, &[b"http/1.1"], addr, "a.test").await;
    assert_eq!(leaf(&stream), first);
    assert_eq!(get_over(&mut stream, "a.test").await, "a");
    quick.signal("-TERM");
    quick.wait();

    let file = pki.dir.join("watch.toml");
    std::fs::write(&file, tls_toml(&pki, &["site"], &origin)).expect("write");
    let mut watching = Process::start(&["--config", file.to_str().expect("utf-8"), "--watch"]);
    let addr = watching.listening_addr();
    assert_eq!(leaf(&connect(&pki, &[b"http/1.1"], addr, "a.test").await), first);
    // Renewed at the same paths (as certbot or cert-manager do).
    let renewed = pki.issue("site", &["a.test"]);
    watching.wait_for_line("file changed: reloading the config");
    watching.wait_for_line("config reloaded");
    assert_eq!(leaf(&connect(&pki, &[b"http/1.1"], addr, "a.test").await), renewed);
    watching.signal("-TERM");
    watching.wait();
}

/// Client certificates: required, a client without one is refused; optional, it is served;
/// either way a verified subject reaches the access log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_verified_and_logged() {
    let origin = spawn_origin("a").await;
    let pki = Pki::new("mtls");
    pki.issue("site", &["a.test"]);
    std::fs::write(pki.dir.join("ca.pem"), pki.issuer.pem()).expect("ca");
    for (mode, without_cert_served) in [("required", false), ("optional", true)] {
        let log = pki.dir.join(format!("{mode}.log"));
        let _ = std::fs::remove_file(&log);
        let toml = tls_toml(&pki, &["site"], &origin).replace(
            "] }",
            &format!(
                "], client_ca = \"{}\", client_auth = \"{mode}\" }}\naccess_log = {{ path = \"{}\", format = \"json\" }}",
                pki.path("ca.pem"),
                log.display()
            ),
        );
        let sy = spawn_steelyard(config(&toml)).await;
        let tcp = TcpStream::connect(sy.addr).await.expect("connect");
        let name = ServerName::try_from("a.test").expect("name");
        let served = match pki.connector(&[b"http/1.1"]).connect(name.clone(), tcp).await {
            Err(_) => false,
            Ok(mut s) => {
                let sent = s.write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await.is_ok();
                let mut buf = [0u8; 64];
                sent && matches!(s.read(&mut buf).await, Ok(n) if n > 0)
            }
        };
        assert_eq!(served, without_cert_served, "{mode}: a client without a certificate");

        let tcp = TcpStream::connect(sy.addr).await.expect("connect");
        let mut with = pki
            .connector_as(&[b"http/1.1"], Some("client-1"))
            .connect(name, tcp)
            .await
            .expect("handshake with a client certificate");
        assert_eq!(get_over(&mut with, "a.test").await, "a", "{mode}");
        eventually("the access log line", || async {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("\"tls_client\":\"CN=client-1\""))
        })
        .await;
    }
}

/// `steelyard demo --https ADDR` serves HTTPS with a certificate it makes at start and says
/// which file to trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_https_with_a_certificate_it_makes() {
    let mut p = Process::start(&["demo", "--listen", "127.0.0.1:0", "--https", "127.0.0.1:0"]);
    let line = p.wait_for_line("HTTPS     https://localhost:");
    let port: u16 = line
        .split("https://localhost:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("port");
    let cacert = line
        .split("--cacert ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .expect("cacert path");
    let mut roots = rustls::RootCertStore::empty();
    for cert in <CertificateDer as rustls::pki_types::pem::PemObject>::pem_file_iter(cacert).expect("pem") {
        roots.add(cert.expect("cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let mut stream = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("the demo certificate verifies for localhost");
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut bytes = Vec::new();
    let read = stream.read_to_end(&mut bytes).await;
    let response = String::from_utf8_lossy(&bytes);
    assert!(response.starts_with("HTTP/1.1 200"), "{response} ({read:?})");
    assert!(response.contains("Hello from origin-1"), "{response}");
    p.signal("-TERM");
    p.wait();
}

/// reqwest over TLS, trusting only the test CA: SNI picks each name's certificate (seen in
/// the session), HTTP/2 is agreed by ALPN, and a name no certificate covers fails verification.
#[tokio::test]
async fn reqwest_gets_the_certificate_of_each_name() {
    let origin = spawn_origin("a").await;
    let pki = Pki::new("reqwest");
    let a = pki.issue("a", &["a.test"]);
    let b = pki.issue("b", &["b.test"]);
    let sy = spawn_steelyard(config(&tls_toml(&pki, &["a", "b"], &origin))).await;
    let ca = reqwest::Certificate::from_der(pki.ca.as_ref()).expect("CA");
    let port = sy.addr.port();
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .tls_info(true)
        .resolve("a.test", sy.addr)
        .resolve("b.test", sy.addr)
        .resolve("c.test", sy.addr)
        .build()
        .expect("client");
    for (name, expected) in [("a.test", &a), ("b.test", &b)] {
        let res = client
            .get(format!("https://{name}:{port}/"))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status().as_u16(), 200);
        assert_eq!(res.version(), reqwest::Version::HTTP_2, "ALPN h2");
        let info = res.extensions().get::<reqwest::tls::TlsInfo>().expect("TLS info");
        assert_eq!(info.peer_certificate(), Some(expected.as_ref()), "{name}");
        assert_eq!(res.text().await.expect("body"), "a");
    }
    let refused = client.get(format!("https://c.test:{port}/")).send().await;
    let error = refused.expect_err("c.test is covered by no certificate");
    assert!(format!("{error:?}").contains("NotValidForName"), "{error:?}");
}

/// curl, a client users reach for first, negotiates HTTP/2 by ALPN and verifies the
/// certificate against the test CA.
#[tokio::test]
async fn curl_speaks_http2_over_tls() {
    let origin = spawn_origin("a").await;
    let pki = Pki::new("curl");
    pki.issue("a", &["a.test"]);
    let sy = spawn_steelyard(config(&tls_toml(&pki, &["a"], &origin))).await;
    let ca = pki.write_ca();
    let port = sy.addr.port();
    let out = tokio::process::Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--http2",
            "--cacert",
            &ca,
            "--resolve",
            &format!("a.test:{port}:127.0.0.1"),
            "--write-out",
            " %{http_version} %{http_code}",
            &format!("https://a.test:{port}/"),
        ])
        .output()
        .await
        .unwrap_or_else(|e| panic!("curl is needed (./test installs it: apt-get install curl): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, "a 2 200");
}
