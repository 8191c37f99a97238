//! A strict decoder for `Transfer-Encoding: chunked` (RFC 9112 §7.1).
//!
//! httparse's chunk-size parser is lenient (it accepts bare LF and odd whitespace), so the
//! proxy decodes chunks itself: `1*HEXDIG` sizes with an overflow cap, extensions without
//! control characters and of bounded length (dropped when re-encoding), CRLF exactly after
//! every size line and every chunk, and a bounded trailer section whose lines are checked
//! like header fields.

use super::head::is_token;

/// Longest chunk-extension accepted on one size line.
const MAX_EXTENSION: usize = 1024;
/// Largest trailer section accepted.
pub const MAX_TRAILERS: usize = 8 * 1024;

/// What the decoder found next in its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Chunk data: `len` bytes at `start` of the input.
    Data {
        /// Offset in the input.
        start: usize,
        /// Length.
        len: usize,
    },
    /// The body ended; the trailer field lines (each ending in CRLF, without the final empty
    /// line) are at `start..start + len` of the input.
    End {
        /// Offset in the input.
        start: usize,
        /// Length (0: no trailers).
        len: usize,
    },
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits (`digits` so far).
    Size,
    /// Whitespace after the size, before `;` or CR.
    SizeSpace,
    /// Inside a chunk extension.
    Extension,
    /// After the CR of a size line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// After chunk data, expecting CR.
    DataCr,
    /// After chunk data and CR, expecting LF.
    DataLf,
    /// After the last chunk: trailer lines, then an empty line.
    Trailers,
    /// Done.
    Done,
}

/// The decoder's state between reads.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    size: u64,
    digits: u8,
    extension: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder at the start of a body.
    pub fn new() -> Decoder {
        Decoder {
            state: State::Size,
            size: 0,
            digits: 0,
            extension: 0,
        }
    }

    /// True once the final chunk and trailers were decoded.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input`: returns how many bytes were consumed and, if found, the next
    /// event (whose ranges lie within the consumed bytes). `(n, None)` means every byte up to
    /// `n` was framing and more input is needed (the rest, if any, must be kept and offered
    /// again with more bytes after it).
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Option<Event>), ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Size => match hex(b) {
                    Some(d) => {
                        if self.digits >= 16 && self.size > 0 || self.size > (u64::MAX >> 5) {
                            return Err(ChunkError("chunk size too large"));
                        }
                        self.size = (self.size << 4) | u64::from(d);
                        self.digits = self.digits.saturating_add(1);
                        i += 1;
                    }
                    None if self.digits == 0 => return Err(ChunkError("missing chunk size")),
                    None => match b {
                        b'\r' => {
                            self.state = State::SizeLf;
                            i += 1;
                        }
                        b';' => {
                            self.state = State::Extension;
                            i += 1;
                        }
                        b' ' | b'\t' => {
                            self.state = State::SizeSpace;
                            i += 1;
                        }
                        _ => return Err(ChunkError("invalid chunk size")),
                    },
                },
                State::SizeSpace => match b {
                    b' ' | b'\t' => i += 1,
                    b';' => {
                        self.state = State::Extension;
                        i += 1;
                    }
                    _ => return Err(ChunkError("invalid chunk size line")),
                },
                State::Extension => {
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b != b'\t' && (b < 0x20 || b == 0x7f) {
                        return Err(ChunkError("control character in chunk extension"));
                    } else {
                        self.extension += 1;
                        if self.extension > MAX_EXTENSION {
                            return Err(ChunkError("chunk extension too long"));
                        }
                    }
                    i += 1;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("size line not ended by CRLF"));
                    }
                    i += 1;
                    self.extension = 0;
                    self.digits = 0;
                    if self.size == 0 {
                        self.state = State::Trailers;
                    } else {
                        self.state = State::Data;
                    }
                }
                State::Data => {
                    let len = (input.len() - i).min(usize::try_from(self.size).unwrap_or(usize::MAX));
                    self.size -= len as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    return Ok((i + len, Some(Event::Data { start: i, len })));
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError("chunk data not followed by CRLF"));
                    }
                    self.state = State::DataLf;
                    i += 1;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("chunk data not followed by CRLF"));
                    }
                    self.state = State::Size;
                    i += 1;
                }
                State::Trailers => return self.trailers(input, i),
                State::Done => return Ok((i, None)),
            }
        }
        Ok((i, None))
    }

    fn trailers(&mut self, input: &[u8], at: usize) -> Result<(usize, Option<Event>), ChunkError> {
        let rest = &input[at..];
        if rest.starts_with(b"\r\n") {
            self.state = State::Done;
            return Ok((at + 2, Some(Event::End { start: at, len: 0 })));
        }
        if rest.len() < 2 && rest.first().is_none_or(|&b| b == b'\r') {
            return Ok((at, None));
        }
        let Some(end) = memchr::memmem::find(rest, b"\r\n\r\n") else {
            if rest.len() > MAX_TRAILERS {
                return Err(ChunkError("trailer section too large"));
            }
            check_trailer_prefix(rest)?;
            return Ok((at, None));
        };
        if end + 2 > MAX_TRAILERS {
            return Err(ChunkError("trailer section too large"));
        }
        let section = &rest[..end + 2];
        check_trailers(section)?;
        self.state = State::Done;
        Ok((
            at + end + 4,
            Some(Event::End {
                start: at,
                len: end + 2,
            }),
        ))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Rejects a bare LF early, before the whole section arrived.
fn check_trailer_prefix(part: &[u8]) -> Result<(), ChunkError> {
    for i in memchr::memchr_iter(b'\n', part) {
        if i == 0 || part[i - 1] != b'\r' {
            return Err(ChunkError("bare LF in trailers"));
        }
    }
    Ok(())
}

/// Each line `name: value` CRLF, name a token, value without control characters.
fn check_trailers(section: &[u8]) -> Result<(), ChunkError> {
    let mut rest = section;
    while !rest.is_empty() {
        let Some(end) = memchr::memchr(b'\n', rest) else {
            return Err(ChunkError("unterminated trailer line"));
        };
        let line = &rest[..end];
        let Some(line) = line.strip_suffix(b"\r") else {
            return Err(ChunkError("bare LF in trailers"));
        };
        let Some(colon) = memchr::memchr(b':', line) else {
            return Err(ChunkError("trailer line without a colon"));
        };
        if colon == 0 || !line[..colon].iter().all(|&b| is_token(b)) {
            return Err(ChunkError("invalid trailer name"));
        }
        if line[colon + 1..].iter().any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
            return Err(ChunkError("control character in trailer value"));
        }
        rest = &rest[end + 1..];
    }
    Ok(())
}

