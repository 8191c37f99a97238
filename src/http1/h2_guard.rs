//! A frame-level guard in front of hyper's HTTP/2 server, for the protocol errors the `h2`
//! crate answers with another code than RFC 9113 prescribes.
//!
//! It follows the client's frames as they pass (nine-byte headers, payload lengths; SETTINGS
//! payloads entry by entry) and catches: a first frame that is not SETTINGS (§3.4,
//! `PROTOCOL_ERROR`), a SETTINGS frame whose length is not a multiple of 6 or an ACK with a
//! payload (§6.5, `FRAME_SIZE_ERROR`), `SETTINGS_INITIAL_WINDOW_SIZE` above 2^31-1 (§6.5.2,
//! `FLOW_CONTROL_ERROR`), and PING, WINDOW_UPDATE, RST_STREAM or PRIORITY frames of the wrong
//! length (§6.7, §6.9, §6.4, §6.3: `FRAME_SIZE_ERROR`; PRIORITY's is a stream error, which
//! §5.4.1 allows to treat as a connection error), and DATA on a stream the client itself
//! already ended (§5.1, `STREAM_CLOSED`, as a connection error: h2 answers `PROTOCOL_ERROR`). For that it keeps the ids of the client's streams it has not ended, a
//! bounded list (a stream pushed out of it is simply no longer checked). The byte that reveals the error is never
//! handed to hyper, so hyper never sees the whole bad frame and answers nothing itself; the
//! guard writes `GOAWAY` with the right code at the next boundary between hyper's own frames
//! (it follows those too), flushes it, and ends the connection. Nothing is buffered: bytes go
//! through as they are read and written.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface, which the guard lets through unexamined (it was checked
/// before HTTP/2 was chosen).
const PREFACE_LEN: u32 = 24;

const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const RST_STREAM: u8 = 0x3;
const PRIORITY: u8 = 0x2;
const HEADERS: u8 = 0x1;
const DATA: u8 = 0x0;
const END_STREAM: u8 = 0x1;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const FRAME_SIZE_ERROR: u32 = 0x6;
const STREAM_CLOSED: u32 = 0x5;

/// Most client streams followed at once: twice the streams a connection may have open, so
/// that only a client misbehaving already pushes ids out.
const MAX_FOLLOWED: usize = 512;

/// The client's streams it has not ended yet, and the highest it opened.
#[derive(Debug, Default)]
struct ClientStreams {
    /// Ascending.
    open: Vec<u32>,
    last: u32,
    /// The highest id pushed out of `open`: streams up to it are no longer checked.
    forgotten: u32,
}

impl ClientStreams {
    /// Follows a DATA or HEADERS frame on `id`; `STREAM_CLOSED` when the client had already
    /// ended that stream.
    fn frame(&mut self, kind: u8, flags: u8, id: u32) -> Option<u32> {
        if id == 0 || id.is_multiple_of(2) {
            return None; // h2 answers these itself, with the right code
        }
        let ends = flags & END_STREAM != 0;
        if id > self.last {
            if kind != HEADERS {
                return None; // DATA on an idle stream: h2's PROTOCOL_ERROR is right
            }
            self.last = id;
            if !ends {
                if self.open.len() == MAX_FOLLOWED {
                    self.forgotten = self.open.remove(0);
                }
                self.open.push(id);
            }
            return None;
        }
        match self.open.binary_search(&id) {
            Ok(i) => {
                if ends {
                    self.open.remove(i);
                }
                None
            }
            // DATA on a stream the client ended (unless it was pushed out of the list: then
            // unsure). HEADERS there may instead open a stream below the last one, which h2
            // answers rightly with PROTOCOL_ERROR.
            Err(_) if kind == DATA && id > self.forgotten => Some(STREAM_CLOSED),
            Err(_) => None,
        }
    }

    /// The client reset stream `id`: it is ended.
    fn reset(&mut self, id: u32) {
        if let Ok(i) = self.open.binary_search(&id) {
            self.open.remove(i);
        }
    }
}

/// Where the guard is in one direction's sequence of frames.
#[derive(Debug, Default)]
struct Frames {
    /// Bytes of the current frame's header seen so far.
    header: [u8; 9],
    header_len: u8,
    /// Payload bytes of the current frame still to come.
    payload_left: u32,
}

impl Frames {
    /// True between two frames.
    fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0
    }

    /// Follows `data`, which continues the stream, calling `on_header` for each completed
    /// header and `on_payload` for each byte of a SETTINGS payload with its offset in the
    /// payload (other payloads are skipped over, not read). Returns
    /// the index of the byte at which a callback reported an error code, with the code.
    fn follow(
        &mut self,
        data: &[u8],
        mut on_header: impl FnMut(&[u8; 9]) -> Option<u32>,
        mut on_payload: impl FnMut(&[u8; 9], u32, u8) -> Option<u32>,
    ) -> Option<(usize, u32)> {
        let mut i = 0;
        while i < data.len() {
            if self.payload_left > 0 {
                let len = frame_len(&self.header);
                let take = (self.payload_left as usize).min(data.len() - i);
                // Only SETTINGS payloads are looked into; DATA goes by untouched.
                let inspect = if self.header[3] == SETTINGS { take } else { 0 };
                for k in 0..inspect {
                    let offset = len - self.payload_left + k as u32;
                    if let Some(code) = on_payload(&self.header, offset, data[i + k]) {
                        return Some((i + k, code));
                    }
                }
                self.payload_left -= take as u32;
                i += take;
                continue;
            }
            self.header[usize::from(self.header_len)] = data[i];
            self.header_len += 1;
            if self.header_len == 9 {
                self.header_len = 0;
                if let Some(code) = on_header(&self.header) {
                    return Some((i, code));
                }
                self.payload_left = frame_len(&self.header);
            }
            i += 1;
        }
        None
    }
}

