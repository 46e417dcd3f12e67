//! A connection's socket and response body, telling its slot what the connection is
//! doing: reading a request, responding, or idle again once the body is written.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::Shared;
use crate::metrics::slots::{Phase, SlotId};

/// One connection's slot, and whether a request is in progress on it; the slot is freed
/// when the connection is gone (socket, service and response body all dropped).
#[derive(Debug)]
pub(super) struct Tracker {
    pub(super) shared: Arc<Shared>,
    pub(super) id: SlotId,
    /// A request has started arriving and its response is not finished.
    pub(super) busy: AtomicBool,
    /// The slot was given to another connection: close with a reset.
    pub(super) evicted: AtomicBool,
}

impl Tracker {
    pub(super) fn set(&self, phase: Phase) {
        // One connection's reads, service and body all run in its one task, so these
        // updates arrive in order.
        self.busy.store(phase != Phase::Idle, Relaxed);
        self.shared
            .table()
            .set_phase(self.id, phase, Instant::now());
    }

    /// Bytes arrived: the start of a request, unless one is already in progress.
    fn bytes_arrived(&self) {
        if !self.busy.load(Relaxed) {
            self.set(Phase::Reading);
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.shared.table().release(self.id);
    }
}

/// The connection's socket, reporting when a request starts arriving.
pub(super) struct Watched {
    pub(super) stream: TcpStream,
    pub(super) tracker: Arc<Tracker>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.tracker.evicted.load(Relaxed) {
            // No response is cut off (only idle and reading connections are evicted), and
            // a reset leaves no TIME_WAIT for a peer that reconnects at once.
            let _ = self.stream.set_zero_linger();
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.tracker.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A response body that marks its connection idle when hyper drops it, which it does once
/// the body is written (or, for `HEAD`, at once).
pub(super) struct Tracked {
    pub(super) body: Full<Bytes>,
    pub(super) tracker: Arc<Tracker>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.tracker.set(Phase::Idle);
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // Passed on so that hyper sends a `content-length` rather than chunks.
        self.body.size_hint()
    }
}
