//! What one query reads of the disk history, and the scan over it: blocks
//! skipped by time, by source and (for `|= "text"` filters) by a substring
//! search over each block's lines before any record is looked at; bounded
//! in bytes and time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use memchr::memmem::Finder;

use super::block::{Decoded, SourceRec};
use super::store::{BlockMeta, read_block};
use crate::hub::Entry;

/// Bounds of one query's reading.
#[derive(Clone, Copy, Debug)]
pub struct ScanLimits {
    /// Bytes of lines decompressed.
    pub max_bytes: u64,
    pub max_time: Duration,
}

impl Default for ScanLimits {
    fn default() -> Self {
        ScanLimits {
            max_bytes: 16 << 30,
            max_time: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(
        "the query would read more than {0} bytes of history: narrow its time range or its stream selector"
    )]
    Bytes(u64),
    #[error(
        "the query read history for longer than {0:?}: narrow its time range or its stream selector"
    )]
    Time(Duration),
}

/// The part of the history outside the ring, as of one moment.
pub struct DiskView {
    pub blocks: Vec<BlockMeta>,
    pub dict: Vec<Arc<SourceRec>>,
    /// Written to no block yet (positions below the ring's).
    pub queued: Vec<Arc<Entry>>,
    /// Records at or past this position are elsewhere (queue or ring).
    pub limit: u64,
    pub base: u64,
    /// Time of the oldest record on disk.
    pub oldest_ts: Option<i64>,
    /// Older records were removed (retention, or a queue that could not
    /// be written).
    pub removed_before: bool,
    pub scan: ScanLimits,
}

/// The records of one block a query reads.
pub struct Hits<'a> {
    pub block: &'a Arc<Decoded>,
    pub meta: &'a BlockMeta,
    /// Record indices in the block, in order.
    pub records: &'a [u32],
}

impl Hits<'_> {
    /// The dictionary index of record `i`'s source.
    pub fn dict_index(&self, i: u32) -> u32 {
        self.block
            .src
            .get(i as usize)
            .and_then(|s| self.meta.sources.get(*s as usize))
            .map_or(u32::MAX, |m| m.dict)
    }
}

/// What a scan met besides its records.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Blocks that could not be read (damaged or removed meanwhile).
    pub unreadable: usize,
    pub blocks_read: usize,
    pub bytes_read: u64,
}

impl DiskView {
    /// Reads the blocks holding records with a time in `[from, to)` whose
    /// source `accept` takes (by dictionary index) and whose line contains
    /// every one of `literals`, newest block first or oldest first. `want`
    /// (the block's time range) may skip a block before it is read.
    #[allow(clippy::too_many_arguments)]
    pub fn scan(
        &self,
        from: i64,
        to: i64,
        newest_first: bool,
        accept: &dyn Fn(u32) -> bool,
        literals: &[Finder<'_>],
        want: &mut dyn FnMut(i64, i64) -> bool,
        visit: &mut dyn FnMut(&Hits<'_>),
    ) -> Result<ScanReport, ScanError> {
        let started = Instant::now();
        let mut report = ScanReport::default();
        let mut order: Box<dyn Iterator<Item = &BlockMeta>> = if newest_first {
            Box::new(self.blocks.iter().rev())
        } else {
            Box::new(self.blocks.iter())
        };
        let mut records: Vec<u32> = Vec::new();
        for meta in &mut order {
            if meta.max_ts < from || meta.min_ts >= to {
                continue;
            }
            if !meta.sources.iter().any(|m| accept(m.dict)) {
                continue;
            }
            if !want(meta.min_ts, meta.max_ts) {
                continue;
            }
            report.bytes_read += u64::from(meta.raw_len);
            if report.bytes_read > self.scan.max_bytes {
                return Err(ScanError::Bytes(self.scan.max_bytes));
            }
            if started.elapsed() > self.scan.max_time {
                return Err(ScanError::Time(self.scan.max_time));
            }
            let block = match read_block(meta, &self.dict) {
                Ok(b) => Arc::new(b),
                Err(e) => {
                    tracing::warn!(error = %e, "history: a block could not be read; the query goes on without it");
                    report.unreadable += 1;
                    continue;
                }
            };
            report.blocks_read += 1;
            records.clear();
            let take = |i: usize| -> bool {
                let pos = block.first_pos + i as u64;
                let ts = block.ts.get(i).copied().unwrap_or(i64::MIN);
                let src = block
                    .src
                    .get(i)
                    .and_then(|s| meta.sources.get(*s as usize))
                    .map(|m| m.dict);
                pos < self.limit && ts >= from && ts < to && src.is_some_and(accept)
            };
            match literals.split_first() {
                Some((first, rest)) => {
                    let hay = block.lines.as_bytes();
                    let mut at = 0;
                    while let Some(off) = hay.get(at..).and_then(|h| first.find(h)) {
                        let i = block.record_at(at + off);
                        at = block.ends.get(i).map_or(hay.len(), |e| *e as usize);
                        let line = block.line(i).as_bytes();
                        if rest.iter().all(|f| f.find(line).is_some()) && take(i) {
                            records.push(i as u32);
                        }
                    }
                }
                None => records.extend((0..block.len()).filter(|i| take(*i)).map(|i| i as u32)),
            }
            if !records.is_empty() {
                visit(&Hits {
                    block: &block,
                    meta,
                    records: &records,
                });
            }
        }
        Ok(report)
    }
}
