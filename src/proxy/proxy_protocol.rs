//! The PROXY protocol (HAProxy's, versions 1 and 2) on accepted connections: a load balancer
//! in front of Steelyard says who the real client is, and that address drives
//! `X-Forwarded-For`, hashing, access logs and limits.
//!
//! The header is read exactly: never a byte of what follows it, which the connection's own
//! protocol then reads as if nothing came before. Version 2 is a 16-byte header and a length;
//! version 1 is one text line, peeked at (it arrives in one segment in practice) and read byte
//! by byte only if it did not. Parsing is strict: a malformed header closes the connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// What a listener accepts.
pub use crate::config::ProxyProtocol;
/// What a pool sends.
pub use crate::config::ProxyVersion;

/// Version 2's signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1's longest line (RFC-like spec §2.1), CRLF included.
const V1_MAX: usize = 107;
/// Most address and TLV bytes a version 2 header may carry here.
const V2_MAX_BODY: usize = 2048;

/// Why a connection's PROXY header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("PROXY protocol: {0}")]
pub struct ProxyHeaderError(pub &'static str);

/// The client the header names: `None` for `LOCAL` (v2) or `UNKNOWN` (v1) connections (a
/// health check from the balancer itself), which keep the connection's own peer.
pub type Source = Option<SocketAddr>;

/// Parses a version 1 line (CRLF included).
pub fn parse_v1(line: &[u8]) -> Result<Source, ProxyHeaderError> {
    let err = |why| Err(ProxyHeaderError(why));
    let Some(text) = line.strip_suffix(b"\r\n") else {
        return err("v1 line without CRLF");
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return err("v1 line is not text");
    };
    let mut parts = text.split(' ');
    if parts.next() != Some("PROXY") {
        return err("v1 line does not start with PROXY");
    }
    let family = parts.next();
    if family == Some("UNKNOWN") {
        return Ok(None);
    }
    let (Some(src), Some(_dst), Some(sport), Some(_dport), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return err("v1 line does not have five fields");
    };
    let ip: IpAddr = match family {
        Some("TCP4") => src.parse::<Ipv4Addr>().map(IpAddr::V4).or(err_ip())?,
        Some("TCP6") => src.parse::<Ipv6Addr>().map(IpAddr::V6).or(err_ip())?,
        _ => return err("v1 protocol is not TCP4, TCP6 or UNKNOWN"),
    };
    let port = parse_port(sport)?;
    Ok(Some(SocketAddr::new(ip, port)))
}

fn err_ip() -> Result<IpAddr, ProxyHeaderError> {
    Err(ProxyHeaderError("v1 source address does not parse"))
}

/// A decimal port without leading zeros or sign, as the spec writes them.
fn parse_port(s: &str) -> Result<u16, ProxyHeaderError> {
    let ok = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    s.parse::<u16>()
        .ok()
        .filter(|_| ok)
        .ok_or(ProxyHeaderError("v1 port does not parse"))
}

/// Parses a version 2 header: its 16 fixed bytes and the `len` bytes after them.
pub fn parse_v2(fixed: &[u8; 16], body: &[u8]) -> Result<Source, ProxyHeaderError> {
    let err = |why| Err(ProxyHeaderError(why));
    if &fixed[..12] != V2_SIGNATURE {
        return err("v2 signature missing");
    }
    let (version, command) = (fixed[12] >> 4, fixed[12] & 0x0f);
    if version != 2 {
        return err("v2 version is not 2");
    }
    match command {
        0 => return Ok(None), // LOCAL
        1 => {}               // PROXY
        _ => return err("v2 command is not LOCAL or PROXY"),
    }
    let (family, transport) = (fixed[13] >> 4, fixed[13] & 0x0f);
    if transport != 1 && !(family == 0 && transport == 0) {
        return err("v2 transport is not TCP");
    }
    match family {
        0 => Ok(None), // AF_UNSPEC
        1 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(Some(SocketAddr::new(ip.into(), u16::from_be_bytes([body[8], body[9]]))))
        }
        2 if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Ok(Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port)))
        }
        1 | 2 => err("v2 addresses are truncated"),
        _ => err("v2 address family is not IPv4 or IPv6"),
    }
}

