//! The compiled `steelyard` binary as a child process whose output lines are collected.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::DEADLINE;

pub const BIN: &str = env!("CARGO_BIN_EXE_steelyard");

/// The address after the first `://` of a "listening on" log line.
fn address_in(line: &str) -> SocketAddr {
    let rest = &line[line.find("://").expect("url") + 3..];
    rest.split(|c: char| c == ',' || c == '/' || c.is_whitespace())
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse address from {line:?}"))
}

/// A running `steelyard` process whose output lines are collected as they arrive.
pub struct Process {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    /// Starts the binary with `args`, plus `--admin off` unless they name `--admin`: tests run
    /// in parallel and must not race for the default admin port.
    pub fn start(args: &[&str]) -> Process {
        let mut command = Command::new(BIN);
        command.args(args);
        if !args.contains(&"--admin") {
            command.args(["--admin", "off"]);
        }
        Process::start_command(&mut command)
    }

    /// Runs `command` (a shell wrapping the binary, say) with its output collected.
    pub fn start_command(command: &mut Command) -> Process {
        let mut child = command
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start steelyard");
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Process {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for an output line containing `needle` and returns it.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        self.wait_for_line_within(needle, DEADLINE)
    }

    /// [`Process::wait_for_line`] with its own time limit.
    pub fn wait_for_line_within(&mut self, needle: &str, limit: Duration) -> String {
        self.wait_for_any(&[needle], limit)
    }

    /// Waits for the `n`th output line (counting from 1) containing `needle` and returns it.
    pub fn wait_for_nth(&mut self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(l) = self.seen.iter().filter(|l| l.contains(needle)).nth(n - 1) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no line {n} containing {needle:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for an output line containing any of `needles` and returns it.
    pub fn wait_for_any(&mut self, needles: &[&str], limit: Duration) -> String {
        let matches = |l: &str| needles.iter().any(|n| l.contains(n));
        if let Some(l) = self.seen.iter().find(|l| matches(l)) {
            return l.clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needles:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The address from the "listening on http://ADDR" (or https://, tcp://) log line.
    pub fn listening_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_any(&["listening on http", "listening on tcp"], super::DEADLINE);
        address_in(&line)
    }

    /// The address of the listener named `name`, from its "listening on" log line.
    pub fn listening_addr_of(&mut self, name: &str) -> SocketAddr {
        let line = self.wait_for_line(&format!("listener={name}"));
        address_in(&line)
    }

    /// The process's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// Whether the process has a handler installed for signal number `signal` (the SigCgt
    /// mask in /proc/PID/status), i.e. the signal no longer takes its default action.
    pub fn catches(&self, signal: u32) -> bool {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        let mask = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .expect("SigCgt line");
        let mask = u64::from_str_radix(mask.trim(), 16).expect("hex SigCgt");
        mask & (1 << (signal - 1)) != 0
    }

    /// Waits for exit; returns the exit code.
    pub fn wait(&mut self) -> i32 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status
                    .code()
                    .unwrap_or_else(|| panic!("steelyard did not exit by itself: {status}"));
            }
            assert!(Instant::now() < deadline, "steelyard did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Drains the lines that arrived so far.
    pub fn collect(&mut self) -> Vec<String> {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        self.seen.clone()
    }

    /// CPU time the process has used so far (user + system), in clock ticks (1/100 s on
    /// Linux).
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).expect("proc stat");
        // Fields after the command name (which may hold spaces): utime and stime are the 12th
        // and 13th of them.
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = after.split(' ').collect();
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    }

    /// Peak resident memory, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `steelyard check --config FILE`, run to completion.
pub fn run_check(file: &std::path::Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "--config", file.to_str().expect("utf-8 path")])
        .output()
        .expect("run check")
}

/// A process an upgrade started (not a child of the test): killed when dropped if it still
/// runs the binary, so a failing test leaves no server behind.
pub struct Successor(pub u32);

impl Drop for Successor {
    fn drop(&mut self) {
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("steelyard") {
            let _ = Command::new("kill").args(["-KILL", &self.0.to_string()]).status();
        }
    }
}

/// The two PIDs in the log line "upgrade: PID NEW serves now; this process (PID OLD) ...":
/// (new, old).
pub fn upgrade_pids(line: &str) -> (u32, u32) {
    let number_after = |marker: &str, what: &str| -> u32 {
        let at = line.find(marker).unwrap_or_else(|| panic!("{what} in {line:?}"));
        line[at + marker.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{what} in {line:?}"))
    };
    (number_after("PID ", "new PID"), number_after("(PID ", "old PID"))
}
