//! The HTTP/1 engine at the edge, through the real binary: a table of raw requests with the
//! verdict for each RFC 9112/9110 rule, checked against what a recording origin received,
//! byte for byte, and what the client got.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("steelyard-edge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// The real binary in front of `origin`, with `listener_extra` TOML lines on its listener.
fn start(name: &str, origin: SocketAddr, listener_extra: &str) -> (Process, SocketAddr) {
    let path = temp_config(
        &format!("{name}.toml"),
        &format!(
            "[server]\nworkers = 1\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n{listener_extra}\nroutes = [{{ pool = \"main\" }}]\n\n[pools.main]\nbackends = [\"{origin}\"]\n"
        ),
    );
    let mut p = Process::start(&["--config", path.to_str().expect("utf-8 path"), "--admin", "off"]);
    let addr = p.listening_addr();
    (p, addr)
}

/// The status line of a raw response.
fn status_line(response: &str) -> &str {
    response.split("\r\n").next().unwrap_or("")
}

/// Refused requests: the client gets the status and a closed connection; the origin gets
/// nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_and_never_forwarded() {
    let (origin, recording) = spawn_recording_origin(b"").await;
    let (_p, addr) = start("refused", origin, "");
    let big_field = format!("X-Big: {}\r\n", "a".repeat(70 * 1024));
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(9 * 1024));
    let many_fields: String = (0..101).map(|i| format!("X-F{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "CL with TE",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "differing CLs",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".to_vec(),
            "400",
        ),
        (
            "signed CL",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc".to_vec(),
            "400",
        ),
        (
            "CL list",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc".to_vec(),
            "400",
        ),
        (
            "CL with spaces inside",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\nabc".to_vec(),
            "400",
        ),
        (
            "CL overflow",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "TE chunked not last",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "TE chunked twice",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "TE other coding",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            "501",
        ),
        (
            "TE on HTTP/1.0",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n".to_vec(),
            "400",
        ),
        ("bare CR", b"GET / HTTP/1.1\r\nHost: a\rX-A: b\r\n\r\n".to_vec(), "400"),
        ("bare LF", b"GET / HTTP/1.1\nHost: a\n\n".to_vec(), "400"),
        (
            "space in field name",
            b"GET / HTTP/1.1\r\nHost: a\r\nX A: b\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "space before colon",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "control byte in name",
            b"GET / HTTP/1.1\r\nHost: a\r\nX\x01A: b\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "NUL in value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "CTL in value",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x07c\r\n\r\n".to_vec(),
            "400",
        ),
        ("no Host on 1.1", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n".to_vec(), "400"),
        (
            "two Hosts",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(),
            "400",
        ),
        ("invalid Host", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec(), "400"),
        (
            "HTTP/2.0 in a request line",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n".to_vec(),
            "505",
        ),
        ("HTTP/1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n".to_vec(), "505"),
        ("garbled version", b"GET / HTXP/1.1\r\nHost: a\r\n\r\n".to_vec(), "400"),
        (
            "raw byte in target",
            b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            "400",
        ),
        (
            "two spaces in request line",
            b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
            "400",
        ),
        ("asterisk on GET", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), "400"),
        (
            "CONNECT",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec(),
            "405",
        ),
        (
            "head over 64 KiB",
            format!("GET / HTTP/1.1\r\nHost: a\r\n{big_field}\r\n").into_bytes(),
            "431",
        ),
        ("target over 8 KiB", long_uri.into_bytes(), "414"),
        (
            "101 fields",
            format!("GET / HTTP/1.1\r\nHost: a\r\n{many_fields}\r\n").into_bytes(),
            "431",
        ),
    ];
    for (name, request, status) in &cases {
        let response = raw_exchange(addr, request).await;
        let line = status_line(&response);
        assert!(line.starts_with(&format!("HTTP/1.1 {status} ")), "{name}: got {line:?}");
        assert!(response.contains("\r\nConnection: close\r\n"), "{name}: {response:?}");
    }
    assert_eq!(recording.text(), "", "nothing reached the origin");
    assert_eq!(recording.connections(), 0);
}

