//! Writing heads: the request head a backend gets and the response head a client gets, each
//! copied from the bytes received with the proxy's edits, never rebuilt from a map.

use super::head::{Field, Framing, Kind, Method, RequestHead, ResponseHead};

/// What the proxy adds to a forwarded request.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The client's IP, for `X-Forwarded-For`.
    pub client_ip: &'a [u8],
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: &'a [u8],
    /// The backend's `host:port`, the `Host` of a request that named none.
    pub backend_authority: &'a [u8],
    /// The request id to send when the client sent none.
    pub request_id: &'a [u8],
}

/// `name: value`, CRLF-terminated. Inlined so that the constant names callers pass are
/// copied as constants rather than through a `memcpy` call each.
#[inline(always)]
fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Where the line of `f` ends: just after its CRLF (every line of a parsed head ends in one),
/// trailing whitespace of the value included.
fn line_end(head: &[u8], f: &Field) -> usize {
    let mut end = ((f.value.start + f.value.len) as usize).max((f.name.start + f.name.len) as usize + 1);
    while matches!(head.get(end), Some(b' ' | b'\t')) {
        end += 1;
    }
    (end + 2).min(head.len())
}

/// Fields forwarded as they arrived: adjacent ones leave in one copy of the received bytes
/// (a browser's dozen fields are usually one or two runs), so the head costs a few copies
/// rather than one per field.
struct Verbatim {
    start: usize,
    end: usize,
    /// The index of the field that would extend the current run.
    next: usize,
}

impl Verbatim {
    fn new() -> Verbatim {
        Verbatim {
            start: 0,
            end: 0,
            next: usize::MAX,
        }
    }

    /// Field `i` of the head goes out unchanged.
    fn add(&mut self, out: &mut Vec<u8>, head: &[u8], i: usize, f: &Field) {
        if i != self.next {
            self.flush(out, head);
            self.start = f.name.start as usize;
        }
        self.end = line_end(head, f);
        self.next = i + 1;
    }

    /// Writes the run so far; called before anything else is written.
    fn flush(&mut self, out: &mut Vec<u8>, head: &[u8]) {
        if self.end > self.start {
            out.extend_from_slice(head.get(self.start..self.end).unwrap_or(&[]));
        }
        *self = Verbatim::new();
    }
}

/// Writes the head to send upstream into `out` (cleared first): origin-form target, HTTP/1.1,
/// hop-by-hop fields removed, `Host` from an absolute-form target, `X-Forwarded-*`, `Via`,
/// a request id, `Max-Forwards` decremented, framing regenerated.
pub fn request_head(out: &mut Vec<u8>, head: &[u8], req: &RequestHead, fields: &[Field], fwd: &Forwarding) {
    out.clear();
    // Room for the head and every field added below in one check (the scratch vector is
    // pooled, so this allocates only when a head outgrows it).
    out.reserve(req.len + fwd.client_ip.len() + fwd.backend_authority.len() + fwd.request_id.len() + 160);
    out.extend_from_slice(req.method_span.get(head));
    out.push(b' ');
    out.extend_from_slice(req.path(head));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host_written = false;
    let last_xff = fields.iter().rposition(|f| f.kind == Kind::XForwardedFor);
    let last_via = fields.iter().rposition(|f| f.kind == Kind::Via);
    let mut run = Verbatim::new();
    for (i, f) in fields.iter().enumerate() {
        match f.kind {
            k if k.is_hop_by_hop() => {}
            Kind::Host => {
                if !req.host_from_target {
                    run.add(out, head, i, f);
                    host_written = true;
                }
            }
            Kind::XForwardedFor if Some(i) == last_xff => {
                run.flush(out, head);
                copy_appending(out, head, f, fwd.client_ip);
            }
            Kind::Via if Some(i) == last_via => {
                run.flush(out, head);
                let via: &[u8] = if req.minor == 0 {
                    b"1.0 steelyard"
                } else {
                    b"1.1 steelyard"
                };
                copy_appending(out, head, f, via);
            }
            Kind::XForwardedProto | Kind::XForwardedHost => {}
            // An id we did not keep is replaced by ours below.
            Kind::XRequestId if req.request_id.is_none() => {}
            Kind::MaxForwards if req.max_forwards.is_some() => {
                run.flush(out, head);
                let n = req.max_forwards.unwrap_or(1).saturating_sub(1);
                line(out, f.name.get(head), itoa::Buffer::new().format(n).as_bytes());
            }
            _ => run.add(out, head, i, f),
        }
    }
    run.flush(out, head);
    if !host_written {
        let host = match req.host {
            Some(h) if req.host_from_target => h.get(head),
            _ => fwd.backend_authority,
        };
        line(out, b"Host", host);
    }
    if last_xff.is_none() {
        line(out, b"X-Forwarded-For", fwd.client_ip);
    }
    match fwd.proto {
        b"http" => out.extend_from_slice(b"X-Forwarded-Proto: http\r\n"),
        b"https" => out.extend_from_slice(b"X-Forwarded-Proto: https\r\n"),
        other => line(out, b"X-Forwarded-Proto", other),
    }
    if let Some(h) = req.host {
        line(out, b"X-Forwarded-Host", h.get(head));
    }
    if last_via.is_none() {
        out.extend_from_slice(if req.minor == 0 {
            b"Via: 1.0 steelyard\r\n"
        } else {
            b"Via: 1.1 steelyard\r\n"
        });
    }
    if req.request_id.is_none() {
        line(out, b"X-Request-Id", fwd.request_id);
    }
    match req.framing {
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Empty | Framing::Length(_) | Framing::Close => {}
    }
    if let Some(u) = req.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        line(out, b"Upgrade", u.get(head));
    }
    out.extend_from_slice(b"\r\n");
}

