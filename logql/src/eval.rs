//! Evaluation of parsed LogQL over log entries: pure functions over a slice
//! of anything that is a [`LogEntry`], no locks and no I/O, so they are
//! unit-tested directly.
//!
//! ```text
//!  entries ──stream labels──► selector ──► pipeline (filters, parsers, formats) ──► rows
//!  rows ──sort, limit──► streams                         (log queries)
//!  rows ──per series, window (t-range, t] per step──► count/rate ──► sum by ──► matrix
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::{LabelFilter, LabelFmt, LabelRef, LogQuery, Stage, Template, TplPart, format_ts};

/// A label set; sorted, so it prints and compares canonically.
pub type Labels = BTreeMap<String, String>;

pub const ERROR_LABEL: &str = "__error__";

/// What the evaluator needs of a log entry.
pub trait LogEntry {
    /// Equal for entries of one stream (equal [`LogEntry::stream_labels`]):
    /// the selector is decided once per key.
    fn stream_key(&self) -> u64;
    /// The labels of the entry's stream.
    fn stream_labels(&self) -> Labels;
    /// When it was read, in nanoseconds since the epoch.
    fn ts_ns(&self) -> i64;
    /// Its position in the log: entries with equal timestamps keep this order.
    fn idx(&self) -> u64;
    fn line(&self) -> &str;
}

impl<T: LogEntry + ?Sized> LogEntry for Arc<T> {
    fn stream_key(&self) -> u64 {
        (**self).stream_key()
    }
    fn stream_labels(&self) -> Labels {
        (**self).stream_labels()
    }
    fn ts_ns(&self) -> i64 {
        (**self).ts_ns()
    }
    fn idx(&self) -> u64 {
        (**self).idx()
    }
    fn line(&self) -> &str {
        (**self).line()
    }
}

/// Entries a query reads, in chunks: a slice is one chunk; a history on
/// disk gives one per block, read only when wanted, so a query holds the
/// rows it keeps, never the whole window.
pub trait EntryChunks {
    type Entry: LogEntry;
    /// Calls `visit` with chunks that hold every entry with a time in
    /// `[from, to)` (and maybe others), in about the order of `dir`. Before
    /// a chunk is read, `want(min_ts, max_ts)` may skip it.
    fn each_chunk(
        &self,
        from: i64,
        to: i64,
        dir: Direction,
        want: &mut dyn FnMut(i64, i64) -> bool,
        visit: &mut dyn FnMut(&[Self::Entry]),
    ) -> Result<(), crate::LokiError>;
}

impl<E: LogEntry> EntryChunks for [E] {
    type Entry = E;
    fn each_chunk(
        &self,
        _from: i64,
        _to: i64,
        _dir: Direction,
        _want: &mut dyn FnMut(i64, i64) -> bool,
        visit: &mut dyn FnMut(&[E]),
    ) -> Result<(), crate::LokiError> {
        visit(self);
        Ok(())
    }
}

impl<E: LogEntry> EntryChunks for Vec<E> {
    type Entry = E;
    fn each_chunk(
        &self,
        from: i64,
        to: i64,
        dir: Direction,
        want: &mut dyn FnMut(i64, i64) -> bool,
        visit: &mut dyn FnMut(&[E]),
    ) -> Result<(), crate::LokiError> {
        EntryChunks::each_chunk(self.as_slice(), from, to, dir, want, visit)
    }
}

/// The literals every line a log query returns contains: its `|= "text"`
/// filters (one text each) before any stage that rewrites the line. A
/// store can skip lines without them before running the pipeline.
pub fn required_literals(q: &LogQuery) -> Vec<String> {
    let mut out = Vec::new();
    for st in &q.pipeline {
        match st {
            Stage::Line(f) => {
                if let (crate::LineOp::Contains, [p]) = (f.op, f.patterns.as_slice())
                    && !p.is_empty()
                {
                    out.push(p.clone());
                }
            }
            Stage::LineFormat(_) | Stage::Decolorize | Stage::Unpack => break,
            _ => {}
        }
    }
    out
}

