//! Shared-nothing workers: one single-threaded runtime per core, each accepting on its own
//! `SO_REUSEPORT` socket (nginx's worker model). The kernel spreads new connections over the
//! sockets; a connection then lives on one worker, with no cross-thread wakeups on its path.
//! Pools, routers and backends are shared (all read lock-free); idle upstream connections are
//! kept per worker (each accepted connection carries its worker's index), so a request reuses
//! a connection driven by its own thread.
//!
//! The thread that starts the workers is the control plane's: config loading, DNS, health
//! probes, selection rebuilds and the admin API run there, never on a worker, so none of it
//! stalls a request.

use tokio::runtime::Handle;
use tokio::sync::watch;

/// How often each worker frees the pooled buffers it did not use (see
/// [`crate::http1::buffer::release_unused`]).
const POOL_RELEASE: std::time::Duration = std::time::Duration::from_secs(1);

/// The worker runtimes, one thread each.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    stop: watch::Sender<bool>,
}

impl Workers {
    /// Starts `n` (at least 1) worker threads.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let n = n.max(1);
        let (stop, stopped) = watch::channel(false);
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("steelyard-worker-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        tokio::spawn(crate::http1::buffer::release_unused(POOL_RELEASE));
                        let _ = stopped.wait_for(|s| *s).await;
                    });
                })?;
        }
        Ok(Workers { handles, stop })
    }

    /// Each worker's runtime, in index order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // The worker threads leave their runtimes, which drops what they still run.
        let _ = self.stop.send(true);
    }
}
