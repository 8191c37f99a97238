//! Request and response heads: parsed once with `httparse`, checked against RFC 9112/9110,
//! and kept as offsets into the connection's buffer (no copies, no header map).
//!
//! Everything a forwarding decision needs (framing, keep-alive, upgrade, host) is decided here,
//! in one place, before a byte goes anywhere. What fails a check never leaves the proxy.

use std::mem::MaybeUninit;

/// Most header fields the parser looks at in one head (the configured limits are lower).
pub const MAX_FIELDS: usize = 512;

/// A range of bytes in the buffer the head was parsed from (offsets from the head's start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// Length.
    pub len: u32,
}

impl Span {
    /// Where `part` lies in `base`. An empty `part` may not point into `base` at all
    /// (httparse hands out a static empty slice for an empty reason phrase): it becomes an
    /// empty span at the start.
    fn of_slice(base: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
        if part.is_empty() || start > base.len() || base.len() - start < part.len() {
            return Span::default();
        }
        Span {
            start: start as u32,
            len: part.len() as u32,
        }
    }

    /// The bytes it covers in `head`.
    pub fn get<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        let start = self.start as usize;
        head.get(start..start + self.len as usize).unwrap_or(&[])
    }
}

/// Header fields the proxy treats specially; everything else is [`Kind::Other`] and passes
/// through untouched, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Any other field.
    Other,
    /// `Host`.
    Host,
    /// `Content-Length`.
    ContentLength,
    /// `Transfer-Encoding`.
    TransferEncoding,
    /// `Connection`.
    Connection,
    /// `Keep-Alive`.
    KeepAlive,
    /// `Proxy-Connection`.
    ProxyConnection,
    /// `TE`.
    Te,
    /// `Trailer`.
    Trailer,
    /// `Upgrade`.
    Upgrade,
    /// `X-Forwarded-For`.
    XForwardedFor,
    /// `X-Forwarded-Proto`.
    XForwardedProto,
    /// `X-Forwarded-Host`.
    XForwardedHost,
    /// `Via`.
    Via,
    /// `X-Request-Id`.
    XRequestId,
    /// `Max-Forwards`.
    MaxForwards,
    /// `Expect`.
    Expect,
    /// A field that `Connection` names: hop-by-hop, never forwarded.
    Named,
}

impl Kind {
    /// Hop-by-hop fields (RFC 9110 §7.6.1), removed before forwarding in either direction.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Kind::Connection
                | Kind::KeepAlive
                | Kind::ProxyConnection
                | Kind::Te
                | Kind::Trailer
                | Kind::TransferEncoding
                | Kind::Upgrade
                | Kind::Named
        )
    }
}

fn kind_of(name: &[u8]) -> Kind {
    let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
    match name.len() {
        2 if is("te") => Kind::Te,
        3 if is("via") => Kind::Via,
        4 if is("host") => Kind::Host,
        6 if is("expect") => Kind::Expect,
        7 if is("trailer") => Kind::Trailer,
        7 if is("upgrade") => Kind::Upgrade,
        10 if is("connection") => Kind::Connection,
        10 if is("keep-alive") => Kind::KeepAlive,
        12 if is("x-request-id") => Kind::XRequestId,
        12 if is("max-forwards") => Kind::MaxForwards,
        14 if is("content-length") => Kind::ContentLength,
        15 if is("x-forwarded-for") => Kind::XForwardedFor,
        16 if is("proxy-connection") => Kind::ProxyConnection,
        16 if is("x-forwarded-host") => Kind::XForwardedHost,
        17 if is("transfer-encoding") => Kind::TransferEncoding,
        17 if is("x-forwarded-proto") => Kind::XForwardedProto,
        _ => Kind::Other,
    }
}

/// One header field: where its name and value are, and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The name, as received.
    pub name: Span,
    /// The value, without surrounding whitespace.
    pub value: Span,
    /// What it is to the proxy.
    pub kind: Kind,
}

