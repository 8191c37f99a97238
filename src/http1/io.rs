//! Small I/O helpers for the engine: vectored writes that finish, and a connection's timer.

use std::io::IoSlice;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::connection::ConnInfo;
use crate::upstream::backend::nanos_at;

/// Writes every byte of `slices` (in order) with as few vectored writes (`sendmsg` on plain
/// TCP) as the socket allows.
pub async fn write_all_vectored<W: AsyncWrite + Unpin>(w: &mut W, slices: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    let mut slices = slices;
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let n = w.write_vectored(slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}

/// A connection's one timer: a deadline in the connection's shared identity that the
/// listener's registry sweeps (every [`super::connection::SWEEP`]). An idle connection past
/// its deadline is closed by the sweep; a busy one is woken and checks which of its deadlines
/// really passed, then re-arms. Arming is an atomic store: no timer wheel, no lock, and no
/// timer state in an idle connection's task.
pub struct Timer {
    info: Arc<ConnInfo>,
}

impl Timer {
    /// The timer of the connection `info` describes.
    pub fn new(info: Arc<ConnInfo>) -> Timer {
        Timer { info }
    }

    /// Makes sure the timer fires no later than `deadline` (about a sweep period after it).
    pub fn require(&mut self, deadline: Instant) {
        self.info
            .deadline
            .fetch_min(nanos_at(deadline.into_std()), Ordering::SeqCst);
    }

    /// Re-arms for `deadline`, forgetting any earlier one and any alarm not yet seen.
    pub fn set(&mut self, deadline: Instant) {
        self.info.alarm.store(false, Ordering::SeqCst);
        self.info
            .deadline
            .store(nanos_at(deadline.into_std()), Ordering::SeqCst);
    }

    /// Ready once the sweep found the armed deadline passed. May be early or stale after a
    /// re-arm: callers check their own deadline and [`Timer::set`] it again.
    pub fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.info.alarm.swap(false, Ordering::SeqCst) {
            return Poll::Ready(());
        }
        self.info.waker.register(cx.waker());
        if self.info.alarm.swap(false, Ordering::SeqCst) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Completes when the timer fires (see [`Timer::poll_fired`]).
    pub async fn fired(&mut self) {
        std::future::poll_fn(|cx| self.poll_fired(cx)).await
    }
}

impl std::fmt::Debug for Timer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timer")
            .field("deadline", &self.info.deadline.load(Ordering::Relaxed))
            .finish()
    }
}