/// What the origin gets for accepted requests, exactly: hop-by-hop fields gone, framing
/// regenerated, the forwarding fields added, everything else in order as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_requests_reach_the_origin_exactly_as_rewritten() {
    let fwd = "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n";
    let cases: Vec<(&str, &[u8], String)> = vec![
        (
            "plain GET",
            b"GET /a?b=1 HTTP/1.1\r\nHost: app.test\r\nUser-Agent: t/1\r\nX-Request-Id: r1\r\nConnection: close\r\n\r\n",
            format!("GET /a?b=1 HTTP/1.1\r\nHost: app.test\r\nUser-Agent: t/1\r\nX-Request-Id: r1\r\n{fwd}X-Forwarded-Host: app.test\r\nVia: 1.1 steelyard\r\n\r\n"),
        ),
        (
            "hop-by-hop fields named by Connection",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers\r\nX-Request-Id: r2\r\n\r\n",
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: r2\r\n{fwd}X-Forwarded-Host: a\r\nVia: 1.1 steelyard\r\n\r\n"),
        ),
        (
            "absolute form: the target's authority wins over Host",
            b"GET http://real.test:8080/p?q HTTP/1.1\r\nHost: other.test\r\nX-Request-Id: r3\r\nConnection: close\r\n\r\n",
            format!("GET /p?q HTTP/1.1\r\nX-Request-Id: r3\r\nHost: real.test:8080\r\n{fwd}X-Forwarded-Host: real.test:8080\r\nVia: 1.1 steelyard\r\n\r\n"),
        ),
        (
            "absolute form without a path forwards / (found by fuzzing)",
            b"GET http://real.test HTTP/1.1\r\nX-Request-Id: r3b\r\nConnection: close\r\n\r\n",
            format!("GET / HTTP/1.1\r\nX-Request-Id: r3b\r\nHost: real.test\r\n{fwd}X-Forwarded-Host: real.test\r\nVia: 1.1 steelyard\r\n\r\n"),
        ),
        (
            "existing X-Forwarded-For and Via are appended to",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.9\r\nVia: 1.1 edge\r\nX-Forwarded-Proto: https\r\nX-Request-Id: r4\r\nConnection: close\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 203.0.113.9, 127.0.0.1\r\nVia: 1.1 edge, 1.1 steelyard\r\nX-Request-Id: r4\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n".to_string(),
        ),
        (
            "Content-Length body",
            b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-Request-Id: r5\r\nConnection: close\r\n\r\nhello",
            format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-Request-Id: r5\r\n{fwd}X-Forwarded-Host: a\r\nVia: 1.1 steelyard\r\n\r\nhello"),
        ),
        (
            "chunked body: extensions dropped, trailers kept, chunks re-encoded",
            b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-Request-Id: r6\r\nConnection: close\r\n\r\n5;ext=1\r\nhello\r\n006\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n",
            format!("POST /up HTTP/1.1\r\nHost: a\r\nX-Request-Id: r6\r\n{fwd}X-Forwarded-Host: a\r\nVia: 1.1 steelyard\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 11\r\n\r\n"),
        ),
        (
            "Max-Forwards is decremented on OPTIONS",
            b"OPTIONS /x HTTP/1.1\r\nHost: a\r\nMax-Forwards: 5\r\nX-Request-Id: r7\r\nConnection: close\r\n\r\n",
            format!("OPTIONS /x HTTP/1.1\r\nHost: a\r\nMax-Forwards: 4\r\nX-Request-Id: r7\r\n{fwd}X-Forwarded-Host: a\r\nVia: 1.1 steelyard\r\n\r\n"),
        ),
        (
            "OPTIONS * is forwarded",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\nX-Request-Id: r8\r\nConnection: close\r\n\r\n",
            format!("OPTIONS * HTTP/1.1\r\nHost: a\r\nX-Request-Id: r8\r\n{fwd}X-Forwarded-Host: a\r\nVia: 1.1 steelyard\r\n\r\n"),
        ),
        (
            "Upgrade: h2c is never forwarded",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nX-Request-Id: r9\r\n\r\n",
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: r9\r\n{fwd}X-Forwarded-Host: a\r\nVia: 1.1 steelyard\r\n\r\n"),
        ),
        (
            "HTTP/1.0 without Host gets the backend's",
            b"GET /old HTTP/1.0\r\nX-Request-Id: r10\r\n\r\n",
            "GET /old HTTP/1.1\r\nX-Request-Id: r10\r\nHost: ORIGIN\r\nX-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\nVia: 1.0 steelyard\r\n\r\n".to_string(),
        ),
        (
            "Expect: 100-continue is forwarded",
            b"PUT /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\nX-Request-Id: r11\r\nConnection: close\r\n\r\nhi",
            format!("PUT /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\nX-Request-Id: r11\r\n{fwd}X-Forwarded-Host: a\r\nVia: 1.1 steelyard\r\n\r\nhi"),
        ),
    ];
    for (name, request, expected) in cases {
        let (origin, recording) = spawn_recording_origin(b"").await;
        let (_p, addr) = start("accepted", origin, "");
        let response = raw_exchange(addr, request).await;
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK", "{name}: {response:?}");
        assert!(response.ends_with("\r\n\r\nok"), "{name}: {response:?}");
        let expected = expected.replace("ORIGIN", &origin.to_string());
        assert_eq!(recording.text(), expected, "{name}");
    }
}