/// Request methods the proxy treats specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD: the response has no body.
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// OPTIONS: `Max-Forwards` applies.
    Options,
    /// TRACE: `Max-Forwards` applies.
    Trace,
    /// CONNECT: refused.
    Connect,
    /// PATCH
    Patch,
    /// Any other token.
    Other,
}

impl Method {
    fn of(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "CONNECT" => Method::Connect,
            "PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// RFC 9110 §9.2.2: sending it twice does what sending it once does.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get | Method::Head | Method::Put | Method::Delete | Method::Options | Method::Trace
        )
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Limits on a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Most bytes in the whole head (431 past it).
    pub max_bytes: usize,
    /// Most header fields (431 past it).
    pub max_fields: usize,
    /// Longest request target (414 past it).
    pub max_uri: usize,
}

impl Default for HeadLimits {
    fn default() -> HeadLimits {
        HeadLimits {
            max_bytes: 64 * 1024,
            max_fields: 100,
            max_uri: 8 * 1024,
        }
    }
}

/// Why a head was refused; each maps to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Malformed (400 for a request, 502 for a response).
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// Head larger than allowed, or too many fields (431).
    #[error("head too large")]
    TooLarge,
    /// Request target longer than allowed (414).
    #[error("request target too long")]
    UriTooLong,
    /// An HTTP version other than 1.0 and 1.1 (505).
    #[error("HTTP version not supported")]
    Version,
    /// A transfer coding other than chunked (501).
    #[error("transfer coding not implemented")]
    Coding,
    /// CONNECT (405).
    #[error("method not allowed")]
    Method,
}

impl HeadError {
    /// The status a client gets for its request.
    pub fn status(self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::TooLarge => 431,
            HeadError::UriTooLong => 414,
            HeadError::Version => 505,
            HeadError::Coding => 501,
            HeadError::Method => 405,
        }
    }
}

/// A parsed, checked request head. Spans point into the buffer it was parsed from.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead {
    /// Bytes of the head, final empty line included.
    pub len: usize,
    /// The method.
    pub method: Method,
    /// The method token.
    pub method_span: Span,
    /// The target as received.
    pub target: Span,
    /// The target to forward: origin-form `/path?query`, or `*`.
    pub path: Span,
    /// The host the request is for: the absolute-form target's authority, else `Host`.
    pub host: Option<Span>,
    /// True when the host came from an absolute-form target (a `Host` field is then replaced).
    pub host_from_target: bool,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// How the body is delimited.
    pub framing: Framing,
    /// True when the client allows the connection to stay open after the response.
    pub keep_alive: bool,
    /// The `Upgrade` field's value, when the request asks to switch protocols (never `h2c`).
    pub upgrade: Option<Span>,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// `Max-Forwards`, when present and the method is TRACE or OPTIONS.
    pub max_forwards: Option<u64>,
    /// `X-Request-Id` from the client.
    pub request_id: Option<Span>,
}

impl RequestHead {
    /// The target to forward, in origin form: `/` for an absolute-form target without a path.
    pub fn path<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        match self.path.get(head) {
            b"" => b"/",
            path => path,
        }
    }
}

/// A parsed, checked response head.
#[derive(Debug, Clone, Copy)]
pub struct ResponseHead {
    /// Bytes of the head, final empty line included.
    pub len: usize,
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: Span,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// How the body is delimited (before the request method is taken into account).
    pub framing: Framing,
    /// True when the backend keeps the connection open after this response.
    pub keep_alive: bool,
}

