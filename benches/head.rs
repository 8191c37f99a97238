//! Cost of the HTTP/1 engine's per-request head work: parsing a typical browser request head
//! (with its checks), writing the head forwarded upstream, and parsing plus rewriting a
//! typical response head, each alone and all three together.
//!
//! Run: `cargo bench --bench head`. Results: docs/benchmarks.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use steelyard::http1::head::{parse_request, parse_response, HeadLimits, Method};
use steelyard::http1::write::{client_framing, request_head, response_head, Forwarding};

/// What Chromium sends for a page load, cookies included (about 700 bytes).
const REQUEST: &[u8] = b"GET /products/42?ref=home HTTP/1.1\r\n\
Host: shop.example.com\r\n\
Connection: keep-alive\r\n\
sec-ch-ua: \"Chromium\";v=\"156\", \"Not-A.Brand\";v=\"24\"\r\n\
sec-ch-ua-mobile: ?0\r\n\
sec-ch-ua-platform: \"Linux\"\r\n\
Upgrade-Insecure-Requests: 1\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8\r\n\
Sec-Fetch-Site: same-origin\r\n\
Sec-Fetch-Mode: navigate\r\n\
Sec-Fetch-User: ?1\r\n\
Sec-Fetch-Dest: document\r\n\
Referer: https://shop.example.com/\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-GB,en;q=0.9\r\n\
Cookie: session=6b1f0c2e9a7d4e3b8c5a; theme=dark; cart=3\r\n\r\n";

/// A typical HTML response head from an application server.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Date: Mon, 30 Nov 2026 12:00:00 GMT\r\n\
Content-Type: text/html; charset=utf-8\r\n\
Content-Length: 14532\r\n\
Connection: keep-alive\r\n\
Cache-Control: private, max-age=0\r\n\
Set-Cookie: session=6b1f0c2e9a7d4e3b8c5a; Path=/; HttpOnly; Secure; SameSite=Lax\r\n\
Vary: Accept-Encoding\r\n\
X-Content-Type-Options: nosniff\r\n\
Strict-Transport-Security: max-age=31536000\r\n\r\n";

fn fwd() -> Forwarding<'static> {
    Forwarding {
        client_ip: b"203.0.113.7",
        proto: b"http",
        backend_authority: b"10.0.0.2:8080",
        request_id: b"4f9c2a1b7e3d5f60",
    }
}

fn heads(c: &mut Criterion) {
    let limits = HeadLimits::default();
    let mut fields = Vec::with_capacity(64);
    let mut response_fields = Vec::with_capacity(64);
    let mut out = Vec::with_capacity(4096);
    let mut group = c.benchmark_group("http1");
    group.bench_function("parse request head", |b| {
        b.iter(|| black_box(parse_request(black_box(REQUEST), &limits, &mut fields).ok()))
    });
    let req = parse_request(REQUEST, &limits, &mut fields)
        .ok()
        .flatten()
        .expect("valid request");
    group.bench_function("write forwarded request head", |b| {
        b.iter(|| {
            request_head(&mut out, black_box(REQUEST), &req, &fields, &fwd());
            black_box(out.len())
        })
    });
    group.bench_function("parse and rewrite response head", |b| {
        b.iter(|| {
            let res = parse_response(black_box(RESPONSE), 65536, &mut response_fields)
                .ok()
                .flatten()
                .expect("valid response");
            let framing = client_framing(&res, Method::Get, 1);
            response_head(&mut out, RESPONSE, &res, &response_fields, framing, true, 1, None);
            black_box(out.len())
        })
    });
    group.bench_function("whole request: parse, forward, response", |b| {
        b.iter(|| {
            let req = parse_request(black_box(REQUEST), &limits, &mut fields)
                .ok()
                .flatten()
                .expect("valid request");
            request_head(&mut out, REQUEST, &req, &fields, &fwd());
            let res = parse_response(black_box(RESPONSE), 65536, &mut response_fields)
                .ok()
                .flatten()
                .expect("valid response");
            let framing = client_framing(&res, req.method, req.minor);
            response_head(&mut out, RESPONSE, &res, &response_fields, framing, true, 1, None);
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, heads);
criterion_main!(benches);
