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
        self.meta
            .dict_of(self.block, i as usize)
            .unwrap_or(u32::MAX)
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
    /// (the block's time range) may skip a block before it is read. Without
    /// `lines` the lines stay compressed (and read as empty).
    #[allow(clippy::too_many_arguments)]
    pub fn scan(
        &self,
        from: i64,
        to: i64,
        newest_first: bool,
        lines: bool,
        accept: &(dyn Fn(u32) -> bool + Sync),
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
        // Blocks are read (inflated and searched) by as many threads as
        // there are cores, started once per scan, a few blocks ahead of
        // the visits, which happen in order on this thread.
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        let ahead = workers * 2;
        let mut next = |report: &mut ScanReport| -> Result<Option<&BlockMeta>, ScanError> {
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
                report.bytes_read += if lines {
                    u64::from(meta.raw_len)
                } else {
                    u64::from(meta.count) * 8
                };
                if report.bytes_read > self.scan.max_bytes {
                    return Err(ScanError::Bytes(self.scan.max_bytes));
                }
                if started.elapsed() > self.scan.max_time {
                    return Err(ScanError::Time(self.scan.max_time));
                }
                return Ok(Some(meta));
            }
            Ok(None)
        };
        let mut deliver = |report: &mut ScanReport, meta: &BlockMeta, r: Result<Picked, String>| {
            match r {
                Ok((block, records)) => {
                    report.blocks_read += 1;
                    if !records.is_empty() {
                        visit(&Hits {
                            block: &block,
                            meta,
                            records: &records,
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "history: a block could not be read; the query goes on without it");
                    report.unreadable += 1;
                }
            }
        };
        let pick = |meta: &BlockMeta| self.pick(meta, from, to, lines, accept, literals);
        if workers == 1 {
            while let Some(meta) = next(&mut report)? {
                deliver(&mut report, meta, pick(meta));
            }
            return Ok(report);
        }
        let (job_tx, job_rx) = std::sync::mpsc::channel::<(usize, &BlockMeta)>();
        let job_rx = std::sync::Mutex::new(job_rx);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, Result<Picked, String>)>();
        std::thread::scope(|s| {
            // Owned here: an early return drops it, so the readers stop and
            // the scope can join them.
            let job_tx = job_tx;
            for _ in 0..workers {
                let (job_rx, done_tx, pick) = (&job_rx, done_tx.clone(), &pick);
                s.spawn(move || {
                    loop {
                        let job = job_rx.lock().map(|rx| rx.recv());
                        let Ok(Ok((n, meta))) = job else { break };
                        if done_tx.send((n, pick(meta))).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(done_tx);
            let mut sent: Vec<&BlockMeta> = Vec::new();
            let mut waiting: std::collections::HashMap<usize, Result<Picked, String>> =
                std::collections::HashMap::new();
            let mut visited = 0;
            let mut exhausted = false;
            loop {
                while !exhausted && sent.len() - visited < ahead {
                    match next(&mut report)? {
                        Some(meta) => {
                            if job_tx.send((sent.len(), meta)).is_err() {
                                exhausted = true;
                            }
                            sent.push(meta);
                        }
                        None => exhausted = true,
                    }
                }
                if visited == sent.len() {
                    break;
                }
                while !waiting.contains_key(&visited) {
                    match done_rx.recv() {
                        Ok((n, r)) => {
                            waiting.insert(n, r);
                        }
                        Err(_) => {
                            waiting.insert(visited, Err("reader stopped".into()));
                        }
                    }
                }
                if let (Some(r), Some(meta)) = (waiting.remove(&visited), sent.get(visited)) {
                    deliver(&mut report, meta, r);
                }
                visited += 1;
            }
            drop(job_tx);
            Ok(report)
        })
    }

    /// Reads one block and picks its records a scan takes.
    fn pick(
        &self,
        meta: &BlockMeta,
        from: i64,
        to: i64,
        lines: bool,
        accept: &(dyn Fn(u32) -> bool + Sync),
        literals: &[Finder<'_>],
    ) -> Result<Picked, String> {
        let block = read_block(meta, &self.dict, lines).map_err(|e| e.to_string())?;
        let take = |i: usize| -> bool {
            let pos = block.first_pos + i as u64;
            let ts = block.ts.get(i).copied().unwrap_or(i64::MIN);
            let src = meta.dict_of(&block, i);
            pos < self.limit && ts >= from && ts < to && src.is_some_and(accept)
        };
        let mut records = Vec::new();
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
        Ok((Arc::new(block), records))
    }
}

/// A block read, and the records of it a scan takes.
type Picked = (Arc<Decoded>, Vec<u32>);
