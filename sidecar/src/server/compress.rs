//! Compression of what streams send, done once per batch for every client
//! that is sent the same bytes.
//!
//! Owns: the negotiation of WebSocket permessage-deflate (RFC 7692) and of
//! `Content-Encoding: gzip` (pure functions of the request headers), the
//! shared cache that deflates a rendered batch once ([`Compression`]), and
//! the gzip framing of one `/sse` or `/stream` body ([`GzipBody`]).
//!
//! Why once: a zlib context costs tens of KB and a compression costs CPU
//! per byte; a hub batch rendered the same way for 100 clients would be
//! compressed 100 times by a per-connection compressor. Here every batch is
//! deflated from an empty dictionary and ends on a byte boundary (a sync
//! flush), so the same bytes are a whole permessage-deflate message under
//! `server_no_context_takeover` and a piece of any client's gzip stream.
//! No connection holds compressor state: an idle compressed connection
//! costs what an uncompressed one does (plus a CRC and a length for gzip).
//!
//! The cache is content-addressed (a 128-bit hash of the rendered text and
//! its length), so it needs to know nothing of sessions, filters or
//! formats: clients with the same rendering of a batch meet there. It
//! holds compressed bytes only, so it can remember enough batches for
//! clients spread over a burst (sessions cut batches on a common grid,
//! session.rs, so laggards render what leaders did).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use flate2::{Compress, FlushCompress, Status};

/// The empty stored block a sync flush ends with. permessage-deflate
/// drops it from each message (RFC 7692 7.2.1); gzip keeps it.
pub const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Recent batches kept for other clients to find.
const CACHE_SLOTS: usize = 1024;
/// Compressed bytes the cache may hold.
const CACHE_BYTES: usize = 8 << 20;

/// Settings (`--compress`, `--compress-min-bytes`, `--compress-level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompressConfig {
    /// Offer nothing, accept no offer.
    pub enabled: bool,
    /// Smaller messages and batches go uncompressed (they would barely
    /// shrink; the frame or block header is the cost).
    pub min_bytes: usize,
    /// zlib level, 1 (fastest) to 9.
    pub level: u32,
}

impl Default for CompressConfig {
    fn default() -> Self {
        CompressConfig {
            enabled: true,
            min_bytes: 512,
            level: 6,
        }
    }
}

/// A batch deflated once: raw deflate ending with [`SYNC_TAIL`], with the
/// CRC-32 and length of what it holds (for gzip trailers).
#[derive(Debug)]
pub struct Packed {
    pub deflate: Bytes,
    pub crc: u32,
    pub len: u64,
}

impl Packed {
    /// The payload of a permessage-deflate message (the tail dropped).
    pub fn message(&self) -> Bytes {
        self.deflate
            .slice(..self.deflate.len().saturating_sub(SYNC_TAIL.len()))
    }
}

struct Slot {
    hash: u128,
    len: usize,
    packed: tokio::sync::OnceCell<Arc<Packed>>,
}

/// The shared compressor of a server: settings and the cache of recent
/// batches.
pub struct Compression {
    pub cfg: CompressConfig,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    slots: VecDeque<Arc<Slot>>,
    bytes: usize,
}

/// Whether a batch was found deflated already (`hit`) or deflated here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    Hit,
    Miss,
}

impl Compression {
    pub fn new(cfg: CompressConfig) -> Compression {
        Compression {
            cfg,
            cache: Mutex::new(Cache::default()),
        }
    }

    /// Whether `len` bytes are worth compressing.
    pub fn worth(&self, len: usize) -> bool {
        self.cfg.enabled && len >= self.cfg.min_bytes.max(1)
    }

    /// `text` deflated, by this call or by another client's: concurrent
    /// callers with the same text wait for one compression.
    pub async fn pack(&self, text: Bytes) -> (Arc<Packed>, Found) {
        let (hash, len) = (xxhash_rust::xxh3::xxh3_128(&text), text.len());
        let slot = {
            let Ok(mut cache) = self.cache.lock() else {
                // A panic while holding the lock: compress alone.
                return (Arc::new(deflate(&text, self.cfg.level)), Found::Miss);
            };
            // Newest first: clients mostly ask for recent batches.
            match cache
                .slots
                .iter()
                .rev()
                .find(|s| s.hash == hash && s.len == len)
            {
                Some(s) => s.clone(),
                None => cache.insert(hash, len),
            }
        };
        let mut found = Found::Hit;
        let packed = slot
            .packed
            .get_or_init(|| {
                found = Found::Miss;
                let level = self.cfg.level;
                async move { Arc::new(deflate(&text, level)) }
            })
            .await
            .clone();
        if found == Found::Miss
            && let Ok(mut cache) = self.cache.lock()
        {
            cache.bytes += packed.deflate.len();
            cache.trim();
        }
        (packed, found)
    }
}