/// Parses a request head from the start of `buf`. `Ok(None)`: incomplete, read more.
/// `fields` receives the header fields (cleared first).
pub fn parse_request(
    buf: &[u8],
    limits: &HeadLimits,
    fields: &mut Vec<Field>,
) -> Result<Option<RequestHead>, HeadError> {
    fields.clear();
    let mut raw: [MaybeUninit<httparse::Header<'_>>; MAX_FIELDS] = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, &mut raw);
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if let Some(path) = req.path {
                if path.len() > limits.max_uri {
                    return Err(HeadError::UriTooLong);
                }
            } else if buf.len() > limits.max_uri + 64 && memchr::memchr(b'\n', buf).is_none() {
                return Err(HeadError::UriTooLong);
            }
            if buf.len() >= limits.max_bytes {
                return Err(HeadError::TooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(version_error(buf)),
        Err(e) => return Err(HeadError::Malformed(httparse_reason(e))),
    };
    if len > limits.max_bytes {
        return Err(HeadError::TooLarge);
    }
    let head = &buf[..len];
    check_line_endings(head)?;
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    if target.len() > limits.max_uri {
        return Err(HeadError::UriTooLong);
    }
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HeadError::Malformed("request target outside visible ASCII"));
    }
    if req.headers.len() > limits.max_fields {
        return Err(HeadError::TooLarge);
    }
    let method_kind = Method::of(method);
    if method_kind == Method::Connect {
        return Err(HeadError::Method);
    }
    collect_fields(head, req.headers, fields);

    // The target: origin-form, absolute-form (its authority wins over Host), or `*`.
    let target_span = Span::of_slice(buf, target.as_bytes());
    let (path, authority) = split_target(target, method_kind)?;
    let path = Span::of_slice(buf, path.as_bytes());
    let authority = authority.map(|a| Span::of_slice(buf, a.as_bytes()));

    let mut host = None;
    let mut hosts = 0;
    let mut framing = Framing::Empty;
    let mut chunked = false;
    let mut te_seen = false;
    let mut length: Option<u64> = None;
    let mut connection = ConnectionTokens::new(minor);
    let mut upgrade = None;
    let mut expect_continue = false;
    let mut max_forwards = None;
    let mut request_id = None;
    let mut request_ids = 0;
    for f in fields.iter() {
        let value = f.value.get(head);
        match f.kind {
            Kind::Host => {
                hosts += 1;
                if !valid_host(value) {
                    return Err(HeadError::Malformed("invalid Host"));
                }
                host = Some(f.value);
            }
            Kind::ContentLength => add_length(&mut length, value)?,
            Kind::TransferEncoding => {
                te_seen = true;
                for coding in list(value) {
                    if chunked {
                        // Anything after chunked (another coding or chunked again).
                        return Err(HeadError::Malformed("chunked is not the last transfer coding"));
                    }
                    if coding.eq_ignore_ascii_case(b"chunked") {
                        chunked = true;
                    } else if coding.iter().all(|&b| is_token(b)) {
                        return Err(HeadError::Coding);
                    } else {
                        return Err(HeadError::Malformed("invalid Transfer-Encoding"));
                    }
                }
            }
            Kind::Connection => connection.add(value),
            Kind::Upgrade => upgrade = Some(f.value),
            Kind::Expect => expect_continue = value.eq_ignore_ascii_case(b"100-continue"),
            Kind::MaxForwards if matches!(method_kind, Method::Trace | Method::Options) => {
                max_forwards = Some(content_length(value).ok_or(HeadError::Malformed("invalid Max-Forwards"))?);
            }
            // Only one well-formed id is kept; any other is replaced (and never logged).
            Kind::XRequestId => {
                request_ids += 1;
                request_id = acceptable_request_id(value).then_some(f.value);
            }
            _ => {}
        }
    }
    if request_ids > 1 {
        request_id = None;
    }
    if hosts > 1 {
        return Err(HeadError::Malformed("more than one Host"));
    }
    if hosts == 0 && minor == 1 && authority.is_none() {
        return Err(HeadError::Malformed("HTTP/1.1 request without Host"));
    }
    if te_seen {
        if minor == 0 {
            return Err(HeadError::Malformed("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if !chunked {
            return Err(HeadError::Malformed("empty Transfer-Encoding"));
        }
        if length.is_some() {
            return Err(HeadError::Malformed("both Content-Length and Transfer-Encoding"));
        }
        framing = Framing::Chunked;
    } else if let Some(n) = length {
        if n > 0 {
            framing = Framing::Length(n);
        }
    }
    if connection.names_others {
        mark_named(head, fields);
    }
    let upgrade = upgrade.filter(|u| connection.upgrade && !u.get(head).eq_ignore_ascii_case(b"h2c"));
    Ok(Some(RequestHead {
        len,
        method: method_kind,
        method_span: Span::of_slice(buf, method.as_bytes()),
        target: target_span,
        path,
        host_from_target: authority.is_some(),
        host: authority.or(host),
        minor,
        framing,
        keep_alive: connection.keep_alive,
        upgrade,
        expect_continue,
        max_forwards,
        request_id,
    }))
}

/// Parses a response head from the start of `buf`. `Ok(None)`: incomplete, read more.
/// Malformed heads (a 502 for the client) are held to the request's framing rules; a head
/// longer than `max_bytes` or with more than [`MAX_FIELDS`] fields is refused.
pub fn parse_response(
    buf: &[u8],
    max_bytes: usize,
    fields: &mut Vec<Field>,
) -> Result<Option<ResponseHead>, HeadError> {
    fields.clear();
    let mut raw: [MaybeUninit<httparse::Header<'_>>; MAX_FIELDS] = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut res, buf, &mut raw);
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= max_bytes => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(httparse_reason(e))),
    };
    let head = &buf[..len];
    check_line_endings(head)?;
    let (Some(status), Some(minor)) = (res.code, res.version) else {
        return Err(HeadError::Malformed("incomplete status line"));
    };
    if !(100..=999).contains(&status) {
        return Err(HeadError::Malformed("invalid status code"));
    }
    let reason = res
        .reason
        .map_or(Span::default(), |r| Span::of_slice(buf, r.as_bytes()));
    collect_fields(head, res.headers, fields);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut connection = ConnectionTokens::new(minor);
    for f in fields.iter() {
        let value = f.value.get(head);
        match f.kind {
            Kind::ContentLength => add_length(&mut length, value)?,
            Kind::TransferEncoding => {
                te_seen = true;
                for coding in list(value) {
                    if chunked || !coding.eq_ignore_ascii_case(b"chunked") {
                        return Err(HeadError::Malformed("Transfer-Encoding other than chunked"));
                    }
                    chunked = true;
                }
            }
            Kind::Connection => connection.add(value),
            _ => {}
        }
    }
    if connection.names_others {
        mark_named(head, fields);
    }
    let mut keep_alive = connection.keep_alive;
    let framing = if te_seen {
        if !chunked {
            return Err(HeadError::Malformed("empty Transfer-Encoding"));
        }
        if length.is_some() {
            // RFC 9112 §6.3: chunked wins; the length is dropped and the connection not reused.
            keep_alive = false;
            for f in fields.iter_mut().filter(|f| f.kind == Kind::ContentLength) {
                f.kind = Kind::Named;
            }
        }
        Framing::Chunked
    } else {
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    Ok(Some(ResponseHead {
        len,
        status,
        reason,
        minor,
        framing,
        keep_alive,
    }))
}

/// What the `Connection` fields of a head say, token by token in order.
struct ConnectionTokens {
    minor: u8,
    /// The connection stays open afterwards (HTTP/1.1's default, HTTP/1.0 only if asked).
    keep_alive: bool,
    /// `upgrade` was named.
    upgrade: bool,
    /// Other fields were named: they are hop-by-hop.
    names_others: bool,
}

impl ConnectionTokens {
    fn new(minor: u8) -> ConnectionTokens {
        ConnectionTokens {
            minor,
            keep_alive: minor == 1,
            upgrade: false,
            names_others: false,
        }
    }

    fn add(&mut self, value: &[u8]) {
        for token in list(value) {
            if token.eq_ignore_ascii_case(b"close") {
                self.keep_alive = false;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive |= self.minor == 0;
            } else if token.eq_ignore_ascii_case(b"upgrade") {
                self.upgrade = true;
            } else {
                self.names_others = true;
            }
        }
    }
}

fn collect_fields(head: &[u8], raw: &[httparse::Header<'_>], fields: &mut Vec<Field>) {
    fields.extend(raw.iter().map(|h| {
        let name = Span::of_slice(head, h.name.as_bytes());
        let value = trim(h.value);
        let value = if value.is_empty() {
            // An empty value sits right after the colon.
            Span {
                start: name.start + name.len + 1,
                len: 0,
            }
        } else {
            Span::of_slice(head, value)
        };
        Field {
            name,
            value,
            kind: kind_of(h.name.as_bytes()),
        }
    }));
}

/// Marks every field that a `Connection` field names as hop-by-hop.
fn mark_named(head: &[u8], fields: &mut [Field]) {
    for i in 0..fields.len() {
        if fields[i].kind != Kind::Connection {
            continue;
        }
        let value = fields[i].value;
        for token in list(value.get(head)) {
            for f in fields.iter_mut() {
                if f.kind == Kind::Other && f.name.get(head).eq_ignore_ascii_case(token) {
                    f.kind = Kind::Named;
                }
            }
        }
    }
}

/// 400 for a malformed version, 505 for a well-formed one we do not speak.
fn version_error(buf: &[u8]) -> HeadError {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or(&[]);
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            HeadError::Version
        }
        _ => HeadError::Malformed("invalid HTTP version"),
    }
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid version",
    }
}