/// Reads the header `mode` asks for from a new connection; `Ok(None)` when the header names no
/// client (LOCAL, UNKNOWN) or, in `optional` mode, when there is none.
pub async fn read(stream: &mut TcpStream, mode: ProxyProtocol) -> Result<Source, ProxyHeaderError> {
    let mut peeked = [0u8; V1_MAX];
    let n = stream
        .peek(&mut peeked)
        .await
        .map_err(|_| ProxyHeaderError("the connection failed"))?;
    let seen = &peeked[..n];
    let is_v2 = seen.len() >= 12 && &seen[..12] == V2_SIGNATURE;
    let is_v1 = seen.starts_with(b"PROXY ");
    let v2_prefix = V2_SIGNATURE.starts_with(seen);
    let v1_prefix = b"PROXY ".starts_with(seen);
    match mode {
        ProxyProtocol::Off => Ok(None),
        ProxyProtocol::V2 | ProxyProtocol::Optional if is_v2 || (v2_prefix && mode == ProxyProtocol::V2) => {
            read_v2(stream).await
        }
        ProxyProtocol::V1 | ProxyProtocol::Optional if is_v1 || (v1_prefix && mode == ProxyProtocol::V1) => {
            read_v1(stream, seen).await
        }
        ProxyProtocol::Optional if !v1_prefix && !v2_prefix || seen.is_empty() => Ok(None),
        ProxyProtocol::Optional => Err(ProxyHeaderError("the first segment is cut inside a PROXY signature")),
        ProxyProtocol::V1 => Err(ProxyHeaderError("no v1 header")),
        ProxyProtocol::V2 => Err(ProxyHeaderError("no v2 header")),
    }
}

async fn read_v2(stream: &mut TcpStream) -> Result<Source, ProxyHeaderError> {
    let io = |_| ProxyHeaderError("the connection ended inside the header");
    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed).await.map_err(io)?;
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > V2_MAX_BODY {
        return Err(ProxyHeaderError("v2 header too long"));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(io)?;
    parse_v2(&fixed, &body)
}

async fn read_v1(stream: &mut TcpStream, peeked: &[u8]) -> Result<Source, ProxyHeaderError> {
    let io = |_| ProxyHeaderError("the connection ended inside the header");
    let mut line = Vec::with_capacity(V1_MAX);
    if let Some(end) = peeked.windows(2).position(|w| w == b"\r\n") {
        line.resize(end + 2, 0);
        stream.read_exact(&mut line).await.map_err(io)?;
    } else {
        // Cut across segments: read byte by byte, so that nothing after the line is taken.
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if line.len() == V1_MAX {
                return Err(ProxyHeaderError("v1 line too long"));
            }
            stream.read_exact(&mut byte).await.map_err(io)?;
            line.push(byte[0]);
        }
    }
    parse_v1(&line)
}

/// What a PROXY header sent to a backend may say besides the addresses (v2 TLVs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    /// The server name the client asked for (TLS SNI): `PP2_TYPE_AUTHORITY`.
    pub authority: Option<&'a str>,
    /// The protocol agreed by ALPN: `PP2_TYPE_ALPN`.
    pub alpn: Option<&'a [u8]>,
}