/// A client's `X-Request-Id` is kept only when it is one short, printable value and the
/// listener trusts clients; otherwise the origin gets exactly one id of ours instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_request_ids_are_replaced() {
    let long = "x".repeat(129);
    let cases: Vec<(&str, String, &str, bool)> = vec![
        ("kept", "X-Request-Id: abc-123_/+=:.\r\n".into(), "", true),
        ("too long", format!("X-Request-Id: {long}\r\n"), "", false),
        ("a quote", "X-Request-Id: a\"b\r\n".into(), "", false),
        ("a space", "X-Request-Id: a b\r\n".into(), "", false),
        (
            "two ids",
            "X-Request-Id: one\r\nX-Request-Id: two\r\n".into(),
            "",
            false,
        ),
        (
            "listener trusts no client",
            "X-Request-Id: fine\r\n".into(),
            "trust_request_id = false",
            false,
        ),
    ];
    for (name, id_fields, listener_extra, kept) in cases {
        let (origin, recording) = spawn_recording_origin(b"").await;
        let (_p, addr) = start("ids", origin, listener_extra);
        let request = format!("GET / HTTP/1.1\r\nHost: a\r\n{id_fields}Connection: close\r\n\r\n");
        let response = raw_exchange(addr, request.as_bytes()).await;
        assert_eq!(status_line(&response), "HTTP/1.1 200 OK", "{name}");
        let got = recording.text();
        let ids: Vec<&str> = got
            .split("\r\n")
            .filter_map(|l| l.strip_prefix("X-Request-Id: "))
            .collect();
        assert_eq!(ids.len(), 1, "{name}: exactly one id goes upstream: {got:?}");
        if kept {
            assert_eq!(ids[0], "abc-123_/+=:.", "{name}");
        } else {
            assert!(
                ids[0].len() == 16 && ids[0].bytes().all(|b| b.is_ascii_hexdigit()),
                "{name}: ours replaces it: {got:?}"
            );
        }
    }
}

/// Framing errors inside a chunked body: the client gets a 400 (not a 502); the origin got the
/// head and the valid chunks, never the malformed bytes, and its connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunks_get_400_and_reach_no_origin() {
    for (name, body) in [
        ("bad size", &b"5\r\nhello\r\nzz\r\nabc\r\n0\r\n\r\n"[..]),
        ("bare LF after size", b"5\nhello\r\n0\r\n\r\n"),
        ("data longer than its size", b"3\r\nhello\r\n0\r\n\r\n"),
        ("size overflow", b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ("control byte in extension", b"5;a\x01\r\nhello\r\n0\r\n\r\n"),
    ] {
        let (origin, recording) = spawn_recording_origin(b"").await;
        let (_p, addr) = start("chunks", origin, "");
        let mut request =
            b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-Request-Id: c1\r\n\r\n".to_vec();
        request.extend_from_slice(body);
        let response = raw_exchange(addr, &request).await;
        assert!(
            status_line(&response).starts_with("HTTP/1.1 400 "),
            "{name}: {response:?}"
        );
        eventually("the origin to see its connection end", || async {
            !recording.text().is_empty()
        })
        .await;
        let got = recording.text();
        assert!(got.starts_with("POST /c HTTP/1.1\r\n"), "{name}: {got:?}");
        assert!(
            !got.contains("zz") && !got.contains("hello\n") && !got.contains("\x01"),
            "{name}: {got:?}"
        );
        assert_eq!(
            recording.requests(),
            0,
            "{name}: no complete request reached the origin"
        );
    }
}