fn copy_appending(out: &mut Vec<u8>, head: &[u8], f: &Field, value: &[u8]) {
    let start = f.name.start as usize;
    let end = (f.value.start + f.value.len) as usize;
    out.extend_from_slice(head.get(start..end).unwrap_or(&[]));
    if f.value.len > 0 {
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the body of a response travels to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    /// No body (HEAD, 1xx, 204, 304, or an empty one).
    Empty,
    /// `Content-Length`, copied from the backend.
    Length(u64),
    /// Re-encoded as chunks (a chunked or close-delimited body to an HTTP/1.1 client).
    Chunked,
    /// Until the connection closes (a 1.0 client, or an upgraded connection).
    Close,
}

/// Decides how a response body reaches a client of HTTP/1.`client_minor`.
pub fn client_framing(res: &ResponseHead, method: Method, client_minor: u8) -> ClientFraming {
    if method == Method::Head || res.status < 200 || res.status == 204 || res.status == 304 {
        return match res.framing {
            Framing::Length(n) if method == Method::Head => ClientFraming::Length(n),
            _ => ClientFraming::Empty,
        };
    }
    match res.framing {
        Framing::Empty => ClientFraming::Length(0),
        Framing::Length(n) => ClientFraming::Length(n),
        Framing::Chunked | Framing::Close if client_minor == 1 => ClientFraming::Chunked,
        Framing::Chunked | Framing::Close => ClientFraming::Close,
    }
}

/// Writes the response head for the client into `out` (cleared first): our own `HTTP/1.1`
/// status line with the backend's status and reason, its fields minus hop-by-hop ones,
/// framing regenerated, plus a sticky-session `Set-Cookie` and the connection's fate.
#[allow(clippy::too_many_arguments)]
pub fn response_head(
    out: &mut Vec<u8>,
    head: &[u8],
    res: &ResponseHead,
    fields: &[Field],
    framing: ClientFraming,
    keep_alive: bool,
    client_minor: u8,
    set_cookie: Option<&[u8]>,
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(res.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(res.reason.get(head));
    out.extend_from_slice(b"\r\n");
    let upgrade = res.status == 101;
    let mut run = Verbatim::new();
    for (i, f) in fields.iter().enumerate() {
        match f.kind {
            Kind::Upgrade if upgrade => run.add(out, head, i, f),
            k if k.is_hop_by_hop() => {}
            // Re-framed bodies carry no length; HEAD answers keep the backend's.
            Kind::ContentLength if framing == ClientFraming::Chunked || framing == ClientFraming::Close => {}
            _ => run.add(out, head, i, f),
        }
    }
    run.flush(out, head);
    if framing == ClientFraming::Chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if let Some(cookie) = set_cookie {
        line(out, b"Set-Cookie", cookie);
    }
    if upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response the proxy writes itself: status line, a short text body, closing or not.
pub fn local_response(out: &mut Vec<u8>, status: u16, extra: &[u8], body: &[u8], keep_alive: bool) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra);
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The `https://` URL of a request (host without its port, then the origin-form target), for
/// a redirect from a plain listener.
pub fn https_location(host: &[u8], path: &[u8]) -> Vec<u8> {
    let name = if host.first() == Some(&b'[') {
        host.iter().position(|&b| b == b']').map_or(host, |end| &host[..=end])
    } else {
        host.iter()
            .rposition(|&b| b == b':')
            .map_or(host, |colon| &host[..colon])
    };
    let mut out = Vec::with_capacity(8 + name.len() + path.len());
    out.extend_from_slice(b"https://");
    out.extend_from_slice(name);
    out.extend_from_slice(path);
    out
}

/// The canonical reason phrase of the statuses the proxy writes itself.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::head::{parse_request, parse_response, HeadLimits};

    /// The head a backend gets for `raw`, with the client's request id kept or not.
    fn forwarded(raw: &[u8], fwd: &Forwarding, keep_client_id: bool) -> String {
        let mut fields = Vec::new();
        let mut req = parse_request(raw, &HeadLimits::default(), &mut fields)
            .expect("ok")
            .expect("complete");
        if !keep_client_id {
            req.request_id = None;
        }
        let mut out = Vec::new();
        request_head(&mut out, raw, &req, &fields, fwd);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn rewrites_a_request_head() {
        let raw = b"GET http://a.test/x HTTP/1.1\r\nHost: b.test\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nX-Forwarded-For: 10.0.0.9\r\nVia: 1.1 edge\r\nX-Forwarded-Proto: https\r\nUser-Agent: t\r\n\r\n";
        let fwd = Forwarding {
            client_ip: b"127.0.0.1",
            proto: b"http",
            backend_authority: b"127.0.0.1:9000",
            request_id: b"00ff",
        };
        assert_eq!(
            forwarded(raw, &fwd, true),
            "GET /x HTTP/1.1\r\nX-Forwarded-For: 10.0.0.9, 127.0.0.1\r\nVia: 1.1 edge, 1.1 steelyard\r\nUser-Agent: t\r\nHost: a.test\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a.test\r\nX-Request-Id: 00ff\r\n\r\n"
        );
    }

    #[test]
    fn forwards_kept_fields_byte_for_byte_around_the_ones_it_edits_or_drops() {
        let raw = b"OPTIONS /o HTTP/1.1\r\nHost: a\r\nA: 1 \r\nB:\r\nConnection: X-Hop\r\nX-Hop: 2\r\nC:  3\t\r\nMax-Forwards: 5\r\nD: 4\r\nX-Request-Id: r1\r\n\r\n";
        let fwd = Forwarding {
            client_ip: b"::1",
            proto: b"https",
            backend_authority: b"b:1",
            request_id: b"id",
        };
        // The client's id is not trusted: it is dropped and ours added.
        assert_eq!(
            forwarded(raw, &fwd, false),
            "OPTIONS /o HTTP/1.1\r\nHost: a\r\nA: 1 \r\nB:\r\nC:  3\t\r\nMax-Forwards: 4\r\nD: 4\r\nX-Forwarded-For: ::1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: a\r\nVia: 1.1 steelyard\r\nX-Request-Id: id\r\n\r\n"
        );

        let raw = b"HTTP/1.1 200 OK\r\nE: 5 \r\nConnection: keep-alive\r\nF:\r\nG: 6\r\nKeep-Alive: timeout=5\r\n\r\n";
        let mut fields = Vec::new();
        let res = parse_response(raw, 65536, &mut fields).expect("ok").expect("complete");
        let mut out = Vec::new();
        response_head(&mut out, raw, &res, &fields, ClientFraming::Length(0), true, 1, None);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 OK\r\nE: 5 \r\nF:\r\nG: 6\r\n\r\n"
        );
    }

    #[test]
    fn reframes_a_close_delimited_response() {
        let raw = b"HTTP/1.0 200 Fine\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\n\r\n";
        let mut fields = Vec::new();
        let res = parse_response(raw, 65536, &mut fields).expect("ok").expect("complete");
        let framing = client_framing(&res, Method::Get, 1);
        assert_eq!(framing, ClientFraming::Chunked);
        let mut out = Vec::new();
        response_head(&mut out, raw, &res, &fields, framing, true, 1, None);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 200 Fine\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }
}
