//! Per-worker pools of I/O buffers and header tables.
//!
//! A connection takes a buffer when bytes arrive and gives it back as soon as it has nothing
//! buffered (nginx's and HAProxy's model), so an idle keep-alive connection holds no buffer.
//! Each worker thread keeps its own free lists: taking and giving back is a `Vec` push or pop,
//! with no lock and, once the pool is warm, no allocation.

use std::cell::RefCell;
use std::thread::LocalKey;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::head::Field;

/// Size of a large I/O buffer: bodies stream through it, and heads up to this size fit.
pub const BUF_SIZE: usize = 16 * 1024;

/// Size of the small buffer every read starts with: a typical request head, or a small
/// response, fits (nginx starts client heads in 1 KiB). A buffer that fills up moves to a
/// large one, so a burst of small requests holds little memory.
pub const SMALL_SIZE: usize = 2 * 1024;

/// Most free buffers (and header tables) a worker keeps; more are freed. Enough for a few
/// hundred requests in flight per worker without touching the allocator; a burst beyond it
/// frees what it took.
const MAX_FREE: usize = 128;

/// Header fields a pooled table holds before it has to grow.
const FIELDS: usize = 32;

/// A worker's free list of one kind of item, and the fewest it held since the last
/// [`Free::unused`]: that many sat unused the whole time, and a burst that filled the list
/// gives them back at the next pass. (Also the request blocks' lists in `recycle.rs`.)
pub(super) struct Free<T> {
    items: Vec<T>,
    low: usize,
}

impl<T> Free<T> {
    /// An empty list.
    pub(super) const fn new() -> Free<T> {
        Free {
            items: Vec::new(),
            low: 0,
        }
    }

    /// A free item, if there is one.
    pub(super) fn pop(&mut self) -> Option<T> {
        let item = self.items.pop();
        self.low = self.low.min(self.items.len());
        item
    }

    /// Keeps `item`, unless the list already holds `max`: then it is handed back.
    pub(super) fn keep(&mut self, item: T, max: usize) -> Option<T> {
        if self.items.len() < max {
            self.items.push(item);
            None
        } else {
            Some(item)
        }
    }

    /// Takes out the items not needed since the last call, to be freed.
    pub(super) fn unused(&mut self) -> std::vec::Drain<'_, T> {
        let unused = self.low.min(self.items.len());
        self.low = self.items.len() - unused;
        self.items.drain(..unused)
    }
}

/// A worker's free list of one kind of vector.
type FreeList<T> = LocalKey<RefCell<Free<Vec<T>>>>;

thread_local! {
    static BUFFERS: RefCell<Free<Vec<u8>>> = const { RefCell::new(Free::new()) };
    static SMALL: RefCell<Free<Vec<u8>>> = const { RefCell::new(Free::new()) };
    static TABLES: RefCell<Free<Vec<Field>>> = const { RefCell::new(Free::new()) };
    static SCRATCH: RefCell<Free<Vec<u8>>> = const { RefCell::new(Free::new()) };
}

/// A vector from `list`, or a new one with room for `capacity` items.
fn pop<T: 'static>(list: &'static FreeList<T>, capacity: usize) -> Vec<T> {
    list.with(|l| l.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(capacity))
}

/// Clears `v` and keeps it in `list`, unless the list already holds [`MAX_FREE`].
fn push<T: 'static>(list: &'static FreeList<T>, mut v: Vec<T>) {
    v.clear();
    list.with(|l| drop(l.borrow_mut().keep(v, MAX_FREE)));
}

/// Frees the vectors of `list` that were not needed since the last pass; returns the bytes.
fn trim<T: 'static>(list: &'static FreeList<T>) -> usize {
    list.with(|l| l.borrow_mut().unused().map(|v| v.capacity() * size_of::<T>()).sum())
}

/// Below this many bytes freed, a pass does not ask the allocator to return memory at once.
const RETURN_AT: usize = 256 * 1024;

/// Runs on each worker: every `period`, frees the pooled buffers, header tables and request
/// blocks that sat unused through the whole previous period, and, when that was a lot (the
/// tail of a burst), has the allocator hand its free pages back to the system at once
/// (otherwise only those that have been free for a while). A steady load keeps what it uses;
/// the memory a burst took is returned within two periods.
pub async fn release_unused(period: std::time::Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let freed = trim(&BUFFERS) + trim(&SMALL) + trim(&TABLES) + trim(&SCRATCH) + super::recycle::trim();
        if freed >= RETURN_AT {
            crate::memory::return_free_memory();
        } else {
            crate::memory::return_decayed_memory();
        }
    }
}

