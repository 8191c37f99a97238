//! Hash keys and the request parts they read: `hash_key` specs, cookies, query strings and
//! header values from a parsed request. Never panics; the same request hashes the same way
//! through either header representation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steelyard::config::HashKey;
use steelyard::http1::head::{parse_request, HeadLimits};
use steelyard::upstream::hash_key::cookie;
use steelyard::upstream::RequestView;

fuzz_target!(|data: &[u8]| {
    // The first line is a hash_key spec, the rest a request head.
    let Some(newline) = data.iter().position(|&b| b == b'\n') else { return };
    let Ok(spec) = std::str::from_utf8(&data[..newline]) else { return };
    let head = &data[newline + 1..];
    let key = HashKey::parse(spec);
    let mut fields = Vec::new();
    let Ok(Some(req)) = parse_request(head, &HeadLimits::default(), &mut fields) else {
        return;
    };
    let target = std::str::from_utf8(req.path.get(head)).unwrap_or("/");
    let raw = RequestView::of_raw([127, 0, 0, 1].into(), head, &fields, target);
    let _ = cookie(&raw.headers, spec);
    let Ok(key) = key else { return };
    let from_raw = key.hash(&raw);
    // The same request as a header map (what HTTP/2 requests carry).
    let mut map = http::HeaderMap::new();
    for f in &fields {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(f.name.get(head)),
            http::header::HeaderValue::from_bytes(f.value.get(head)),
        ) {
            map.append(name, value);
        }
    }
    let Ok(uri) = target.parse::<http::Uri>() else { return };
    if uri.path() != raw.path || uri.query() != raw.query {
        return;
    }
    let mapped = RequestView::of_map([127, 0, 0, 1].into(), &map, &uri);
    assert_eq!(key.hash(&mapped), from_raw, "{key:?}");
});
