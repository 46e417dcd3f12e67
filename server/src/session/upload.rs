//! An upload's shape, its block bitmap and its reassembly.

use bytes::Bytes;
use mboard_protocol::MAX_BLOCK_SIZE;

use super::SessionError;

/// How an upload is cut into blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Shape {
    size: u64,
    block_size: u64,
}

impl Shape {
    pub(super) fn blocks(self) -> u64 {
        self.size.div_ceil(self.block_size)
    }

    fn block_len(self, index: u64) -> u64 {
        (self.size - index * self.block_size).min(self.block_size)
    }

    /// Whether `len` bytes can be block `index`.
    pub(super) fn check(self, index: u64, len: usize) -> Result<(), SessionError> {
        if index >= self.blocks() {
            return Err(SessionError::IndexPastEnd);
        }
        let want = self.block_len(index);
        if len as u64 != want {
            return Err(SessionError::BlockLength { index, want });
        }
        Ok(())
    }
}

/// An upload being received.
#[derive(Debug)]
pub(super) struct Upload {
    shape: Shape,
    /// What it reserves from the session budget, at its first block (see
    /// `SessionManager::claim`).
    cost: u64,
    /// Empty until the first block, then `shape.size` of capacity; its length covers the
    /// highest block received.
    buf: Vec<u8>,
    /// One bit per block; empty until the upload is reserved.
    have: Vec<u64>,
    received: u64,
}

impl Upload {
    /// An upload of `size` bytes in blocks of `block_size`, lowered to what a datagram
    /// carries; the committed reply will have to fit in `max_datagram`.
    pub(super) fn new(size: u64, block_size: u64, max_datagram: usize) -> Self {
        let shape = Shape {
            size,
            block_size: block_size.min(MAX_BLOCK_SIZE),
        };
        // The bitmap is part of the cost: `a:<16 MiB>:1` needs 2 MiB of it. And at least one
        // response datagram is reserved, so that the committed reply (which replaces the
        // upload) always fits in what the session already holds: the budget is never
        // exceeded, not even briefly.
        let cost = (size + Self::bitmap_words(shape) * 8).max(max_datagram as u64);
        Upload {
            shape,
            cost,
            buf: Vec::new(),
            have: Vec::new(),
            received: 0,
        }
    }

    fn bitmap_words(shape: Shape) -> u64 {
        shape.blocks().div_ceil(64)
    }

    pub(super) fn shape(&self) -> Shape {
        self.shape
    }

    /// The block size in force.
    pub(super) fn block_size(&self) -> u64 {
        self.shape.block_size
    }

    pub(super) fn cost(&self) -> u64 {
        self.cost
    }

    /// Distinct blocks held.
    pub(super) fn received(&self) -> u64 {
        self.received
    }

    /// Bytes allocated for the upload's data.
    pub(super) fn buffered(&self) -> u64 {
        self.buf.capacity() as u64
    }

    /// Allocates the bitmap, once the upload's reservation is taken.
    pub(super) fn reserved(&mut self) {
        self.have = vec![0; Self::bitmap_words(self.shape) as usize];
    }

    /// Stores block `index` unless it is held already; returns the distinct blocks held.
    ///
    /// Only after [`Upload::reserved`]: a block before its reservation would allocate what
    /// the budget does not cover.
    pub(super) fn store(&mut self, index: u64, data: &[u8]) -> Result<u64, SessionError> {
        let shape = self.shape;
        shape.check(index, data.len())?;
        let (word, bit) = ((index / 64) as usize, 1u64 << (index % 64));
        if self.have[word] & bit != 0 {
            return Ok(self.received);
        }
        let start = (index * shape.block_size) as usize;
        if self.buf.capacity() == 0 {
            // The declared size, reserved at the open, allocated once at the first block:
            // growing instead cost a copy of everything received at every doubling, and
            // the page faults of touching it twice (a third of the server's time on a
            // 16 MiB upload). The kernel still commits pages only as blocks land in them.
            self.buf = Vec::with_capacity(shape.size as usize);
        }
        if start >= self.buf.len() {
            // Blocks in order are appended; a gap before this one is zeroed until filled.
            self.buf.resize(start, 0);
            self.buf.extend_from_slice(data);
        } else {
            self.buf[start..start + data.len()].copy_from_slice(data);
        }
        self.have[word] |= bit;
        self.received += 1;
        Ok(self.received)
    }

    /// The assembled request PDU, taken out, once every block is held.
    pub(super) fn assemble(&mut self) -> Result<Bytes, SessionError> {
        let total = self.shape.blocks();
        if self.received < total {
            return Err(SessionError::Incomplete {
                missing: total - self.received,
                total,
            });
        }
        Ok(Bytes::from(std::mem::take(&mut self.buf)))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::config::Limits;
    use crate::session::tests::{Sim, addr, block};

    #[test]
    fn blocks_in_any_order_with_duplicates_assemble_once() {
        let mut sim = Sim::new(Limits::default());
        let c = addr(1000);
        let text: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut pdu = b"1:".to_vec();
        pdu.extend_from_slice(&text);
        let sid = sim.open(c, pdu.len() as u64, 100);
        let blocks: Vec<&[u8]> = pdu.chunks(100).collect();
        let order = [10usize, 3, 3, 0, 9, 1, 2, 10, 8, 7, 6, 5, 4, 0];
        let mut received = 0;
        let mut seen = std::collections::HashSet::new();
        for &i in &order {
            if seen.insert(i) {
                received += 1;
            }
            assert_eq!(
                sim.reply(c, block(sid, i as u64, blocks[i])),
                format!("0:{sid}:{i}:{received}")
            );
        }
        assert_eq!(received, 11);
        assert_eq!(sim.commit_and_run(c, sid, b"0:1"), Bytes::from(pdu));
    }

    #[test]
    fn wrong_blocks_are_refused_and_change_nothing() {
        let mut sim = Sim::new(Limits::default());
        let c = addr(1000);
        let sid = sim.open(c, 7, 2);
        assert_eq!(
            sim.reply(c, block(sid, 0, b"1")),
            "1:block 0 must be 2 bytes"
        );
        assert_eq!(
            sim.reply(c, block(sid, 3, b"o:")),
            "1:block 3 must be 1 bytes"
        );
        assert_eq!(
            sim.reply(c, block(sid, 4, b"x")),
            "1:block index past the end"
        );
        assert_eq!(
            sim.reply(c, block(sid, u64::MAX, b"x")),
            "1:block index past the end"
        );
        assert_eq!(
            sim.reply(c, format!("c:{sid}")),
            "4:incomplete: 4 of 4 blocks missing"
        );
        assert_eq!(sim.reply(c, block(sid, 0, b"1:")), format!("0:{sid}:0:1"));
    }

    #[test]
    fn block_sizes_are_lowered_never_raised() {
        let mut sim = Sim::new(Limits::default());
        let c = addr(1000);
        let r = sim.reply(c, "a:100000:65001");
        assert!(r.ends_with(":65000"), "{r}");
        let r = sim.reply(c, "a:100000:3");
        assert!(r.ends_with(":3"), "{r}");
    }
}