/// Every line ends in CRLF: no bare LF (httparse accepts it), no bare CR.
///
/// Heads are short and have a line every few dozen bytes, so rather than a search per line
/// this looks at eight bytes at a time: the bytes just after each CR must be exactly the LFs.
fn check_line_endings(head: &[u8]) -> Result<(), HeadError> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of every byte of `word` equal to `b` (exact: no false positives).
    let matches = |word: u64, b: u8| {
        let x = word ^ (ONES * u64::from(b));
        !(((x & LOW7).wrapping_add(LOW7)) | x) & HIGH
    };
    // A CR in the last byte of a word expects an LF in the first byte of the next.
    let mut carry = 0u64;
    let mut check = |word: u64| -> Result<(), HeadError> {
        let (cr, lf) = (matches(word, b'\r'), matches(word, b'\n'));
        let expected = (cr << 8) | carry;
        carry = cr >> 56;
        if expected == lf {
            Ok(())
        } else if lf & !expected != 0 {
            Err(HeadError::Malformed("bare LF"))
        } else {
            Err(HeadError::Malformed("bare CR"))
        }
    };
    let mut words = head.chunks_exact(8);
    for chunk in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        check(u64::from_le_bytes(bytes))?;
    }
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    check(u64::from_le_bytes(last))?;
    if carry != 0 {
        // A CR as the very last byte.
        return Err(HeadError::Malformed("bare CR"));
    }
    Ok(())
}