impl Cache {
    fn insert(&mut self, hash: u128, len: usize) -> Arc<Slot> {
        let slot = Arc::new(Slot {
            hash,
            len,
            packed: tokio::sync::OnceCell::new(),
        });
        self.slots.push_back(slot.clone());
        self.trim();
        slot
    }

    /// Oldest first, down to the bounds (the newest slot always stays).
    fn trim(&mut self) {
        while self.slots.len() > 1 && (self.slots.len() > CACHE_SLOTS || self.bytes > CACHE_BYTES) {
            if let Some(old) = self.slots.pop_front() {
                self.bytes = self
                    .bytes
                    .saturating_sub(old.packed.get().map_or(0, |p| p.deflate.len()));
            }
        }
    }
}

thread_local! {
    /// One compressor per thread, reset between batches: its tables are
    /// allocated once, not per batch.
    static COMPRESSOR: std::cell::RefCell<Option<(u32, Compress)>> =
        const { std::cell::RefCell::new(None) };
}

/// `text` as raw deflate from an empty dictionary, ended by a sync flush.
pub fn deflate(text: &[u8], level: u32) -> Packed {
    let out = COMPRESSOR.with_borrow_mut(|slot| {
        let c = match slot {
            Some((l, c)) if *l == level => {
                c.reset();
                c
            }
            _ => {
                let c = Compress::new(flate2::Compression::new(level.clamp(1, 9)), false);
                &mut slot.insert((level, c)).1
            }
        };
        deflate_with(c, text)
    });
    Packed {
        deflate: Bytes::from(out),
        crc: crc32fast::hash(text),
        len: text.len() as u64,
    }
}

fn deflate_with(c: &mut Compress, text: &[u8]) -> Vec<u8> {
    // Room for incompressible input (stored blocks) plus the flush.
    let mut out = Vec::with_capacity(text.len() / 2 + 64);
    let start_in = c.total_in();
    loop {
        let done = (c.total_in() - start_in) as usize;
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        // A compressor writing into memory has no failure mode here: the
        // input is a slice, the output grows.
        let status = c.compress_vec(&text[done..], &mut out, FlushCompress::Sync);
        let consumed = (c.total_in() - start_in) as usize == text.len();
        match status {
            // All input taken and room left: the flush is complete.
            Ok(Status::Ok | Status::BufError | Status::StreamEnd)
                if consumed && out.len() < out.capacity() =>
            {
                return out;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "deflate failed; sending a stored block");
                return stored(text);
            }
        }
    }
}

/// `text` as stored (uncompressed) deflate blocks, ended like a sync flush
/// (an empty stored block): what a tiny batch costs in a gzip stream
/// without a compressor.
pub fn stored(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 5 * (text.len() / 65_535 + 2));
    for piece in text.chunks(65_535) {
        let n = piece.len() as u16;
        out.push(0x00);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(!n).to_le_bytes());
        out.extend_from_slice(piece);
    }
    // Byte-aligned already: the empty block's header is a byte of its own.
    out.push(0x00);
    out.extend_from_slice(&SYNC_TAIL);
    out
}

/// The response to a client's `Sec-WebSocket-Extensions` offers: the first
/// permessage-deflate offer this server can honour, answered with
/// `server_no_context_takeover` (every message deflated from an empty
/// window, so one compression serves every client) and
/// `client_no_context_takeover` (the server keeps no inflate window per
/// connection). `None`: no such offer; the connection runs uncompressed.
///
/// An offer is declined (RFC 7692 5) when it limits the server's window
/// below 15 bits (batches are shared, deflated with the full window), or
/// has an unknown, repeated or malformed parameter.
pub fn accept_deflate<'a>(offers: impl IntoIterator<Item = &'a str>) -> Option<String> {
    offers
        .into_iter()
        .flat_map(|v| v.split(','))
        .find_map(|offer| {
            let mut parts = offer.split(';').map(str::trim);
            if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
                return None;
            }
            let mut seen: Vec<String> = Vec::new();
            let mut server_bits = false;
            for p in parts {
                let (name, value) = match p.split_once('=') {
                    Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                    None => (p, None),
                };
                let name = name.to_ascii_lowercase();
                if seen.contains(&name) {
                    return None;
                }
                let bits = |v: Option<&str>| v.and_then(|v| v.parse::<u8>().ok());
                match (name.as_str(), value) {
                    ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
                    ("server_max_window_bits", v) => match bits(v) {
                        Some(15) => server_bits = true,
                        _ => return None,
                    },
                    ("client_max_window_bits", None) => {}
                    ("client_max_window_bits", v)
                        if bits(v).is_some_and(|b| (8..=15).contains(&b)) => {}
                    _ => return None,
                }
                seen.push(name);
            }
            let mut answer =
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
                    .to_string();
            if server_bits {
                answer.push_str("; server_max_window_bits=15");
            }
            Some(answer)
        })
}

