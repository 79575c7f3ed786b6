//! The segment files of the disk history: appending blocks, the index of
//! every block (time range, sources, place), recovery at start-up, and
//! retention by bytes and by age.
//!
//! ```text
//!  DIR/seg-<first position, 16 hex digits>.lsh   oldest … newest (the one appended to)
//!       block · block · block …                    (block.rs: header + zstd payload)
//! ```
//!
//! Only the newest segment is ever appended to, and a segment is started
//! only after the previous one's last block was written whole; so a crash
//! (kill -9) can tear at most the tail of the newest segment. Start-up
//! checks every block of that segment (header and payload checksums) and
//! truncates it after the last whole block; older segments have their
//! headers checked, and a damaged block there ends what is read of that
//! segment (the rest is reported, never served).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::block::{self, BlockError, Decoded, Header, SourceRec};
use crate::protocol::SourceId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("history directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("history segment {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("history segment {path} at byte {offset}: {source}")]
    Block {
        path: PathBuf,
        offset: u64,
        source: BlockError,
    },
}

/// Bounds of the store.
#[derive(Clone, Copy, Debug)]
pub struct StoreLimits {
    /// Bytes of all segments together; the oldest go first.
    pub max_bytes: u64,
    /// Segments whose newest record is older than this go.
    pub max_age_ns: Option<i64>,
    /// A segment is closed past this size.
    pub segment_bytes: u64,
}

/// Where a block is and what it holds.
#[derive(Clone, Debug)]
pub struct BlockMeta {
    pub segment: Arc<Segment>,
    pub offset: u64,
    pub header_len: u32,
    pub payload_len: u32,
    pub raw_len: u32,
    pub first_pos: u64,
    pub count: u32,
    pub min_ts: i64,
    pub max_ts: i64,
    pub payload_crc: u32,
    /// What the block holds of each source.
    pub sources: Arc<[SourceMark]>,
}

impl BlockMeta {
    pub fn end_pos(&self) -> u64 {
        self.first_pos + u64::from(self.count)
    }

    /// The dictionary index of the source of record `i` of this block
    /// (read into `block`).
    pub fn dict_of(&self, block: &Decoded, i: usize) -> Option<u32> {
        let s = block.src.get(i)?;
        self.sources.get(*s as usize).map(|m| m.dict)
    }
}

/// A source's records in one block.
#[derive(Clone, Copy, Debug)]
pub struct SourceMark {
    /// Index into the store's source dictionary.
    pub dict: u32,
    /// A bit per level code of its records.
    pub levels: u8,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// One segment file, shared by the index and readers (a segment removed
/// by retention stays readable through an open handle).
#[derive(Debug)]
pub struct Segment {
    pub first_pos: u64,
    pub path: PathBuf,
    file: File,
}

/// What start-up found.
#[derive(Debug, Default, Clone)]
pub struct Recovery {
    pub segments: usize,
    pub blocks: usize,
    /// Bytes cut off the newest segment's torn tail.
    pub truncated_bytes: u64,
    /// Damaged blocks found in older segments (their segment's rest unread).
    pub damaged: Vec<String>,
}

pub struct Store {
    dir: PathBuf,
    limits: StoreLimits,
    /// Oldest first; the last one is appended to.
    blocks: Vec<BlockMeta>,
    segments: Vec<(Arc<Segment>, u64)>,
    dict: Vec<Arc<SourceRec>>,
    by_sid: HashMap<SourceId, u32>,
    /// The highest sequence number stored per source, and the position of
    /// the newest block holding it (how recent the source is).
    last_seqs: HashMap<SourceId, (u64, u64)>,
    next_pos: u64,
    bytes: u64,
}

fn segment_name(first_pos: u64) -> String {
    format!("seg-{first_pos:016x}.lsh")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".lsh")?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
}

