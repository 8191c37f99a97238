//! Backend specs, listen addresses and durations as users write them: parsing never panics
//! and never resolves a name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steelyard::config::{parse_backend_addresses, parse_duration, parse_listen_address, LiteralsOnly};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok((addrs, name)) = parse_backend_addresses(s, &LiteralsOnly) {
        assert!(!addrs.is_empty());
        assert!(name.is_none(), "no name resolves here");
    }
    let _ = parse_listen_address(s, &LiteralsOnly);
    let _ = parse_duration(s);
});