/// `(path to forward, authority)` for each request-target form (RFC 9112 §3.2).
fn split_target(target: &str, method: Method) -> Result<(&str, Option<&str>), HeadError> {
    if target.starts_with('/') {
        return Ok((target, None));
    }
    if target == "*" {
        return if method == Method::Options {
            Ok((target, None))
        } else {
            Err(HeadError::Malformed(
                "asterisk-form target on a method other than OPTIONS",
            ))
        };
    }
    let rest = if target.len() > 7 && target[..7].eq_ignore_ascii_case("http://") {
        &target[7..]
    } else if target.len() > 8 && target[..8].eq_ignore_ascii_case("https://") {
        &target[8..]
    } else {
        return Err(HeadError::Malformed("invalid request target"));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') || !valid_host(authority.as_bytes()) {
        return Err(HeadError::Malformed("invalid authority in request target"));
    }
    // An empty path stays an empty span: the request's path is then "/" (RFC 9112 §3.2.1),
    // see [`RequestHead::path`].
    if path.starts_with('#') {
        return Err(HeadError::Malformed("fragment in request target"));
    }
    // "?q" with no path forwards as "/?q" would need a copy; require a path instead.
    if !path.is_empty() && !path.starts_with('/') {
        return Err(HeadError::Malformed("absolute-form target without a path"));
    }
    Ok((path, Some(authority)))
}

