//! HTTP/2 at the edge, through the real binary: a table of malformed frame sequences, built by
//! hand and sent to the cleartext (prior-knowledge) listener and to a TLS listener (ALPN `h2`),
//! each with the answer RFC 9113
//! prescribes and the answer Steelyard gives (h2 0.4.20 under hyper 1.x, behind Steelyard's
//! frame guard, which corrects the codes h2 gets wrong where a frame header shows them).
//!
//! Every row pins what the server does today (`h2`), so an h2 upgrade that changes an answer
//! fails here and gets looked at. Every row also gets an RFC verdict, printed as a table:
//! conforms, escalated (a stream error answered with a connection error of the same code, which
//! RFC 9113 §5.4.1 allows) or deviates. With `STEELYARD_H2_STRICT=1`, deviations fail too.
//!
//! How the rows stay deterministic, without sleeps:
//! - `hold.test` routes to a blackhole backend (connects hang in SYN_SENT for 30 s): a request
//!   there never gets a response and its body is never read, so its stream stays open and no
//!   flow-control window is ever given back.
//! - `live.test` routes to a real origin, for rows that need a response.
//! - The offending frame is always the last thing a row sends, so the server never closes with
//!   unread bytes (a RST that could destroy the GOAWAY in flight).
//! - Each row reads frames until GOAWAY, RST_STREAM, the end of a response, the ACK of a probe
//!   PING, EOF, or a 5 s deadline; SETTINGS, SETTINGS ACKs, WINDOW_UPDATEs and other PING ACKs
//!   are skipped. After a RST_STREAM a probe PING checks the connection survived it.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113 §6) and one no one defines.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const UNKNOWN_TYPE: u8 = 0xfa;

// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;

// Error codes (RFC 9113 §7).
const NO_ERROR: u32 = 0x0;
const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const STREAM_CLOSED: u32 = 0x5;
const FRAME_SIZE_ERROR: u32 = 0x6;
const CANCEL: u32 = 0x8;
const COMPRESSION_ERROR: u32 = 0x9;

// SETTINGS parameters (RFC 9113 §6.5.2).
const SETTINGS_ENABLE_PUSH: u16 = 0x2;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// HPACK static table indexes (RFC 7541 Appendix A).
const METHOD_GET: u8 = 2;
const METHOD_POST: u8 = 3;
const PATH_ROOT: u8 = 4;
const SCHEME_HTTP: u8 = 6;

/// The largest frame payload before any SETTINGS change (RFC 9113 §4.2); hyper keeps it.
const MAX_FRAME: usize = 16_384;

/// Routed to a blackhole: never answered, body never read.
const HOLD: &str = "hold.test";
/// Routed to a real origin.
const LIVE: &str = "live.test";

/// The payload of the PING that checks a connection is still served.
const PROBE: [u8; 8] = *b"probe!!!";

/// How long one row may take.
const ROW_DEADLINE: Duration = Duration::from_secs(5);

/// What Steelyard's HTTP/1 engine answers to `PRI * HTTP/2.0` that is not the preface
/// (src/http1/head.rs `version_error`, src/proxy/h1/mod.rs `refuse`).
const RESPONSE_505: &[u8] = b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 31\r\nConnection: close\r\n\r\n505 HTTP Version Not Supported\n";

// ---------------------------------------------------------------------------------------------
// Encoding: frames and the few HPACK representations the rows need.

/// A frame: 9-byte header (RFC 9113 §4.1) and the payload.
fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    frame_claiming(ty, flags, stream, payload.len(), payload)
}

/// A frame whose length field says `len`, whatever follows.
fn frame_claiming(ty: u8, flags: u8, stream: u32, len: usize, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, value) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

/// The client's first SETTINGS frame, empty: every default kept.
fn hello() -> Vec<u8> {
    settings(&[])
}

fn ping(stream: u32, payload: &[u8]) -> Vec<u8> {
    frame(PING, 0, stream, payload)
}

fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

fn data(stream: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    frame(DATA, flags, stream, payload)
}

fn headers(stream: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(HEADERS, flags, stream, block)
}

/// HPACK indexed field line (RFC 7541 §6.1), static table only.
fn idx(index: u8) -> Vec<u8> {
    vec![0x80 | index]
}

