//! The read side of a connection that negotiated permessage-deflate
//! (RFC 7692): what the client sends compressed is inflated here, below
//! tungstenite, which refuses frames with RSV1 set, and handed up as the
//! plain frames it expects.
//!
//! Owns: framing of the client's byte stream while a compressed message
//! arrives. Frames without RSV1 (control frames, uncompressed messages)
//! pass through unchanged and unbuffered; a compressed message (its
//! fragments unmasked and gathered, at most the message limit) is
//! inflated from an empty window (the server answered
//! `client_no_context_takeover`) and becomes one final frame with a zero
//! mask. Nothing is kept between messages: an idle connection holds no
//! window and no buffer.
//!
//! The same layer serves a client of a compressing server
//! ([`Inflating::client`], the benchmark tools): unmasked frames in and
//! out, and the inflate window kept between messages when the server
//! takes over its context.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::server::compress::SYNC_TAIL;

/// Why a compressed client message was refused.
#[derive(Debug, thiserror::Error)]
pub enum InflateError {
    #[error("compressed message over the size limit")]
    TooBig,
    #[error("invalid compressed message: {0}")]
    Invalid(&'static str),
}

impl InflateError {
    fn io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, self)
    }
}

/// `io` with compressed client messages inflated.
/// `io` with compressed client messages inflated.
///
/// What an idle connection holds is this struct alone: the state of a
/// frame being read is boxed while it arrives and dropped at every frame
/// boundary (connections are boxed as `Box<Inflating<_>>` too, so the
/// connection's task is no bigger than an uncompressed one's).
pub struct Inflating<T> {
    io: T,
    /// Largest message, compressed or not.
    max: usize,
    reading: Option<Box<Reading>>,
    /// Reading a server's frames (unmasked) rather than a client's.
    client: bool,
    failed: bool,
    /// A client's inflater, kept between messages: with its window when
    /// the server takes over its context, reset before each message
    /// otherwise. `None` on a server (no state while idle): each message
    /// gets a fresh one.
    inflater: Option<Box<Decompress>>,
    /// The kept inflater's window carries over between messages.
    takeover: bool,
}

/// A frame (or a fragmented compressed message) on its way through.
struct Reading {
    /// The frame head being read.
    head: [u8; 14],
    have: usize,
    phase: Phase,
    /// Bytes for the reader above, before anything else.
    out: Vec<u8>,
    out_at: usize,
    /// The compressed message being gathered (unmasked), and its opcode
    /// (0: none).
    msg: Vec<u8>,
    msg_opcode: u8,
}

impl Reading {
    fn new() -> Reading {
        Reading {
            head: [0; 14],
            have: 0,
            phase: Phase::Head,
            out: Vec::new(),
            out_at: 0,
            msg: Vec::new(),
            msg_opcode: 0,
        }
    }

    /// At a frame boundary with nothing held.
    fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Head)
            && self.have == 0
            && self.out_at >= self.out.len()
            && self.msg_opcode == 0
    }
}

enum Phase {
    Head,
    /// Payload bytes to pass through as they are.
    Pass(u64),
    /// Payload bytes of a compressed message to gather.
    Gather {
        left: u64,
        mask: [u8; 4],
        at: usize,
        fin: bool,
    },
}

impl<T> Inflating<T> {
    pub fn new(io: T, max_message: usize) -> Inflating<T> {
        Inflating {
            io,
            max: max_message,
            reading: None,
            client: false,
            failed: false,
            inflater: None,
            takeover: false,
        }
    }

    /// The client end of a connection that negotiated permessage-deflate:
    /// `takeover` when the server did not answer
    /// `server_no_context_takeover`.
    pub fn client(io: T, max_message: usize, takeover: bool) -> Inflating<T> {
        Inflating {
            client: true,
            inflater: Some(Box::new(Decompress::new(false))),
            takeover,
            ..Inflating::new(io, max_message)
        }
    }
}

fn head_len(head: &[u8]) -> usize {
    if head.len() < 2 {
        return 2;
    }
    let ext = match head[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if head[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// The payload length and mask key of a complete head.
fn head_fields(head: &[u8]) -> (u64, Option<[u8; 4]>) {
    let (len, rest) = match head[1] & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes([head[2], head[3]])),
            &head[4..],
        ),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[2..10]);
            (u64::from_be_bytes(b), &head[10..])
        }
        n => (u64::from(n), &head[2..]),
    };
    let mask = (head[1] & 0x80 != 0).then(|| [rest[0], rest[1], rest[2], rest[3]]);
    (len, mask)
}

