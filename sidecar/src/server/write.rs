//! Writes to a client's socket under a stall bound: a client is dropped
//! when it takes no byte for the send timeout, not when one batch takes
//! longer than that to drain. A reader slower than the stream but still
//! reading then meets the slow-client policy (a `gap`), as documented,
//! instead of the send timeout.

use std::time::Duration;

use bytes::Buf;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writes all of `buf`, failing with `TimedOut` when the socket accepts
/// nothing for `stall`.
///
/// Linux reports a socket writable only once a third of its send buffer is
/// free, so "progress" here comes in steps of that size: with the capped
/// stream buffer (~256 KiB in the kernel) a reader of 3 KiB/s still makes a
/// step within the default 30 s.
pub(crate) async fn write_all_progressing<W, B>(
    io: &mut W,
    buf: &mut B,
    stall: Duration,
) -> std::io::Result<()>
where
    W: AsyncWrite + Unpin,
    B: Buf,
{
    while buf.has_remaining() {
        match tokio::time::timeout(stall, io.write_buf(buf)).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
    match tokio::time::timeout(stall, io.flush()).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}
