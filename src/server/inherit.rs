//! Listening sockets a process is handed instead of binding them itself: by systemd's socket
//! activation (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) or by the process it replaces in
//! a binary upgrade ([`UPGRADE_FDS`], [`UPGRADE_NAMES`], see [`super::upgrade`]).
//!
//! Sockets are matched to the config's listeners by address: a listener takes every handed
//! socket bound to its address. A listener configured on port 0 takes the next port named
//! after it on the same IP (how an upgraded process finds the ports its predecessor was
//! given).
//! Handed sockets no listener takes are closed, with a warning.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The variable that lists the descriptors a predecessor hands over (`3,4,7`).
pub const UPGRADE_FDS: &str = "STEELYARD_UPGRADE_FDS";
/// The variable that names them, one name per line, in the same order.
pub const UPGRADE_NAMES: &str = "STEELYARD_UPGRADE_NAMES";
/// The variable holding the write end of the pipe on which the new process says it serves.
pub const UPGRADE_READY_FD: &str = "STEELYARD_UPGRADE_READY_FD";

/// The variable holding the descriptor of the state the predecessor carries over (see
/// [`super::carry`]).
pub const UPGRADE_STATE_FD: &str = "STEELYARD_UPGRADE_STATE_FD";

/// The name a handed-over admin listener carries.
pub const ADMIN: &str = "admin";

/// One handed socket.
#[derive(Debug)]
struct Given {
    name: String,
    addr: SocketAddr,
    socket: std::net::TcpListener,
}

/// Sockets handed to this process, and how to tell the predecessor it is ready.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<Option<Given>>,
    ready: Option<std::fs::File>,
    carried: Option<super::carry::Carried>,
}

impl Inherited {
    /// Nothing handed over: every listener binds its own sockets.
    pub fn none() -> Inherited {
        Inherited::default()
    }

    /// What the environment hands this process: systemd's sockets when `LISTEN_PID` is this
    /// process, a predecessor's when [`UPGRADE_FDS`] is set. Descriptors that are not
    /// listening TCP sockets are refused with the reason.
    pub fn from_env() -> Result<Inherited, String> {
        let mut inherited = Inherited::default();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        if let Some(count) = var("LISTEN_FDS") {
            let for_us = var("LISTEN_PID").and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
            if for_us {
                let count: RawFd = count
                    .parse()
                    .map_err(|_| format!("LISTEN_FDS is not a number: {count:?}"))?;
                let names: Vec<String> = var("LISTEN_FDNAMES")
                    .map(|n| n.split(':').map(str::to_owned).collect())
                    .unwrap_or_default();
                for (i, fd) in (3..3 + count).enumerate() {
                    let name = names.get(i).cloned().unwrap_or_default();
                    inherited.adopt(fd, name, "LISTEN_FDS")?;
                }
            }
        }
        if let Some(fds) = var(UPGRADE_FDS) {
            let names: Vec<String> = var(UPGRADE_NAMES)
                .map(|n| n.lines().map(str::to_owned).collect())
                .unwrap_or_default();
            for (i, fd) in fds.split(',').enumerate() {
                let fd: RawFd = fd
                    .parse()
                    .map_err(|_| format!("{UPGRADE_FDS} holds {fd:?}, not a descriptor"))?;
                let name = names.get(i).cloned().unwrap_or_default();
                inherited.adopt(fd, name, UPGRADE_FDS)?;
            }
            if let Some(fd) = var(UPGRADE_READY_FD) {
                let fd: RawFd = fd
                    .parse()
                    .map_err(|_| format!("{UPGRADE_READY_FD} holds {fd:?}, not a descriptor"))?;
                // SAFETY: the predecessor passed this descriptor, open, for us alone; nothing
                // else in this process owns it.
                let pipe = unsafe { OwnedFd::from_raw_fd(fd) };
                set_cloexec(&pipe);
                inherited.ready = Some(pipe.into());
            }
            if let Some(fd) = var(UPGRADE_STATE_FD) {
                let read = fd
                    .parse::<RawFd>()
                    .map_err(|_| format!("not a descriptor: {fd:?}"))
                    // SAFETY: the predecessor passed this descriptor, open, for us alone.
                    .and_then(|fd| unsafe { super::carry::Carried::from_fd(fd) });
                match read {
                    Ok(carried) => inherited.carried = Some(carried),
                    Err(e) => tracing::warn!(
                        "{UPGRADE_STATE_FD}: cannot read the previous process's state ({e}); starting fresh"
                    ),
                }
            }
        }
        Ok(inherited)
    }

