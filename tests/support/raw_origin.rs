//! A recording origin: a raw TCP server that keeps every byte it receives, request by
//! request, and answers each request with bytes the test chose. Used to check, byte for byte,
//! what Steelyard forwards and how it frames what comes back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a recording origin has received.
#[derive(Debug, Default)]
pub struct Recording {
    /// Every byte received, all connections, in arrival order per request.
    pub bytes: Mutex<Vec<u8>>,
    /// Complete requests received.
    pub requests: Mutex<usize>,
    /// Connections accepted.
    pub connections: Mutex<usize>,
}

impl Recording {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().expect("lock")).into_owned()
    }
    pub fn requests(&self) -> usize {
        *self.requests.lock().expect("lock")
    }
    pub fn connections(&self) -> usize {
        *self.connections.lock().expect("lock")
    }
}

/// A recording origin answering every request with `response` (sent as is). When `response`
/// is empty it answers `200` with body `ok`.
pub async fn spawn_recording_origin(response: &[u8]) -> (SocketAddr, Arc<Recording>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
    let addr = listener.local_addr().expect("addr");
    let recording = Arc::new(Recording::default());
    let response: Vec<u8> = if response.is_empty() {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
    } else {
        response.to_vec()
    };
    let rec = Arc::clone(&recording);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            *rec.connections.lock().expect("lock") += 1;
            tokio::spawn(serve(stream, Arc::clone(&rec), response.clone()));
        }
    });
    (addr, recording)
}

async fn serve(mut stream: TcpStream, rec: Arc<Recording>, response: Vec<u8>) {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        // One whole request: head, then a body by Content-Length or chunked.
        let end = loop {
            if let Some(end) = request_end(&pending) {
                break end;
            }
            let mut chunk = [0u8; 16384];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    rec.bytes.lock().expect("lock").extend_from_slice(&pending);
                    return;
                }
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
            }
        };
        let request: Vec<u8> = pending.drain(..end).collect();
        rec.bytes.lock().expect("lock").extend_from_slice(&request);
        *rec.requests.lock().expect("lock") += 1;
        if stream.write_all(&response).await.is_err() {
            return;
        }
        let closes = String::from_utf8_lossy(&response)
            .to_ascii_lowercase()
            .contains("connection: close")
            || !String::from_utf8_lossy(&response)
                .to_ascii_lowercase()
                .contains("content-length")
                && !String::from_utf8_lossy(&response)
                    .to_ascii_lowercase()
                    .contains("transfer-encoding");
        if closes {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Where the first complete request in `buf` ends, if it is complete.
fn request_end(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        // Walk the chunks.
        let mut at = head_end;
        loop {
            let line_end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
            let size_text = String::from_utf8_lossy(&buf[at..line_end]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    let end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
                    let empty = end == at;
                    at = end + 2;
                    if empty {
                        return Some(at);
                    }
                }
            }
            if buf.len() < at + size + 2 {
                return None;
            }
            at += size + 2;
        }
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= head_end + length).then_some(head_end + length)
}