/// TRACE and OPTIONS with `Max-Forwards: 0` are answered by Steelyard itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_forwards_zero_is_answered_locally() {
    let (origin, recording) = spawn_recording_origin(b"").await;
    let (_p, addr) = start("maxfwd", origin, "");
    let options = raw_exchange(
        addr,
        b"OPTIONS / HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_line(&options), "HTTP/1.1 200 OK");
    assert!(options.contains("\r\nAllow: "), "{options:?}");
    let trace = raw_exchange(
        addr,
        b"TRACE / HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_line(&trace), "HTTP/1.1 200 OK");
    assert_eq!(recording.connections(), 0);
}

/// Pipelined requests in one write are answered in order, each forwarded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (origin, recording) = spawn_recording_origin(b"").await;
    let (_p, addr) = start("pipeline", origin, "");
    let request = b"GET /1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: p1\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nX-Request-Id: p2\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: a\r\nX-Request-Id: p3\r\nConnection: close\r\n\r\n";
    let response = raw_exchange(addr, request).await;
    assert_eq!(response.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{response:?}");
    let got = recording.text();
    let order: Vec<&str> = got
        .lines()
        .map(|l| l.trim_start_matches("abc"))
        .filter(|l| l.starts_with("GET") || l.starts_with("POST"))
        .collect();
    assert_eq!(order, ["GET /1 HTTP/1.1", "POST /2 HTTP/1.1", "GET /3 HTTP/1.1"]);
    assert!(
        got.contains("\r\n\r\nabcGET /3"),
        "the body is forwarded whole: {got:?}"
    );
}

/// A client that half-closes after a complete request still gets its response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_client_still_gets_its_response() {
    let (origin, _recording) = spawn_recording_origin(b"").await;
    let (_p, addr) = start("halfclose", origin, "");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    stream.shutdown().await.expect("half-close");
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out))
        .await
        .expect("closed after the response")
        .expect("read");
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n") && text.ends_with("ok"),
        "{text:?}"
    );
}

/// Response framing: what a client gets for each kind of response head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_framed_for_the_client() {
    let set_cookies: String = (0..200)
        .map(|i| format!("Set-Cookie: c{i}={}\r\n", "v".repeat(300)))
        .collect();
    let many = format!("HTTP/1.1 200 OK\r\n{set_cookies}Content-Length: 2\r\n\r\nok");
    let cases: Vec<(&str, &[u8], Vec<u8>, &str)> = vec![
        (
            "close-delimited body is re-framed as chunked for HTTP/1.1",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\nstreamed".to_vec(),
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n8\r\nstreamed\r\n0\r\n\r\n",
        ),
        (
            "close-delimited body stays close-delimited for HTTP/1.0",
            b"GET / HTTP/1.0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nX-A: 1\r\n\r\nstreamed".to_vec(),
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nConnection: close\r\n\r\nstreamed",
        ),
        (
            "chunked response: trailers forwarded, extensions dropped",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n2;x=y\r\nok\r\n0\r\nX-Sum: 2\r\n\r\n".to_vec(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nok\r\n0\r\nX-Sum: 2\r\n\r\n",
        ),
        (
            "Content-Length with chunked: chunked wins, the length is dropped",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        (
            "103 Early Hints is relayed before the response",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        ),
        (
            "1xx is never sent to an HTTP/1.0 client",
            b"GET / HTTP/1.0\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        ),
        (
            "HEAD keeps the length and sends no body",
            b"HEAD / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec(),
            "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nConnection: close\r\n\r\n",
        ),
        (
            "304 has no body",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n".to_vec(),
            "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nConnection: close\r\n\r\n",
        ),
        (
            "hop-by-hop response fields are removed",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: X-Private\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        ),
        (
            "200 long Set-Cookie fields pass in order",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            many.clone().into_bytes(),
            "",
        ),
    ];
    for (name, request, origin_response, expected) in cases {
        let (origin, _recording) = spawn_recording_origin(&origin_response).await;
        let (_p, addr) = start("responses", origin, "");
        let got = raw_exchange(addr, request).await;
        if expected.is_empty() {
            let expected = many.replace("Content-Length: 2\r\n", "Content-Length: 2\r\nConnection: close\r\n");
            assert_eq!(got, expected, "{name}");
        } else {
            assert_eq!(got, expected, "{name}");
        }
    }
}

/// Malformed response heads are a 502; the client never sees the bad bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_responses_are_502() {
    for (name, response) in [
        (
            "obs-fold",
            &b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 2\r\n\r\nok"[..],
        ),
        (
            "differing lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        ),
        ("bad length", b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok"),
        ("bare LF", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
        (
            "TE other than chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
        ),
        (
            "101 nobody asked for",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        ),
        ("garbage", b"SMTP ready\r\n\r\n"),
    ] {
        let (origin, _recording) = spawn_recording_origin(response).await;
        let (_p, addr) = start("badresponse", origin, "");
        let got = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
        assert!(status_line(&got).starts_with("HTTP/1.1 502 "), "{name}: {got:?}");
    }
}

/// A request body larger than `limits.request_body` is refused with 413 before anything is
/// forwarded; chunked bodies are cut off when they pass the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_limit_is_413() {
    let (origin, recording) = spawn_recording_origin(b"").await;
    let (_p, addr) = start("bodylimit", origin, "limits = { request_body = 10 }");
    let got = raw_exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world",
    )
    .await;
    assert!(status_line(&got).starts_with("HTTP/1.1 413 "), "{got:?}");
    assert_eq!(recording.connections(), 0);
    let got = raw_exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhelloworld",
    )
    .await;
    assert_eq!(status_line(&got), "HTTP/1.1 200 OK");
    let got = raw_exchange(
        addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
    )
    .await;
    assert!(status_line(&got).starts_with("HTTP/1.1 413 "), "{got:?}");
}

