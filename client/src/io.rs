//! Streams and socket writes shared by the client and the broker.

use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

/// A connection's byte stream: the socket itself, or TLS over it (either side's).
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(stream) => stream,
            Stream::Tls(stream) => stream.get_ref().0,
        }
    }

    pub fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.tcp().peer_addr().map_err(std::io::Error::from)
    }

    /// The TLS session's state (the peer's certificates), on a TLS stream.
    pub fn tls_state(&self) -> Option<&rustls::CommonState> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(stream) => Some(stream.get_ref().1),
        }
    }

    /// The socket, for vectored sends that skip the stream (plaintext only: TLS must
    /// see every byte).
    pub fn plain_fd(&self) -> Option<RawFd> {
        match self {
            Stream::Plain(stream) => Some(stream.as_raw_fd()),
            Stream::Tls(_) => None,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_close(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_close(cx),
        }
    }
}

/// Writes a frame's `parts` to a stream's write half: with vectored sends straight to
/// the socket when there is one to write to (`fd`, plaintext), else through the stream
/// (TLS encrypts them into records as they go), flushed: the frame is on its way once
/// this returns.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    fd: Option<RawFd>,
    parts: &[Bytes],
) -> std::io::Result<()> {
    match fd {
        Some(fd) => write_parts(writer, fd, parts).await,
        None => {
            for part in parts {
                writer.write_all(part).await?;
            }
            writer.flush().await
        }
    }
}

/// Writes `parts` in order with vectored sends: one `sendmsg` carries many buffers, so
/// record batches are written from where they are held instead of being copied into one
/// buffer. When the socket is full, waits through `writer` (glommio) for the part at hand,
/// then continues with vectored sends.
async fn write_parts<W: AsyncWrite + Unpin>(
    writer: &mut W,
    fd: std::os::fd::RawFd,
    parts: &[Bytes],
) -> std::io::Result<()> {
    use nix::sys::socket::{MsgFlags, SockaddrStorage, sendmsg};
    use std::io::IoSlice;
    /// Linux accepts up to 1024 buffers per call (UIO_MAXIOV); fewer keeps the slice cheap.
    const SLICES_MAX: usize = 64;
    let (mut index, mut offset) = (0usize, 0usize);
    loop {
        while index < parts.len() && offset == parts[index].len() {
            (index, offset) = (index + 1, 0);
        }
        if index == parts.len() {
            return Ok(());
        }
        let slices: Vec<IoSlice<'_>> = std::iter::once(&parts[index][offset..])
            .chain(parts[index + 1..].iter().map(|p| &p[..]))
            .take(SLICES_MAX)
            .map(IoSlice::new)
            .collect();
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        match sendmsg::<SockaddrStorage>(fd, &slices, &[], flags, None) {
            Ok(mut sent) => {
                while sent > 0 && index < parts.len() {
                    let left = parts[index].len() - offset;
                    if sent >= left {
                        sent -= left;
                        (index, offset) = (index + 1, 0);
                    } else {
                        offset += sent;
                        sent = 0;
                    }
                }
            }
            Err(nix::errno::Errno::EAGAIN) => {
                writer.write_all(&parts[index][offset..]).await?;
                (index, offset) = (index + 1, 0);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(errno) => return Err(std::io::Error::from(errno)),
        }
    }
}