/// Writes the size line of a chunk of `len` bytes (`{hex}\r\n`) into `out`, returning its length.
pub fn size_line(len: usize, out: &mut [u8; 18]) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut count = 0;
    loop {
        digits[count] = HEX[n & 15];
        count += 1;
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    for k in 0..count {
        out[k] = digits[count - 1 - k];
    }
    out[count] = b'\r';
    out[count + 1] = b'\n';
    count + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes, as reads would deliver it.
    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), ChunkError> {
        let mut d = Decoder::new();
        let (mut data, mut trailers) = (Vec::new(), Vec::new());
        let mut pending: Vec<u8> = Vec::new();
        for piece in input.chunks(step) {
            pending.extend_from_slice(piece);
            loop {
                let (used, event) = d.decode(&pending)?;
                match event {
                    Some(Event::Data { start, len }) => data.extend_from_slice(&pending[start..start + len]),
                    Some(Event::End { start, len }) => trailers.extend_from_slice(&pending[start..start + len]),
                    None => {}
                }
                pending.drain(..used);
                if event.is_none() || d.is_done() {
                    break;
                }
            }
        }
        assert!(d.is_done(), "not done");
        Ok((data, trailers))
    }

    #[test]
    fn decodes_in_any_split() {
        let body = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 9\r\n\r\n";
        for step in [1, 2, 3, 7, 100] {
            let (data, trailers) = decode_all(body, step).expect("valid");
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz");
            assert_eq!(trailers, b"X-Sum: 9\r\n");
        }
    }

    #[test]
    fn refuses_lenient_framing() {
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"5;a\x01b\r\nhello\r\n0\r\n\r\n",
            b"0\r\nX-Bad\r\n\r\n",
            b"0\r\nX: a\nY: b\r\n\r\n",
        ] {
            assert!(decode_all(bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
            assert!(decode_all(bad, 64).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn size_lines() {
        let mut out = [0u8; 18];
        let n = size_line(0x1a2b, &mut out);
        assert_eq!(&out[..n], b"1a2b\r\n");
        let n = size_line(0, &mut out);
        assert_eq!(&out[..n], b"0\r\n");
    }
}
