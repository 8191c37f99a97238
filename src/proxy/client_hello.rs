//! The server name (SNI) of a TLS ClientHello, read without terminating TLS, for listeners that
//! pass TLS through to backends chosen by name.
//!
//! The ClientHello may span several TLS records (large key shares); the handshake message is
//! reassembled from their payloads, and nothing past it is needed. Only the structure this
//! needs is checked: record and handshake framing, the lengths of the fields before the
//! extensions, each extension's length, and the server_name extension itself (RFC 6066 §3).

/// The most bytes a ClientHello may take on the wire before the connection is closed.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// What the bytes received so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// More bytes are needed.
    Incomplete,
    /// A whole ClientHello, with its server name if it sent one (lowercase).
    Complete(Option<String>),
    /// Not a TLS ClientHello, or a malformed one.
    Invalid(&'static str),
}

/// Parses the start of a TLS connection.
pub fn parse(data: &[u8]) -> Hello {
    // Reassemble the handshake layer from the records received so far.
    let mut handshake = Vec::new();
    let mut rest = data;
    loop {
        if rest.len() < 5 {
            break;
        }
        if rest[0] != 0x16 {
            return Hello::Invalid("not a TLS handshake record");
        }
        if rest[1] != 0x03 {
            return Hello::Invalid("not a TLS record version");
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16_384 {
            return Hello::Invalid("bad TLS record length");
        }
        if rest.len() < 5 + len {
            handshake.extend_from_slice(&rest[5..]);
            break;
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if handshake.len() >= 4 && handshake.len() >= 4 + hello_len(&handshake) {
            break;
        }
    }
    if handshake.len() < 4 {
        return Hello::Incomplete;
    }
    if handshake[0] != 0x01 {
        return Hello::Invalid("the first handshake message is not a ClientHello");
    }
    let len = hello_len(&handshake);
    if 4 + len > MAX_CLIENT_HELLO {
        return Hello::Invalid("ClientHello too large");
    }
    if handshake.len() < 4 + len {
        return Hello::Incomplete;
    }
    match server_name(&handshake[4..4 + len]) {
        Ok(name) => Hello::Complete(name),
        Err(why) => Hello::Invalid(why),
    }
}

fn hello_len(h: &[u8]) -> usize {
    usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3])
}

/// A cursor over a ClientHello's body.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("truncated ClientHello");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<usize, &'static str> {
        Ok(usize::from(self.take(1)?[0]))
    }

    fn u16(&mut self) -> Result<usize, &'static str> {
        let b = self.take(2)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

/// The server_name of a ClientHello body, if present.
fn server_name(body: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    let n = r.u8()?;
    r.take(n)?; // legacy_session_id
    let n = r.u16()?;
    r.take(n)?; // cipher_suites
    let n = r.u8()?;
    r.take(n)?; // legacy_compression_methods
    if r.0.is_empty() {
        return Ok(None); // no extensions at all
    }
    let n = r.u16()?;
    let mut exts = Reader(r.take(n)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let n = exts.u16()?;
        let data = exts.take(n)?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(data);
        let n = list.u16()?;
        let mut names = Reader(list.take(n)?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let n = names.u16()?;
            let name = names.take(n)?;
            if name_type != 0 {
                continue;
            }
            let valid = !name.is_empty()
                && name.len() <= 253
                && name
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !valid {
                return Err("invalid server name");
            }
            return Ok(Some(String::from_utf8_lossy(name).to_ascii_lowercase()));
        }
        return Err("server_name extension without a host name");
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a real client writes it, from rustls, for `name`.
    fn real_hello(name: Option<&str>) -> Vec<u8> {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server_name = match name {
            Some(n) => rustls::pki_types::ServerName::try_from(n.to_owned()).expect("name"),
            None => rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
        };
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn a_real_client_hello_gives_its_name_at_every_split() {
        let hello = real_hello(Some("App.Example.com"));
        for cut in 0..hello.len() {
            assert_eq!(parse(&hello[..cut]), Hello::Incomplete, "cut at {cut}");
        }
        assert_eq!(parse(&hello), Hello::Complete(Some("app.example.com".into())));
        assert_eq!(parse(&real_hello(None)), Hello::Complete(None), "no SNI for an address");
    }

    #[test]
    fn a_hello_split_over_two_records_is_reassembled() {
        let hello = real_hello(Some("a.test"));
        let body = &hello[5..];
        let (first, second) = body.split_at(40);
        let mut two = Vec::new();
        for part in [first, second] {
            two.extend_from_slice(&[0x16, 0x03, 0x01]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(parse(&two), Hello::Complete(Some("a.test".into())));
    }

    #[test]
    fn other_bytes_are_refused() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n\r\n"), Hello::Invalid(_)));
        assert!(matches!(parse(&[0x16, 0x03, 0x01, 0, 0]), Hello::Invalid(_)));
        let mut hello = real_hello(Some("a.test"));
        hello[5] = 0x02; // a ServerHello
        assert!(matches!(parse(&hello), Hello::Invalid(_)));
        let mut huge = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x01, 0x00, 0x00];
        huge.resize(5 + 16_384, 0);
        assert_eq!(parse(&huge), Hello::Invalid("ClientHello too large"));
    }
}
