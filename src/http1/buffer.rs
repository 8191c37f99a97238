//! Per-worker pools of I/O buffers and header tables.
//!
//! A connection takes a buffer when bytes arrive and gives it back as soon as it has nothing
//! buffered (nginx's and HAProxy's model), so an idle keep-alive connection holds no buffer.
//! Each worker thread keeps its own free lists: taking and giving back is a `Vec` push or pop,
//! with no lock and, once the pool is warm, no allocation.

use std::cell::RefCell;

use super::head::Field;

/// Size of a standard I/O buffer: request heads up to this size need nothing more, and bodies
/// stream through it.
pub const BUF_SIZE: usize = 16 * 1024;

/// Most free buffers (and header tables) a worker keeps; more are freed.
const MAX_FREE: usize = 1024;

/// Header fields a pooled table holds before it has to grow.
const FIELDS: usize = 64;

thread_local! {
    static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static TABLES: RefCell<Vec<Vec<Field>>> = const { RefCell::new(Vec::new()) };
}

/// A zeroed [`BUF_SIZE`]-byte vector (at full length), from this worker's pool.
pub fn take() -> Vec<u8> {
    BUFFERS
        .with(|b| b.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; BUF_SIZE])
}

/// Gives a vector from [`take`] back to this worker's pool. Vectors grown past the standard
/// size (for a large head or a buffered body) are freed rather than kept.
pub fn give(buf: Vec<u8>) {
    give_full(buf);
}

/// An empty header table, from this worker's pool.
pub fn take_fields() -> Vec<Field> {
    TABLES
        .with(|t| t.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(FIELDS))
}

/// Gives a header table back to this worker's pool.
pub fn give_fields(mut fields: Vec<Field>) {
    if fields.capacity() > 4 * FIELDS {
        return;
    }
    fields.clear();
    TABLES.with(|t| {
        let mut t = t.borrow_mut();
        if t.len() < MAX_FREE {
            t.push(fields);
        }
    });
}

/// A byte buffer taken from the pool when bytes arrive and given back once empty
/// ([`Buffer::release_if_empty`], or on drop). `data[start..end]` are the unread bytes; the
/// vector is always at its full length (zeroed once, when first allocated), so reading into
/// `data[end..]` needs no unsafe code. `data[..floor]` is a pinned prefix (a request head
/// kept while its body streams) that compaction never moves.
#[derive(Debug, Default)]
pub struct Buffer {
    data: Option<Vec<u8>>,
    floor: usize,
    start: usize,
    end: usize,
}

impl Buffer {
    /// True when no bytes are waiting to be read.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// True when the buffer holds a pooled vector.
    pub fn is_held(&self) -> bool {
        self.data.is_some()
    }

    /// The unread bytes.
    pub fn unread(&self) -> &[u8] {
        match &self.data {
            Some(d) => &d[self.start..self.end],
            None => &[],
        }
    }

    /// Marks `n` unread bytes as consumed.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(self.start + n <= self.end);
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = self.floor;
            self.end = self.floor;
        }
    }

    /// Room to read into after the unread bytes. Unread bytes are first moved down to the
    /// pinned prefix when that makes room; the buffer grows (doubling) up to `limit` bytes in
    /// all. Empty only when the buffer is full at `limit`.
    pub fn spare(&mut self, limit: usize) -> &mut [u8] {
        let d = self.data.get_or_insert_with(take_full);
        if self.end == d.len() && self.start > self.floor {
            d.copy_within(self.start..self.end, self.floor);
            self.end -= self.start - self.floor;
            self.start = self.floor;
        }
        if self.end == d.len() && d.len() < limit {
            let grown = (d.len() * 2).min(limit);
            d.resize(grown, 0);
        }
        &mut d[self.end..]
    }

    /// Records that `n` bytes were read into the slice [`Buffer::spare`] returned.
    pub fn filled(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.data.as_ref().is_some_and(|d| self.end <= d.len()));
    }

    /// Moves the unread bytes to the front of the buffer (so that a head parsed from them
    /// starts at offset 0).
    pub fn compact(&mut self) {
        debug_assert_eq!(self.floor, 0);
        if self.start > 0 {
            if let Some(d) = &mut self.data {
                d.copy_within(self.start..self.end, 0);
            }
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Pins the first `n` unread bytes (just compacted to the front) as a prefix that stays
    /// put: they are no longer unread, and [`Buffer::prefix`] returns them.
    pub fn pin(&mut self, n: usize) {
        debug_assert_eq!(self.start, 0);
        self.floor = n;
        self.start = n;
        if self.end < n {
            self.end = n;
        }
    }

    /// Releases the pinned prefix; unread bytes stay unread.
    pub fn unpin(&mut self) {
        self.floor = 0;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// The pinned prefix.
    pub fn prefix(&self) -> &[u8] {
        match &self.data {
            Some(d) => &d[..self.floor],
            None => &[],
        }
    }

    /// The pinned prefix and the unread bytes, together.
    pub fn prefix_and_unread(&self) -> (&[u8], &[u8]) {
        match &self.data {
            Some(d) => (&d[..self.floor], &d[self.start..self.end]),
            None => (&[], &[]),
        }
    }

    /// Gives the buffer back to the pool if nothing is left unread or pinned in it.
    pub fn release_if_empty(&mut self) {
        if self.is_empty() && self.floor == 0 {
            if let Some(d) = self.data.take() {
                give_full(d);
            }
            self.start = 0;
            self.end = 0;
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Some(d) = self.data.take() {
            give_full(d);
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty vector for writing a head into, from this worker's pool.
pub fn take_scratch() -> Vec<u8> {
    SCRATCH
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(4096))
}

/// Gives a vector from [`take_scratch`] back.
pub fn give_scratch(mut v: Vec<u8>) {
    if v.capacity() > 64 * 1024 {
        return;
    }
    v.clear();
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < MAX_FREE {
            s.push(v);
        }
    });
}

/// A full-length (zeroed) standard buffer from the pool.
fn take_full() -> Vec<u8> {
    let mut d = take();
    if d.len() != BUF_SIZE {
        d.resize(BUF_SIZE, 0);
    }
    d
}

/// Gives back a full-length buffer; grown ones are freed.
fn give_full(d: Vec<u8>) {
    if d.len() != BUF_SIZE || d.capacity() != BUF_SIZE {
        return;
    }
    BUFFERS.with(|b| {
        let mut b = b.borrow_mut();
        if b.len() < MAX_FREE {
            b.push(d);
        }
    });
}
