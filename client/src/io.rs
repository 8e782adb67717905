//! Socket writes shared by the client and the broker.

use bytes::Bytes;
use futures_lite::io::{AsyncWrite, AsyncWriteExt};

/// Writes `parts` in order with vectored sends: one `sendmsg` carries many buffers, so
/// record batches are written from where they are held instead of being copied into one
/// buffer. When the socket is full, waits through `writer` (glommio) for the part at hand,
/// then continues with vectored sends.
pub async fn write_parts<W: AsyncWrite + Unpin>(
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