/// An empty vector with room for [`BUF_SIZE`] bytes, from this worker's pool.
pub fn take() -> Vec<u8> {
    pop(&BUFFERS, BUF_SIZE)
}

/// An empty vector with room for [`SMALL_SIZE`] bytes, from this worker's pool.
pub fn take_small() -> Vec<u8> {
    pop(&SMALL, SMALL_SIZE)
}

/// Gives a vector from [`take`] or [`take_small`] back to this worker's pool. Vectors grown
/// past those sizes (for a large head or a buffered body) are freed rather than kept.
pub fn give(buf: Vec<u8>) {
    match buf.capacity() {
        BUF_SIZE => push(&BUFFERS, buf),
        SMALL_SIZE => push(&SMALL, buf),
        _ => {}
    }
}

/// An empty header table, from this worker's pool.
pub fn take_fields() -> Vec<Field> {
    pop(&TABLES, FIELDS)
}

/// Gives a header table back to this worker's pool.
pub fn give_fields(fields: Vec<Field>) {
    if fields.capacity() <= 4 * FIELDS {
        push(&TABLES, fields);
    }
}

/// A byte buffer taken from the pool when bytes arrive and given back once empty
/// ([`Buffer::release_if_empty`], or on drop). `data[start..]` are the unread bytes; reads
/// append into the vector's spare capacity (never zeroed, never unsafe: tokio's `read_buf`).
/// `data[..floor]` is a pinned prefix (a request head kept while its body streams) that
/// compaction never moves.
#[derive(Debug, Default)]
pub struct Buffer {
    data: Option<Vec<u8>>,
    // u32: heads and buffers are far below 4 GiB, and every byte here is in every idle task.
    floor: u32,
    start: u32,
}

/// Returned by [`Buffer::read_from`] when the buffer is full at its limit.
pub fn full() -> std::io::Error {
    std::io::Error::other("buffer full")
}

impl Buffer {
    fn start(&self) -> usize {
        self.start as usize
    }

    fn floor(&self) -> usize {
        self.floor as usize
    }

    fn end(&self) -> usize {
        self.data.as_ref().map_or(0, Vec::len)
    }

    /// True when no bytes are waiting to be read.
    pub fn is_empty(&self) -> bool {
        self.start() == self.end()
    }

    /// The unread bytes.
    pub fn unread(&self) -> &[u8] {
        match &self.data {
            Some(d) => &d[self.start()..],
            None => &[],
        }
    }

