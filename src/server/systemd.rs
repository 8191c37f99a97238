//! systemd's readiness protocol (`Type=notify`): `READY=1` once the listeners accept,
//! `RELOADING=1` and `READY=1` around a reload, `STOPPING=1` when draining starts. Each is one
//! datagram to the Unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace); without that variable nothing is sent. A failed send is logged once and
//! otherwise ignored: systemd's view must never stop the proxy.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};

/// Tells systemd `state` (`READY=1`, `STOPPING=1`, ...), if it is listening.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&target, state) {
        static LOGGED: AtomicBool = AtomicBool::new(false);
        if !LOGGED.swap(true, Ordering::Relaxed) {
            tracing::warn!(socket = ?target, error = %e, "cannot notify systemd");
        }
    }
}

/// `RELOADING=1` with the monotonic timestamp systemd 253+ asks for.
pub fn reloading() {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid pointer it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

fn send(target: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = target.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), target)?;
    }
    Ok(())
}