    /// Takes ownership of descriptor `fd` if it is a listening TCP socket.
    fn adopt(&mut self, fd: RawFd, name: String, from: &str) -> Result<(), String> {
        // SAFETY: the descriptor was handed to this process by its parent (systemd or the
        // predecessor) for it to own; nothing else in this process refers to it. fstat tells
        // that it is open before it is wrapped.
        let open = unsafe {
            let mut stat: libc::stat = std::mem::zeroed();
            libc::fstat(fd, &mut stat) == 0 && (stat.st_mode & libc::S_IFMT) == libc::S_IFSOCK
        };
        if !open {
            return Err(format!("{from}: descriptor {fd} is not an open socket"));
        }
        // SAFETY: see above; `fd` is an open socket this process now owns.
        let socket = unsafe { socket2::Socket::from_raw_fd(fd) };
        let addr = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| format!("{from}: descriptor {fd} is not a TCP/IP socket"))?;
        if socket.r#type().ok() != Some(socket2::Type::STREAM) {
            return Err(format!("{from}: descriptor {fd} ({addr}) is not a stream socket"));
        }
        socket
            .set_nonblocking(true)
            .and_then(|()| socket.set_cloexec(true))
            .map_err(|e| format!("{from}: descriptor {fd} ({addr}): {e}"))?;
        self.sockets.push(Some(Given {
            name,
            addr,
            socket: socket.into(),
        }));
        Ok(())
    }

    /// The state the predecessor carried over, once.
    pub fn take_carried(&mut self) -> Option<super::carry::Carried> {
        self.carried.take()
    }

    /// True when this process replaces a predecessor that waits for it to be ready.
    pub fn has_predecessor(&self) -> bool {
        self.ready.is_some()
    }

    /// Takes the handed sockets for a listener called `name` configured on `listen` (see the
    /// module's docs for the matching). Empty when there are none: the listener binds.
    pub fn take(&mut self, name: &str, listen: SocketAddr) -> Vec<std::net::TcpListener> {
        // On port 0 the first socket named after the listener on the same IP decides the
        // port; its siblings (one per worker) share it.
        let addr = if listen.port() != 0 {
            listen
        } else {
            let named = self
                .sockets
                .iter()
                .flatten()
                .find(|g| g.name == name && g.addr.ip() == listen.ip());
            match named {
                Some(g) => g.addr,
                None => return Vec::new(),
            }
        };
        let wanted = |g: &Given| g.addr == addr && (listen.port() != 0 || g.name == name);
        self.sockets
            .iter_mut()
            .filter(|slot| slot.as_ref().is_some_and(wanted))
            .filter_map(|slot| slot.take().map(|g| g.socket))
            .collect()
    }

    /// Takes the handed socket for the admin listener configured on `listen`.
    pub fn take_admin(&mut self, listen: SocketAddr) -> Option<std::net::TcpListener> {
        self.take(ADMIN, listen).into_iter().next()
    }

    /// Closes the handed sockets no listener took, saying which.
    pub fn close_unused(&mut self) {
        for given in self.sockets.iter_mut().filter_map(Option::take) {
            tracing::warn!(
                address = %given.addr,
                name = %given.name,
                "a socket handed to this process matches no listener of the config; closing it"
            );
        }
    }

    /// Tells the predecessor, if any, that this process is serving (it then stops accepting
    /// and drains).
    pub fn ready(&mut self) {
        if let Some(mut pipe) = self.ready.take() {
            use std::io::Write;
            if let Err(e) = pipe.write_all(&std::process::id().to_le_bytes()) {
                tracing::warn!("cannot tell the previous process that this one is ready: {e}");
            }
        }
    }
}

fn set_cloexec(fd: &OwnedFd) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor this process owns; no memory is passed.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
    }
}
