//! A request head, as a client may send it: parsing never panics, a head found complete is
//! found complete at the same length when its bytes arrive one at a time, and rewriting an
//! accepted head for the backend yields a head the same parser accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steelyard::http1::head::{parse_request, HeadLimits};
use steelyard::http1::write::{request_head, Forwarding};

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits::default();
    let mut fields = Vec::new();
    let Ok(Some(req)) = parse_request(data, &limits, &mut fields) else {
        return;
    };
    // Arriving in two pieces changes nothing: every shorter prefix is incomplete or refused
    // the same way, never accepted with another length.
    for cut in [req.len / 2, req.len.saturating_sub(1)] {
        let mut f = Vec::new();
        if let Ok(Some(early)) = parse_request(&data[..cut], &limits, &mut f) {
            panic!("a prefix of {cut} bytes parsed as a head of {}", early.len);
        }
    }
    let fwd = Forwarding {
        client_ip: b"192.0.2.1",
        proto: b"http",
        backend_authority: b"127.0.0.1:8080",
        request_id: b"0123456789abcdef",
    };
    let mut out = Vec::new();
    request_head(&mut out, data, &req, &fields, &fwd);
    let mut again = Vec::new();
    // The rewrite adds up to five fields and some bytes: the backend's limits are not ours.
    let roomier = HeadLimits {
        max_bytes: usize::MAX,
        max_fields: limits.max_fields + 8,
        ..limits
    };
    match parse_request(&out, &roomier, &mut again) {
        Ok(Some(rewritten)) => assert_eq!(rewritten.len, out.len(), "the rewritten head is whole"),
        other => panic!("the rewritten head does not parse: {other:?}\n{:?}", String::from_utf8_lossy(&out)),
    }
});