/// HPACK literal field line without indexing, new name, no Huffman (RFC 7541 §6.2.2); short
/// strings only (7-bit lengths).
fn lit(name: &str, value: &str) -> Vec<u8> {
    assert!(name.len() < 127 && value.len() < 127);
    let mut b = vec![0x00, name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

/// A well-formed request head: `method`, `:scheme http`, `:path /`, `:authority`.
fn request(method: u8, authority: &str) -> Vec<u8> {
    [
        idx(method),
        idx(SCHEME_HTTP),
        idx(PATH_ROOT),
        lit(":authority", authority),
    ]
    .concat()
}

/// GET to the blackhole, END_STREAM: the stream is half-closed (remote) and stays so.
fn hold_get(stream: u32) -> Vec<u8> {
    headers(stream, END_HEADERS | END_STREAM, &request(METHOD_GET, HOLD))
}

/// POST to the blackhole, no END_STREAM: the stream is open and its body is never read.
fn hold_post(stream: u32) -> Vec<u8> {
    headers(stream, END_HEADERS, &request(METHOD_POST, HOLD))
}

/// GET to the origin, END_STREAM: answered.
fn live_get(stream: u32) -> Vec<u8> {
    headers(stream, END_HEADERS | END_STREAM, &request(METHOD_GET, LIVE))
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// `:status` of a response head when h2 sent it from the static table (RFC 7541 Appendix A,
/// indexes 8-14); `None` for a literal (h2 Huffman-codes those; this draft does not decode them).
fn status_of(block: &[u8]) -> Option<u16> {
    match *block.first()? {
        0x88 => Some(200),
        0x89 => Some(204),
        0x8a => Some(206),
        0x8b => Some(304),
        0x8c => Some(400),
        0x8d => Some(404),
        0x8e => Some(500),
        _ => None,
    }
}

fn code_name(code: u32) -> String {
    match code {
        0x0 => "NO_ERROR".into(),
        0x1 => "PROTOCOL_ERROR".into(),
        0x2 => "INTERNAL_ERROR".into(),
        0x3 => "FLOW_CONTROL_ERROR".into(),
        0x4 => "SETTINGS_TIMEOUT".into(),
        0x5 => "STREAM_CLOSED".into(),
        0x6 => "FRAME_SIZE_ERROR".into(),
        0x7 => "REFUSED_STREAM".into(),
        0x8 => "CANCEL".into(),
        0x9 => "COMPRESSION_ERROR".into(),
        0xa => "CONNECT_ERROR".into(),
        0xb => "ENHANCE_YOUR_CALM".into(),
        other => format!("{other:#x}"),
    }
}

fn type_name(ty: u8) -> String {
    match ty {
        DATA => "DATA".into(),
        HEADERS => "HEADERS".into(),
        PRIORITY => "PRIORITY".into(),
        RST_STREAM => "RST_STREAM".into(),
        SETTINGS => "SETTINGS".into(),
        PUSH_PROMISE => "PUSH_PROMISE".into(),
        PING => "PING".into(),
        GOAWAY => "GOAWAY".into(),
        WINDOW_UPDATE => "WINDOW_UPDATE".into(),
        CONTINUATION => "CONTINUATION".into(),
        other => format!("type {other:#x}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The table's vocabulary.

/// One answer a row can expect.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Connection error: GOAWAY with this code.
    Conn(u32),
    /// Stream error: RST_STREAM on this stream with this code, and the connection goes on.
    Stream(u32, u32),
    /// No error: a complete response on this stream.
    Response(u32),
    /// No error: the frames are ignored and a later PING is answered.
    Alive,
    /// Not HTTP/2 at all: these bytes (a prefix; empty means anything), then EOF.
    Closed(&'static [u8]),
    /// Any of these (where the RFC leaves a choice, or h2's answer depends on timing).
    OneOf(&'static [Expect]),
}

impl Expect {
    fn matches(self, seen: &Seen) -> bool {
        match (self, seen) {
            (Expect::OneOf(all), _) => all.iter().any(|e| e.matches(seen)),
            (Expect::Conn(c), Seen::GoAway { code, .. }) => c == *code,
            (Expect::Stream(s, c), Seen::Reset { stream, code, survived }) => s == *stream && c == *code && *survived,
            (Expect::Response(s), Seen::Response { stream, .. }) => s == *stream,
            (Expect::Alive, Seen::Alive) => true,
            (Expect::Closed(prefix), Seen::Closed(bytes)) => bytes.starts_with(prefix),
            _ => false,
        }
    }

    /// Whether the runner should send a probe PING after the script.
    fn wants_probe(self) -> bool {
        match self {
            Expect::Alive => true,
            Expect::OneOf(all) => all.iter().any(|e| e.wants_probe()),
            _ => false,
        }
    }

    fn describe(self) -> String {
        match self {
            Expect::Conn(c) => format!("GOAWAY({})", code_name(c)),
            Expect::Stream(s, c) => format!("RST_STREAM({s}, {})", code_name(c)),
            Expect::Response(s) => format!("response on stream {s}"),
            Expect::Alive => "ignored, connection goes on".into(),
            Expect::Closed(b"") => "connection closed (GOAWAY optional)".into(),
            Expect::Closed(prefix) => {
                let text = String::from_utf8_lossy(prefix);
                format!("{:?} then close", text.lines().next().unwrap_or(""))
            }
            Expect::OneOf(all) => all.iter().map(|e| e.describe()).collect::<Vec<_>>().join(" or "),
        }
    }
}

/// What the server did.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    GoAway {
        last_stream: u32,
        code: u32,
    },
    /// `survived`: a PING sent afterwards was answered.
    Reset {
        stream: u32,
        code: u32,
        survived: bool,
    },
    Response {
        stream: u32,
        status: Option<u16>,
    },
    Alive,
    /// EOF (before it, for raw rows, every byte received; for HTTP/2 rows, nothing: closed
    /// without a GOAWAY).
    Closed(Vec<u8>),
    /// Nothing decisive within the deadline; the frames seen.
    Timeout(Vec<String>),
}

impl Seen {
    fn describe(&self) -> String {
        match self {
            Seen::GoAway { last_stream, code } => format!("GOAWAY({}, last stream {last_stream})", code_name(*code)),
            Seen::Reset { stream, code, survived } => format!(
                "RST_STREAM({stream}, {}){}",
                code_name(*code),
                if *survived { "" } else { " and the connection died" }
            ),
            Seen::Response { stream, status } => format!("response on stream {stream} (status {status:?})"),
            Seen::Alive => "ignored, PING answered".into(),
            Seen::Closed(bytes) if bytes.is_empty() => "closed, no GOAWAY".into(),
            Seen::Closed(bytes) => format!(
                "{:?} then close",
                String::from_utf8_lossy(bytes).lines().next().unwrap_or("")
            ),
            Seen::Timeout(frames) => format!("nothing decisive in {ROW_DEADLINE:?}; frames: {frames:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Conforms,
    /// A stream error answered as a connection error with the same code (RFC 9113 §5.4.1: "an
    /// endpoint MAY choose to treat a stream error as a connection error").
    Escalated,
    Deviates,
}

fn judge(rfc: Expect, seen: &Seen) -> Verdict {
    fn escalates(rfc: Expect, seen: &Seen) -> bool {
        match (rfc, seen) {
            (Expect::Stream(_, c), Seen::GoAway { code, .. }) => c == *code,
            (Expect::OneOf(all), _) => all.iter().any(|e| escalates(*e, seen)),
            _ => false,
        }
    }
    if rfc.matches(seen) {
        Verdict::Conforms
    } else if escalates(rfc, seen) {
        Verdict::Escalated
    } else {
        Verdict::Deviates
    }
}

/// One thing the client does.
enum Step {
    /// Bytes on the wire, as they are.
    Send(Vec<u8>),
    /// Read until the server's own SETTINGS arrived, then ACK it (its 1 MiB stream windows
    /// then apply).
    AckServerSettings,
    /// Read until the server's connection WINDOW_UPDATE arrived (h2 sends it when its first
    /// read burst is done: proto/connection.rs:318-325).
    AwaitConnWindowUpdate,
    /// Read until a frame with END_STREAM arrived on this stream (its response is complete).
    AwaitEndStream(u32),
    /// DATA on this stream filling the connection window exactly, then one octet more, in the
    /// last frame.
    OverflowConnWindow(u32),
}

struct Row {
    name: &'static str,
    /// RFC 9113 section(s).
    section: &'static str,
    /// Sent after the connection preface (or instead of it, for `raw` rows).
    script: Vec<Step>,
    /// No preface; the answer is read as raw bytes until EOF.
    raw: bool,
    rfc: Expect,
    /// What h2 0.4.20 does, read from its source.
    h2: Expect,
    /// Where it decides (paths under h2-0.4.20/src unless named otherwise).
    source: &'static str,
}

fn row(
    name: &'static str,
    section: &'static str,
    rfc: Expect,
    h2: Expect,
    source: &'static str,
    script: Vec<Step>,
) -> Row {
    Row {
        name,
        section,
        script,
        raw: false,
        rfc,
        h2,
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// The table.

fn rows() -> Vec<Row> {
    use Expect::*;
    use Step::*;
    let pseudo_after_regular = [
        idx(METHOD_GET),
        idx(SCHEME_HTTP),
        lit("x-early", "1"),
        idx(PATH_ROOT),
        lit(":authority", HOLD),
    ]
    .concat();
    let full = request(METHOD_GET, HOLD);
    let (first_half, second_half) = full.split_at(2);
    let mut padded_headers = vec![(full.len() + 1) as u8];
    padded_headers.extend_from_slice(&full);
    let mut push_promise = 2u32.to_be_bytes().to_vec();
    push_promise.extend_from_slice(&request(METHOD_GET, HOLD));

    let rows = vec![
        // ---- §3.4: the connection preface. Steelyard sniffs it (src/http1/connection.rs:366-386);
        // anything else goes to the HTTP/1 engine, so h2 never sees an invalid preface here.
        Row {
            name: "invalid preface: PRI line, wrong tail",
            section: "3.4",
            script: vec![Send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n".to_vec())],
            raw: true,
            rfc: Closed(b""),
            h2: Closed(RESPONSE_505),
            source: "not h2: src/http1/connection.rs:366-386 hands it to HTTP/1 (505); h2 itself \
                     (TLS+ALPN only) errors at server.rs:1470-1473 and closes without GOAWAY after \
                     its SETTINGS (server.rs:1500-1516)",
        },
        Row {
            name: "invalid preface: frames without the preface",
            section: "3.4",
            script: vec![Send(hello())],
            raw: true,
            rfc: Closed(b""),
            h2: Closed(b"HTTP/1.1 400 Bad Request\r\n"),
            source: "not h2: HTTP/1 engine, httparse Token error (400)",
        },
        row(
            "first frame after the preface is not SETTINGS",
            "3.4",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "caught by Steelyard's frame guard (src/http1/h2_guard.rs); h2 alone takes any frame first (proto/connection.rs:560-626)",
            vec![Send(ping(0, b"notfirst")), Send(hello())],
        ),
        // ---- §6.5, §6.5.2: SETTINGS.
        row(
            "SETTINGS length not a multiple of 6",
            "6.5",
            Conn(FRAME_SIZE_ERROR),
            Conn(FRAME_SIZE_ERROR),
            "caught by Steelyard's frame guard (src/http1/h2_guard.rs); h2 alone: PROTOCOL_ERROR (frame/settings.rs:151-154)",
            vec![Send(frame(SETTINGS, 0, 0, &[0, 3, 0]))],
        ),
        row(
            "SETTINGS ACK with a payload",
            "6.5",
            Conn(FRAME_SIZE_ERROR),
            Conn(FRAME_SIZE_ERROR),
            "caught by Steelyard's frame guard (src/http1/h2_guard.rs); h2 alone: PROTOCOL_ERROR (frame/settings.rs:140-144)",
            vec![Send(hello()), Send(frame(SETTINGS, ACK, 0, &[0, 3, 0, 0, 0, 100]))],
        ),
        row(
            "SETTINGS on stream 1",
            "6.5",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "frame/settings.rs:133-135 -> codec/framed_read.rs:231-237",
            vec![Send(hello()), Send(frame(SETTINGS, 0, 1, &[]))],
        ),
        row(
            "SETTINGS_ENABLE_PUSH = 2",
            "6.5.2",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "frame/settings.rs:164-171 -> codec/framed_read.rs:231-237",
            vec![Send(settings(&[(SETTINGS_ENABLE_PUSH, 2)]))],
        ),
        row(
            "SETTINGS_INITIAL_WINDOW_SIZE = 2^31",
            "6.5.2",
            Conn(FLOW_CONTROL_ERROR),
            Conn(FLOW_CONTROL_ERROR),
            "caught by Steelyard's frame guard (src/http1/h2_guard.rs); h2 alone: PROTOCOL_ERROR (frame/settings.rs:175-181)",
            vec![Send(settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 1 << 31)]))],
        ),
        row(
            "SETTINGS_MAX_FRAME_SIZE = 2^14 - 1",
            "6.5.2",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "frame/settings.rs:182-188 -> codec/framed_read.rs:231-237",
            vec![Send(settings(&[(SETTINGS_MAX_FRAME_SIZE, (1 << 14) - 1)]))],
        ),
        row(
            "SETTINGS_MAX_FRAME_SIZE = 2^24",
            "6.5.2",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "frame/settings.rs:182-188 -> codec/framed_read.rs:231-237",
            vec![Send(settings(&[(SETTINGS_MAX_FRAME_SIZE, 1 << 24)]))],
        ),
        row(
            "SETTINGS with an unknown identifier is ignored",
            "6.5.2",
            Alive,
            Alive,
            "frame/settings.rs:200 (None => {})",
            vec![Send(settings(&[(0xff, 0)]))],
        ),
        // ---- §4.2: frame size.
        row(
            "DATA longer than SETTINGS_MAX_FRAME_SIZE",
            "4.2",
            OneOf(&[Stream(1, FRAME_SIZE_ERROR), Conn(FRAME_SIZE_ERROR)]),
            Conn(FRAME_SIZE_ERROR),
            "tokio-util length_delimited.rs:526 -> codec/framed_read.rs:439-448 (codec/mod.rs:45-55)",
            vec![
                Send(hello()),
                Send(hold_post(1)),
                Send(frame_claiming(DATA, 0, 1, MAX_FRAME + 1, &[])),
            ],
        ),
        row(
            "HEADERS longer than SETTINGS_MAX_FRAME_SIZE",
            "4.2",
            Conn(FRAME_SIZE_ERROR),
            Conn(FRAME_SIZE_ERROR),
            "tokio-util length_delimited.rs:526 -> codec/framed_read.rs:439-448",
            vec![
                Send(hello()),
                Send(frame_claiming(HEADERS, END_HEADERS, 1, MAX_FRAME + 1, &[])),
            ],
        ),
        // ---- §5.1, §5.1.1: stream identifiers and states.
        row(
            "HEADERS on stream 0",
            "6.2",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "frame/headers.rs:160-162 -> codec/framed_read.rs:184-187",
            vec![
                Send(hello()),
                Send(headers(0, END_HEADERS | END_STREAM, &request(METHOD_GET, HOLD))),
            ],
        ),
        row(
            "HEADERS on an even stream (2) from the client",
            "5.1.1",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "proto/streams/recv.rs:135 -> proto/peer.rs:77-82",
            vec![Send(hello()), Send(hold_get(2))],
        ),
        row(
            "HEADERS on stream 3 after stream 5",
            "5.1.1",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "proto/streams/recv.rs:137-141",
            vec![Send(hello()), Send(hold_get(5)), Send(hold_get(3))],
        ),
        row(
            "DATA on stream 0",
            "6.1",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "frame/data.rs:124-126 -> codec/framed_read.rs:258-267",
            vec![Send(hello()), Send(data(0, END_STREAM, b"x"))],
        ),
        row(
            "DATA on an idle stream",
            "5.1 (idle)",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "proto/streams/streams.rs:644-645",
            vec![Send(hello()), Send(data(1, END_STREAM, b"x"))],
        ),
        row(
            "RST_STREAM on an idle stream",
            "6.4, 5.1 (idle)",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "proto/streams/streams.rs:700-709 -> proto/streams/recv.rs:879-892",
            vec![Send(hello()), Send(rst(1, CANCEL))],
        ),
        row(
            "PRIORITY on an idle stream is accepted",
            "6.3, 5.1 (idle)",
            Alive,
            Alive,
            "codec/framed_read.rs:287-308, proto/connection.rs:615-618 (ignored)",
            vec![Send(hello()), Send(frame(PRIORITY, 0, 9, &[0, 0, 0, 0, 16]))],
        ),
        // ---- §6.7: PING.
        row(
            "PING with length 6",
            "6.7",
            Conn(FRAME_SIZE_ERROR),
            Conn(FRAME_SIZE_ERROR),
            "caught by Steelyard's frame guard (src/http1/h2_guard.rs); h2 alone: PROTOCOL_ERROR (frame/ping.rs:69-71)",
            vec![Send(hello()), Send(ping(0, &[0; 6]))],
        ),
        row(
            "PING on stream 1",
            "6.7",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "frame/ping.rs:63-65 -> codec/framed_read.rs:240-247",
            vec![Send(hello()), Send(ping(1, &[0; 8]))],
        ),
        // ---- §6.9, §6.9.1: WINDOW_UPDATE.
        row(
            "WINDOW_UPDATE increment 0 on the connection",
            "6.9",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "frame/window_update.rs:40-42 -> codec/framed_read.rs:249-256",
            vec![Send(hello()), Send(window_update(0, 0))],
        ),
        row(
            "WINDOW_UPDATE increment 0 on an active stream",
            "6.9",
            Stream(1, PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "frame/window_update.rs:40-42 -> codec/framed_read.rs:249-256 (decided in the codec, \
             before any stream is looked at)",
            vec![Send(hello()), Send(hold_get(1)), Send(window_update(1, 0))],
        ),
        row(
            "WINDOW_UPDATE with length 3",
            "6.9",
            Conn(FRAME_SIZE_ERROR),
            Conn(FRAME_SIZE_ERROR),
            "caught by Steelyard's frame guard (src/http1/h2_guard.rs); h2 alone: PROTOCOL_ERROR (frame/window_update.rs:32-34)",
            vec![Send(hello()), Send(frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1]))],
        ),
        row(
            "WINDOW_UPDATE overflowing the connection window",
            "6.9.1",
            Conn(FLOW_CONTROL_ERROR),
            Conn(FLOW_CONTROL_ERROR),
            "proto/streams/flow_control.rs:113-122 via prioritize.rs:315-322 -> \
             proto/streams/streams.rs:740-744",
            vec![Send(hello()), Send(window_update(0, 0x7fff_ffff))],
        ),
        row(
            "WINDOW_UPDATE overflowing a stream window",
            "6.9.1",
            Stream(1, FLOW_CONTROL_ERROR),
            Stream(1, FLOW_CONTROL_ERROR),
            "proto/streams/flow_control.rs:113-122 via prioritize.rs:306 -> send.rs:441-462 -> \
             streams.rs:754-771 (ignored once the response is sent: prioritize.rs:300-303)",
            vec![Send(hello()), Send(hold_get(1)), Send(window_update(1, 0x7fff_ffff))],
        ),
        // ---- §6.4, §6.3: RST_STREAM and PRIORITY sizes.
        row(
            "RST_STREAM with length 3",
            "6.4",
            Conn(FRAME_SIZE_ERROR),
            Conn(FRAME_SIZE_ERROR),
            "caught by Steelyard's frame guard (src/http1/h2_guard.rs); h2 alone: PROTOCOL_ERROR (frame/reset.rs:28-30)",
            vec![
                Send(hello()),
                Send(hold_get(1)),
                Send(frame(RST_STREAM, 0, 1, &[0, 0, 8])),
            ],
        ),
        row(
            "PRIORITY with length 4",
            "6.3",
            Stream(1, FRAME_SIZE_ERROR),
            Conn(FRAME_SIZE_ERROR),
            "caught by Steelyard's frame guard (src/http1/h2_guard.rs); h2 alone: GOAWAY PROTOCOL_ERROR (frame/priority.rs:55-58)",
            vec![
                Send(hello()),
                Send(hold_get(1)),
                Send(frame(PRIORITY, 0, 1, &[0, 0, 0, 0])),
            ],
        ),
        // ---- §4.3, §6.2, §6.10: field blocks.
        row(
            "CONTINUATION without HEADERS",
            "6.10",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "codec/framed_read.rs:313-318",
            vec![
                Send(hello()),
                Send(frame(CONTINUATION, END_HEADERS, 1, &request(METHOD_GET, HOLD))),
            ],
        ),
        row(
            "HEADERS without END_HEADERS, then PING",
            "4.3, 6.2",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "codec/framed_read.rs:160-163",
            vec![
                Send(hello()),
                Send(headers(1, END_STREAM, &request(METHOD_GET, HOLD))),
                Send(ping(0, &[0; 8])),
            ],
        ),
        row(
            "HEADERS without END_HEADERS, then an unknown frame type",
            "4.3, 5.5",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "codec/framed_read.rs:160-163",
            vec![
                Send(hello()),
                Send(headers(1, END_STREAM, &request(METHOD_GET, HOLD))),
                Send(frame(UNKNOWN_TYPE, 0, 1, &[0; 8])),
            ],
        ),
        row(
            "CONTINUATION on another stream",
            "6.10",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "codec/framed_read.rs:321-325",
            vec![
                Send(hello()),
                Send(headers(1, END_STREAM, first_half)),
                Send(frame(CONTINUATION, END_HEADERS, 3, second_half)),
            ],
        ),
        row(
            "invalid HPACK (indexed field 0)",
            "4.3 (RFC 7541 §6.1)",
            Conn(COMPRESSION_ERROR),
            Conn(PROTOCOL_ERROR),
            "hpack/decoder.rs:518-521 -> frame/headers.rs:971-977 -> codec/framed_read.rs:208-211 \
             (COMPRESSION_ERROR only at framed_read.rs:366)",
            vec![Send(hello()), Send(headers(1, END_HEADERS | END_STREAM, &[0x80]))],
        ),
        // ---- §8.1.1, §8.2, §8.3: malformed requests.
        row(
            "uppercase field name",
            "8.2, 8.2.1, 8.1.1",
            Stream(1, PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "hpack/header.rs:97-98 (from_lowercase) -> hpack/decoder.rs:600-605 (InvalidUtf8) -> \
             codec/framed_read.rs:208-211",
            vec![
                Send(hello()),
                Send(headers(
                    1,
                    END_HEADERS | END_STREAM,
                    &[request(METHOD_GET, HOLD), lit("X-Upper", "1")].concat(),
                )),
            ],
        ),
        row(
            "connection-specific field (connection: keep-alive)",
            "8.2.2",
            Stream(1, PROTOCOL_ERROR),
            Stream(1, PROTOCOL_ERROR),
            "frame/headers.rs:927-934, 984-987 -> codec/framed_read.rs:196-200",
            vec![
                Send(hello()),
                Send(headers(
                    1,
                    END_HEADERS | END_STREAM,
                    &[request(METHOD_GET, HOLD), lit("connection", "keep-alive")].concat(),
                )),
            ],
        ),
        row(
            "TE other than trailers (te: gzip)",
            "8.2.2",
            Stream(1, PROTOCOL_ERROR),
            Stream(1, PROTOCOL_ERROR),
            "frame/headers.rs:935-940, 984-987 -> codec/framed_read.rs:196-200",
            vec![
                Send(hello()),
                Send(headers(
                    1,
                    END_HEADERS | END_STREAM,
                    &[request(METHOD_GET, HOLD), lit("te", "gzip")].concat(),
                )),
            ],
        ),
        row(
            "missing :method",
            "8.3.1",
            Stream(1, PROTOCOL_ERROR),
            Stream(1, PROTOCOL_ERROR),
            "server.rs:1677-1682 via proto/streams/recv.rs:257-260",
            vec![
                Send(hello()),
                Send(headers(
                    1,
                    END_HEADERS | END_STREAM,
                    &[idx(SCHEME_HTTP), idx(PATH_ROOT), lit(":authority", HOLD)].concat(),
                )),
            ],
        ),
        row(
            "missing :scheme",
            "8.3.1",
            Stream(1, PROTOCOL_ERROR),
            Stream(1, PROTOCOL_ERROR),
            "server.rs:1734-1736",
            vec![
                Send(hello()),
                Send(headers(
                    1,
                    END_HEADERS | END_STREAM,
                    &[idx(METHOD_GET), idx(PATH_ROOT), lit(":authority", HOLD)].concat(),
                )),
            ],
        ),
        row(
            "missing :path, :authority present",
            "8.3.1",
            Stream(1, PROTOCOL_ERROR),
            Stream(1, PROTOCOL_ERROR),
            "server.rs:1756-1765 (http::Uri::from_parts: PathAndQueryMissing)",
            vec![
                Send(hello()),
                Send(headers(
                    1,
                    END_HEADERS | END_STREAM,
                    &[idx(METHOD_GET), idx(SCHEME_HTTP), lit(":authority", HOLD)].concat(),
                )),
            ],
        ),
        row(
            "missing :path, no :authority (host field instead)",
            "8.3.1",
            Stream(1, PROTOCOL_ERROR),
            Stream(1, PROTOCOL_ERROR),
            "server.rs:1728-1754 lets it through (an empty URI); Steelyard's HTTP/2 service \
             resets the stream itself (src/http1/connection.rs, serve_h2)",
            vec![
                Send(hello()),
                Send(headers(
                    1,
                    END_HEADERS | END_STREAM,
                    &[idx(METHOD_GET), idx(SCHEME_HTTP), lit("host", LIVE)].concat(),
                )),
            ],
        ),
        row(
            "pseudo-header after a regular field",
            "8.3",
            Stream(1, PROTOCOL_ERROR),
            Stream(1, PROTOCOL_ERROR),
            "frame/headers.rs:891-896, 984-987 -> codec/framed_read.rs:196-200",
            vec![
                Send(hello()),
                Send(headers(1, END_HEADERS | END_STREAM, &pseudo_after_regular)),
            ],
        ),
        row(
            "content-length 10, 5 octets of DATA",
            "8.1.1",
            Stream(1, PROTOCOL_ERROR),
            Stream(1, PROTOCOL_ERROR),
            "proto/streams/recv.rs:714-722",
            vec![
                Send(hello()),
                Send(headers(
                    1,
                    END_HEADERS,
                    &[request(METHOD_POST, HOLD), lit("content-length", "10")].concat(),
                )),
                Send(data(1, END_STREAM, b"hello")),
            ],
        ),
        row(
            "content-length 2, 5 octets of DATA",
            "8.1.1",
            Stream(1, PROTOCOL_ERROR),
            Stream(1, PROTOCOL_ERROR),
            "proto/streams/recv.rs:704-712",
            vec![
                Send(hello()),
                Send(headers(
                    1,
                    END_HEADERS,
                    &[request(METHOD_POST, HOLD), lit("content-length", "2")].concat(),
                )),
                Send(data(1, END_STREAM, b"hello")),
            ],
        ),
        // ---- §6.9.1: flow control. SETTINGS ACKed, so the stream window (1 MiB, hyper's) is
        // no smaller than the connection window (64 KiB + the server's 983,041 update); the
        // body is never read, so no window comes back; the last frame carries the one octet
        // too many.
        row(
            "DATA beyond the flow-control window",
            "6.9, 6.9.1",
            OneOf(&[Stream(1, FLOW_CONTROL_ERROR), Conn(FLOW_CONTROL_ERROR)]),
            Conn(FLOW_CONTROL_ERROR),
            "proto/streams/recv.rs:688-690 -> 799-807 (connection window checked first; \
             stream window at 692-702 gives RST_STREAM when it is the smaller one)",
            vec![
                Send(hello()),
                AckServerSettings,
                AwaitConnWindowUpdate,
                Send(hold_post(1)),
                OverflowConnWindow(1),
            ],
        ),
        // ---- §5.1, §6.1: DATA after END_STREAM.
        row(
            "DATA after END_STREAM, stream half-closed (remote)",
            "5.1 (half-closed (remote)), 6.1",
            Stream(1, STREAM_CLOSED),
            Conn(STREAM_CLOSED),
            "caught by Steelyard's frame guard (src/http1/h2_guard.rs) as a connection error; \
             h2 alone: GOAWAY PROTOCOL_ERROR (proto/streams/recv.rs:663-671)",
            vec![Send(hello()), Send(hold_get(1)), Send(data(1, END_STREAM, b"x"))],
        ),
        row(
            "DATA after END_STREAM, stream closed (response complete)",
            "5.1 (closed), 6.1",
            OneOf(&[Stream(1, STREAM_CLOSED), Conn(STREAM_CLOSED)]),
            Conn(STREAM_CLOSED),
            "caught by Steelyard's frame guard (src/http1/h2_guard.rs); h2 alone: RST_STREAM \
             STREAM_CLOSED once the stream is released (proto/streams/streams.rs:631-642), GOAWAY \
             PROTOCOL_ERROR while it is still stored (recv.rs:663-671)",
            vec![
                Send(hello()),
                Send(live_get(1)),
                AwaitEndStream(1),
                Send(data(1, END_STREAM, b"x")),
            ],
        ),
        // ---- §6.6, §8.4: PUSH_PROMISE from a client.
        row(
            "PUSH_PROMISE from the client",
            "8.4, 6.6",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "proto/streams/streams.rs:876-880 -> recv.rs:135 -> proto/peer.rs:79-81",
            vec![
                Send(hello()),
                Send(hold_post(1)),
                Send(frame(PUSH_PROMISE, END_HEADERS, 1, &push_promise)),
            ],
        ),
        // ---- §6.1, §6.2: padding.
        row(
            "DATA Pad Length beyond the payload",
            "6.1",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "frame/util.rs:27-33 via frame/data.rs:128-130 -> codec/framed_read.rs:258-267",
            vec![
                Send(hello()),
                Send(hold_post(1)),
                Send(data(1, PADDED | END_STREAM, &[5, b'a', b'b'])),
            ],
        ),
        row(
            "HEADERS padding beyond the field block",
            "6.2",
            Conn(PROTOCOL_ERROR),
            Conn(PROTOCOL_ERROR),
            "frame/headers.rs:194-197 -> codec/framed_read.rs:184-187",
            vec![
                Send(hello()),
                Send(headers(1, PADDED | END_HEADERS | END_STREAM, &padded_headers)),
            ],
        ),
        // ---- §4.1, §5.5: extension frames.
        row(
            "unknown frame type is ignored, the next request is answered",
            "4.1, 5.5",
            Response(1),
            Response(1),
            "codec/framed_read.rs:404-407",
            vec![
                Send(hello()),
                Send(frame(UNKNOWN_TYPE, 0, 0, b"ignoreme")),
                Send(live_get(1)),
            ],
        ),
    ];
    // Keep the table honest: every row has a section, and a source for what h2 does.
    for r in &rows {
        assert!(!r.section.is_empty() && !r.source.is_empty(), "{}", r.name);
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// The client.

struct Frame {
    ty: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

enum Next {
    Frame(Frame),
    Eof,
    Timeout,
}

/// A byte stream to the listener: plain TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

struct Client {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    eof: bool,
    /// Every frame received, for failure messages.
    log: Vec<String>,
    /// What the client may still send on the connection (RFC 9113 §6.9.1): 65,535 plus the
    /// server's connection WINDOW_UPDATEs (this client sends no DATA before using it).
    send_window: i64,
    saw_conn_window_update: bool,
    /// `:status` of each response head received.
    statuses: HashMap<u32, Option<u16>>,
}

impl Client {
    /// Connects in the clear, or over TLS (ALPN `h2`) with `tls`.
    async fn connect(addr: SocketAddr, tls: Option<&tokio_rustls::TlsConnector>) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let io: Box<dyn Io> = match tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from("h2.test").expect("name");
                let session = connector.connect(name, tcp).await.expect("handshake");
                assert_eq!(session.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2");
                Box::new(session)
            }
        };
        Client {
            io,
            buf: Vec::new(),
            eof: false,
            log: Vec::new(),
            send_window: 65_535,
            saw_conn_window_update: false,
            statuses: HashMap::new(),
        }
    }

    /// Writes `bytes`; a failed write is not an error here: what the server said is read next.
    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.io.write_all(bytes).await;
    }

    fn take_frame(&mut self) -> Option<Frame> {
        if self.buf.len() < 9 {
            return None;
        }
        let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
        if self.buf.len() < 9 + len {
            return None;
        }
        let bytes: Vec<u8> = self.buf.drain(..9 + len).collect();
        let f = Frame {
            ty: bytes[3],
            flags: bytes[4],
            stream: be32(&bytes[5..9]) & 0x7fff_ffff,
            payload: bytes[9..].to_vec(),
        };
        if f.ty == WINDOW_UPDATE && f.stream == 0 && f.payload.len() == 4 {
            self.send_window += i64::from(be32(&f.payload) & 0x7fff_ffff);
            self.saw_conn_window_update = true;
        }
        if f.ty == HEADERS && f.stream != 0 {
            self.statuses.insert(f.stream, status_of(&f.payload));
        }
        self.log.push(format!(
            "{}(stream {}, flags {:#x}, {} octets)",
            type_name(f.ty),
            f.stream,
            f.flags,
            f.payload.len()
        ));
        Some(f)
    }

    /// The next frame, EOF (a reset counts), or the deadline.
    async fn next(&mut self, deadline: Instant) -> Next {
        loop {
            if let Some(f) = self.take_frame() {
                return Next::Frame(f);
            }
            if self.eof {
                return Next::Eof;
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Err(_) => return Next::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => self.eof = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until a frame `want` accepts; a GOAWAY, RST_STREAM, EOF or the deadline first is
    /// the row's answer.
    async fn wait_for(&mut self, deadline: Instant, want: impl Fn(&Frame) -> bool) -> Result<Frame, Seen> {
        loop {
            match self.next(deadline).await {
                Next::Frame(f) if want(&f) => return Ok(f),
                Next::Frame(f) if f.ty == GOAWAY => return Err(goaway(&f)),
                Next::Frame(f) if f.ty == RST_STREAM => {
                    return Err(Seen::Reset {
                        stream: f.stream,
                        code: reset_code(&f),
                        survived: false,
                    })
                }
                Next::Frame(_) => {}
                Next::Eof => return Err(Seen::Closed(Vec::new())),
                Next::Timeout => return Err(Seen::Timeout(self.log.clone())),
            }
        }
    }

    /// For rows that are not HTTP/2: every byte until EOF.
    async fn read_to_end(&mut self, deadline: Instant) -> Seen {
        let mut out = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Err(_) => {
                    return Seen::Timeout(vec![format!(
                        "{} octets and no EOF: {:?}",
                        out.len(),
                        String::from_utf8_lossy(&out)
                    )])
                }
                Ok(Ok(0)) | Ok(Err(_)) => return Seen::Closed(out),
                Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

fn goaway(f: &Frame) -> Seen {
    if f.payload.len() < 8 {
        return Seen::GoAway {
            last_stream: u32::MAX,
            code: u32::MAX,
        };
    }
    Seen::GoAway {
        last_stream: be32(&f.payload[0..4]) & 0x7fff_ffff,
        code: be32(&f.payload[4..8]),
    }
}

fn reset_code(f: &Frame) -> u32 {
    if f.payload.len() == 4 {
        be32(&f.payload)
    } else {
        u32::MAX
    }
}

/// Whether the connection still answers a PING.
async fn survives(c: &mut Client, deadline: Instant) -> bool {
    c.send(&ping(0, &PROBE)).await;
    loop {
        match c.next(deadline).await {
            Next::Frame(f) if f.ty == PING && f.flags & ACK != 0 && f.payload == PROBE => return true,
            Next::Frame(f) if f.ty == GOAWAY => return false,
            Next::Frame(_) => {}
            Next::Eof | Next::Timeout => return false,
        }
    }
}

/// Reads until the row's answer.
async fn outcome(c: &mut Client, deadline: Instant) -> Seen {
    loop {
        let f = match c.next(deadline).await {
            Next::Frame(f) => f,
            Next::Eof => return Seen::Closed(Vec::new()),
            Next::Timeout => return Seen::Timeout(c.log.clone()),
        };
        match f.ty {
            GOAWAY => return goaway(&f),
            RST_STREAM => {
                let code = reset_code(&f);
                let survived = survives(c, deadline).await;
                return Seen::Reset {
                    stream: f.stream,
                    code,
                    survived,
                };
            }
            PING if f.flags & ACK != 0 && f.payload == PROBE => return Seen::Alive,
            HEADERS | DATA if f.stream != 0 && f.flags & END_STREAM != 0 => {
                return Seen::Response {
                    stream: f.stream,
                    status: c.statuses.get(&f.stream).copied().flatten(),
                }
            }
            // SETTINGS (and ACK), WINDOW_UPDATE, other PING ACKs, response heads and bodies.
            _ => {}
        }
    }
}

/// Runs one row on a new connection.
async fn run(addr: SocketAddr, row: &Row, tls: Option<&tokio_rustls::TlsConnector>) -> Seen {
    let deadline = Instant::now() + ROW_DEADLINE;
    let mut c = Client::connect(addr, tls).await;
    if row.raw {
        for step in &row.script {
            if let Step::Send(bytes) = step {
                c.send(bytes).await;
            }
        }
        return c.read_to_end(deadline).await;
    }
    c.send(PREFACE).await;
    for step in &row.script {
        let done = match step {
            Step::Send(bytes) => {
                c.send(bytes).await;
                Ok(())
            }
            Step::AckServerSettings => match c.wait_for(deadline, |f| f.ty == SETTINGS && f.flags & ACK == 0).await {
                Ok(_) => {
                    c.send(&frame(SETTINGS, ACK, 0, &[])).await;
                    Ok(())
                }
                Err(seen) => Err(seen),
            },
            Step::AwaitConnWindowUpdate => {
                if c.saw_conn_window_update {
                    Ok(())
                } else {
                    c.wait_for(deadline, |f| f.ty == WINDOW_UPDATE && f.stream == 0)
                        .await
                        .map(|_| ())
                }
            }
            Step::AwaitEndStream(stream) => {
                let stream = *stream;
                c.wait_for(deadline, move |f| {
                    f.stream == stream && (f.ty == HEADERS || f.ty == DATA) && f.flags & END_STREAM != 0
                })
                .await
                .map(|_| ())
            }
            Step::OverflowConnWindow(stream) => {
                let mut left = c.send_window + 1;
                let mut bytes = Vec::new();
                while left > 0 {
                    let n = left.min(MAX_FRAME as i64);
                    bytes.extend_from_slice(&data(*stream, 0, &vec![b'x'; n as usize]));
                    left -= n;
                }
                c.send(&bytes).await;
                Ok(())
            }
        };
        if let Err(seen) = done {
            return seen;
        }
    }
    if row.h2.wants_probe() || row.rfc.wants_probe() {
        c.send(&ping(0, &PROBE)).await;
    }
    outcome(&mut c, deadline).await
}

// ---------------------------------------------------------------------------------------------
// The binary.

fn temp_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("steelyard-h2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// The real binary with a cleartext listener and a TLS one (certificate `pki`'s `h2`):
/// `hold.test` to `blackhole`, `live.test` to `origin`, nothing else routed.
fn start(origin: SocketAddr, blackhole: SocketAddr, pki: &Pki) -> (Process, SocketAddr, SocketAddr) {
    let routes =
        format!("routes = [{{ host = \"{HOLD}\", pool = \"hold\" }}, {{ host = \"{LIVE}\", pool = \"live\" }}]");
    let tls = format!(
        "tls = {{ certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}",
        pki.path("h2.pem"),
        pki.path("h2.key")
    );
    let path = temp_config(
        "h2.toml",
        &format!(
            "[server]\nworkers = 1\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n{routes}\n\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n{tls}\n{routes}\n\n[pools.live]\nbackends = [\"{origin}\"]\n\n[pools.hold]\nbackends = [\"{blackhole}\"]\ntimeouts = {{ connect = \"30s\", response_header = \"30s\" }}\n"
        ),
    );
    let mut p = Process::start(&["--config", path.to_str().expect("utf-8 path"), "--admin", "off"]);
    let plain = p.listening_addr();
    let line = p.wait_for_line("listening on https://");
    let rest = &line[line.find("https://").expect("url") + 8..];
    let tls_addr = rest
        .split(|c: char| c == ',' || c.is_whitespace())
        .next()
        .and_then(|a| a.parse().ok())
        .expect("TLS listener address");
    (p, plain, tls_addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frame_sequences_get_the_errors_rfc_9113_prescribes() {
    let origin = spawn_origin("live").await;
    let (blackhole, _fillers, _socket) = blackhole_port();
    // The blackhole must really swallow connection attempts, or `hold.test` streams end.
    assert!(std::net::TcpStream::connect_timeout(&blackhole, Duration::from_millis(200)).is_err());
    let pki = Pki::new("h2-conformance");
    pki.issue("h2", &["h2.test"]);
    let (_steelyard, addr, tls_addr) = start(origin.addr, blackhole, &pki);
    let connector = pki.connector(&[b"h2"]);

    let rows = rows();
    let mut results = Vec::new();
    for row in &rows {
        let seen = run(addr, row, None).await;
        results.push((row, seen));
    }
    // The TLS listener serves HTTP/2 chosen by ALPN with the same server and guard: every row
    // but the raw preface ones (which test the cleartext listener's protocol sniffing) must
    // get the same answer there.
    let mut tls_changed = Vec::new();
    for row in rows.iter().filter(|r| !r.raw) {
        let seen = run(tls_addr, row, Some(&connector)).await;
        if !row.h2.matches(&seen) {
            tls_changed.push(format!(
                "{}: expected {}, saw {}",
                row.name,
                row.h2.describe(),
                seen.describe()
            ));
        }
    }
    assert!(
        tls_changed.is_empty(),
        "over TLS, rows answered differently:\n{}",
        tls_changed.join("\n")
    );

    let mut changed = Vec::new();
    let mut deviations = Vec::new();
    for (i, (row, seen)) in results.iter().enumerate() {
        let verdict = judge(row.rfc, seen);
        let pinned = row.h2.matches(seen);
        eprintln!(
            "[{i:2}] {} (RFC 9113 §{})\n     RFC:  {}\n     h2:   {}  [{}]\n     seen: {}\n     {:?}{}",
            row.name,
            row.section,
            row.rfc.describe(),
            row.h2.describe(),
            row.source,
            seen.describe(),
            verdict,
            if pinned { "" } else { "  <-- NOT WHAT h2 0.4.20 DOES" }
        );
        if !pinned {
            changed.push(format!(
                "[{i}] {}: expected {}, saw {}",
                row.name,
                row.h2.describe(),
                seen.describe()
            ));
        }
        if verdict == Verdict::Deviates {
            deviations.push(format!(
                "[{i}] {}: RFC {}, saw {}",
                row.name,
                row.rfc.describe(),
                seen.describe()
            ));
        }
    }
    eprintln!("{} rows, {} deviate from RFC 9113", results.len(), deviations.len());
    assert!(
        changed.is_empty(),
        "rows that no longer behave as h2 0.4.20 does (update the table, and the docs):\n{}",
        changed.join("\n")
    );
    if std::env::var_os("STEELYARD_H2_STRICT").is_some() {
        assert!(
            deviations.is_empty(),
            "deviations from RFC 9113:\n{}",
            deviations.join("\n")
        );
    }
    // GOAWAY(NO_ERROR) would mean a graceful close, never an answer to a malformed sequence.
    assert!(
        !results
            .iter()
            .any(|(_, seen)| matches!(seen, Seen::GoAway { code, .. } if *code == NO_ERROR)),
        "a malformed sequence was answered with GOAWAY(NO_ERROR)"
    );
}
