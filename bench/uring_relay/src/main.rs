//! The floor of CPU per proxied request on this machine: a TCP relay on io_uring that does
//! no HTTP work at all. Each client connection gets its own upstream connection (origins
//! taken in turn); bytes from one are sent to the other as they arrive. One thread, one
//! ring with deferred task work, a receive always pending on every socket.
//!
//! usage: uring_relay LISTEN_ADDR ORIGIN_ADDR [ORIGIN_ADDR...]
//!        uring_relay --probe     (exits 0 when this kernel lets the process make a ring)
//!
//! A measuring tool for `bench/compare.sh`, kept small on purpose: no timeouts, no limits,
//! and a connection whose peer closes or fails is simply closed on both sides (once the
//! operations still pending on it have completed).

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};

const BUF: usize = 16 * 1024;
/// `user_data` of the pending accept; every other value is `pair << 2 | Op`.
const ACCEPT: u64 = u64::MAX;

/// What a completion finished, in the low two bits of its `user_data`.
#[derive(Clone, Copy)]
enum Op {
    RecvClient = 0,
    RecvUpstream = 1,
    SendUpstream = 2,
    SendClient = 3,
}

/// A client connection, its upstream connection, and one buffer for each direction.
struct Pair {
    client: RawFd,
    upstream: RawFd,
    up: Vec<u8>,
    down: Vec<u8>,
    /// Bytes of `up` / `down` received and not yet sent, and how many of them were sent.
    up_len: usize,
    up_sent: usize,
    down_len: usize,
    down_sent: usize,
    open: bool,
    /// Operations queued or in flight on this pair's sockets. Once the pair is shut down,
    /// its descriptors are closed only when this reaches zero, so that no stale operation
    /// can meet a new connection given the same descriptor number.
    pending: u32,
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Declared before the ring, so dropped after it: no buffer is freed under an operation.
    let mut pairs: Vec<Pair> = Vec::new();
    // Deferred task work: completions are processed only when this thread waits for them,
    // in batches, instead of interrupting it (kernel 6.1 and later).
    let mut ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4096)?;
    if args.first().map(String::as_str) == Some("--probe") {
        return Ok(());
    }
    if args.len() < 2 {
        eprintln!("usage: uring_relay LISTEN_ADDR ORIGIN_ADDR [ORIGIN_ADDR...] | --probe");
        std::process::exit(2);
    }
    let listener = TcpListener::bind(&args[0])?;
    let origins = &args[1..];
    let mut turn = 0usize;
    push(&mut ring, accept(listener.as_raw_fd()))?;
    let mut done: Vec<(u64, i32)> = Vec::with_capacity(1024);
    loop {
        ring.submit_and_wait(1)?;
        done.clear();
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(data, result) in &done {
            if data == ACCEPT {
                // A failed accept (out of descriptors) would fail again at once: stop loudly.
                if result < 0 {
                    return Err(io::Error::from_raw_os_error(-result));
                }
                let origin = &origins[turn % origins.len()];
                turn += 1;
                match open_pair(result, origin) {
                    Ok(pair) => {
                        let index = pairs.len() as u64;
                        pairs.push(pair);
                        let p = pairs.last_mut().expect("just pushed");
                        p.pending = 2;
                        push(&mut ring, recv(p.client, &mut p.up, index, Op::RecvClient))?;
                        push(&mut ring, recv(p.upstream, &mut p.down, index, Op::RecvUpstream))?;
                    }
                    Err(e) => {
                        eprintln!("uring_relay: connect {origin}: {e}");
                        close(result);
                    }
                }
                push(&mut ring, accept(listener.as_raw_fd()))?;
                continue;
            }
            let index = data >> 2;
            let Some(p) = pairs.get_mut(index as usize) else {
                continue;
            };
            p.pending -= 1;
            if p.open && result <= 0 {
                // Shutting both sockets down makes the other direction's operation complete.
                p.open = false;
                shutdown(p.client);
                shutdown(p.upstream);
            }
            if !p.open {
                if p.pending == 0 {
                    close(p.client);
                    close(p.upstream);
                }
                continue;
            }
            let n = result as usize;
            let next = match data & 3 {
                0 => {
                    (p.up_len, p.up_sent) = (n, 0);
                    send(p.upstream, &p.up[..n], index, Op::SendUpstream)
                }
                1 => {
                    (p.down_len, p.down_sent) = (n, 0);
                    send(p.client, &p.down[..n], index, Op::SendClient)
                }
                2 => {
                    p.up_sent += n;
                    if p.up_sent < p.up_len {
                        send(p.upstream, &p.up[p.up_sent..p.up_len], index, Op::SendUpstream)
                    } else {
                        recv(p.client, &mut p.up, index, Op::RecvClient)
                    }
                }
                _ => {
                    p.down_sent += n;
                    if p.down_sent < p.down_len {
                        send(p.client, &p.down[p.down_sent..p.down_len], index, Op::SendClient)
                    } else {
                        recv(p.upstream, &mut p.down, index, Op::RecvUpstream)
                    }
                }
            };
            p.pending += 1;
            push(&mut ring, next)?;
        }
    }
}

fn open_pair(client: RawFd, origin: &str) -> io::Result<Pair> {
    let upstream = TcpStream::connect(origin)?;
    upstream.set_nodelay(true)?;
    set_nodelay(client);
    Ok(Pair {
        client,
        upstream: upstream.into_raw_fd(),
        up: vec![0; BUF],
        down: vec![0; BUF],
        up_len: 0,
        up_sent: 0,
        down_len: 0,
        down_sent: 0,
        open: true,
        pending: 0,
    })
}

fn accept(listener: RawFd) -> squeue::Entry {
    opcode::Accept::new(types::Fd(listener), std::ptr::null_mut(), std::ptr::null_mut())
        .build()
        .user_data(ACCEPT)
}

// The buffers live in `pairs` for the whole run and are never resized, so the pointers
// handed to the kernel stay valid until their completion arrives.
fn recv(fd: RawFd, buf: &mut [u8], index: u64, op: Op) -> squeue::Entry {
    opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32)
        .build()
        .user_data(index << 2 | op as u64)
}

fn send(fd: RawFd, buf: &[u8], index: u64, op: Op) -> squeue::Entry {
    opcode::Send::new(types::Fd(fd), buf.as_ptr(), buf.len() as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(index << 2 | op as u64)
}

fn push(ring: &mut IoUring, entry: squeue::Entry) -> io::Result<()> {
    // SAFETY: every entry's buffer outlives its operation (see `recv`).
    while unsafe { ring.submission().push(&entry) }.is_err() {
        ring.submit()?;
    }
    Ok(())
}

fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: a plain setsockopt on a socket this process owns, with a c_int option.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Ends both directions, so that an operation pending on the socket completes (a receive
/// with 0, a send with an error) rather than waiting for the peer.
fn shutdown(fd: RawFd) {
    // SAFETY: a shutdown of a descriptor this process owns.
    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
}

fn close(fd: RawFd) {
    // SAFETY: closes a descriptor this process owns, with no operation left on it.
    unsafe { libc::close(fd) };
}