/// Stream labels per stream key, computed once per query, with the verdict
/// of the query's selector.
#[derive(Default)]
pub struct StreamCache {
    map: HashMap<u64, Option<Arc<Labels>>>,
}

impl StreamCache {
    /// The entry's stream labels if `q`'s selector accepts them.
    pub fn selected(&mut self, q: &LogQuery, e: &impl LogEntry) -> Option<Arc<Labels>> {
        self.map
            .entry(e.stream_key())
            .or_insert_with(|| {
                let l = e.stream_labels();
                selects(q, &l).then(|| Arc::new(l))
            })
            .clone()
    }
}

/// Whether the selector of `q` accepts a stream.
pub fn selects(q: &LogQuery, labels: &Labels) -> bool {
    q.matchers
        .iter()
        .all(|m| m.matches(labels.get(&m.name).map_or("", String::as_str)))
}

/// One line that went through a pipeline.
pub struct Row<'a> {
    pub ts_ns: i64,
    pub idx: u64,
    pub labels: Arc<Labels>,
    pub line: Cow<'a, str>,
}

/// Runs `q` over entries whose time is in `[from, to)`.
pub fn select<'a, E: LogEntry>(
    q: &'a LogQuery,
    entries: &'a [E],
    from: i64,
    to: i64,
) -> impl Iterator<Item = Row<'a>> + 'a {
    let mut cache = StreamCache::default();
    entries.iter().filter_map(move |e| {
        let ts_ns = e.ts_ns();
        if ts_ns < from || ts_ns >= to {
            return None;
        }
        let base = cache.selected(q, e)?;
        let (line, changed) = run_pipeline(&q.pipeline, &base, e.line(), ts_ns)?;
        Some(Row {
            ts_ns,
            idx: e.idx(),
            labels: changed.map_or(base, Arc::new),
            line,
        })
    })
}

/// Applies the pipeline to one line. Returns the (possibly rewritten) line
/// and, when a stage changed them, the new labels; `None` when filtered out.
pub fn run_pipeline<'a>(
    stages: &[Stage],
    base: &Labels,
    line: &'a str,
    ts_ns: i64,
) -> Option<(Cow<'a, str>, Option<Labels>)> {
    let mut line: Cow<'a, str> = Cow::Borrowed(line);
    let mut labels: Option<Labels> = None;
    for stage in stages {
        let cur = labels.as_ref().unwrap_or(base);
        let has_err = cur.contains_key(ERROR_LABEL);
        match stage {
            Stage::Line(f) => {
                if !f.matches(&line) {
                    return None;
                }
            }
            // Unlike the other stages, parsers also run on a line an earlier
            // parser failed on (`| json | logfmt` parses a logfmt line), as
            // in Loki; the first error stays.
            Stage::Json | Stage::Logfmt => {
                let json = matches!(stage, Stage::Json);
                parse_fields(
                    json,
                    &line,
                    base,
                    labels.get_or_insert_with(|| base.clone()),
                );
            }
            Stage::Regexp(re) => {
                if has_err {
                    continue;
                }
                if let Some(caps) = re.captures(&line) {
                    let l = labels.get_or_insert_with(|| base.clone());
                    for n in re.capture_names().flatten() {
                        if let Some(m) = caps.name(n) {
                            add_extracted(l, base, n.to_string(), m.as_str().into());
                        }
                    }
                }
            }
            Stage::LabelFilter(f) => {
                if has_err && !only_error_labels(f) {
                    continue; // like Loki: lines with an error skip label filters
                }
                match label_filter(f, cur) {
                    Some(true) => {}
                    Some(false) => return None,
                    None => {
                        labels
                            .get_or_insert_with(|| base.clone())
                            .insert(ERROR_LABEL.into(), "LabelFilterErr".into());
                    }
                }
            }
            Stage::Drop(refs) => drop_labels(labels.get_or_insert_with(|| base.clone()), refs),
            Stage::Keep(refs) => {
                let l = labels.get_or_insert_with(|| base.clone());
                l.retain(|k, v| refs.iter().any(|r| r.selects(k, v)));
            }
            Stage::LineFormat(t) => {
                let new = render(t, cur, &line, ts_ns);
                line = Cow::Owned(new);
            }
            Stage::LabelFormat(fmts) => {
                let before = cur.clone();
                let l = labels.get_or_insert_with(|| base.clone());
                label_format(fmts, &before, l, &line, ts_ns);
            }
            // Moved into the range by the parser; nothing to do on a line.
            Stage::Unwrap(_) => {}
            // A parser: it runs after an earlier parser's error too.
            Stage::Unpack => {
                let l = labels.get_or_insert_with(|| base.clone());
                match unpack(&line, base, l) {
                    Some(Some(entry)) => line = Cow::Owned(entry),
                    Some(None) => {}
                    None => {
                        l.entry(ERROR_LABEL.into())
                            .or_insert_with(|| "JSONParserErr".into());
                    }
                }
            }
            Stage::Decolorize => {
                if line.contains('\u{1b}') {
                    line = Cow::Owned(decolorize(&line));
                }
            }
        }
    }
    if let Some(l) = &mut labels {
        // An empty value is an absent label, as in Loki and Prometheus.
        l.retain(|_, v| !v.is_empty());
    }
    Some((line, labels))
}

