//! Sessions reaching back past the ring into the disk: `since=`, `tail=`
//! and resume cursors read the history's blocks (and its queue) as entries,
//! a block at a time, before the ring's own records.

use std::collections::HashMap;
use std::sync::Arc;

use super::store::{BlockMeta, read_block};
use super::{DiskView, History};
use crate::hub::{Entry, Hub, Older, Pending, Replay, SourceInfo};
use crate::protocol::SourceId;

/// What a replay takes.
enum Pick {
    Since(i64),
    /// Only these sources, past these sequence numbers.
    Marks(HashMap<SourceId, u64>),
}

impl Pick {
    fn block(&self, view: &DiskView, meta: &BlockMeta) -> bool {
        match self {
            Pick::Since(t) => meta.max_ts >= *t,
            Pick::Marks(m) => meta.sources.iter().any(|s| {
                view.dict
                    .get(s.dict as usize)
                    .and_then(|d| m.get(&d.sid))
                    .is_some_and(|mark| s.last_seq > *mark)
            }),
        }
    }

    fn record(&self, sid: SourceId, seq: u64, ts: i64) -> bool {
        match self {
            Pick::Since(t) => ts >= *t,
            Pick::Marks(m) => m.get(&sid).is_some_and(|mark| seq > *mark),
        }
    }
}

struct DiskReplay {
    view: DiskView,
    pick: Pick,
    next_block: usize,
    queued_done: bool,
    infos: HashMap<u32, Arc<SourceInfo>>,
}

/// The entries of block records, their sources registered in the hub.
fn entries_of(
    hub: &Hub,
    infos: &mut HashMap<u32, Arc<SourceInfo>>,
    view: &DiskView,
    meta: &BlockMeta,
    keep: &mut dyn FnMut(SourceId, u64, i64, u64) -> bool,
) -> Vec<Arc<Entry>> {
    let d = match read_block(meta, &view.dict, true) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "history: a block could not be replayed; skipped");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for i in 0..d.len() {
        let (Some(rec), Some(src)) = (d.record(i), d.source(i)) else {
            continue;
        };
        if rec.pos >= view.limit || !keep(rec.sid, rec.seq, rec.ts_ns, rec.pos) {
            continue;
        }
        let dict = meta.dict_of(&d, i).unwrap_or(u32::MAX);
        let info = infos
            .entry(dict)
            .or_insert_with(|| hub.source_with_id(src.source.clone(), src.sid))
            .clone();
        out.push(Arc::new(Entry::replayed(Pending {
            source: info,
            seq: rec.seq,
            ts_ns: rec.ts_ns,
            level: rec.level,
            line: d.line(i).to_string(),
            partial: rec.partial,
            split: rec.split,
        })));
    }
    out
}

impl Replay for DiskReplay {
    fn next_chunk(&mut self, hub: &Hub) -> Option<Vec<Arc<Entry>>> {
        while let Some(meta) = self.view.blocks.get(self.next_block) {
            self.next_block += 1;
            if !self.pick.block(&self.view, meta) {
                continue;
            }
            let pick = &self.pick;
            let out = entries_of(
                hub,
                &mut self.infos,
                &self.view,
                meta,
                &mut |sid, seq, ts, _| pick.record(sid, seq, ts),
            );
            if !out.is_empty() {
                return Some(out);
            }
        }
        if !self.queued_done {
            self.queued_done = true;
            let out: Vec<Arc<Entry>> = self
                .view
                .queued
                .iter()
                .filter(|e| self.pick.record(e.source.sid, e.seq, e.ts_ns))
                .cloned()
                .collect();
            if !out.is_empty() {
                return Some(out);
            }
        }
        None
    }
}

impl Older for History {
    fn since(&self, ring_first: u64, since_ns: i64) -> Box<dyn Replay> {
        Box::new(DiskReplay {
            view: self.view(self.base + ring_first, since_ns, i64::MAX),
            pick: Pick::Since(since_ns),
            next_block: 0,
            queued_done: false,
            infos: HashMap::new(),
        })
    }

    fn resume(
        &self,
        ring_first: u64,
        marks: &HashMap<SourceId, u64>,
    ) -> (Box<dyn Replay>, HashMap<SourceId, u64>) {
        let view = self.view(self.base + ring_first, i64::MIN, i64::MAX);
        let mut first: HashMap<SourceId, u64> = HashMap::new();
        let mut low = |sid: SourceId, seq: u64| {
            if marks.contains_key(&sid) {
                let e = first.entry(sid).or_insert(u64::MAX);
                *e = (*e).min(seq);
            }
        };
        for b in &view.blocks {
            for s in b.sources.iter() {
                if let Some(d) = view.dict.get(s.dict as usize) {
                    low(d.sid, s.first_seq);
                }
            }
        }
        for e in &view.queued {
            low(e.source.sid, e.seq);
        }
        let replay = DiskReplay {
            view,
            pick: Pick::Marks(marks.clone()),
            next_block: 0,
            queued_done: false,
            infos: HashMap::new(),
        };
        (Box::new(replay), first)
    }

    fn tail(
        &self,
        hub: &Hub,
        ring_first: u64,
        n: usize,
        wanted: &mut dyn FnMut(&Entry) -> bool,
    ) -> Vec<Arc<Entry>> {
        let view = self.view(self.base + ring_first, i64::MIN, i64::MAX);
        let mut out: Vec<Arc<Entry>> = Vec::new();
        for e in view.queued.iter().rev() {
            if out.len() >= n {
                break;
            }
            if wanted(e) {
                out.push(e.clone());
            }
        }
        let mut infos = HashMap::new();
        let mut read = 0u64;
        for meta in view.blocks.iter().rev() {
            if out.len() >= n {
                break;
            }
            read += u64::from(meta.raw_len);
            if read > view.scan.max_bytes {
                tracing::warn!(
                    n,
                    got = out.len(),
                    "history: tail stopped at the scan bound"
                );
                break;
            }
            let block = entries_of(hub, &mut infos, &view, meta, &mut |_, _, _, _| true);
            for e in block.into_iter().rev() {
                if out.len() >= n {
                    break;
                }
                if wanted(&e) {
                    out.push(e);
                }
            }
        }
        out.reverse();
        out
    }
}