impl Store {
    /// Opens (creating) `dir`, reads the index of every segment and repairs
    /// a torn tail.
    pub fn open(dir: &Path, limits: StoreLimits) -> Result<(Store, Recovery), StoreError> {
        let dir_err = |source| StoreError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(dir_err)? {
            let e = e.map_err(dir_err)?;
            let name = e.file_name();
            if let Some(first) = name.to_str().and_then(parse_segment_name) {
                found.push((first, e.path()));
            }
        }
        found.sort();
        let mut store = Store {
            dir: dir.to_path_buf(),
            limits,
            blocks: Vec::new(),
            segments: Vec::new(),
            dict: Vec::new(),
            by_sid: HashMap::new(),
            last_seqs: HashMap::new(),
            next_pos: 0,
            bytes: 0,
        };
        let mut rec = Recovery::default();
        let last = found.len().saturating_sub(1);
        for (i, (first_pos, path)) in found.into_iter().enumerate() {
            let newest = i == last;
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })?;
            let seg = Arc::new(Segment {
                first_pos,
                path: path.clone(),
                file,
            });
            let (good_len, damage) = store.index_segment(&seg, newest)?;
            let file_len = seg.file.metadata().map(|m| m.len()).unwrap_or(good_len);
            if let Some(d) = damage {
                if newest {
                    rec.truncated_bytes += file_len - good_len;
                    tracing::warn!(
                        segment = %path.display(),
                        offset = good_len,
                        cut_bytes = file_len - good_len,
                        error = %d,
                        "history: torn tail of the newest segment truncated"
                    );
                    seg.file
                        .set_len(good_len)
                        .map_err(|source| StoreError::Io {
                            path: path.clone(),
                            source,
                        })?;
                } else {
                    tracing::error!(segment = %path.display(), offset = good_len, error = %d,
                        "history: damaged block; the rest of this segment is not served");
                    rec.damaged.push(format!("{}: {d}", path.display()));
                }
            }
            if good_len == 0 {
                // Nothing whole in it (a crash right after it was made).
                let _ = std::fs::remove_file(&path);
                continue;
            }
            store.bytes += good_len;
            store.segments.push((seg, good_len));
            rec.segments += 1;
        }
        rec.blocks = store.blocks.len();
        Ok((store, rec))
    }

    /// Reads the headers of a segment into the index; with `verify`, each
    /// payload's checksum too. Returns the length of its whole blocks and
    /// the damage that ended the read, if any.
    fn index_segment(
        &mut self,
        seg: &Arc<Segment>,
        verify: bool,
    ) -> Result<(u64, Option<BlockError>), StoreError> {
        let len = seg.file.metadata().map_err(|source| StoreError::Io {
            path: seg.path.clone(),
            source,
        })?;
        let len = len.len();
        let mut offset = 0u64;
        while offset < len {
            match read_header(&seg.file, offset, len) {
                Ok(h) => {
                    if h.first_pos < self.next_pos || offset + h.block_len() > len {
                        let e = if offset + h.block_len() > len {
                            BlockError::Truncated("payload")
                        } else {
                            BlockError::Bounds("position goes back")
                        };
                        return Ok((offset, Some(e)));
                    }
                    if verify {
                        let mut payload = vec![0u8; h.payload_len as usize];
                        if let Err(e) = seg
                            .file
                            .read_exact_at(&mut payload, offset + u64::from(h.header_len))
                            .map_err(|_| BlockError::Truncated("payload"))
                            .and_then(|()| block::check_payload(&h, &payload))
                        {
                            return Ok((offset, Some(e)));
                        }
                    }
                    self.add_block(seg, offset, h);
                    offset = self.blocks.last().map_or(len, |b| {
                        b.offset + u64::from(b.header_len) + u64::from(b.payload_len)
                    });
                }
                Err(e) => return Ok((offset, Some(e))),
            }
        }
        Ok((offset, None))
    }

    fn add_block(&mut self, seg: &Arc<Segment>, offset: u64, h: Header) {
        for (s, seq) in h.sources.iter().zip(&h.last_seqs) {
            let e = self.last_seqs.entry(s.sid).or_insert((0, 0));
            *e = ((e.0).max(*seq), h.first_pos);
        }
        let sources: Arc<[SourceMark]> = h
            .sources
            .into_iter()
            .zip(h.levels)
            .zip(h.first_seqs.iter().zip(&h.last_seqs))
            .map(|((s, levels), (first, last))| SourceMark {
                dict: self.intern(s),
                levels,
                first_seq: *first,
                last_seq: *last,
            })
            .collect();
        self.next_pos = h.first_pos + u64::from(h.count);
        self.blocks.push(BlockMeta {
            segment: seg.clone(),
            offset,
            header_len: h.header_len,
            payload_len: h.payload_len,
            raw_len: h.raw_len,
            first_pos: h.first_pos,
            count: h.count,
            min_ts: h.min_ts,
            max_ts: h.max_ts,
            payload_crc: h.payload_crc,
            sources,
        });
    }

    fn intern(&mut self, s: SourceRec) -> u32 {
        if let Some(i) = self.by_sid.get(&s.sid) {
            return *i;
        }
        let i = self.dict.len() as u32;
        self.by_sid.insert(s.sid, i);
        self.dict.push(Arc::new(s));
        i
    }

    /// The position the next record gets (one past the newest stored).
    pub fn next_pos(&self) -> u64 {
        self.next_pos
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    pub fn blocks(&self) -> &[BlockMeta] {
        &self.blocks
    }
    pub fn dict(&self) -> &[Arc<SourceRec>] {
        &self.dict
    }
    /// The highest sequence number stored of every source ever stored, and
    /// the position of the newest block with the source.
    pub fn last_seqs(&self) -> &HashMap<SourceId, (u64, u64)> {
        &self.last_seqs
    }
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Appends one encoded block (its first position at or past
    /// [`Store::next_pos`]). On a write error the segment is cut back to its
    /// length before, so what is on disk stays whole.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let hlen = block::header_len(bytes).map_err(|e| self.block_err(0, e))?;
        let h = block::parse_header(bytes.get(..hlen).unwrap_or(bytes))
            .map_err(|e| self.block_err(0, e))?;
        let rotate = match self.segments.last() {
            None => true,
            Some((_, len)) => *len > 0 && len + bytes.len() as u64 > self.limits.segment_bytes,
        };
        if rotate {
            if let Some((seg, _)) = self.segments.last() {
                // The closed segment is durable before the next one starts.
                let _ = seg.file.sync_data();
            }
            let path = self.dir.join(segment_name(h.first_pos));
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })?;
            self.segments.push((
                Arc::new(Segment {
                    first_pos: h.first_pos,
                    path,
                    file,
                }),
                0,
            ));
        }
        let Some((seg, len)) = self.segments.last_mut() else {
            return Ok(());
        };
        let (seg, offset) = (seg.clone(), *len);
        if let Err(source) = (&seg.file).write_all(bytes) {
            let _ = seg.file.set_len(offset);
            return Err(StoreError::Io {
                path: seg.path.clone(),
                source,
            });
        }
        *len += bytes.len() as u64;
        self.bytes += bytes.len() as u64;
        self.add_block(&seg, offset, h);
        Ok(())
    }

    fn block_err(&self, offset: u64, source: BlockError) -> StoreError {
        StoreError::Block {
            path: self.dir.clone(),
            offset,
            source,
        }
    }

    /// Drops the oldest segments (never the one appended to) while the
    /// store is over its bytes or holds segments older than its age bound.
    /// Returns the bytes removed.
    pub fn enforce(&mut self, now_ns: i64) -> u64 {
        let mut removed = 0;
        while self.segments.len() > 1 {
            let Some((oldest, len)) = self.segments.first().cloned() else {
                break;
            };
            let in_it = self
                .blocks
                .iter()
                .take_while(|b| Arc::ptr_eq(&b.segment, &oldest))
                .count();
            let newest_ts = self
                .blocks
                .iter()
                .take(in_it)
                .map(|b| b.max_ts)
                .max()
                .unwrap_or(i64::MIN);
            let too_old = self
                .limits
                .max_age_ns
                .is_some_and(|age| newest_ts < now_ns.saturating_sub(age));
            if self.bytes <= self.limits.max_bytes && !too_old {
                break;
            }
            if let Err(e) = std::fs::remove_file(&oldest.path) {
                tracing::warn!(segment = %oldest.path.display(), error = %e, "history: could not remove an expired segment");
            }
            self.blocks.drain(..in_it);
            self.segments.remove(0);
            self.bytes -= len;
            removed += len;
        }
        removed
    }

    /// Makes what was appended durable (on shutdown).
    pub fn sync(&self) {
        if let Some((seg, _)) = self.segments.last() {
            let _ = seg.file.sync_data();
        }
    }
}