/// A `Host` value: `reg-name`/IPv4/`[IPv6]`, optionally `:port`. No spaces, no userinfo.
fn valid_host(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 255
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'[' | b']' | b'~' | b'%'))
}

/// Folds one `Content-Length` field into the length so far: each must be digits only, and
/// all of them the same.
fn add_length(length: &mut Option<u64>, value: &[u8]) -> Result<(), HeadError> {
    let n = content_length(value).ok_or(HeadError::Malformed("invalid Content-Length"))?;
    if length.is_some_and(|l| l != n) {
        return Err(HeadError::Malformed("differing Content-Length values"));
    }
    *length = Some(n);
    Ok(())
}

/// `Content-Length`: digits only, no sign, no spaces, no overflow.
pub fn content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter()
        .try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// RFC 9110 token characters.
pub fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The elements of a comma-separated list, trimmed, empty ones skipped.
pub fn list(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',').map(trim).filter(|t| !t.is_empty())
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| b != b' ' && b != b'\t').unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

/// Longest client `X-Request-Id` kept.
pub const MAX_REQUEST_ID: usize = 128;

/// True for a request id worth keeping: 1 to [`MAX_REQUEST_ID`] bytes of visible ASCII other
/// than quotes and backslashes, so it cannot forge or break an access log line.
pub fn acceptable_request_id(value: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&value.len())
        && value.iter().all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

#[cfg(test)]
mod tests {

