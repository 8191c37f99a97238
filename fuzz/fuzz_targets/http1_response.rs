//! A response head, as a backend may send it: parsing never panics, and an accepted head
//! rewritten for the client parses again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steelyard::http1::head::{parse_response, Method};
use steelyard::http1::write::{client_framing, response_head};

fuzz_target!(|data: &[u8]| {
    let mut fields = Vec::new();
    let Ok(Some(res)) = parse_response(data, 64 * 1024, &mut fields) else {
        return;
    };
    for (method, minor) in [(Method::Get, 1), (Method::Head, 1), (Method::Get, 0)] {
        let framing = client_framing(&res, method, minor);
        let mut out = Vec::new();
        response_head(&mut out, data, &res, &fields, framing, true, minor, Some(b"srv=1"));
        let mut again = Vec::new();
        match parse_response(&out, usize::MAX, &mut again) {
            Ok(Some(_)) => {}
            other => panic!("the rewritten head does not parse: {other:?}\n{:?}", String::from_utf8_lossy(&out)),
        }
    }
});
