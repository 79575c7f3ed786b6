//! One block of the disk history: its byte layout, encoding and decoding.
//! Pure functions over byte buffers; the store ([`super::store`]) decides
//! where blocks go.
//!
//! ```text
//!  header (uncompressed, checksummed on its own)
//!    magic "LSH1" · header length u32 · first position u64 · count u32
//!    raw length u32 · payload length u32 · min ts i64 · max ts i64
//!    payload crc32 u32 · source table length u32 · source table (zstd)
//!    header crc32 u32
//!  payload: columns length (compressed u32, raw u32), then two zstd frames
//!    columns of `count` records each: source index (varint) · ts delta
//!    (zigzag varint) · seq delta per source (zigzag varint) · flags u8
//!    (level, partial, split) · line length (varint)
//!    lines: every line, concatenated
//! ```
//!
//! The header is enough to index a block (time range, sources) without
//! reading its payload. The columns are a frame of their own, so a query
//! that needs no line (`count_over_time` of a selector) never inflates
//! one; the lines are one contiguous region, so a substring prefilter scans
//! them in one pass. Little-endian throughout.

use std::sync::Arc;

use crate::protocol::{Level, Source, SourceId, SplitPart};

/// What makes a block's first bytes.
pub const MAGIC: &[u8; 4] = b"LSH1";
/// Fixed header bytes before the source table.
const FIXED: usize = 4 + 4 + 8 + 4 + 4 + 4 + 8 + 8 + 4 + 4;
/// A header is never larger than this (sources of one block are bounded by
/// the writer); a larger length is corruption, not an allocation to make.
pub const MAX_HEADER: usize = 4 << 20;
/// Nor a payload (the writer cuts blocks at a few MiB of raw records).
pub const MAX_PAYLOAD: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("block truncated: {0}")]
    Truncated(&'static str),
    #[error("not a history block (bad magic)")]
    Magic,
    #[error("block {0} checksum mismatch")]
    Checksum(&'static str),
    #[error("block field out of bounds: {0}")]
    Bounds(&'static str),
    #[error("block payload malformed: {0}")]
    Malformed(&'static str),
    #[error("zstd: {0}")]
    Zstd(std::io::Error),
}

/// One record as the history stores it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRecord {
    pub pos: u64,
    pub sid: SourceId,
    pub seq: u64,
    pub ts_ns: i64,
    pub level: Option<Level>,
    pub partial: bool,
    pub split: Option<SplitPart>,
}

/// A source as blocks name it.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceRec {
    pub sid: SourceId,
    pub source: Source,
}

/// What a block's header says.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    pub first_pos: u64,
    pub count: u32,
    pub raw_len: u32,
    pub payload_len: u32,
    pub min_ts: i64,
    pub max_ts: i64,
    pub payload_crc: u32,
    pub sources: Vec<SourceRec>,
    /// Per source, the levels its records in the block have (bit `n` for
    /// level code `n`, 0 being none), so metadata queries need no payload.
    pub levels: Vec<u8>,
    /// Per source, the highest sequence number of its records in the block
    /// (a restarted aggregator resumes its upstreams after them).
    pub last_seqs: Vec<u64>,
    /// Per source, the lowest (a resumed client learns what is missing).
    pub first_seqs: Vec<u64>,
    /// Bytes of the header itself.
    pub header_len: u32,
}

impl Header {
    /// Bytes of the whole block.
    pub fn block_len(&self) -> u64 {
        u64::from(self.header_len) + u64::from(self.payload_len)
    }
}

/// A block read back: records by column, lines in one string.
#[derive(Debug)]
pub struct Decoded {
    pub first_pos: u64,
    pub sources: Vec<Arc<SourceRec>>,
    pub src: Vec<u16>,
    pub ts: Vec<i64>,
    pub seq: Vec<u64>,
    pub flags: Vec<u8>,
    /// `lines[ends[i-1]..ends[i]]` is record i's line.
    pub ends: Vec<u32>,
    pub lines: String,
}

