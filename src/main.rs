//! The `steelyard` binary: parse the command line, set up logging and the runtime, run.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, LogFormat};
use steelyard::{Config, ReloadHandle, Server};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match &cli.command {
        Some(Command::Check) => check(&cli),
        Some(Command::Demo { listen, origins }) => {
            let runtime = match build_runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let result = runtime.block_on(steelyard::demo::run(
                *listen,
                usize::from(*origins),
                |config| cli.apply_admin(config),
                shutdown_signal(),
            ));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("steelyard demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        None => run(&cli),
    }
}

fn check(cli: &Cli) -> ExitCode {
    let Some(path) = &cli.config else {
        eprintln!("steelyard check: give the file to check with --config FILE");
        return ExitCode::from(2);
    };
    match Config::load(path, &steelyard::server::dns::System) {
        Ok(config) => {
            println!("{}: OK: {}", path.display(), config.summary());
            if let Some(w) = config.workers {
                println!("note: server.workers = {w} applies when Steelyard starts; a reload keeps the running number");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> ExitCode {
    let mut config = match cli.run_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("steelyard: {e}");
            return ExitCode::FAILURE;
        }
    };
    // One worker per core unless told otherwise.
    if config.workers.is_none() {
        config.workers = Some(std::thread::available_parallelism().map_or(1, usize::from));
    }
    let runtime = match build_runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let watch = cli.watch.then(|| config.source.clone()).flatten();
    let result = runtime.block_on(async {
        let server = Server::bind(config)?;
        tokio::spawn(reload_on_sighup(server.reload_handle()));
        tokio::spawn(reopen_logs_on_sigusr1(server.reload_handle()));
        if let Some(path) = watch {
            tokio::spawn(reload_on_change(server.reload_handle(), path));
        }
        server.run(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("steelyard: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The main thread's runtime: the control plane (the server starts one runtime per worker).
fn build_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all().thread_name("steelyard-control");
    builder.build().map_err(|e| {
        eprintln!("steelyard: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

fn init_logging(cli: &Cli) {
    let filter = match &cli.log_level {
        Some(level) => EnvFilter::try_new(level),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    }
    .unwrap_or_else(|e| {
        eprintln!("steelyard: invalid log filter ({e}); using \"info\"");
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Reloads the config file on every SIGHUP (the outcome is logged by the server).
async fn reload_on_sighup(handle: ReloadHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload with the admin API instead");
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("received SIGHUP: reloading the config");
            let _ = handle.reload().await;
        }
    }
    #[cfg(not(unix))]
    let _ = handle;
}

/// Reopens access log files on every SIGUSR1 (nginx's convention, for logrotate).
async fn reopen_logs_on_sigusr1(handle: ReloadHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut signals) = signal(SignalKind::user_defined1()) else {
            tracing::warn!("cannot listen for SIGUSR1; access logs reopen on reload only");
            return;
        };
        while signals.recv().await.is_some() {
            tracing::info!("received SIGUSR1: reopening access logs");
            let _ = handle.reopen_logs().await;
        }
    }
    #[cfg(not(unix))]
    let _ = handle;
}

/// `--watch`: reloads when the config file's modification time or size changes (checked
/// every second; no platform file-watching API needed).
async fn reload_on_change(handle: ReloadHandle, path: std::path::PathBuf) {
    let stamp = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()));
    let mut last = stamp(&path);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = stamp(&path);
        if now != last && now.is_some() {
            last = now;
            tracing::info!(file = %path.display(), "config file changed: reloading");
            let _ = handle.reload().await;
        }
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("received SIGINT"),
        _ = term => tracing::info!("received SIGTERM"),
    }
}
