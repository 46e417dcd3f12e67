//! A buffered view of a journal file, read with positioned reads.
//!
//! Every reader walks records through one of these: start-up and the forward search a
//! chunk at a time, a read of a span in one read of exactly the span.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use bytes::Bytes;

/// A window on a file up to `end`.
#[derive(Debug)]
pub(super) struct Window<'f> {
    file: &'f File,
    end: u64,
    chunk: usize,
    /// File offset of `buf[0]`.
    base: u64,
    buf: Bytes,
}

impl<'f> Window<'f> {
    /// A window on `file` up to `end` that reads at least `chunk` bytes at a time.
    pub(super) fn new(file: &'f File, end: u64, chunk: usize) -> Self {
        Window {
            file,
            end,
            chunk,
            base: 0,
            buf: Bytes::new(),
        }
    }

    /// Where the file ends, as far as this window reads.
    pub(super) fn end(&self) -> u64 {
        self.end
    }

    /// The bytes from `offset` on: at least `need` of them, unless `end` comes first.
    pub(super) fn bytes(&mut self, offset: u64, need: usize) -> io::Result<&[u8]> {
        let wanted = offset.saturating_add(need as u64).min(self.end);
        let held = self.base + self.buf.len() as u64;
        if offset < self.base || offset > held || wanted > held {
            let n = self
                .end
                .saturating_sub(offset)
                .min(need.max(self.chunk) as u64) as usize;
            let mut buf = vec![0; n];
            self.file.read_exact_at(&mut buf, offset)?;
            self.base = offset;
            self.buf = Bytes::from(buf);
        }
        Ok(&self.buf[(offset - self.base) as usize..])
    }

    /// Bytes `from..to` of the file, which the last read must have covered, without a copy.
    pub(super) fn slice(&self, from: u64, to: u64) -> Bytes {
        self.buf
            .slice((from - self.base) as usize..(to - self.base) as usize)
    }
}
