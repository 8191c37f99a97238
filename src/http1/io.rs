//! Small I/O helpers for the engine: vectored writes that finish, and the one timer a
//! connection owns.

use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

/// Writes every byte of `slices` (in order) with as few `writev` calls as the socket allows.
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

/// The connection's single timer. It is only ever moved to a later deadline while armed
/// (lock-free in tokio); a deadline earlier than the armed one re-registers it. When it fires,
/// the owner checks which of its deadlines really passed and re-arms for the next one.
pub struct Timer<'a> {
    sleep: Pin<&'a mut Sleep>,
}

impl<'a> Timer<'a> {
    /// Wraps a pinned `Sleep`.
    pub fn new(sleep: Pin<&'a mut Sleep>) -> Timer<'a> {
        Timer { sleep }
    }

    /// The deadline the timer is armed for.
    pub fn deadline(&self) -> Instant {
        self.sleep.deadline()
    }

    /// Makes sure the timer fires no later than `deadline`.
    pub fn require(&mut self, deadline: Instant) {
        if deadline < self.sleep.deadline() || self.sleep.is_elapsed() {
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// Re-arms for exactly `deadline` (after it fired).
    pub fn set(&mut self, deadline: Instant) {
        self.sleep.as_mut().reset(deadline);
    }

    /// Completes when the armed deadline passes.
    pub async fn fired(&mut self) {
        self.sleep.as_mut().await;
    }

    /// Polls for the armed deadline passing.
    pub fn poll_fired(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        self.sleep.as_mut().poll(cx)
    }

    /// True when the armed deadline has passed.
    pub fn is_elapsed(&self) -> bool {
        self.sleep.is_elapsed()
    }
}

impl std::fmt::Debug for Timer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timer").field("armed", &self.sleep.deadline()).finish()
    }
}