impl Decoded {
    pub fn len(&self) -> usize {
        self.ts.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }
    /// Where record i's line is in [`Decoded::lines`].
    fn span(&self, i: usize) -> std::ops::Range<usize> {
        let start = match i.checked_sub(1) {
            Some(p) => self.ends.get(p).copied().unwrap_or(0) as usize,
            None => 0,
        };
        let end = self.ends.get(i).copied().unwrap_or(0) as usize;
        start..end.max(start)
    }
    pub fn line(&self, i: usize) -> &str {
        self.lines.get(self.span(i)).unwrap_or("")
    }
    /// Bytes of record i's line (known whether or not the lines were
    /// inflated).
    pub fn line_len(&self, i: usize) -> usize {
        self.span(i).len()
    }

    /// The record holding byte `offset` of [`Decoded::lines`].
    pub fn record_at(&self, offset: usize) -> usize {
        self.ends.partition_point(|&e| e as usize <= offset)
    }
    pub fn source(&self, i: usize) -> Option<&Arc<SourceRec>> {
        self.sources.get(*self.src.get(i)? as usize)
    }
    pub fn level(&self, i: usize) -> Option<Level> {
        level_of(self.flags.get(i).copied().unwrap_or(0))
    }
    pub fn record(&self, i: usize) -> Option<StoredRecord> {
        let flags = *self.flags.get(i)?;
        Some(StoredRecord {
            pos: self.first_pos + i as u64,
            sid: self.source(i)?.sid,
            seq: *self.seq.get(i)?,
            ts_ns: *self.ts.get(i)?,
            level: level_of(flags),
            partial: flags & PARTIAL != 0,
            split: split_of(flags),
        })
    }
}

const PARTIAL: u8 = 0x08;

pub fn level_code(l: Option<Level>) -> u8 {
    match l {
        None => 0,
        Some(Level::Trace) => 1,
        Some(Level::Debug) => 2,
        Some(Level::Info) => 3,
        Some(Level::Warn) => 4,
        Some(Level::Error) => 5,
        Some(Level::Fatal) => 6,
    }
}

pub fn level_of(flags: u8) -> Option<Level> {
    match flags & 0x07 {
        1 => Some(Level::Trace),
        2 => Some(Level::Debug),
        3 => Some(Level::Info),
        4 => Some(Level::Warn),
        5 => Some(Level::Error),
        6 => Some(Level::Fatal),
        _ => None,
    }
}

fn split_code(s: Option<SplitPart>) -> u8 {
    match s {
        None => 0,
        Some(SplitPart::First) => 0x10,
        Some(SplitPart::Middle) => 0x20,
        Some(SplitPart::Last) => 0x30,
    }
}

fn split_of(flags: u8) -> Option<SplitPart> {
    match flags & 0x30 {
        0x10 => Some(SplitPart::First),
        0x20 => Some(SplitPart::Middle),
        0x30 => Some(SplitPart::Last),
        _ => None,
    }
}

/// Records to encode, in position order: `pos` of each is the previous + 1.
pub struct Input<'a> {
    pub record: StoredRecord,
    pub source: &'a Source,
    pub line: &'a str,
}