fn frame_len(h: &[u8; 9]) -> u32 {
    u32::from_be_bytes([0, h[0], h[1], h[2]])
}

fn stream_id(h: &[u8; 9]) -> u32 {
    u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff
}

/// The client-side checks: the error code a frame header calls for, if any.
fn check_header(h: &[u8; 9], first: bool) -> Option<u32> {
    let (len, kind, flags) = (frame_len(h), h[3], h[4]);
    if first && kind != SETTINGS {
        return Some(PROTOCOL_ERROR);
    }
    let wrong_len = match kind {
        SETTINGS => (flags & ACK != 0 && len != 0) || len % 6 != 0,
        PING => len != 8,
        WINDOW_UPDATE | RST_STREAM => len != 4,
        PRIORITY => len != 5,
        _ => false,
    };
    wrong_len.then_some(FRAME_SIZE_ERROR)
}

/// An HTTP/2 server connection's stream with the guard on it.
#[derive(Debug)]
pub struct H2Guard<S> {
    inner: S,
    preface_left: u32,
    /// The client's frames.
    inbound: Frames,
    /// True until the client's first frame header was checked.
    first_frame: bool,
    /// The SETTINGS entry being read: its six bytes.
    entry: [u8; 6],
    /// The client's streams.
    streams: ClientStreams,
    /// Hyper's frames.
    outbound: Frames,
    /// A GOAWAY to write at the next boundary between hyper's frames, and how much of it went.
    goaway: Option<([u8; 17], usize)>,
    /// The GOAWAY went out (and was flushed): reads end, writes are swallowed.
    ended: bool,
    /// A read waiting for the GOAWAY to go out.
    reader: Option<Waker>,
}

impl<S> H2Guard<S> {
    /// Guards `inner`, which starts with the client's connection preface.
    pub fn new(inner: S) -> H2Guard<S> {
        H2Guard {
            inner,
            preface_left: PREFACE_LEN,
            inbound: Frames::default(),
            first_frame: true,
            entry: [0; 6],
            streams: ClientStreams::default(),
            outbound: Frames::default(),
            goaway: None,
            ended: false,
            reader: None,
        }
    }

    /// Follows bytes the client sent; the index of the first byte not to pass on, when they
    /// hold an error.
    fn inspect(&mut self, data: &[u8]) -> Option<usize> {
        let skip = (self.preface_left as usize).min(data.len());
        self.preface_left -= skip as u32;
        let rest = &data[skip..];
        let first = &mut self.first_frame;
        let entry = &mut self.entry;
        let streams = &mut self.streams;
        let found = self.inbound.follow(
            rest,
            |h| {
                let code = check_header(h, *first);
                *first = false;
                match h[3] {
                    DATA | HEADERS => code.or_else(|| streams.frame(h[3], h[4], stream_id(h))),
                    RST_STREAM => {
                        streams.reset(stream_id(h));
                        code
                    }
                    _ => code,
                }
            },
            |h, offset, byte| {
                if h[3] != SETTINGS {
                    return None;
                }
                let k = (offset % 6) as usize;
                entry[k] = byte;
                let initial_window = u16::from_be_bytes([entry[0], entry[1]]) == 0x4;
                let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
                (k == 5 && initial_window && value > 0x7fff_ffff).then_some(FLOW_CONTROL_ERROR)
            },
        );
        let (at, code) = found?;
        let mut frame = [0u8; 17];
        frame[2] = 8;
        frame[3] = GOAWAY;
        frame[9..13].copy_from_slice(&self.streams.last.to_be_bytes());
        frame[13..17].copy_from_slice(&code.to_be_bytes());
        self.goaway = Some((frame, 0));
        Some(skip + at)
    }
}

