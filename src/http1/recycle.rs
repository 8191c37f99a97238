//! A boxed future whose memory is recycled per worker.
//!
//! A connection's task is one allocation the size of its largest state, so the state of a
//! request in progress (upstream connection, framing, timers, retry bookkeeping) would be paid
//! for by every idle keep-alive connection if it lived in the connection's own future. Boxing
//! it per request fixes the idle cost but allocates per request; this box does both: the
//! request's future lives in a block taken from a per-worker free list and given back when the
//! request ends, so an idle connection holds none and a busy worker allocates none.

use std::alloc::Layout;
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

use super::buffer::Free;

/// Free blocks kept per size, at most.
const MAX_FREE: usize = 64;

/// The free blocks of one layout.
struct Blocks {
    layout: Layout,
    free: Free<NonNull<u8>>,
}

thread_local! {
    /// Free blocks, by layout. A worker runs few distinct future types, so a short list.
    static FREE: RefCell<Vec<Blocks>> = const { RefCell::new(Vec::new()) };
}

fn take_block(layout: Layout) -> NonNull<u8> {
    let reused = FREE.with(|f| {
        let mut f = f.borrow_mut();
        f.iter_mut().find(|b| b.layout == layout)?.free.pop()
    });
    reused.unwrap_or_else(|| {
        // SAFETY: `layout` has a non-zero size (checked by the caller).
        let p = unsafe { std::alloc::alloc(layout) };
        NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
    })
}

fn give_block(layout: Layout, block: NonNull<u8>) {
    let refused = FREE.with(|f| {
        let mut f = f.borrow_mut();
        let index = match f.iter().position(|b| b.layout == layout) {
            Some(i) => i,
            None => {
                f.push(Blocks {
                    layout,
                    free: Free::new(),
                });
                f.len() - 1
            }
        };
        f[index].free.keep(block, MAX_FREE)
    });
    if let Some(block) = refused {
        // SAFETY: `block` came from `alloc` with this layout and is no longer used.
        unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
    }
}

/// Frees this worker's blocks that were not needed since the last call; returns the bytes.
pub(super) fn trim() -> usize {
    FREE.with(|f| {
        let mut freed = 0;
        for blocks in f.borrow_mut().iter_mut() {
            let layout = blocks.layout;
            for block in blocks.free.unused() {
                // SAFETY: every free block came from `alloc` with this layout and is unused.
                unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
                freed += layout.size();
            }
        }
        freed
    })
}

/// A future stored in a recycled heap block (see the module docs).
pub struct Recycled<F: Future> {
    ptr: NonNull<F>,
    _owns: PhantomData<F>,
}

// SAFETY: `Recycled<F>` owns its `F` exactly as `Box<F>` does; the free lists are per thread
// and a block freed on another thread simply joins that thread's list.
unsafe impl<F: Future + Send> Send for Recycled<F> {}

impl<F: Future> Recycled<F> {
    /// Moves `future` into a recycled block.
    pub fn new(future: F) -> Recycled<F> {
        let layout = Layout::new::<F>();
        assert!(layout.size() > 0, "a recycled future has state");
        let block = take_block(layout).cast::<F>();
        // SAFETY: the block is valid for writes of `F` (same layout) and unused.
        unsafe { block.as_ptr().write(future) };
        Recycled {
            ptr: block,
            _owns: PhantomData,
        }
    }
}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future never moves out of its block until it is dropped in place, so
        // pinning it there is sound; `self` is the only reference to it.
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

impl<F: Future> Drop for Recycled<F> {
    fn drop(&mut self) {
        // SAFETY: the block holds a live `F` written in `new`, dropped exactly once here.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        give_block(Layout::new::<F>(), self.ptr.cast());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_and_reuses_the_block() {
        let text = String::from("borrowed");
        let first = Recycled::new(async { text.len() + 1 });
        let address = first.ptr.as_ptr() as usize;
        assert_eq!(first.await, 9);
        let second = Recycled::new(async { text.len() + 2 });
        assert_eq!(second.ptr.as_ptr() as usize, address, "same layout, same block");
        assert_eq!(second.await, 10);
    }

    #[tokio::test]
    async fn drops_an_unfinished_future() {
        let flag = std::sync::Arc::new(());
        let held = std::sync::Arc::clone(&flag);
        let pending = Recycled::new(async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        drop(pending);
        assert_eq!(std::sync::Arc::strong_count(&flag), 1);
    }

    async fn value(i: u64) -> u64 {
        i
    }

    #[tokio::test]
    async fn blocks_unused_for_a_whole_pass_are_freed() {
        fn size_of_future<F>(_: &F) -> usize {
            Layout::new::<F>().size()
        }
        let block = size_of_future(&value(0));
        let burst: Vec<_> = (0..5).map(|i| Recycled::new(value(i))).collect();
        for f in burst {
            f.await;
        }
        // The pass right after the burst keeps all five (the burst used them) ...
        trim();
        // ... and the next frees the four not used since.
        assert_eq!(Recycled::new(value(1)).await, 1);
        assert_eq!(trim(), 4 * block);
        assert_eq!(trim(), block);
        assert_eq!(trim(), 0);
    }
}