/// A final frame; masked with a zero key (the payload as is) as a
/// client's, or unmasked as a server's.
fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let n = payload.len();
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut v = Vec::with_capacity(n + 14);
    v.push(0x80 | opcode);
    if n < 126 {
        v.push(mask_bit | n as u8);
    } else if let Ok(short) = u16::try_from(n) {
        v.push(mask_bit | 126);
        v.extend_from_slice(&short.to_be_bytes());
    } else {
        v.push(mask_bit | 127);
        v.extend_from_slice(&(n as u64).to_be_bytes());
    }
    if masked {
        v.extend_from_slice(&[0; 4]);
    }
    v.extend_from_slice(payload);
    v
}

/// A message's payload inflated from an empty window, at most `max` bytes.
pub fn inflate(payload: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    inflate_with(&mut Decompress::new(false), payload, max)
}

/// A message's payload inflated by `d` (which keeps its window), at most
/// `max` bytes.
fn inflate_with(d: &mut Decompress, payload: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    let mut input = Vec::with_capacity(payload.len() + SYNC_TAIL.len());
    input.extend_from_slice(payload);
    input.extend_from_slice(&SYNC_TAIL);
    let start = d.total_in();
    let taken = |d: &Decompress| (d.total_in() - start) as usize;
    let mut out = Vec::with_capacity((payload.len() * 4).max(64).min(max.saturating_add(1)));
    loop {
        let (in_before, out_before) = (d.total_in(), out.len());
        let status = d
            .decompress_vec(&input[taken(d)..], &mut out, FlushDecompress::Sync)
            .map_err(|_| InflateError::Invalid("not a deflate stream"))?;
        if out.len() > max {
            return Err(InflateError::TooBig);
        }
        let consumed = taken(d) == input.len();
        if matches!(status, Status::StreamEnd) || (consumed && out.len() < out.capacity()) {
            return Ok(out);
        }
        if out.len() == out.capacity() {
            // One byte past the limit is enough to know.
            let room = out
                .capacity()
                .max(64)
                .min(max.saturating_add(1) - out.len());
            if room == 0 {
                return Err(InflateError::TooBig);
            }
            out.reserve_exact(room);
        } else if d.total_in() == in_before && out.len() == out_before {
            return Err(InflateError::Invalid("truncated deflate stream"));
        }
    }
}

/// Reads from `io` into `dst`, at most `dst.len()` bytes; 0 at the end.
fn read_some<T: AsyncRead + Unpin>(
    io: &mut T,
    cx: &mut Context<'_>,
    dst: &mut [u8],
) -> Poll<std::io::Result<usize>> {
    let mut rb = ReadBuf::new(dst);
    ready!(Pin::new(io).poll_read(cx, &mut rb))?;
    Poll::Ready(Ok(rb.filled().len()))
}

/// What a [`Reading`] needs of its connection.
struct Conn<'a, T> {
    io: &'a mut T,
    max: usize,
    client: bool,
    inflater: &'a mut Option<Box<Decompress>>,
    takeover: bool,
}

impl Reading {
    /// A complete head read: what to do with the frame.
    fn on_head(&mut self, client: bool, max: usize) -> Result<(), InflateError> {
        let head = &self.head[..self.have];
        let (b0, fin) = (head[0], head[0] & 0x80 != 0);
        let (rsv1, opcode) = (b0 & 0x40 != 0, b0 & 0x0f);
        let (len, mask) = head_fields(head);
        let control = opcode & 0x08 != 0;
        let gathering = self.msg_opcode != 0;
        let compressed_start = rsv1 && matches!(opcode, 1 | 2);
        if gathering && !control && opcode != 0 {
            return Err(InflateError::Invalid(
                "a new message inside a fragmented one",
            ));
        }
        if gathering && opcode == 0 && rsv1 {
            return Err(InflateError::Invalid("RSV1 set on a continuation frame"));
        }
        if !(compressed_start || (gathering && opcode == 0)) {
            // Not ours to change: tungstenite judges it.
            self.out = head.to_vec();
            self.out_at = 0;
            self.phase = Phase::Pass(len);
            self.have = 0;
            return Ok(());
        }
        let mask = match (mask, client) {
            (Some(m), false) => m,
            (None, true) => [0; 4],
            (None, false) => return Err(InflateError::Invalid("unmasked client frame")),
            (Some(_), true) => return Err(InflateError::Invalid("masked server frame")),
        };
        if (self.msg.len() as u64).saturating_add(len) > max as u64 {
            return Err(InflateError::TooBig);
        }
        if compressed_start {
            self.msg_opcode = opcode;
        }
        self.phase = Phase::Gather {
            left: len,
            mask,
            at: 0,
            fin,
        };
        self.have = 0;
        Ok(())
    }