    /// The byte-at-a-time definition [`check_line_endings`] must agree with.
    fn line_endings_reference(head: &[u8]) -> Result<(), &'static str> {
        for (i, &b) in head.iter().enumerate() {
            if b == b'\n' && (i == 0 || head[i - 1] != b'\r') {
                return Err("bare LF");
            }
            if b == b'\r' && head.get(i + 1) != Some(&b'\n') {
                return Err("bare CR");
            }
        }
        Ok(())
    }

    #[test]
    fn line_endings_agree_with_the_definition_at_every_length_and_offset() {
        let verdict = |head: &[u8]| match check_line_endings(head) {
            Ok(()) => Ok(()),
            Err(HeadError::Malformed(m)) => Err(m),
            Err(e) => panic!("unexpected {e:?}"),
        };
        // Every placement of CR, LF and other bytes in heads up to 20 bytes, then random
        // longer ones; where both kinds of error exist, either may be named, but a head is
        // refused exactly when the definition refuses it.
        let mut rng = fastrand::Rng::with_seed(9);
        for n in 0..2000 {
            let len = if n < 1000 { n % 21 } else { rng.usize(0..300) };
            let head: Vec<u8> = (0..len)
                .map(|_| match rng.u8(0..10) {
                    0 => b'\r',
                    1 => b'\n',
                    2..=4 => b'a',
                    _ => rng.u8(..),
                })
                .collect();
            assert_eq!(
                verdict(&head).is_ok(),
                line_endings_reference(&head).is_ok(),
                "{head:?}"
            );
            if let Err(ours) = verdict(&head) {
                let first_bad_lf = head
                    .iter()
                    .enumerate()
                    .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'));
                let bad_cr = head
                    .iter()
                    .enumerate()
                    .any(|(i, &b)| b == b'\r' && head.get(i + 1) != Some(&b'\n'));
                assert!(
                    (ours == "bare LF" && first_bad_lf) || (ours == "bare CR" && bad_cr),
                    "{ours} for {head:?}"
                );
            }
        }
        let good = b"GET / HTTP/1.1\r\nHost: a\r\nX: 12345678\r\n\r\n";
        assert_eq!(verdict(good), Ok(()));
        assert_eq!(verdict(b"GET / HTTP/1.1\r\nHost: a\n\r\n"), Err("bare LF"));
        assert_eq!(verdict(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"), Err("bare CR"));
        assert_eq!(verdict(b"1234567\r\n"), Ok(()), "CRLF across two words");
        assert_eq!(verdict(b"1234567\r"), Err("bare CR"), "CR as the last byte");
        assert_eq!(verdict(b"\n"), Err("bare LF"));
    }

    use super::*;

    fn request(raw: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_request(raw.as_bytes(), &HeadLimits::default(), &mut Vec::new())
    }

    #[test]
    fn parses_a_browser_request() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nCookie: a=b\r\n\r\n";
        let mut fields = Vec::new();
        let head = parse_request(raw.as_bytes(), &HeadLimits::default(), &mut fields)
            .expect("valid")
            .expect("complete");
        assert_eq!(head.len, raw.len());
        assert_eq!(head.method, Method::Get);
        assert_eq!(head.path.get(raw.as_bytes()), b"/a?b=1");
        assert_eq!(head.host.map(|h| h.get(raw.as_bytes())), Some(&b"example.com"[..]));
        assert!(head.keep_alive);
        assert_eq!(head.framing, Framing::Empty);
        let kinds: Vec<Kind> = fields.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [Kind::Host, Kind::Connection, Kind::Named, Kind::Other]);
    }

    #[test]
    fn partial_heads_ask_for_more() {
        assert_eq!(request("GET / HTTP/1.1\r\nHost: a\r\n").map(|h| h.is_some()), Ok(false));
    }

    #[test]
    fn absolute_form_authority_wins() {
        let raw = "GET http://a.test:8080/x?y HTTP/1.1\r\nHost: b.test\r\n\r\n";
        let head = request(raw).expect("valid").expect("complete");
        assert_eq!(head.host.map(|h| h.get(raw.as_bytes())), Some(&b"a.test:8080"[..]));
        assert_eq!(head.path(raw.as_bytes()), b"/x?y");
        assert!(head.host_from_target);
        // Found by fuzzing: an empty path is "/", never an empty request target.
        let raw = "GET http://a.test HTTP/1.1\r\n\r\n";
        let head = request(raw).expect("valid").expect("complete");
        assert_eq!(head.path(raw.as_bytes()), b"/");
    }

    #[test]
    fn refuses_what_rfc_9112_forbids() {
        let cases: &[(&str, u16)] = &[
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n", 400),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                400,
            ),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),
            ("GET / HTTP/1.1\nHost: a\n\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHo st: a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            ("GET / HTTX/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET /\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", 405),
            ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        ];
        for (raw, status) in cases {
            match request(raw) {
                Err(e) => assert_eq!(e.status(), *status, "{raw:?}: {e}"),
                Ok(h) => panic!("{raw:?} accepted: {h:?}"),
            }
        }
    }

    #[test]
    fn enforces_limits() {
        let limits = HeadLimits {
            max_bytes: 100,
            max_fields: 2,
            max_uri: 10,
        };
        let mut f = Vec::new();
        let long_uri = "GET /0123456789abc HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            parse_request(long_uri.as_bytes(), &limits, &mut f).err(),
            Some(HeadError::UriTooLong)
        );
        let many = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
        assert_eq!(
            parse_request(many.as_bytes(), &limits, &mut f).err(),
            Some(HeadError::TooLarge)
        );
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nA: {}\r\n", "x".repeat(100));
        assert_eq!(
            parse_request(big.as_bytes(), &limits, &mut f).err(),
            Some(HeadError::TooLarge)
        );
    }

    #[test]
    fn response_framing() {
        let mut f = Vec::new();
        let parse = |raw: &str, f: &mut Vec<Field>| parse_response(raw.as_bytes(), 65536, f);
        let r = parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", &mut f)
            .expect("ok")
            .expect("complete");
        assert_eq!((r.status, r.framing, r.keep_alive), (200, Framing::Length(5), true));
        let r = parse("HTTP/1.0 200 OK\r\n\r\n", &mut f).expect("ok").expect("complete");
        assert_eq!((r.framing, r.keep_alive), (Framing::Close, false));
        let r = parse(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            &mut f,
        )
        .expect("ok")
        .expect("complete");
        assert_eq!((r.framing, r.keep_alive), (Framing::Chunked, false));
        assert_eq!(f[0].kind, Kind::Named, "the length is dropped");
        assert!(parse("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", &mut f).is_err());
        assert!(parse("HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", &mut f).is_err());
    }
}