fn read_header(file: &File, offset: u64, len: u64) -> Result<Header, BlockError> {
    let mut prefix = [0u8; 8];
    if offset + 8 > len {
        return Err(BlockError::Truncated("header"));
    }
    file.read_exact_at(&mut prefix, offset)
        .map_err(|_| BlockError::Truncated("header"))?;
    let hlen = block::header_len(&prefix)?;
    if offset + hlen as u64 > len {
        return Err(BlockError::Truncated("header"));
    }
    let mut h = vec![0u8; hlen];
    file.read_exact_at(&mut h, offset)
        .map_err(|_| BlockError::Truncated("header"))?;
    block::parse_header(&h)
}

/// Reads and decodes one block; `dict` is the store's source dictionary at
/// the time its meta was taken.
pub fn read_block(
    meta: &BlockMeta,
    dict: &[Arc<SourceRec>],
    with_lines: bool,
) -> Result<Decoded, StoreError> {
    let err = |source| StoreError::Block {
        path: meta.segment.path.clone(),
        offset: meta.offset,
        source,
    };
    let mut payload = vec![0u8; meta.payload_len as usize];
    meta.segment
        .file
        .read_exact_at(&mut payload, meta.offset + u64::from(meta.header_len))
        .map_err(|source| StoreError::Io {
            path: meta.segment.path.clone(),
            source,
        })?;
    let sources = meta
        .sources
        .iter()
        .map(|m| dict.get(m.dict as usize).cloned())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| err(BlockError::Bounds("source dictionary")))?;
    let header = Header {
        first_pos: meta.first_pos,
        count: meta.count,
        raw_len: meta.raw_len,
        payload_len: meta.payload_len,
        min_ts: meta.min_ts,
        max_ts: meta.max_ts,
        payload_crc: meta.payload_crc,
        sources: Vec::new(),
        levels: Vec::new(),
        last_seqs: Vec::new(),
        first_seqs: Vec::new(),
        header_len: meta.header_len,
    };
    block::decode(&header, sources, &payload, with_lines).map_err(err)
}
