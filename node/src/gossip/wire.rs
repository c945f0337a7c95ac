//! Frames on the mesh's connections: written and read with a timeout and
//! counted in the totals, asynchronously for sessions and blockingly for
//! the answer to a fetch (read on one blocking section, not a runtime
//! handoff for every blob written). The bytes are
//! `makiatto_core::replication::frame`'s.

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use makiatto_core::replication::FRAME_TIMEOUT;
use makiatto_core::replication::frame::{self, Features, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Gossip, PORT};

/// Mesh round trips are short: a connection not made by then is a dead link.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl Gossip {
    pub(super) async fn write_frame(
        &self,
        writer: &mut (impl AsyncWriteExt + Unpin),
        frame: &Frame,
    ) -> anyhow::Result<()> {
        self.write_frame_with(writer, frame, None).await
    }

    /// Writes a frame, with `features` after it if given (a `Hello`).
    pub(super) async fn write_frame_with(
        &self,
        writer: &mut (impl AsyncWriteExt + Unpin),
        frame: &Frame,
        features: Option<Features>,
    ) -> anyhow::Result<()> {
        let mut bytes = Vec::new();
        frame::encode_with(frame, features, &mut bytes)?;
        self.write_bytes(writer, &bytes).await
    }

    /// Writes bytes already framed, counted as sent.
    pub(super) async fn write_bytes(
        &self,
        writer: &mut (impl AsyncWriteExt + Unpin),
        bytes: &[u8],
    ) -> anyhow::Result<()> {
        tokio::time::timeout(FRAME_TIMEOUT, writer.write_all(bytes))
            .await
            .context("the peer stopped reading")??;
        self.health
            .totals
            .bytes_out
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    pub(super) async fn read_frame(
        &self,
        reader: &mut (impl AsyncReadExt + Unpin),
    ) -> anyhow::Result<Frame> {
        Ok(self.read_frame_with(reader).await?.0)
    }

    /// Reads a frame and the features after it (none: [`Features::NONE`]).
    pub(super) async fn read_frame_with(
        &self,
        reader: &mut (impl AsyncReadExt + Unpin),
    ) -> anyhow::Result<(Frame, Features)> {
        let body = tokio::time::timeout(FRAME_TIMEOUT, async {
            let mut len = [0u8; 4];
            reader.read_exact(&mut len).await?;
            let mut body = vec![0u8; frame::body_len(len)?];
            reader.read_exact(&mut body).await?;
            Ok::<_, anyhow::Error>(body)
        })
        .await
        .context("the peer went silent")??;
        self.unframe(&body)
    }

    /// Reads one frame, blocking (see [`Gossip::ask`]).
    pub(super) fn read_frame_blocking(&self, reader: &mut impl Read) -> anyhow::Result<Frame> {
        let silent = |e: io::Error| {
            if timed_out(&e) {
                anyhow::anyhow!("the peer went silent")
            } else {
                anyhow::Error::from(e)
            }
        };
        let mut len = [0u8; 4];
        reader.read_exact(&mut len).map_err(silent)?;
        let mut body = vec![0u8; frame::body_len(len)?];
        reader.read_exact(&mut body).map_err(silent)?;
        Ok(self.unframe(&body)?.0)
    }

    /// Counts a frame's bytes in and decodes it, with the features that
    /// may follow it.
    fn unframe(&self, body: &[u8]) -> anyhow::Result<(Frame, Features)> {
        self.health
            .totals
            .bytes_in
            .fetch_add(body.len() as u64 + 4, Ordering::Relaxed);
        Ok(frame::decode(body)?)
    }
}

/// Opens a connection to a node's replication port on the mesh.
pub(super) async fn connect(mesh: Ipv4Addr) -> anyhow::Result<TcpStream> {
    let addr = SocketAddr::V4(SocketAddrV4::new(mesh, PORT));
    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .with_context(|| format!("timed out connecting to {addr}"))?
        .with_context(|| format!("cannot connect to {addr}"))
}

/// Whether a blocking read ended on its timeout (`SO_RCVTIMEO` reports
/// either kind).
pub(super) fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}
