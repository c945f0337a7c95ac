//! Writes gathered until a connection's task has done all it can.
//!
//! The `h2` crate flushes its transport after every DATA frame longer than
//! 256 bytes (it cannot queue another frame behind one whose payload it
//! sends by reference). Over tokio-rustls every flush seals a TLS record
//! and makes a `writev`: with ten 1 KiB responses ready at once, that is
//! ten records, ten syscalls and ten wake-ups of the client, which then
//! answers with ten separate requests, and so on.
//!
//! [`Gathered`] is the transport hyper sees: its writes go into a buffer
//! and its flushes do nothing. [`drive`] polls the connection, and each
//! time the connection has done what it can (it returned, or it waits),
//! sends what was gathered, flushed, before the task sleeps. Nothing waits
//! longer than before, and a round of responses leaves as one record.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A write at least this long, with nothing gathered before it, goes to
/// the stream as it is; gathering stops at this much (one TLS record's
/// plaintext).
const GATHER: usize = 16 << 10;

/// The stream and what was written to it but not yet sent.
struct Shared<S> {
    io: S,
    buf: Vec<u8>,
    /// How much of `buf` was sent already.
    sent: usize,
}

impl<S: AsyncWrite + Unpin> Shared<S> {
    /// Sends everything gathered, then flushes the stream.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Makes room for `len` more bytes: what is gathered is sent first if
    /// they would take it past [`GATHER`].
    fn poll_gather(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<io::Result<()>> {
        if !self.buf.is_empty() && self.buf.len() + len > GATHER {
            ready!(self.poll_send(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

/// The transport of one connection, gathering its writes.
pub struct Gathered<S> {
    shared: Arc<Mutex<Shared<S>>>,
}

/// What [`drive`] needs to send what [`Gathered`] gathered.
pub struct Sender<S> {
    shared: Arc<Mutex<Shared<S>>>,
}

/// Wraps `io`; run the connection made on the returned transport with
/// [`drive`] and the returned sender.
pub fn gathered<S>(io: S) -> (Gathered<S>, Sender<S>) {
    let shared = Arc::new(Mutex::new(Shared {
        io,
        buf: Vec::new(),
        sent: 0,
    }));
    (
        Gathered {
            shared: shared.clone(),
        },
        Sender { shared },
    )
}

fn poisoned() -> io::Error {
    io::Error::other("a connection's stream was poisoned")
}

impl<S: AsyncRead + Unpin> AsyncRead for Gathered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Ok(mut s) = self.shared.lock() else {
            return Poll::Ready(Err(poisoned()));
        };
        Pin::new(&mut s.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gathered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = slices.iter().map(|s| s.len()).sum();
        let Ok(mut s) = self.shared.lock() else {
            return Poll::Ready(Err(poisoned()));
        };
        ready!(s.poll_gather(cx, len))?;
        if s.buf.is_empty() && len >= GATHER {
            return Pin::new(&mut s.io).poll_write_vectored(cx, slices);
        }
        for slice in slices {
            s.buf.extend_from_slice(slice);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Does nothing: [`drive`] sends and flushes when the connection has
    /// done what it can.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Ok(mut s) = self.shared.lock() else {
            return Poll::Ready(Err(poisoned()));
        };
        ready!(s.poll_send(cx))?;
        Pin::new(&mut s.io).poll_shutdown(cx)
    }
}

/// Runs `conn` (made on the [`Gathered`] transport of `sender`), sending
/// what it wrote each time it has done what it can. Ends when sending
/// fails (the peer is gone), or when the connection has ended and what it
/// wrote is sent, or `linger` after it ended if the peer stops reading
/// (the connection's slot is not held forever for a peer that never
/// reads).
pub async fn drive<S, F>(conn: F, sender: Sender<S>, linger: std::time::Duration)
where
    S: AsyncWrite + Unpin,
    F: Future,
{
    let mut conn = std::pin::pin!(conn);
    let ended = std::future::poll_fn(|cx| {
        let done = conn.as_mut().poll(cx).is_ready();
        let Ok(mut s) = sender.shared.lock() else {
            return Poll::Ready(false);
        };
        match s.poll_send(cx) {
            Poll::Ready(Err(_)) => Poll::Ready(false),
            _ if done => Poll::Ready(true),
            _ => Poll::Pending,
        }
    })
    .await;
    if ended {
        let last = std::future::poll_fn(|cx| match sender.shared.lock() {
            Ok(mut s) => s.poll_send(cx),
            Err(_) => Poll::Ready(Err(poisoned())),
        });
        let _ = tokio::time::timeout(linger, last).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_leave_together_when_the_connection_waits() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let (mut io, sender) = gathered(ours);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let conn = async move {
            for i in 0..10u8 {
                io.write_all(&[i; 1000]).await.unwrap();
                io.flush().await.unwrap();
            }
            // Waits (as a connection waits for its next request)...
            let _ = rx.await;
            io.write_all(b"end").await.unwrap();
            io.shutdown().await.unwrap();
        };
        let driven = tokio::spawn(drive(conn, sender, std::time::Duration::from_secs(60)));
        // ...and what it wrote before is sent while it waits.
        let mut got = vec![0u8; 10_000];
        theirs.read_exact(&mut got).await.unwrap();
        for (i, chunk) in got.chunks(1000).enumerate() {
            assert!(chunk.iter().all(|&b| usize::from(b) == i));
        }
        tx.send(()).unwrap();
        let mut rest = Vec::new();
        theirs.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"end");
        driven.await.unwrap();
    }

    #[tokio::test]
    async fn a_full_peer_holds_the_writer_back_and_nothing_is_lost() {
        // Room for 4 KiB in the pipe: the writer must wait for the reader.
        let (ours, mut theirs) = tokio::io::duplex(4 << 10);
        let (mut io, sender) = gathered(ours);
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let conn = async move {
            for piece in sent.chunks(700) {
                io.write_all(piece).await.unwrap();
            }
            // A large write with nothing gathered goes straight through.
            io.write_all(&[7u8; GATHER + 1]).await.unwrap();
            io.shutdown().await.unwrap();
        };
        let driven = tokio::spawn(drive(conn, sender, std::time::Duration::from_secs(60)));
        let mut got = Vec::new();
        theirs.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), expected.len() + GATHER + 1);
        assert_eq!(got[..expected.len()], expected[..]);
        assert!(got[expected.len()..].iter().all(|&b| b == 7));
        driven.await.unwrap();
    }

    #[tokio::test]
    async fn a_peer_that_never_reads_is_let_go_after_the_linger() {
        // Room for 1 KiB, and nobody reads it.
        let (ours, _theirs) = tokio::io::duplex(1024);
        let (mut io, sender) = gathered(ours);
        let conn = async move {
            // Gathered (under the limit): the connection ends at once.
            let _ = io.write_all(&[1u8; 8 << 10]).await;
        };
        let linger = std::time::Duration::from_millis(50);
        // Ends, though 7 KiB could never be sent.
        drive(conn, sender, linger).await;
    }

    #[tokio::test]
    async fn reads_pass_through() {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let (mut io, _sender) = gathered(ours);
        theirs.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
