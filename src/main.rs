//! The `steelyard` binary: parse the command line, set up logging and the runtime, run.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use cli::{Cli, Command, LogFormat};
use steelyard::server::etcd::EtcdSource;
use steelyard::{Config, ReloadHandle, Server};

/// jemalloc: see `steelyard::memory` for why.
#[global_allocator]
static ALLOC: steelyard::memory::Allocator = steelyard::memory::Allocator;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match &cli.command {
        Some(Command::Check) => check(&cli),
        Some(Command::Simulate {
            profile,
            pool,
            duration,
            svg,
        }) => simulate(&cli, profile.as_deref(), pool.as_deref(), *duration, svg.as_deref()),
        Some(Command::Man) => {
            let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            match page.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("steelyard man: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Completions { shell }) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "steelyard", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Some(Command::Demo { listen, origins, https }) => {
            let runtime = match build_runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let result = runtime.block_on(async {
                let shutdown = shutdown_signal();
                steelyard::demo::run(
                    *listen,
                    usize::from(*origins),
                    *https,
                    |config| cli.apply_admin(config),
                    shutdown,
                )
                .await
            });
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

/// `steelyard simulate`: runs the profile (or every built-in one) through every algorithm
/// and prints a table per profile.
fn simulate(
    cli: &Cli,
    profile: Option<&str>,
    pool: Option<&str>,
    duration: Option<std::time::Duration>,
    svg: Option<&std::path::Path>,
) -> ExitCode {
    use steelyard::simulate::{self, Profile, Setup};
    let profiles: Result<Vec<Profile>, _> = match profile {
        Some(name) => Profile::find(name).map(|p| vec![p]),
        None => simulate::BUILT_IN.iter().map(|(name, _)| Profile::find(name)).collect(),
    };
    let mut profiles = match profiles {
        Ok(p) => p,
        Err(e) => {
            eprintln!("steelyard simulate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let setup = match &cli.config {
        None if pool.is_some() => {
            eprintln!("steelyard simulate: --pool picks a pool of --config FILE; give the file too");
            return ExitCode::from(2);
        }
        None => None,
        Some(path) => {
            let config = match Config::load(path, &steelyard::server::dns::System) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            let found = match pool {
                Some(name) => config.pools.iter().find(|p| p.name == name),
                None => config.pools.first(),
            };
            match found {
                Some(p) => Some(Setup::from_pool(p)),
                None => {
                    let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
                    eprintln!(
                        "steelyard simulate: {} has no pool {:?} (pools: {})",
                        path.display(),
                        pool.unwrap_or(""),
                        names.join(", ")
                    );
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let single = profile.is_some();
    for (i, profile) in profiles.iter_mut().enumerate() {
        if let Some(d) = duration {
            profile.duration = d;
        }
        let mut setup = setup.clone().unwrap_or_else(|| Setup::defaults(profile.backends.len()));
        if setup.weights.is_empty() {
            // A pool that finds its backends in DNS names none: use the profile's.
            setup.weights = vec![1; profile.backends.len()];
        }
        let outcomes = simulate::simulate_all(profile, &setup);
        if i > 0 {
            println!();
        }
        print!("{}", simulate::table(profile, &outcomes));
        if let Some(svg) = svg {
            let file = if single {
                svg.to_path_buf()
            } else {
                svg.join(format!("{}.svg", profile.name))
            };
            let written = match file.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir),
                _ => Ok(()),
            }
            .and_then(|()| std::fs::write(&file, simulate::svg(profile, &outcomes)));
            if let Err(e) = written {
                eprintln!("steelyard simulate: cannot write {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn check(cli: &Cli) -> ExitCode {
    let Some(path) = &cli.config else {
        eprintln!("steelyard check: give the file to check with --config FILE");
        return ExitCode::from(2);
    };
    match Config::load(path, &steelyard::server::dns::System) {
        Ok(config) => {
            // Certificates are files of their own: load and check every one.
            let mut bad = false;
            let mut report = |result: Result<Vec<String>, steelyard::tls::TlsError>| match result {
                Ok(warnings) => {
                    for w in &warnings {
                        eprintln!("warning: {w}");
                    }
                }
                Err(e) => {
                    eprintln!("{e}");
                    bad = true;
                }
            };
            for tls in config.listeners.iter().filter_map(|l| l.tls.as_ref()) {
                report(steelyard::tls::server_config(tls).map(|b| b.warnings));
            }
            for p in &config.pools {
                if let Some(tls) = &p.tls {
                    report(steelyard::tls::upstream::client_config(tls, p.protocol).map(|b| b.warnings));
                }
            }
            if bad {
                return ExitCode::FAILURE;
            }
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
    let etcd = match cli
        .config
        .as_deref()
        .and_then(|p| p.to_str())
        .and_then(EtcdSource::parse)
    {
        None => None,
        Some(Ok(source)) => Some(source),
        Some(Err(e)) => {
            eprintln!("steelyard: --config {e}");
            return ExitCode::FAILURE;
        }
    };
    let loaded = match &etcd {
        None => cli.run_config().map(|c| (c, 0)),
        Some(source) => load_from_etcd(cli, source),
    };
    let (mut config, revision) = match loaded {
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
    // The files' state is taken before the listeners open, so that a change made as soon as
    // they accept is seen as one.
    let watch = cli
        .watch
        .then(|| config.source.clone())
        .flatten()
        .map(|path| (watched_files(&path), path));
    let inherited = match steelyard::server::Inherited::from_env() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("steelyard: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal();
        let server = Server::bind_inherited(config, inherited)?;
        spawn_signal_handlers(&server.reload_handle());
        if let Some((baseline, path)) = watch {
            tokio::spawn(reload_on_change(server.reload_handle(), path, baseline));
        }
        if let Some(source) = etcd {
            let cli = cli.clone();
            let adjust = move |c: &mut steelyard::Config| {
                if let Err(e) = cli.overrides(c) {
                    tracing::error!("{e}");
                }
            };
            tokio::spawn(source.watch(revision, server.reload_handle(), adjust));
        }
        server.run(shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("steelyard: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The config under an etcd key (`--config etcd://HOST:PORT[,HOST:PORT...]/KEY`) with the
/// command line's overrides, and its revision.
fn load_from_etcd(cli: &Cli, source: &EtcdSource) -> Result<(steelyard::Config, i64), String> {
    if cli.has_quick_flags() {
        return Err("--config cannot be combined with --listen, --backend, --tls-cert or the timeout flags".into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (mut config, revision) = runtime.block_on(source.load()).map_err(|e| e.to_string())?;
    cli.overrides(&mut config)?;
    tracing::info!(source = %source.url(), revision, "config loaded from etcd");
    Ok((config, revision))
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

/// The operator's signals (nginx's): SIGHUP reloads the config file, SIGUSR1 reopens the
/// access logs (for logrotate), SIGUSR2 upgrades the binary. Outcomes are logged by the server.
#[cfg(unix)]
fn spawn_signal_handlers(handle: &ReloadHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers: [(SignalKind, Signalled, &str, &str); 3] = [
        (
            SignalKind::hangup(),
            Signalled::Reload,
            "SIGHUP",
            "reload with the admin API instead",
        ),
        (
            SignalKind::user_defined1(),
            Signalled::ReopenLogs,
            "SIGUSR1",
            "access logs reopen on reload only",
        ),
        (
            SignalKind::user_defined2(),
            Signalled::Upgrade,
            "SIGUSR2",
            "binary upgrades are not available",
        ),
    ];
    for (kind, command, name, fallback) in handlers {
        let handle = handle.clone();
        let Ok(mut signals) = signal(kind) else {
            tracing::warn!("cannot listen for {name}; {fallback}");
            continue;
        };
        tokio::spawn(async move {
            while signals.recv().await.is_some() {
                match command {
                    Signalled::Reload => {
                        tracing::info!("received {name}: reloading the config");
                        let _ = handle.reload().await;
                    }
                    Signalled::ReopenLogs => {
                        tracing::info!("received {name}: reopening access logs");
                        let _ = handle.reopen_logs().await;
                    }
                    Signalled::Upgrade => {
                        tracing::info!("received {name}: starting the binary again to hand it the listeners");
                        let _ = handle.upgrade().await;
                    }
                }
            }
        });
    }
}

#[cfg(not(unix))]
fn spawn_signal_handlers(_handle: &ReloadHandle) {}

/// What an operator's signal asks for.
#[derive(Clone, Copy)]
#[cfg_attr(not(unix), allow(dead_code))]
enum Signalled {
    Reload,
    ReopenLogs,
    Upgrade,
}

/// `--watch`: reloads when the config file, or a certificate, key or CA file it names,
/// changes its modification time or size (checked twice a second, applied once the files hold
/// still; no platform file-watching API needed).
async fn reload_on_change(handle: ReloadHandle, path: std::path::PathBuf, baseline: Vec<(std::path::PathBuf, Stamp)>) {
    let mut last = baseline;
    // A change is applied once the files hold still for a tick: a certificate and its key are
    // written one after the other, and reloading between the two would fail.
    let mut settling: Option<Vec<(std::path::PathBuf, Stamp)>> = None;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        let now: Vec<_> = last.iter().map(|(file, _)| (file.clone(), stamp(file))).collect();
        if now == last || now.iter().any(|(_, s)| s.is_none()) {
            settling = None;
            continue;
        }
        if settling.as_ref() != Some(&now) {
            settling = Some(now);
            continue;
        }
        if let Some((file, _)) = now.iter().zip(&last).find(|(n, l)| n != l).map(|(n, _)| n) {
            tracing::info!(file = %file.display(), "file changed: reloading the config");
        }
        settling = None;
        let _ = handle.reload().await;
        last = watched_files(&path);
    }
}

/// A file's modification time and size, `None` while it is missing.
type Stamp = Option<(Option<std::time::SystemTime>, u64)>;

fn stamp(p: &std::path::Path) -> Stamp {
    std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()))
}

/// The config file and every certificate, key and CA file it names (listeners' and pools'),
/// with their stamps (re-read after each change).
fn watched_files(path: &std::path::Path) -> Vec<(std::path::PathBuf, Stamp)> {
    let mut files = vec![path.to_owned()];
    if let Ok(config) = Config::load(path, &steelyard::server::dns::System) {
        for tls in config.listeners.iter().filter_map(|l| l.tls.as_ref()) {
            for c in &tls.certificates {
                files.push(c.cert.clone());
                files.push(c.key.clone());
            }
            files.extend(tls.client_auth.as_ref().map(|a| a.ca.clone()));
        }
        for tls in config.pools.iter().filter_map(|p| p.tls.as_ref()) {
            files.extend(tls.ca.clone());
            if let Some(c) = &tls.client_certificate {
                files.push(c.cert.clone());
                files.push(c.key.clone());
            }
        }
    }
    files.into_iter().map(|f| (f.clone(), stamp(&f))).collect()
}

/// A future that completes on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this
/// is called, not when the future is first polled: called before the listeners open, a signal
/// that arrives as soon as they accept is a shutdown, never the default action that kills the
/// process without draining. Must be called within the runtime.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    for (name, outcome) in [("SIGINT", &interrupt), ("SIGTERM", &terminate)] {
        if let Err(e) = outcome {
            tracing::warn!("cannot listen for {name} ({e}); it will stop the process without draining");
        }
    }
    async move {
        let received = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = received(interrupt.ok()) => tracing::info!("received SIGINT"),
            () = received(terminate.ok()) => tracing::info!("received SIGTERM"),
        }
    }
}

/// A future that completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("received Ctrl-C");
        } else {
            std::future::pending::<()>().await;
        }
    }
}