impl<S: AsyncWrite + Unpin> H2Guard<S> {
    /// Writes the pending GOAWAY if hyper is between frames, then flushes; Ready once it is
    /// out (or there is none).
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.outbound.at_boundary() {
            return Poll::Pending;
        }
        while let Some((frame, sent)) = &mut self.goaway {
            if *sent == frame.len() {
                match Pin::new(&mut self.inner).poll_flush(cx) {
                    Poll::Ready(_) => {
                        self.goaway = None;
                        self.ended = true;
                        if let Some(w) = self.reader.take() {
                            w.wake();
                        }
                    }
                    Poll::Pending => return Poll::Pending,
                }
                break;
            }
            match Pin::new(&mut self.inner).poll_write(cx, &frame[*sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for H2Guard<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(Ok(()));
        }
        if this.goaway.is_some() {
            return match this.poll_goaway(cx) {
                Poll::Ready(_) => Poll::Ready(Ok(())),
                Poll::Pending => {
                    this.reader = Some(cx.waker().clone());
                    Poll::Pending
                }
            };
        }
        let start = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let end = buf.filled().len();
        if let Some(cut) = this.inspect(&buf.filled()[start..end]) {
            buf.set_filled(start + cut);
            if cut == 0 {
                // Nothing to hand over: wait for the GOAWAY to go out, then end.
                return match this.poll_goaway(cx) {
                    Poll::Ready(_) => Poll::Ready(Ok(())),
                    Poll::Pending => {
                        this.reader = Some(cx.waker().clone());
                        Poll::Pending
                    }
                };
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for H2Guard<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(Ok(data.len()));
        }
        if this.goaway.is_some() && this.outbound.at_boundary() {
            match this.poll_goaway(cx) {
                Poll::Ready(_) => return Poll::Ready(Ok(data.len())),
                Poll::Pending => return Poll::Pending,
            }
        }
        // While a GOAWAY waits, hyper may finish its current frame, but not start another.
        let limit = if this.goaway.is_some() {
            let left = if this.outbound.payload_left > 0 {
                this.outbound.payload_left as usize
            } else {
                9 - usize::from(this.outbound.header_len)
            };
            left.min(data.len())
        } else {
            data.len()
        };
        let n = match Pin::new(&mut this.inner).poll_write(cx, &data[..limit]) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        this.outbound.follow(&data[..n], |_| None, |_, _, _| None);
        if this.goaway.is_some() && this.outbound.at_boundary() {
            if let Poll::Ready(Err(e)) = this.poll_goaway(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.goaway.is_some() && this.outbound.at_boundary() && this.poll_goaway(cx).is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn code_of(guard: &H2Guard<()>) -> Option<u32> {
        guard
            .goaway
            .as_ref()
            .map(|(f, _)| u32::from_be_bytes([f[13], f[14], f[15], f[16]]))
    }

    /// Feeds `bytes` one at a time, as the worst-case reader would, after a preface.
    fn feed(bytes: &[u8]) -> (H2Guard<()>, Option<usize>) {
        let mut g = H2Guard::new(());
        assert_eq!(g.inspect(&[b'P'; 24]), None);
        for (i, b) in bytes.iter().enumerate() {
            if g.inspect(std::slice::from_ref(b)).is_some() {
                return (g, Some(i));
            }
        }
        (g, None)
    }

    #[test]
    fn open_streams_may_carry_data_and_trailers() {
        let hello = frame(SETTINGS, 0, 0, &[]);
        let (g, at) = feed(
            &[
                hello,
                frame(HEADERS, 4, 1, b"x"),
                frame(DATA, 0, 1, b"a"),
                frame(HEADERS, 4 | END_STREAM, 1, b"t"),
                frame(HEADERS, 4, 3, b"x"),
                frame(DATA, END_STREAM, 3, b"b"),
            ]
            .concat(),
        );
        assert_eq!((at, g.streams.last, g.streams.open.len()), (None, 3, 0));
    }

    #[test]
    fn good_frames_pass_and_bad_ones_are_caught_at_the_revealing_byte() {
        let hello = frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0]);
        let (g, at) = feed(&[hello.clone(), frame(PING, 0, 0, &[0; 8]), frame(HEADERS, 4, 3, b"x")].concat());
        assert_eq!((at, g.streams.last), (None, 3));
        for (bytes, code, at) in [
            (frame(PING, 0, 0, &[0; 8]), PROTOCOL_ERROR, 8),
            (
                [hello.clone(), frame(PING, 0, 0, &[0; 6])].concat(),
                FRAME_SIZE_ERROR,
                15 + 8,
            ),
            (frame(SETTINGS, 0, 0, &[0; 5]), FRAME_SIZE_ERROR, 8),
            (frame(SETTINGS, ACK, 0, &[0; 6]), FRAME_SIZE_ERROR, 8),
            (frame(SETTINGS, 0, 0, &[0, 4, 0x80, 0, 0, 0]), FLOW_CONTROL_ERROR, 14),
            (
                [hello.clone(), frame(PRIORITY, 0, 1, &[0; 4])].concat(),
                FRAME_SIZE_ERROR,
                15 + 8,
            ),
            (
                [hello.clone(), frame(RST_STREAM, 0, 1, &[0; 3])].concat(),
                FRAME_SIZE_ERROR,
                15 + 8,
            ),
            (
                [hello, frame(WINDOW_UPDATE, 0, 0, &[0; 3])].concat(),
                FRAME_SIZE_ERROR,
                15 + 8,
            ),
        ] {
            let (g, found) = feed(&bytes);
            assert_eq!((found, code_of(&g)), (Some(at), Some(code)), "{bytes:?}");
        }
    }
}
