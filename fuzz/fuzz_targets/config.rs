//! A config file: validation never panics and never resolves a name (only IP literals are
//! accepted here, so no input makes the fuzzer touch the network); an accepted config has
//! at least one listener and every route names a pool that exists.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steelyard::config::{Config, LiteralsOnly};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::from_toml(text, "fuzz.toml", &LiteralsOnly) {
        Ok(config) => {
            assert!(!config.listeners.is_empty());
            for l in &config.listeners {
                assert!(l.routes.iter().all(|r| r.pool < config.pools.len()));
            }
        }
        Err(errors) => {
            assert!(!errors.0.is_empty());
            for e in &errors.0 {
                assert!(e.line >= 1 && e.column >= 1, "{e}");
            }
        }
    }
});