    /// Marks `n` unread bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        let end = self.end();
        debug_assert!(self.start() + n <= end);
        let start = (self.start() + n).min(end);
        if start == end {
            self.start = self.floor;
            let floor = self.floor();
            if let Some(d) = &mut self.data {
                d.truncate(floor);
            }
        } else {
            self.start = start as u32;
        }
    }

    /// The vector to read into, with spare capacity after the unread bytes: taken from the
    /// pool if needed (small first), unread bytes moved down to the pinned prefix when that
    /// makes room, moved to a large buffer or grown (doubling) up to `limit` bytes in all.
    /// `None` when full at `limit`.
    pub fn room(&mut self, limit: usize) -> Option<&mut Vec<u8>> {
        let (start, floor) = (self.start(), self.floor());
        let d = self.data.get_or_insert_with(take_small);
        if d.len() == d.capacity() && start > floor {
            d.copy_within(start.., floor);
            d.truncate(d.len() - (start - floor));
            self.start = self.floor;
        }
        if d.len() == d.capacity() {
            if d.len() >= limit {
                return None;
            }
            if d.capacity() == SMALL_SIZE && limit >= BUF_SIZE {
                let mut large = take();
                large.extend_from_slice(d);
                give(std::mem::replace(d, large));
            } else {
                let grown = (d.capacity() * 2).min(limit);
                d.reserve_exact(grown - d.len());
            }
        }
        Some(d)
    }

    /// Reads once from `r` into the buffer (at most up to `limit` bytes held in all).
    /// `Ok(0)` is end of stream; a full buffer is the error [`full`].
    pub async fn read_from<R: AsyncRead + Unpin>(&mut self, r: &mut R, limit: usize) -> std::io::Result<usize> {
        let room = self.room(limit).ok_or_else(full)?;
        let spare = room.capacity() - room.len();
        let n = r.read_buf(room).await?;
        if n == spare {
            self.grow(limit);
        }
        Ok(n)
    }

    /// After a read that filled the small buffer: more is likely waiting (a body streaming
    /// through), so the next read gets a large one, even once these bytes are consumed. Without
    /// this a drained small buffer would carry a whole body 2 KiB at a time.
    fn grow(&mut self, limit: usize) {
        if limit < BUF_SIZE {
            return;
        }
        if let Some(d) = &mut self.data {
            if d.capacity() == SMALL_SIZE {
                let mut large = take();
                large.extend_from_slice(d);
                give(std::mem::replace(d, large));
            }
        }
    }

    /// Moves the unread bytes to the front of the buffer (so that a head parsed from them
    /// starts at offset 0).
    pub fn compact(&mut self) {
        debug_assert_eq!(self.floor, 0);
        let start = self.start();
        if start > 0 {
            if let Some(d) = &mut self.data {
                d.copy_within(start.., 0);
                d.truncate(d.len() - start);
            }
            self.start = 0;
        }
    }

    /// Pins the first `n` unread bytes (just compacted to the front) as a prefix that stays
    /// put: they are no longer unread, and [`Buffer::prefix`] returns them.
    pub fn pin(&mut self, n: usize) {
        debug_assert_eq!(self.start, 0);
        self.floor = n as u32;
        self.start = n as u32;
    }

    /// Releases the pinned prefix; unread bytes stay unread.
    pub fn unpin(&mut self) {
        self.floor = 0;
        if self.is_empty() {
            self.start = 0;
            if let Some(d) = &mut self.data {
                d.clear();
            }
        }
    }

    /// The pinned prefix.
    pub fn prefix(&self) -> &[u8] {
        match &self.data {
            Some(d) => &d[..self.floor()],
            None => &[],
        }
    }

    /// The pinned prefix and the unread bytes, together.
    pub fn prefix_and_unread(&self) -> (&[u8], &[u8]) {
        match &self.data {
            Some(d) => (&d[..self.floor()], &d[self.start()..]),
            None => (&[], &[]),
        }
    }

    /// Gives the buffer back to the pool if nothing is left unread or pinned in it.
    pub fn release_if_empty(&mut self) {
        if self.is_empty() && self.floor == 0 {
            if let Some(d) = self.data.take() {
                give(d);
            }
            self.start = 0;
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(d) = self.data.take() {
            give(d);
        }
    }
}

/// An empty vector for writing a head into, from this worker's pool.
pub fn take_scratch() -> Vec<u8> {
    pop(&SCRATCH, 1024)
}

/// Gives a vector from [`take_scratch`] back.
pub fn give_scratch(v: Vec<u8>) {
    if v.capacity() <= 8 * 1024 {
        push(&SCRATCH, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Free small buffers in this thread's pool.
    fn free_small() -> usize {
        SMALL.with(|l| l.borrow().items.len())
    }

    #[test]
    fn a_burst_is_given_back_and_a_steady_load_keeps_its_buffers() {
        trim(&SMALL);
        trim(&SMALL);
        assert_eq!(free_small(), 0);
        // A burst: 100 buffers at once, then all back in the pool.
        let burst: Vec<Vec<u8>> = (0..100).map(|_| take_small()).collect();
        burst.into_iter().for_each(give);
        assert_eq!(free_small(), 100);
        // The pass right after the burst frees nothing (the burst used them all) ...
        assert_eq!(trim(&SMALL), 0);
        // ... then a steady load of 10 at a time keeps 10; the other 90 go at the next pass.
        let steady: Vec<Vec<u8>> = (0..10).map(|_| take_small()).collect();
        steady.into_iter().for_each(give);
        assert_eq!(trim(&SMALL), 90 * SMALL_SIZE);
        assert_eq!(free_small(), 10);
        let steady: Vec<Vec<u8>> = (0..10).map(|_| take_small()).collect();
        steady.into_iter().for_each(give);
        assert_eq!(trim(&SMALL), 0, "what a steady load uses stays");
        assert_eq!(trim(&SMALL), 10 * SMALL_SIZE, "and goes once unused for a whole pass");
    }
}
