//! Binary upgrade (nginx's `SIGUSR2`): start the binary now at this process's path with the
//! same arguments, hand it every listening socket, and wait until it serves. Only then does
//! this process stop accepting and drain. The sockets are shared, not re-bound: connections
//! waiting in an accept queue are accepted by whichever process is still accepting, so none
//! is refused. A new binary that fails to start (a bad config, a crash, a port it cannot
//! bind, no word within [`READY_WITHIN`]) changes nothing: this process keeps serving.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::inherit::{UPGRADE_FDS, UPGRADE_NAMES, UPGRADE_READY_FD, UPGRADE_STATE_FD};

/// How long a new process has to start serving before it is killed and the upgrade abandoned.
pub const READY_WITHIN: Duration = Duration::from_secs(30);

/// Why an upgrade did not happen. The running process keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The binary to start is unknown (the platform could not say where this one came from).
    #[error("cannot tell which binary to start: {0}")]
    NoBinary(String),
    /// The new process could not be started.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// Why.
        source: std::io::Error,
    },
    /// The new process exited before it served.
    #[error("the new process (PID {pid}) exited before serving: {status}; still running this one")]
    Exited {
        /// Its PID.
        pid: u32,
        /// How it exited.
        status: std::process::ExitStatus,
    },
    /// The new process did not say it served in time; it was killed.
    #[error(
        "the new process (PID {pid}) did not start serving within {READY_WITHIN:?}; killed it, still running this one"
    )]
    TooSlow {
        /// Its PID.
        pid: u32,
    },
    /// An upgrade is already under way, or this process is already draining.
    #[error("an upgrade is already under way")]
    Busy,
    /// The server has stopped.
    #[error("the server is not running")]
    Stopped,
}

/// A listening socket to hand over, with the name the new process matches it by.
pub struct Handed<'a> {
    /// The listener's name ([`super::inherit::ADMIN`] for the admin API).
    pub name: &'a str,
    /// The socket.
    pub socket: &'a std::net::TcpListener,
}

/// Starts `binary` with this process's arguments, `sockets` and the descriptor of the
/// carried `state` (see [`super::carry`]), and waits until it says it serves. Returns its PID.
pub async fn start_successor(
    binary: &Path,
    sockets: &[Handed<'_>],
    state: Option<&OwnedFd>,
) -> Result<u32, UpgradeError> {
    let shown = binary.display().to_string();
    let spawn_error = |source| UpgradeError::Spawn {
        binary: shown.clone(),
        source,
    };
    let (mut ready, ready_writer) = std::io::pipe().map_err(spawn_error)?;
    let fds: Vec<RawFd> = sockets.iter().map(|s| s.socket.as_raw_fd()).collect();
    let list = fds.iter().map(RawFd::to_string).collect::<Vec<_>>().join(",");
    let names = sockets.iter().map(|s| s.name).collect::<Vec<_>>().join("\n");
    let writer_fd = ready_writer.as_raw_fd();
    let mut command = Command::new(binary);
    command
        .args(std::env::args_os().skip(1))
        .env(UPGRADE_FDS, list)
        .env(UPGRADE_NAMES, names)
        .env(UPGRADE_READY_FD, writer_fd.to_string())
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    let mut inherit = fds.clone();
    inherit.push(writer_fd);
    if let Some(state) = state {
        command.env(UPGRADE_STATE_FD, state.as_raw_fd().to_string());
        inherit.push(state.as_raw_fd());
    }
    // SAFETY: the closure runs in the child between fork and exec and only calls fcntl, which
    // is async-signal-safe, on descriptors that are open in the parent (and so in the child).
    unsafe {
        command.pre_exec(move || {
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(spawn_error)?;
    drop(ready_writer);
    let pid = child.id();
    tracing::info!(pid, binary = %shown, "upgrade: started the new process; waiting for it to serve");

    // The new process writes its PID once it serves; the pipe reaches EOF if it exits first.
    let wait = tokio::task::spawn_blocking(move || {
        let mut word = [0u8; 4];
        ready.read_exact(&mut word).is_ok()
    });
    let served = tokio::time::timeout(READY_WITHIN, wait).await;
    match served {
        Ok(Ok(true)) => Ok(pid),
        Ok(_) => {
            let status = tokio::task::spawn_blocking(move || child.wait())
                .await
                .ok()
                .and_then(Result::ok);
            match status {
                Some(status) => Err(UpgradeError::Exited { pid, status }),
                None => Err(UpgradeError::TooSlow { pid }),
            }
        }
        Err(_) => {
            let _ = child.kill();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
            Err(UpgradeError::TooSlow { pid })
        }
    }
}
