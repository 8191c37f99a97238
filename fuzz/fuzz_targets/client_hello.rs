//! The ClientHello reader of tls-passthrough listeners: any bytes, never a panic; a verdict
//! on a prefix never contradicts the one on the whole (more bytes only complete a hello).
#![no_main]

use libfuzzer_sys::fuzz_target;
use steelyard::proxy::client_hello::{parse, Hello};

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    if let Hello::Complete(Some(name)) = &whole {
        assert!(!name.is_empty() && name.len() <= 253);
    }
    for cut in [data.len() / 2, data.len().saturating_sub(1)] {
        let part = parse(&data[..cut]);
        if let Hello::Complete(name) = part {
            assert_eq!(whole, Hello::Complete(name), "a complete hello stays complete");
        }
    }
});