/// Encodes records into one block. `level` is zstd's; `scratch` is reused
/// between calls (the raw columns).
pub fn encode(
    records: &[Input<'_>],
    level: i32,
    scratch: &mut Vec<u8>,
) -> Result<Vec<u8>, BlockError> {
    let first_pos = records.first().map_or(0, |r| r.record.pos);
    let mut sources: Vec<SourceRec> = Vec::new();
    let mut index: std::collections::HashMap<SourceId, u16> = std::collections::HashMap::new();
    let mut min_ts = i64::MAX;
    let mut max_ts = i64::MIN;
    scratch.clear();
    let raw = scratch;
    // Source indices, then the other columns: each column in one run so
    // zstd sees similar bytes together.
    let mut src_col = Vec::with_capacity(records.len());
    for r in records {
        let i = match index.get(&r.record.sid) {
            Some(i) => *i,
            None => {
                let i = u16::try_from(sources.len()).map_err(|_| BlockError::Bounds("sources"))?;
                sources.push(SourceRec {
                    sid: r.record.sid,
                    source: r.source.clone(),
                });
                index.insert(r.record.sid, i);
                i
            }
        };
        src_col.push(i);
        put_varint(raw, u64::from(i));
        min_ts = min_ts.min(r.record.ts_ns);
        max_ts = max_ts.max(r.record.ts_ns);
    }
    let mut prev_ts = min_ts;
    for r in records {
        put_varint(raw, zigzag(r.record.ts_ns.wrapping_sub(prev_ts)));
        prev_ts = r.record.ts_ns;
    }
    let mut levels = vec![0u8; sources.len()];
    for (r, s) in records.iter().zip(&src_col) {
        levels[*s as usize] |= 1 << level_code(r.record.level);
    }
    let mut first_seq = vec![u64::MAX; sources.len()];
    for (r, s) in records.iter().zip(&src_col) {
        let f = &mut first_seq[*s as usize];
        *f = (*f).min(r.record.seq);
    }
    let mut last_seq = vec![0u64; sources.len()];
    for (r, s) in records.iter().zip(&src_col) {
        let slot = &mut last_seq[*s as usize];
        put_varint(raw, zigzag(r.record.seq.wrapping_sub(*slot) as i64));
        *slot = r.record.seq;
    }
    for r in records {
        let partial = if r.record.partial { PARTIAL } else { 0 };
        raw.push(level_code(r.record.level) | partial | split_code(r.record.split));
    }
    let mut lines_len = 0usize;
    for r in records {
        put_varint(raw, r.line.len() as u64);
        lines_len += r.line.len();
    }
    let cols_raw = raw.len();
    let cols = zstd::bulk::compress(raw, level).map_err(BlockError::Zstd)?;
    raw.clear();
    raw.reserve(lines_len);
    for r in records {
        raw.extend_from_slice(r.line.as_bytes());
    }
    let raw_len =
        u32::try_from(cols_raw + raw.len()).map_err(|_| BlockError::Bounds("raw length"))?;
    let lines = zstd::bulk::compress(raw, level).map_err(BlockError::Zstd)?;
    let mut payload = Vec::with_capacity(8 + cols.len() + lines.len());
    payload.extend_from_slice(&(cols.len() as u32).to_le_bytes());
    payload.extend_from_slice(&(cols_raw as u32).to_le_bytes());
    payload.extend_from_slice(&cols);
    payload.extend_from_slice(&lines);
    let table = encode_sources(&sources, &levels, &first_seq, &last_seq, level)?;
    let header_len = FIXED + table.len() + 4;
    let mut out = Vec::with_capacity(header_len + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header_len as u32).to_le_bytes());
    out.extend_from_slice(&first_pos.to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    out.extend_from_slice(&raw_len.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&min_ts.to_le_bytes());
    out.extend_from_slice(&max_ts.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&(table.len() as u32).to_le_bytes());
    out.extend_from_slice(&table);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn encode_sources(
    sources: &[SourceRec],
    levels: &[u8],
    first_seqs: &[u64],
    last_seqs: &[u64],
    level: i32,
) -> Result<Vec<u8>, BlockError> {
    let mut raw = Vec::new();
    put_varint(&mut raw, sources.len() as u64);
    for (((s, l), first), last) in sources.iter().zip(levels).zip(first_seqs).zip(last_seqs) {
        raw.extend_from_slice(&s.sid.0.to_le_bytes());
        raw.push(*l);
        put_varint(&mut raw, *last);
        put_varint(&mut raw, last.saturating_sub(*first));
        for f in [
            &s.source.namespace,
            &s.source.pod,
            &s.source.container,
            &s.source.file,
            &s.source.service,
        ] {
            put_varint(&mut raw, f.len() as u64);
            raw.extend_from_slice(f.as_bytes());
        }
    }
    zstd::bulk::compress(&raw, level).map_err(BlockError::Zstd)
}

/// Sources, and per source its levels, first and last sequence numbers.
type SourceTable = (Vec<SourceRec>, Vec<u8>, Vec<u64>, Vec<u64>);

fn decode_sources(table: &[u8]) -> Result<SourceTable, BlockError> {
    let raw = zstd::bulk::decompress(table, MAX_HEADER).map_err(BlockError::Zstd)?;
    let mut r = Reader::new(&raw);
    let n = r.varint()?;
    let mut out = Vec::new();
    let mut levels = Vec::new();
    let mut seqs = Vec::new();
    let mut firsts = Vec::new();
    for _ in 0..n {
        let sid = SourceId(u64::from_le_bytes(r.array()?));
        levels.push(r.array::<1>()?[0]);
        let last = r.varint()?;
        seqs.push(last);
        firsts.push(last.saturating_sub(r.varint()?));
        let mut f = || -> Result<String, BlockError> {
            let len = r.varint()? as usize;
            String::from_utf8(r.bytes(len)?.to_vec()).map_err(|_| BlockError::Malformed("utf-8"))
        };
        let source = Source {
            namespace: f()?,
            pod: f()?,
            container: f()?,
            file: f()?,
            service: f()?,
        };
        out.push(SourceRec { sid, source });
    }
    Ok((out, levels, firsts, seqs))
}

/// Bytes of the header that `prefix` (the first bytes of a block, at least
/// 8) announces.
pub fn header_len(prefix: &[u8]) -> Result<usize, BlockError> {
    let magic = prefix.get(..4).ok_or(BlockError::Truncated("magic"))?;
    if magic != MAGIC {
        return Err(BlockError::Magic);
    }
    let len = u32::from_le_bytes(
        prefix
            .get(4..8)
            .and_then(|b| b.try_into().ok())
            .ok_or(BlockError::Truncated("header length"))?,
    ) as usize;
    if !(FIXED + 4..=MAX_HEADER).contains(&len) {
        return Err(BlockError::Bounds("header length"));
    }
    Ok(len)
}

/// Parses and checks a header (all of its [`header_len`] bytes).
pub fn parse_header(h: &[u8]) -> Result<Header, BlockError> {
    let len = header_len(h)?;
    let h = h.get(..len).ok_or(BlockError::Truncated("header"))?;
    let (body, crc) = h.split_at(len - 4);
    if crc32fast::hash(body)
        != u32::from_le_bytes(crc.try_into().map_err(|_| BlockError::Truncated("crc"))?)
    {
        return Err(BlockError::Checksum("header"));
    }
    let mut r = Reader::new(body.get(8..).ok_or(BlockError::Truncated("header"))?);
    let first_pos = u64::from_le_bytes(r.array()?);
    let count = u32::from_le_bytes(r.array()?);
    let raw_len = u32::from_le_bytes(r.array()?);
    let payload_len = u32::from_le_bytes(r.array()?);
    let min_ts = i64::from_le_bytes(r.array()?);
    let max_ts = i64::from_le_bytes(r.array()?);
    let payload_crc = u32::from_le_bytes(r.array()?);
    let table_len = u32::from_le_bytes(r.array()?) as usize;
    let (sources, levels, first_seqs, last_seqs) = decode_sources(r.bytes(table_len)?)?;
    if payload_len as usize > MAX_PAYLOAD || raw_len as usize > MAX_PAYLOAD {
        return Err(BlockError::Bounds("payload length"));
    }
    Ok(Header {
        first_pos,
        count,
        raw_len,
        payload_len,
        min_ts,
        max_ts,
        payload_crc,
        sources,
        levels,
        last_seqs,
        first_seqs,
        header_len: len as u32,
    })
}

/// Checks a payload against its header's checksum.
pub fn check_payload(h: &Header, payload: &[u8]) -> Result<(), BlockError> {
    if payload.len() != h.payload_len as usize {
        return Err(BlockError::Truncated("payload"));
    }
    if crc32fast::hash(payload) != h.payload_crc {
        return Err(BlockError::Checksum("payload"));
    }
    Ok(())
}

/// Decodes a checked payload. `sources` are the header's, shared.
/// Without `with_lines` the lines stay compressed: every line reads as
/// empty (their lengths are known).
pub fn decode(
    h: &Header,
    sources: Vec<Arc<SourceRec>>,
    payload: &[u8],
    with_lines: bool,
) -> Result<Decoded, BlockError> {
    check_payload(h, payload)?;
    let mut p = Reader::new(payload);
    let cols_len = u32::from_le_bytes(p.array()?) as usize;
    let cols_raw = u32::from_le_bytes(p.array()?) as usize;
    if cols_raw > h.raw_len as usize {
        return Err(BlockError::Bounds("columns length"));
    }
    let raw = zstd::bulk::decompress(p.bytes(cols_len)?, cols_raw).map_err(BlockError::Zstd)?;
    if raw.len() != cols_raw {
        return Err(BlockError::Malformed("columns length"));
    }
    let lines_frame = p.rest();
    let n = h.count as usize;
    let mut r = Reader::new(&raw);
    let mut src = Vec::with_capacity(n);
    for _ in 0..n {
        let i = r.varint()?;
        if i as usize >= sources.len() {
            return Err(BlockError::Bounds("source index"));
        }
        src.push(i as u16);
    }
    let mut ts = Vec::with_capacity(n);
    let mut prev = h.min_ts;
    for _ in 0..n {
        prev = prev.wrapping_add(unzigzag(r.varint()?));
        ts.push(prev);
    }
    let mut last = vec![0u64; sources.len()];
    let mut seq = Vec::with_capacity(n);
    for s in &src {
        let slot = &mut last[*s as usize];
        *slot = slot.wrapping_add(unzigzag(r.varint()?) as u64);
        seq.push(*slot);
    }
    let flags = r.bytes(n)?.to_vec();
    let mut ends = Vec::with_capacity(n);
    let mut end = 0u64;
    for _ in 0..n {
        end += r.varint()?;
        ends.push(u32::try_from(end).map_err(|_| BlockError::Bounds("line lengths"))?);
    }
    if !r.rest().is_empty() || end != (h.raw_len as usize - cols_raw) as u64 {
        return Err(BlockError::Malformed("line bytes"));
    }
    let lines = if with_lines {
        let raw = zstd::bulk::decompress(lines_frame, end as usize).map_err(BlockError::Zstd)?;
        if raw.len() as u64 != end {
            return Err(BlockError::Malformed("line bytes"));
        }
        String::from_utf8(raw).map_err(|_| BlockError::Malformed("utf-8"))?
    } else {
        String::new()
    };
    Ok(Decoded {
        first_pos: h.first_pos,
        sources,
        src,
        ts,
        seq,
        flags,
        ends,
        lines,
    })
}

// ---------------------------------------------------------------------------
// Integers: LEB128 varints and zigzag, as protobuf writes them.

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    fn varint(&mut self) -> Result<u64, BlockError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or(BlockError::Truncated("varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(BlockError::Malformed("varint too long"))
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], BlockError> {
        if n > self.buf.len() {
            return Err(BlockError::Truncated("bytes"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], BlockError> {
        self.bytes(N)?
            .try_into()
            .map_err(|_| BlockError::Truncated("field"))
    }
    fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(pod: &str) -> Source {
        Source {
            namespace: "ns".into(),
            pod: pod.into(),
            container: "app".into(),
            file: "app.log".into(),
            service: String::new(),
        }
    }

    #[test]
    fn a_block_reads_back_what_was_written() {
        let (a, b) = (src("a"), src("b"));
        let rows = [
            (SourceId(1), &a, 5, 100, Some(Level::Info), "first ünïcode"),
            (SourceId(2), &b, 9, 90, None, ""),
            (SourceId(1), &a, 6, 120, Some(Level::Error), "third"),
            (SourceId(1), &a, 7, -5, Some(Level::Fatal), "negative time"),
        ];
        let input: Vec<Input<'_>> = rows
            .iter()
            .enumerate()
            .map(|(i, (sid, s, seq, ts, level, line))| Input {
                record: StoredRecord {
                    pos: 40 + i as u64,
                    sid: *sid,
                    seq: *seq,
                    ts_ns: *ts,
                    level: *level,
                    partial: i == 1,
                    split: (i == 2).then_some(SplitPart::Middle),
                },
                source: s,
                line,
            })
            .collect();
        let block = encode(&input, 1, &mut Vec::new()).unwrap();
        let len = header_len(&block).unwrap();
        let h = parse_header(&block[..len]).unwrap();
        assert_eq!((h.first_pos, h.count, h.min_ts, h.max_ts), (40, 4, -5, 120));
        assert_eq!(h.block_len(), block.len() as u64);
        let sources: Vec<_> = h.sources.iter().cloned().map(Arc::new).collect();
        let bare = decode(&h, sources.clone(), &block[len..], false).unwrap();
        assert_eq!(bare.line(0), "", "lines left compressed");
        assert_eq!(bare.record(2).unwrap(), input[2].record);
        let d = decode(&h, sources, &block[len..], true).unwrap();
        for (i, inp) in input.iter().enumerate() {
            assert_eq!(d.record(i).unwrap(), inp.record);
            assert_eq!(d.line(i), inp.line);
            assert_eq!(&d.source(i).unwrap().source, inp.source);
        }
        assert_eq!(d.record_at(0), 0);
        assert_eq!(d.record_at("first ünïcode".len()), 2);
    }

    #[test]
    fn damage_anywhere_is_an_error_not_a_panic() {
        let s = src("a");
        let input: Vec<Input<'_>> = (0..50)
            .map(|i| Input {
                record: StoredRecord {
                    pos: i,
                    sid: SourceId(3),
                    seq: i + 1,
                    ts_ns: i as i64,
                    level: None,
                    partial: false,
                    split: None,
                },
                source: &s,
                line: "some line of text",
            })
            .collect();
        let block = encode(&input, 1, &mut Vec::new()).unwrap();
        for at in 0..block.len() {
            let mut bad = block.clone();
            bad[at] ^= 0x41;
            let outcome = header_len(&bad).and_then(|len| {
                let h = parse_header(bad.get(..len).ok_or(BlockError::Truncated("x"))?)?;
                let sources = h.sources.iter().cloned().map(Arc::new).collect();
                decode(&h, sources, bad.get(len..).unwrap_or(&[]), true)
            });
            assert!(outcome.is_err(), "flipping byte {at} went unnoticed");
        }
        for cut in 0..block.len() {
            let short = &block[..cut];
            let outcome = header_len(short).and_then(|len| {
                let h = parse_header(short.get(..len).ok_or(BlockError::Truncated("x"))?)?;
                check_payload(&h, short.get(len..).unwrap_or(&[]))
            });
            assert!(outcome.is_err(), "a block cut at {cut} passed");
        }
    }

    #[test]
    fn varints_and_zigzag_round_trip() {
        for v in [0i64, 1, -1, 63, -64, 1 << 40, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            put_varint(&mut out, zigzag(v));
            assert_eq!(unzigzag(Reader::new(&out).varint().unwrap()), v);
        }
    }
}