/// `| json` or `| logfmt`: the line's fields as labels, or `__error__`
/// when the line is not of that format.
fn parse_fields(json: bool, line: &str, base: &Labels, l: &mut Labels) {
    let parsed = if json {
        json_fields(line).ok_or("JSONParserErr")
    } else {
        logfmt_fields(line).ok_or("LogfmtParserErr")
    };
    match parsed {
        Ok(fields) => {
            for (k, v) in fields {
                add_extracted(l, base, k, v);
            }
        }
        Err(kind) => {
            l.entry(ERROR_LABEL.into()).or_insert_with(|| kind.into());
        }
    }
}

/// `| unpack`: the string fields of a JSON object line as labels; returns
/// the `_entry` field (the packed line) if any; `None`: not a JSON object.
fn unpack(line: &str, base: &Labels, l: &mut Labels) -> Option<Option<String>> {
    let serde_json::Value::Object(obj) = serde_json::from_str(line).ok()? else {
        return None;
    };
    let mut entry = None;
    for (k, v) in obj {
        let serde_json::Value::String(v) = v else {
            continue;
        };
        if k == "_entry" {
            entry = Some(v);
        } else {
            add_extracted(l, base, k, v);
        }
    }
    Some(entry)
}

/// `| drop`: a name always, a `name="value"` only when it matches.
fn drop_labels(l: &mut Labels, refs: &[LabelRef]) {
    for r in refs {
        let name = r.name();
        if l.get(name).is_some_and(|v| r.selects(name, v)) {
            l.remove(name);
        }
    }
}

/// `| label_format`: every template sees the labels as they were before the
/// stage; a rename moves the value.
fn label_format(
    fmts: &[(String, LabelFmt)],
    before: &Labels,
    l: &mut Labels,
    line: &str,
    ts_ns: i64,
) {
    for (dst, f) in fmts {
        let v = match f {
            LabelFmt::Rename(src) => {
                let v = before.get(src).cloned().unwrap_or_default();
                l.remove(src);
                v
            }
            LabelFmt::Template(t) => render(t, before, line, ts_ns),
        };
        l.insert(dst.clone(), v);
    }
}

/// Adds a parsed field; a name the stream already has gets `_extracted`.
fn add_extracted(l: &mut Labels, base: &Labels, key: String, value: String) {
    let key = sanitize_key(&key);
    if key.is_empty() {
        return;
    }
    if base.contains_key(&key) {
        l.insert(format!("{key}_extracted"), value);
    } else {
        l.insert(key, value);
    }
}