/// Mutation tests: whatever bytes arrive, parsing never panics (a panic would abort the
/// process), spans stay inside the head, and what parses can be forwarded.
#[cfg(test)]
mod mutations {
    use super::*;
    use crate::http1::chunked::Decoder;
    use crate::http1::write::{self, Forwarding};

    const SEEDS: &[&[u8]] = &[
        b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nCookie: a=b\r\n\r\n",
        b"POST http://h.test:80/p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5\r\nhello\r\n0\r\nT: 1\r\n\r\n",
        b"OPTIONS * HTTP/1.0\r\nMax-Forwards: 3\r\nContent-Length: 3\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nabc",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close, X\r\n\r\n",
        b"HTTP/1.0 103 Early\r\nLink: <a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    ];

    fn mutate(seed: &[u8], rng: &mut fastrand::Rng) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..rng.usize(1..8) {
            let at = rng.usize(0..=v.len());
            match rng.u8(0..6) {
                0 if at < v.len() => v[at] = rng.u8(..),
                1 if at < v.len() => {
                    v.remove(at);
                }
                2 => v.insert(at, *rng.choice(b"\r\n :;,\t\0\x7f0fF-+chunked".iter()).unwrap_or(&b'x')),
                3 => v.truncate(at),
                4 => {
                    let piece = seed[rng.usize(0..seed.len())..].to_vec();
                    v.splice(at..at, piece.into_iter().take(40));
                }
                _ => {}
            }
        }
        v
    }

    /// Iterations per run (`STEELYARD_MUTATIONS` raises it for a longer hunt).
    fn iterations() -> usize {
        std::env::var("STEELYARD_MUTATIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000)
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_spans_stay_inside() {
        let iterations = iterations();
        let mut rng = fastrand::Rng::with_seed(9);
        let limits = HeadLimits::default();
        let mut fields = Vec::new();
        let mut out = Vec::new();
        let fwd = Forwarding {
            client_ip: b"127.0.0.1",
            proto: b"http",
            backend_authority: b"127.0.0.1:1",
            request_id: b"id",
        };
        for i in 0..iterations {
            let input = mutate(SEEDS[i % SEEDS.len()], &mut rng);
            if let Ok(Some(req)) = parse_request(&input, &limits, &mut fields) {
                assert!(req.len <= input.len());
                for f in &fields {
                    assert!((f.value.start + f.value.len) as usize <= req.len);
                }
                write::request_head(&mut out, &input, &req, &fields, &fwd);
                assert!(out.ends_with(b"\r\n\r\n"));
            }
            if let Ok(Some(res)) = parse_response(&input, 65536, &mut fields) {
                assert!(res.len <= input.len());
                let framing = write::client_framing(&res, Method::Get, 1);
                write::response_head(&mut out, &input, &res, &fields, framing, true, 1, Some(b"c=1"));
            }
            let mut decoder = Decoder::new();
            let mut rest: &[u8] = &input;
            while let Ok((used, event)) = decoder.decode(rest) {
                if let Some(chunked_event) = event {
                    let (start, len) = match chunked_event {
                        crate::http1::chunked::Event::Data { start, len } => (start, len),
                        crate::http1::chunked::Event::End { start, len } => (start, len),
                    };
                    assert!(start + len <= used && used <= rest.len());
                }
                if used == 0 {
                    break;
                }
                rest = &rest[used..];
            }
        }
    }
}