/// Whether `Accept-Encoding` accepts gzip (RFC 9110 12.5.3): named or
/// through `*`, with a nonzero weight.
pub fn accepts_gzip<'a>(values: impl IntoIterator<Item = &'a str>) -> bool {
    let mut gzip = None;
    let mut any = None;
    for item in values.into_iter().flat_map(|v| v.split(',')) {
        let mut parts = item.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("").to_ascii_lowercase();
        let weight = parts
            .find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| v.trim().parse::<f32>().ok())
                    .flatten()
            })
            .unwrap_or(1.0);
        match coding.as_str() {
            "gzip" | "x-gzip" => gzip = Some(weight > 0.0),
            "*" => any = Some(weight > 0.0),
            _ => {}
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// One gzip body (RFC 1952): a header, each chunk's deflate bytes, a
/// trailer. Holds only the running CRC and length.
#[derive(Debug, Default)]
pub struct GzipBody {
    started: bool,
    crc: u32,
    len: u64,
}

/// A gzip member's header: deflate, no name, no time, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0xff];

impl GzipBody {
    /// The body's next bytes for a chunk that was deflated (`packed`).
    pub fn packed(&mut self, packed: &Packed) -> Bytes {
        let mut a = crc32fast::Hasher::new_with_initial_len(self.crc, self.len);
        a.combine(&crc32fast::Hasher::new_with_initial_len(
            packed.crc, packed.len,
        ));
        self.crc = a.finalize();
        self.len += packed.len;
        self.with_header(&packed.deflate)
    }

    /// The body's next bytes for a small chunk, sent as stored blocks.
    pub fn plain(&mut self, text: &[u8]) -> Bytes {
        let mut h = crc32fast::Hasher::new_with_initial_len(self.crc, self.len);
        h.update(text);
        self.crc = h.finalize();
        self.len += text.len() as u64;
        self.with_header(&stored(text))
    }

    fn with_header(&mut self, deflate: &[u8]) -> Bytes {
        if self.started {
            return Bytes::copy_from_slice(deflate);
        }
        self.started = true;
        let mut v = Vec::with_capacity(GZIP_HEADER.len() + deflate.len());
        v.extend_from_slice(&GZIP_HEADER);
        v.extend_from_slice(deflate);
        Bytes::from(v)
    }

    /// The last bytes: a final empty block, the CRC-32 and the length
    /// (modulo 2^32); the header too when nothing was sent.
    pub fn finish(&mut self) -> Bytes {
        let mut v = Vec::with_capacity(GZIP_HEADER.len() + 13);
        if !self.started {
            self.started = true;
            v.extend_from_slice(&GZIP_HEADER);
        }
        v.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
        v.extend_from_slice(&self.crc.to_le_bytes());
        v.extend_from_slice(&(self.len as u32).to_le_bytes());
        Bytes::from(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A sync-flushed stream has no final block: one is added.
    fn inflate_raw(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let whole = [data, &[0x01, 0x00, 0x00, 0xff, 0xff]].concat();
        flate2::read::DeflateDecoder::new(&whole[..])
            .read_to_end(&mut out)
            .expect("valid deflate");
        out
    }

    fn lines(n: usize) -> String {
        (0..n)
            .map(|i| format!("{{\"level\":\"info\",\"msg\":\"request {i} served\",\"path\":\"/api/v1/items\"}}\n"))
            .collect()
    }

    #[test]
    fn a_packed_message_inflates_alone_from_an_empty_window() {
        let text = lines(200);
        let p = deflate(text.as_bytes(), 6);
        assert!(p.deflate.ends_with(&SYNC_TAIL));
        // What a permessage-deflate receiver does (RFC 7692 7.2.2).
        let mut msg = p.message().to_vec();
        msg.extend_from_slice(&SYNC_TAIL);
        assert_eq!(inflate_raw(&msg), text.as_bytes());
        assert!(
            p.message().len() * 5 < text.len(),
            "{} of {}",
            p.message().len(),
            text.len()
        );
        assert_eq!(p.crc, crc32fast::hash(text.as_bytes()));
    }

    #[test]
    fn the_thread_compressor_is_reset_between_batches() {
        let a = deflate(lines(50).as_bytes(), 6);
        let b = deflate(lines(50).as_bytes(), 6);
        assert_eq!(a.deflate, b.deflate, "no dictionary carried over");
        let c = deflate(lines(50).as_bytes(), 1);
        assert_eq!(inflate_raw(&c.deflate), lines(50).as_bytes());
    }

    #[test]
    fn incompressible_and_empty_input_round_trip() {
        let noise: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert_eq!(inflate_raw(&deflate(&noise, 6).deflate), noise);
        assert_eq!(inflate_raw(&deflate(b"", 6).deflate), b"");
        assert_eq!(inflate_raw(&stored(&noise)), noise);
    }

    #[tokio::test]
    async fn the_same_text_is_deflated_once() {
        let c = Compression::new(CompressConfig::default());
        let text = Bytes::from(lines(20));
        let (a, fa) = c.pack(text.clone()).await;
        let (b, fb) = c.pack(Bytes::from(lines(20))).await;
        assert_eq!((fa, fb), (Found::Miss, Found::Hit));
        assert!(Arc::ptr_eq(&a, &b));
        let (_, fc) = c.pack(Bytes::from(lines(21))).await;
        assert_eq!(fc, Found::Miss);
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_bounds() {
        let c = Compression::new(CompressConfig::default());
        for i in 0..(CACHE_SLOTS * 2) {
            c.pack(Bytes::from(format!("{i} {}", lines(10)))).await;
        }
        {
            let cache = c.cache.lock().unwrap();
            assert_eq!(cache.slots.len(), CACHE_SLOTS);
            let held: usize = cache
                .slots
                .iter()
                .map(|s| s.packed.get().map_or(0, |p| p.deflate.len()))
                .sum();
            assert_eq!(cache.bytes, held);
        }
        // Incompressible batches: the byte bound holds, the newest stays.
        let noise = |seed: u64| -> Bytes {
            (0..(CACHE_BYTES / 4) as u64)
                .map(|i| (i.wrapping_add(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
                .collect::<Vec<u8>>()
                .into()
        };
        for seed in 0..6 {
            let text = noise(seed * 1_000_003);
            let (p, _) = c.pack(text.clone()).await;
            assert_eq!(inflate_raw(&p.deflate), text);
            let cache = c.cache.lock().unwrap();
            assert!(cache.bytes <= CACHE_BYTES, "{}", cache.bytes);
        }
        let (p, _) = c.pack(Bytes::from(vec![b'x'; CACHE_BYTES + 1])).await;
        assert_eq!(inflate_raw(&p.deflate).len(), CACHE_BYTES + 1);
    }

    #[test]
    fn a_gzip_body_of_packed_and_plain_chunks_is_one_valid_member() {
        let mut g = GzipBody::default();
        let mut body = Vec::new();
        let mut want = Vec::new();
        for (i, chunk) in [
            lines(30),
            "short\n".into(),
            lines(3),
            String::new(),
            lines(100),
        ]
        .iter()
        .enumerate()
        {
            want.extend_from_slice(chunk.as_bytes());
            let bytes = if i % 2 == 0 {
                g.packed(&deflate(chunk.as_bytes(), 6))
            } else {
                g.plain(chunk.as_bytes())
            };
            body.extend_from_slice(&bytes);
        }
        body.extend_from_slice(&g.finish());
        let mut out = Vec::new();
        // GzDecoder checks the trailer's CRC and length.
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .expect("valid gzip");
        assert_eq!(out, want);
        let mut empty = Vec::new();
        flate2::read::GzDecoder::new(&GzipBody::default().finish()[..])
            .read_to_end(&mut empty)
            .expect("an empty body is valid gzip too");
        assert!(empty.is_empty());
    }

    #[test]
    fn deflate_offers_are_answered_or_declined() {
        let full = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        // Chromium's and Firefox's offer.
        assert_eq!(
            accept_deflate(["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some(full)
        );
        assert_eq!(
            accept_deflate(["permessage-deflate"]).as_deref(),
            Some(full)
        );
        assert_eq!(
            accept_deflate(["PerMessage-Deflate; server_max_window_bits=\"15\""]).as_deref(),
            Some(&*format!("{full}; server_max_window_bits=15"))
        );
        // A smaller window first, then an offer that can be honoured.
        assert_eq!(
            accept_deflate([
                "permessage-deflate; server_max_window_bits=10, permessage-deflate; client_max_window_bits=12"
            ])
            .as_deref(),
            Some(full)
        );
        for declined in [
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; mystery",
            "x-webkit-deflate-frame",
            "",
        ] {
            assert_eq!(accept_deflate([declined]), None, "{declined}");
        }
        assert_eq!(
            accept_deflate(["foo", "permessage-deflate"]).as_deref(),
            Some(full)
        );
    }

    #[test]
    fn accept_encoding_is_read_with_weights() {
        assert!(accepts_gzip(["gzip"]));
        assert!(accepts_gzip(["deflate, gzip;q=0.5"]));
        assert!(accepts_gzip(["br", "GZIP"]));
        assert!(accepts_gzip(["*"]));
        assert!(!accepts_gzip(["gzip;q=0"]));
        assert!(!accepts_gzip(["*, gzip;q=0"]));
        assert!(!accepts_gzip(["identity", "br"]));
        assert!(!accepts_gzip([]));
        assert!(accepts_gzip(["x-gzip"]));
    }
}
