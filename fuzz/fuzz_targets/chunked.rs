//! A chunked body: decoding never panics, every event lies within the bytes consumed, and
//! decoding the same bytes split at any point gives the same data and the same verdict.
#![no_main]

use libfuzzer_sys::fuzz_target;
use steelyard::http1::chunked::{Decoder, Event};

/// The data bytes, the trailers, whether it ended, and whether it failed.
fn decode(pieces: &[&[u8]]) -> (Vec<u8>, Vec<u8>, bool, bool) {
    let mut decoder = Decoder::new();
    let (mut data, mut trailers) = (Vec::new(), Vec::new());
    let mut pending: Vec<u8> = Vec::new();
    for piece in pieces {
        pending.extend_from_slice(piece);
        while !decoder.is_done() {
            let (used, event) = match decoder.decode(&pending) {
                Ok(r) => r,
                Err(_) => return (data, trailers, decoder.is_done(), true),
            };
            assert!(used <= pending.len(), "consumed more than given");
            match event {
                Some(Event::Data { start, len }) => {
                    assert!(start + len <= used, "data outside the consumed bytes");
                    data.extend_from_slice(&pending[start..start + len]);
                }
                Some(Event::End { start, len }) => {
                    assert!(start + len <= used, "trailers outside the consumed bytes");
                    trailers.extend_from_slice(&pending[start..start + len]);
                }
                None => {
                    pending.drain(..used);
                    break;
                }
            }
            pending.drain(..used);
        }
    }
    (data, trailers, decoder.is_done(), false)
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, body)) = input.split_first() else { return };
    let whole = decode(&[body]);
    let at = usize::from(cut) % (body.len() + 1);
    let split = decode(&[&body[..at], &body[at..]]);
    assert_eq!(whole, split, "split at {at}");
});