/// Clients that connect and say nothing, or drip a head a byte at a time, are all closed once
/// the head timeout passes, while ordinary requests keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_dripping_clients_are_closed_after_the_head_timeout() {
    let (origin, _recording) = spawn_recording_origin(b"").await;
    let (_p, addr) = start("slowloris", origin, "timeouts = { head = \"2s\" }");
    let started = std::time::Instant::now();
    let mut silent = Vec::new();
    let mut dripping = Vec::new();
    for i in 0..1000 {
        let stream = TcpStream::connect(addr).await.expect("connect");
        if i % 2 == 0 {
            silent.push(stream);
        } else {
            dripping.push(stream);
        }
    }
    // Dripping clients send one byte of a head every 500 ms.
    let drip = tokio::spawn(async move {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: 1\r\n";
        let mut closed = vec![false; dripping.len()];
        for byte in head {
            for (i, s) in dripping.iter_mut().enumerate() {
                if !closed[i] && s.write_all(&[*byte]).await.is_err() {
                    closed[i] = true;
                }
            }
            if closed.iter().all(|&c| c) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(
            closed.iter().all(|&c| c),
            "every dripping client was cut off before its head ended"
        );
        dripping
    });
    // Meanwhile, ordinary requests are served.
    let client = client();
    for _ in 0..20 {
        assert_eq!(get(&client, &format!("http://{addr}/")).await.0, 200);
    }
    let mut closed_within = Duration::ZERO;
    for mut s in silent {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "a silent client gets no response, only a close");
        closed_within = closed_within.max(started.elapsed());
    }
    let dripping = drip.await.expect("drip task");
    for mut s in dripping {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
            .await
            .expect("closed");
        let text = String::from_utf8_lossy(&out);
        assert!(text.is_empty() || text.starts_with("HTTP/1.1 408 "), "{text:?}");
        closed_within = closed_within.max(started.elapsed());
    }
    assert!(
        closed_within < Duration::from_secs(9),
        "all closed within {closed_within:?}"
    );
    assert_eq!(get(&client, &format!("http://{addr}/")).await.0, 200);
}

/// With few file descriptors, a flood of connections gets 503s and closes, not EMFILE: the
/// default connection cap follows the descriptor limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_gets_503_within_the_descriptor_limit() {
    let (origin, _recording) = spawn_recording_origin(b"").await;
    let path = temp_config(
        "flood.toml",
        &format!(
            "[server]\nworkers = 1\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ pool = \"main\" }}]\n\n[pools.main]\nbackends = [\"{origin}\"]\n"
        ),
    );
    let script = format!("ulimit -n 300 && exec {BIN} --config {} --admin off", path.display());
    let mut p = Process::start_command(std::process::Command::new("sh").args(["-c", &script]));
    let addr = p.listening_addr();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..150 {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("write");
        let mut buf = vec![0u8; 512];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("answer")
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("HTTP/1.1 503 ") {
            refused += 1;
        } else {
            assert!(text.starts_with("HTTP/1.1 200 OK"), "{text:?}");
            held.push(s);
        }
    }
    assert_eq!(held.len(), 75, "a quarter of 300 descriptors");
    assert_eq!(refused, 150 - 75);
    drop(held);
    eventually("connections to be admitted again", || async {
        get(&client(), &format!("http://{addr}/")).await.0 == 200
    })
    .await;
    p.signal("-TERM");
    assert_eq!(p.wait(), 0);
}

/// `Expect: 100-continue`: the origin's 100 reaches the client, which only then sends the
/// body; the final response follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_relayed() {
    let origin = spawn_origin("a").await;
    let (_p, addr) = start("expect", origin.addr, "");
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await
        .expect("write head");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("100")
            .expect("read");
        assert!(n > 0, "closed before 100 Continue");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got), "HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.expect("write body");
    let mut rest = Vec::new();
    while !String::from_utf8_lossy(&rest).contains("\r\n\r\n5 ") {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("200")
            .expect("read");
        assert!(n > 0, "closed before the response");
        rest.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200 OK\r\n"));
}