/// Label names are `[a-zA-Z_][a-zA-Z0-9_]*`: other characters become `_`.
fn sanitize_key(k: &str) -> String {
    let mut s: String = k
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// Fields of a JSON object line, nested objects flattened with `_`; arrays
/// and nulls are skipped. `None` when the line is not a JSON object.
pub fn json_fields(line: &str) -> Option<Vec<(String, String)>> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let obj = v.as_object()?;
    let mut out = Vec::new();
    flatten("", obj, &mut out);
    Some(out)
}

fn flatten(
    prefix: &str,
    obj: &serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<(String, String)>,
) {
    for (k, v) in obj {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}_{k}")
        };
        match v {
            serde_json::Value::Object(o) => flatten(&key, o, out),
            serde_json::Value::String(s) => out.push((key, s.clone())),
            serde_json::Value::Number(n) => out.push((key, n.to_string())),
            serde_json::Value::Bool(b) => out.push((key, b.to_string())),
            serde_json::Value::Array(_) | serde_json::Value::Null => {}
        }
    }
}

/// `key=value` / `key="quoted \" value"` pairs. `None` on an unterminated
/// quote or a value without a key.
pub fn logfmt_fields(line: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut it = line.chars().peekable();
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.peek().is_none() {
            return Some(out);
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            if c == '"' {
                return None;
            }
            key.push(c);
            it.next();
        }
        if it.peek() != Some(&'=') {
            out.push((key, String::new()));
            continue;
        }
        it.next();
        if key.is_empty() {
            return None;
        }
        let mut value = String::new();
        if it.peek() == Some(&'"') {
            it.next();
            loop {
                match it.next()? {
                    '"' => break,
                    '\\' => match it.next()? {
                        'n' => value.push('\n'),
                        't' => value.push('\t'),
                        'r' => value.push('\r'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(c);
                it.next();
            }
        }
        out.push((key, value));
    }
}

fn only_error_labels(f: &LabelFilter) -> bool {
    match f {
        LabelFilter::And(a, b) | LabelFilter::Or(a, b) => {
            only_error_labels(a) && only_error_labels(b)
        }
        LabelFilter::Str(m) => m.name.starts_with(ERROR_LABEL),
        LabelFilter::Num { name, .. } | LabelFilter::Dur { name, .. } => {
            name.starts_with(ERROR_LABEL)
        }
    }
}

/// `Some(verdict)`, or `None` when a value could not be converted.
fn label_filter(f: &LabelFilter, l: &Labels) -> Option<bool> {
    let get = |n: &str| l.get(n).map_or("", String::as_str);
    match f {
        LabelFilter::Str(m) => Some(m.matches(get(&m.name))),
        // As Loki: a line without the label does not pass a numeric or
        // duration comparison; one whose value does not convert gets
        // `__error__` and is kept.
        LabelFilter::Num { name, op, value } => match l.get(name) {
            None => Some(false),
            Some(v) => Some(op.apply(v.trim().parse().ok()?, *value)),
        },
        LabelFilter::Dur { name, op, secs } => match l.get(name) {
            None => Some(false),
            Some(v) => {
                let ns = crate::parse_duration(v.trim())?;
                Some(op.apply(ns as f64 / 1e9, *secs))
            }
        },
        LabelFilter::And(a, b) => {
            let a = label_filter(a, l);
            if a == Some(false) {
                return Some(false);
            }
            match (a, label_filter(b, l)) {
                (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            }
        }
        LabelFilter::Or(a, b) => {
            let a = label_filter(a, l);
            if a == Some(true) {
                return Some(true);
            }
            match (a, label_filter(b, l)) {
                (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            }
        }
    }
}

fn render(t: &Template, l: &Labels, line: &str, ts_ns: i64) -> String {
    let mut s = String::new();
    for p in &t.0 {
        match p {
            TplPart::Lit(x) => s.push_str(x),
            TplPart::Label(n) => s.push_str(l.get(n).map_or("", String::as_str)),
            TplPart::Line => s.push_str(line),
            TplPart::Timestamp => s.push_str(&format_ts(ts_ns)),
        }
    }
    s
}

/// Removes ANSI escape sequences (`ESC [ ... final-byte`).
fn decolorize(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut it = line.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' && it.peek() == Some(&'[') {
            it.next();
            for c in it.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Log queries

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// One Loki stream of a result; values are (ns, line) in the query's direction.
#[derive(Debug)]
pub struct Stream {
    pub labels: Arc<Labels>,
    pub values: Vec<(i64, String)>,
}

#[derive(Debug)]
pub struct LogResult {
    pub streams: Vec<Stream>,
    /// Lines that matched in what was read (a chunk that could not hold
    /// a returned line is not read, so this is a lower bound when the
    /// limit cut).
    pub matched: usize,
    pub returned: usize,
}

/// A row kept by a log query.
struct Kept {
    ts_ns: i64,
    idx: u64,
    labels: Arc<Labels>,
    line: String,
}

/// Runs a log query over `[start, end)`: the `limit` newest (backward) or
/// oldest (forward) matching lines across all streams. Rows are kept in a
/// bounded set (at most twice `limit`), and once it holds `limit` rows a
/// chunk that cannot hold a better one is not read.
pub fn log_query<C: EntryChunks + ?Sized>(
    q: &LogQuery,
    entries: &C,
    start: i64,
    end: i64,
    limit: usize,
    dir: Direction,
) -> Result<LogResult, crate::LokiError> {
    let order = |r: &Kept| match dir {
        Direction::Forward => (r.ts_ns, r.idx),
        Direction::Backward => (i64::MAX - r.ts_ns, u64::MAX - r.idx),
    };
    let mut rows: Vec<Kept> = Vec::new();
    let mut matched = 0usize;
    // The time of the worst row kept, once `limit` rows are.
    let worst: std::cell::Cell<Option<i64>> = std::cell::Cell::new(None);
    let compact = |rows: &mut Vec<Kept>| {
        rows.sort_by_key(order);
        rows.truncate(limit);
        if rows.len() >= limit {
            worst.set(rows.last().map(|r| r.ts_ns));
        }
    };
    entries.each_chunk(
        start,
        end,
        dir,
        &mut |min, max| match (worst.get(), dir) {
            (None, _) => true,
            (Some(w), Direction::Backward) => max >= w,
            (Some(w), Direction::Forward) => min <= w,
        },
        &mut |chunk| {
            for r in select(q, chunk, start, end) {
                matched += 1;
                if let (Some(w), true) = (worst.get(), rows.len() >= limit) {
                    let worse = match dir {
                        Direction::Backward => r.ts_ns < w,
                        Direction::Forward => r.ts_ns > w,
                    };
                    if worse {
                        continue;
                    }
                }
                rows.push(Kept {
                    ts_ns: r.ts_ns,
                    idx: r.idx,
                    labels: r.labels,
                    line: r.line.into_owned(),
                });
                if rows.len() >= limit.max(512).saturating_mul(2) {
                    compact(&mut rows);
                }
            }
            // After each chunk: once `limit` rows are kept, the worst of
            // them bounds which chunks are worth reading.
            if rows.len() > limit || (rows.len() == limit && worst.get().is_none()) {
                compact(&mut rows);
            }
        },
    )?;
    compact(&mut rows);
    let returned = rows.len();
    let mut index: HashMap<Arc<Labels>, usize> = HashMap::new();
    let mut streams: Vec<Stream> = Vec::new();
    for r in rows {
        let i = *index.entry(r.labels.clone()).or_insert_with(|| {
            streams.push(Stream {
                labels: r.labels.clone(),
                values: Vec::new(),
            });
            streams.len() - 1
        });
        if let Some(s) = streams.get_mut(i) {
            s.values.push((r.ts_ns, r.line));
        }
    }
    streams.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(LogResult {
        streams,
        matched,
        returned,
    })
}

mod metric;
pub use metric::{Grid, Series, Steps, format_value, metric_query, needed_window};

#[cfg(test)]
mod tests;