/// The header a pool sends on a new connection for a client at `source` that reached
/// Steelyard at `destination`.
pub fn encode(version: ProxyVersion, source: SocketAddr, destination: SocketAddr, extras: Extras<'_>) -> Vec<u8> {
    let (source, destination) = (canonical(source), canonical(destination));
    match version {
        ProxyVersion::V1 => {
            let family = match (source, destination) {
                (SocketAddr::V4(_), SocketAddr::V4(_)) => "TCP4",
                (SocketAddr::V6(_), SocketAddr::V6(_)) => "TCP6",
                _ => return b"PROXY UNKNOWN\r\n".to_vec(),
            };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                source.ip(),
                destination.ip(),
                source.port(),
                destination.port()
            )
            .into_bytes()
        }
        ProxyVersion::V2 => {
            let mut out = V2_SIGNATURE.to_vec();
            out.push(0x21); // version 2, PROXY
            let mut body = Vec::with_capacity(64);
            match (source, destination) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    out.push(0x11);
                    body.extend_from_slice(&s.ip().octets());
                    body.extend_from_slice(&d.ip().octets());
                }
                (s, d) => {
                    out.push(0x21);
                    body.extend_from_slice(&v6(s.ip()).octets());
                    body.extend_from_slice(&v6(d.ip()).octets());
                }
            }
            body.extend_from_slice(&source.port().to_be_bytes());
            body.extend_from_slice(&destination.port().to_be_bytes());
            for (kind, value) in [(0x02u8, extras.authority.map(str::as_bytes)), (0x01, extras.alpn)] {
                if let Some(v) = value.filter(|v| v.len() <= 255) {
                    body.push(kind);
                    body.extend_from_slice(&(v.len() as u16).to_be_bytes());
                    body.extend_from_slice(v);
                }
            }
            out.extend_from_slice(&(body.len() as u16).to_be_bytes());
            out.extend_from_slice(&body);
            out
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so that a v4 client stays TCP4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_lines() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n"),
            Ok(Some("192.0.2.7:56324".parse().expect("addr")))
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 80\r\n"),
            Ok(Some("[2001:db8::1]:4000".parse().expect("addr")))
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n"), Ok(None));
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\n"[..],
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 065535 443\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 443\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2 3\r\n",
            b"proxy TCP4 192.0.2.7 198.51.100.1 1 2\r\n",
        ] {
            assert!(parse_v1(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> ([u8; 16], Vec<u8>) {
        let mut fixed = [0u8; 16];
        fixed[..12].copy_from_slice(V2_SIGNATURE);
        fixed[12] = 0x20 | command;
        fixed[13] = family;
        fixed[14..].copy_from_slice(&(body.len() as u16).to_be_bytes());
        (fixed, body.to_vec())
    }

    #[test]
    fn what_is_sent_parses_back() {
        let (src, dst): (SocketAddr, SocketAddr) = (
            "203.0.113.9:5555".parse().expect("a"),
            "127.0.0.1:80".parse().expect("a"),
        );
        let v1 = encode(ProxyVersion::V1, src, dst, Extras::default());
        assert_eq!(v1, b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n");
        assert_eq!(parse_v1(&v1), Ok(Some(src)));
        let extras = Extras {
            authority: Some("a.test"),
            alpn: Some(b"h2"),
        };
        let v2 = encode(ProxyVersion::V2, src, dst, extras);
        let mut fixed = [0u8; 16];
        fixed.copy_from_slice(&v2[..16]);
        assert_eq!(parse_v2(&fixed, &v2[16..]), Ok(Some(src)));
        assert_eq!(&v2[16 + 12..], b"\x02\x00\x06a.test\x01\x00\x02h2", "TLVs");
        let mixed = encode(
            ProxyVersion::V1,
            "[2001:db8::1]:1".parse().expect("a"),
            dst,
            Extras::default(),
        );
        assert_eq!(mixed, b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v2_headers() {
        let ipv4 = [192, 0, 2, 7, 198, 51, 100, 1, 0xdc, 0x04, 1, 187];
        let (f, b) = v2(1, 0x11, &ipv4);
        assert_eq!(parse_v2(&f, &b), Ok(Some("192.0.2.7:56324".parse().expect("addr"))));
        let mut with_tlv = ipv4.to_vec();
        with_tlv.extend_from_slice(&[0x02, 0, 5, b'a', b'.', b't', b'l', b'd']);
        let (f, b) = v2(1, 0x11, &with_tlv);
        assert_eq!(
            parse_v2(&f, &b),
            Ok(Some("192.0.2.7:56324".parse().expect("addr"))),
            "TLVs skipped"
        );
        let mut ipv6 = vec![0u8; 36];
        ipv6[15] = 1;
        ipv6[32..34].copy_from_slice(&4000u16.to_be_bytes());
        let (f, b) = v2(1, 0x21, &ipv6);
        assert_eq!(parse_v2(&f, &b), Ok(Some("[::1]:4000".parse().expect("addr"))));
        let (f, b) = v2(0, 0x00, &[]);
        assert_eq!(parse_v2(&f, &b), Ok(None), "LOCAL");
        let (f, b) = v2(1, 0x11, &ipv4[..8]);
        assert!(parse_v2(&f, &b).is_err(), "truncated");
        let (f, b) = v2(1, 0x12, &ipv4);
        assert!(parse_v2(&f, &b).is_err(), "UDP");
        let (mut f, b) = v2(1, 0x11, &ipv4);
        f[12] = 0x11;
        assert!(parse_v2(&f, &b).is_err(), "version 1 in a v2 header");
    }
}