    fn poll<T: AsyncRead + Unpin>(
        &mut self,
        c: Conn<'_, T>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if self.out_at < self.out.len() {
                let n = (self.out.len() - self.out_at).min(buf.remaining());
                buf.put_slice(&self.out[self.out_at..self.out_at + n]);
                self.out_at += n;
                if self.out_at == self.out.len() {
                    self.out = Vec::new();
                    self.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            match self.phase {
                Phase::Pass(0) => self.phase = Phase::Head,
                Phase::Pass(left) => {
                    let mut tmp = [0u8; 2048];
                    let want = (left.min(tmp.len() as u64) as usize).min(buf.remaining());
                    let n = ready!(read_some(c.io, cx, &mut tmp[..want]))?;
                    buf.put_slice(&tmp[..n]);
                    if n > 0 {
                        self.phase = Phase::Pass(left - n as u64);
                    }
                    return Poll::Ready(Ok(()));
                }
                Phase::Head => {
                    let need = head_len(&self.head[..self.have]);
                    if self.have < need {
                        let have = self.have;
                        let n = ready!(read_some(c.io, cx, &mut self.head[have..need]))?;
                        if n == 0 {
                            // The end (mid-head or not): the reader above
                            // judges a connection that just stops.
                            return Poll::Ready(Ok(()));
                        }
                        self.have += n;
                        continue;
                    }
                    self.on_head(c.client, c.max).map_err(InflateError::io)?;
                }
                Phase::Gather {
                    left,
                    mask,
                    at,
                    fin,
                } => {
                    if left > 0 {
                        let start = self.msg.len();
                        let chunk = left.min(16 << 10) as usize;
                        self.msg.resize(start + chunk, 0);
                        let n = match read_some(c.io, cx, &mut self.msg[start..]) {
                            Poll::Ready(Ok(n)) => n,
                            other => {
                                self.msg.truncate(start);
                                return other.map_ok(|_| ());
                            }
                        };
                        self.msg.truncate(start + n);
                        if n == 0 {
                            return Poll::Ready(Ok(()));
                        }
                        for (i, b) in self.msg[start..].iter_mut().enumerate() {
                            *b ^= mask[(at + i) % 4];
                        }
                        self.phase = Phase::Gather {
                            left: left - n as u64,
                            mask,
                            at: at + n,
                            fin,
                        };
                        continue;
                    }
                    self.phase = Phase::Head;
                    if fin {
                        let msg = std::mem::take(&mut self.msg);
                        let plain = match c.inflater.as_mut() {
                            Some(d) => {
                                if !c.takeover {
                                    d.reset(false);
                                }
                                inflate_with(d, &msg, c.max)
                            }
                            None => inflate(&msg, c.max),
                        }
                        .map_err(InflateError::io)?;
                        self.out = frame(self.msg_opcode, &plain, !c.client);
                        self.out_at = 0;
                        self.msg_opcode = 0;
                    }
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Inflating<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(Err(InflateError::Invalid("after an earlier failure").io()));
        }
        let reading = this.reading.get_or_insert_with(|| Box::new(Reading::new()));
        let conn = Conn {
            io: &mut this.io,
            max: this.max,
            client: this.client,
            inflater: &mut this.inflater,
            takeover: this.takeover,
        };
        let r = reading.poll(conn, cx, buf);
        match &r {
            Poll::Ready(Err(_)) => {
                this.failed = true;
                this.reading = None;
            }
            // Between frames nothing is kept.
            _ if reading.is_idle() => this.reading = None,
            _ => {}
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Inflating<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A client frame: `payload` masked with `key`.
    fn client_frame(b0: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut v = frame(b0 & 0x0f, payload, true);
        v[0] = b0;
        let at = v.len() - payload.len();
        v[at - 4..at].copy_from_slice(&key);
        for (i, b) in v[at..].iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
        v
    }

    fn compress(text: &[u8]) -> Vec<u8> {
        crate::server::compress::deflate(text, 6).message().to_vec()
    }

    async fn through(input: Vec<u8>, max: usize) -> std::io::Result<Vec<u8>> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(&input).await?;
        client.shutdown().await?;
        let mut r = Inflating::new(server, max);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn plain_frames_pass_through_unchanged() {
        let mut input = client_frame(0x81, br#"{"type":"ping"}"#, [1, 2, 3, 4]);
        input.extend(client_frame(0x89, b"", [9, 9, 9, 9]));
        input.extend(client_frame(0x82, &vec![7u8; 70_000], [5, 6, 7, 8]));
        assert_eq!(through(input.clone(), 1 << 20).await.unwrap(), input);
    }

    #[tokio::test]
    async fn a_compressed_message_becomes_one_plain_frame() {
        let text = br#"{"type":"subscribe","grep":"error|warn","file":"*.log","tail":100}"#;
        let input = client_frame(0xC1, &compress(text), [0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(through(input, 1 << 16).await.unwrap(), frame(1, text, true));
    }

    #[tokio::test]
    async fn fragments_with_a_ping_between_them_are_gathered() {
        let text: Vec<u8> = b"0123456789abcdef".repeat(500);
        let packed = compress(&text);
        let (a, b) = packed.split_at(packed.len() / 2);
        let mut input = client_frame(0x41, a, [1, 1, 2, 3]); // RSV1, text, not final
        input.extend(client_frame(0x89, b"hi", [4, 4, 4, 4]));
        input.extend(client_frame(0x80, b, [5, 8, 13, 21])); // final continuation
        let mut want = client_frame(0x89, b"hi", [4, 4, 4, 4]);
        want.extend(frame(1, &text, true));
        assert_eq!(through(input, 1 << 16).await.unwrap(), want);
    }

    #[tokio::test]
    async fn a_bomb_is_stopped_at_the_limit() {
        let bomb = vec![b'a'; 10 << 20];
        let input = client_frame(0xC1, &compress(&bomb), [1, 2, 3, 4]);
        let e = through(input, 64 << 10).await.unwrap_err();
        let inner = e.get_ref().and_then(|i| i.downcast_ref::<InflateError>());
        assert!(matches!(inner, Some(InflateError::TooBig)), "{e}");
    }

    #[tokio::test]
    async fn broken_compressed_input_is_refused_clearly() {
        for input in [
            client_frame(0xC1, &[0xff, 0xff, 0xff], [1, 2, 3, 4]),
            // A new message while a compressed one is unfinished.
            [
                client_frame(0x41, b"x", [0; 4]),
                client_frame(0x81, b"y", [0; 4]),
            ]
            .concat(),
            // RSV1 on a continuation.
            [
                client_frame(0x41, b"x", [0; 4]),
                client_frame(0xC0, b"y", [0; 4]),
            ]
            .concat(),
            // Unmasked.
            {
                let p = compress(b"hello");
                let mut f = vec![0xC1, p.len() as u8];
                f.extend(p);
                f
            },
        ] {
            let e = through(input, 1 << 16).await.unwrap_err();
            let inner = e.get_ref().and_then(|i| i.downcast_ref::<InflateError>());
            assert!(matches!(inner, Some(InflateError::Invalid(_))), "{e}");
        }
    }

    #[tokio::test]
    async fn a_client_keeps_the_window_when_its_server_takes_over_context() {
        // Two messages from one compressor: the second refers to the first.
        let mut c = flate2::Compress::new(flate2::Compression::default(), false);
        let text = b"the same words, the same words, again and again".repeat(20);
        let mut wire = Vec::new();
        for _ in 0..2 {
            let mut out = Vec::with_capacity(text.len() + 64);
            c.compress_vec(&text, &mut out, flate2::FlushCompress::Sync)
                .unwrap();
            out.truncate(out.len() - SYNC_TAIL.len());
            wire.extend(server_frame(&out));
        }
        assert_eq!(
            as_client(wire, true).await,
            [frame(1, &text, false), frame(1, &text, false)].concat()
        );
    }

    #[tokio::test]
    async fn a_client_resets_its_inflater_when_the_server_does_not_take_over() {
        let texts: [&[u8]; 2] = [b"first message, first message", b"second, second, second"];
        let mut wire = Vec::new();
        for t in texts {
            wire.extend(server_frame(&compress(t)));
        }
        assert_eq!(
            as_client(wire, false).await,
            [frame(1, texts[0], false), frame(1, texts[1], false)].concat()
        );
    }

    /// A compressed text message from a server (unmasked, RSV1).
    fn server_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = frame(1, payload, false);
        f[0] |= 0x40;
        f
    }

    /// What a client's inflating layer hands up for `wire` from its server.
    async fn as_client(wire: Vec<u8>, takeover: bool) -> Vec<u8> {
        let (mut server, client) = tokio::io::duplex(1 << 20);
        server.write_all(&wire).await.unwrap();
        server.shutdown().await.unwrap();
        let mut out = Vec::new();
        Inflating::client(client, 1 << 20, takeover)
            .read_to_end(&mut out)
            .await
            .unwrap();
        out
    }

    #[test]
    fn inflate_round_trips_and_bounds() {
        let text = b"hello hello hello hello".repeat(100);
        assert_eq!(inflate(&compress(&text), text.len()).unwrap(), text);
        assert!(matches!(
            inflate(&compress(&text), text.len() - 1),
            Err(InflateError::TooBig)
        ));
        assert_eq!(inflate(&compress(b""), 10).unwrap(), b"");
    }
}
