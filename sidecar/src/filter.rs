//! Compiles a [`Subscribe`] into a record filter and a start position, and
//! owns the compiled patterns every filter shares.
//!
//! A compiled pattern can be large (a Unicode `\w{20}` is about 1 MB), and
//! many clients open the same stream (`file=app.log` from every viewer), so
//! a pattern is compiled once and shared by every filter that asks for it;
//! the patterns in use together are bounded by [`PATTERN_MEMORY`], and a new
//! one past it is refused with an error instead of buying more memory.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use globset::{Glob, GlobMatcher};
use regex_automata::meta::Regex;

use crate::hub::{Entry, now_ns, parse_ts};
use crate::protocol::{Format, Level, Source, Subscribe};

/// Longest accepted regular expression, to bound compile cost of hostile input.
const MAX_PATTERN: usize = 1024;
/// Largest compiled regular expression.
const REGEX_LIMIT: usize = 1 << 20;
/// Largest lazy-DFA cache of one, per thread using it (past it the cache is
/// cleared, or a slower engine answers: never more memory).
const CACHE_LIMIT: usize = 256 << 10;
/// Compiled patterns in use at once, all filters together.
pub const PATTERN_MEMORY: usize = 64 << 20;
/// What a glob is counted as (globset does not say; measured ones are
/// a few KB).
const GLOB_COST: usize = 16 << 10;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FilterError {
    #[error("grep: invalid regular expression: {0}")]
    Grep(String),
    #[error("{field}: invalid regular expression: {reason}")]
    Label { field: &'static str, reason: String },
    #[error("file: invalid glob: {0}")]
    File(String),
    #[error(
        "level: unknown level {0:?} (use trace, debug, info, warn, error, fatal; `warn+` for warn and above)"
    )]
    Level(String),
    #[error("since: {0:?} is neither RFC 3339 nor a duration such as 5m")]
    Since(String),
    #[error("{0}: pattern longer than {MAX_PATTERN} bytes")]
    TooLong(&'static str),
    #[error(
        "{field}: the patterns other clients use hold the server's pattern memory ({mib} MiB); use one of theirs or a simpler pattern, or try again later",
        field = .0,
        mib = PATTERN_MEMORY >> 20
    )]
    Busy(&'static str),
}

/// Compiled filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Matchers are boxed: most clients set few of them, and every
    /// connection holds its filter while idle.
    file: Option<Arc<GlobMatcher>>,
    levels: Option<[bool; 6]>,
    grep: Option<Arc<Regex>>,
    pod: Option<Arc<Regex>>,
    container: Option<Arc<Regex>>,
    pub since_ns: Option<i64>,
    pub format: Format,
}

impl Filter {
    pub fn compile(s: &Subscribe) -> Result<Filter, FilterError> {
        let file = match &s.file {
            Some(f) if !f.is_empty() => {
                check_len("file", f)?;
                Some(shared_glob(f)?)
            }
            _ => None,
        };
        let levels = match &s.level {
            Some(l) if !l.is_empty() => Some(parse_levels(l)?),
            _ => None,
        };
        let grep = match &s.grep {
            Some(g) if !g.is_empty() => {
                check_len("grep", g)?;
                Some(shared_regex("grep", g.clone())?)
            }
            _ => None,
        };
        let label =
            |field: &'static str, v: &Option<String>| -> Result<Option<Arc<Regex>>, FilterError> {
                match v {
                    Some(p) if !p.is_empty() => {
                        check_len(field, p)?;
                        shared_regex(field, format!("^(?:{p})$")).map(Some)
                    }
                    _ => Ok(None),
                }
            };
        let since_ns = match &s.since {
            Some(v) if !v.is_empty() => Some(parse_since(v)?),
            _ => None,
        };
        Ok(Filter {
            file,
            levels,
            grep,
            pod: label("pod", &s.pod)?,
            container: label("container", &s.container)?,
            since_ns,
            format: s.format.unwrap_or_default(),
        })
    }

    pub fn matches(&self, e: &Entry) -> bool {
        self.matches_source(&e.source.source) && self.matches_record(e)
    }

    /// The source part alone (file, pod, container).
    pub fn source_part(&self) -> Filter {
        Filter {
            file: self.file.clone(),
            pod: self.pod.clone(),
            container: self.container.clone(),
            ..Filter::default()
        }
    }

    /// Names the source part (file, pod, container), `None` when the
    /// filter takes every source: sessions with the same key are woken by
    /// the same publishes (the hub's wake classes). Compiled patterns are
    /// shared by text (one `Arc` per text while in use), so the patterns'
    /// addresses name them; the class holds its patterns, so an address is
    /// not reused while its key is known.
    pub fn source_key(&self) -> Option<String> {
        if self.file.is_none() && self.pod.is_none() && self.container.is_none() {
            return None;
        }
        let addr = |p: Option<usize>| p.unwrap_or(0);
        Some(format!(
            "{:x}/{:x}/{:x}",
            addr(self.file.as_ref().map(|g| Arc::as_ptr(g) as usize)),
            addr(self.pod.as_ref().map(|r| Arc::as_ptr(r) as usize)),
            addr(self.container.as_ref().map(|r| Arc::as_ptr(r) as usize)),
        ))
    }

    /// The part of the filter that depends only on the source (file, pod,
    /// container): sessions ask it once per source, not once per record.
    pub fn matches_source(&self, src: &Source) -> bool {
        if let Some(f) = &self.file
            && !f.is_match(&src.file)
        {
            return false;
        }
        if let Some(p) = &self.pod
            && !p.is_match(&src.pod)
        {
            return false;
        }
        if let Some(c) = &self.container
            && !c.is_match(&src.container)
        {
            return false;
        }
        true
    }

    /// The per-record part: time, level and line.
    pub fn matches_record(&self, e: &Entry) -> bool {
        if let Some(since) = self.since_ns
            && e.ts_ns < since
        {
            return false;
        }
        if let Some(levels) = &self.levels {
            match e.level {
                Some(l) if levels[l as usize] => {}
                _ => return false,
            }
        }
        if let Some(g) = &self.grep
            && !g.is_match(e.line.as_bytes())
        {
            return false;
        }
        true
    }
}

fn check_len(field: &'static str, v: &str) -> Result<(), FilterError> {
    if v.len() > MAX_PATTERN {
        return Err(FilterError::TooLong(field));
    }
    Ok(())
}

/// A compiled pattern shared by the filters that use it.
#[derive(Clone)]
enum Compiled {
    Regex(Arc<Regex>),
    Glob(Arc<GlobMatcher>),
}

impl Compiled {
    /// Held by a filter (not only by the table).
    fn in_use(&self) -> bool {
        match self {
            Compiled::Regex(r) => Arc::strong_count(r) > 1,
            Compiled::Glob(g) => Arc::strong_count(g) > 1,
        }
    }
}

/// The compiled patterns, by kind and text, with what each is counted as.
struct Patterns {
    table: HashMap<(bool, String), (Compiled, usize)>,
    bytes: usize,
    budget: usize,
}

static PATTERNS: LazyLock<Mutex<Patterns>> = LazyLock::new(|| {
    Mutex::new(Patterns {
        table: HashMap::new(),
        bytes: 0,
        budget: PATTERN_MEMORY,
    })
});

/// Bytes the compiled patterns in use are counted as (all filters).
pub fn pattern_memory() -> usize {
    PATTERNS.lock().unwrap_or_else(|p| p.into_inner()).bytes
}

impl Patterns {
    /// The pattern `key`, compiled by `build` unless some filter holds it
    /// already; refused when it would not fit in [`PATTERN_MEMORY`].
    fn get(
        &mut self,
        key: (bool, String),
        field: &'static str,
        build: impl FnOnce() -> Result<(Compiled, usize), FilterError>,
    ) -> Result<Compiled, FilterError> {
        if let Some((c, _)) = self.table.get(&key) {
            return Ok(c.clone());
        }
        let (compiled, cost) = build()?;
        if self.bytes + cost > self.budget || self.table.len() >= 4096 {
            // Patterns no filter holds any more go first.
            self.table.retain(|_, (c, _)| c.in_use());
            self.bytes = self.table.values().map(|(_, n)| n).sum();
            if self.bytes + cost > self.budget {
                return Err(FilterError::Busy(field));
            }
        }
        self.bytes += cost;
        self.table.insert(key, (compiled.clone(), cost));
        Ok(compiled)
    }
}

fn shared_regex(field: &'static str, pattern: String) -> Result<Arc<Regex>, FilterError> {
    let mut patterns = PATTERNS.lock().unwrap_or_else(|p| p.into_inner());
    let c = patterns.get((true, pattern.clone()), field, || {
        let re = compile_regex(&pattern).map_err(|reason| match field {
            "grep" => FilterError::Grep(reason),
            field => FilterError::Label { field, reason },
        })?;
        // The program, plus a lazy DFA cache for each thread using it at
        // once (the runtime's workers), at most CACHE_LIMIT each.
        let cost = re.memory_usage() + 2 * CACHE_LIMIT;
        Ok((Compiled::Regex(Arc::new(re)), cost))
    })?;
    match c {
        Compiled::Regex(r) => Ok(r),
        Compiled::Glob(_) => Err(FilterError::Busy(field)),
    }
}

fn shared_glob(pattern: &str) -> Result<Arc<GlobMatcher>, FilterError> {
    let mut patterns = PATTERNS.lock().unwrap_or_else(|p| p.into_inner());
    let c = patterns.get((false, pattern.to_string()), "file", || {
        let g = Glob::new(pattern)
            .map_err(|e| FilterError::File(e.kind().to_string()))?
            .compile_matcher();
        Ok((Compiled::Glob(Arc::new(g)), GLOB_COST + pattern.len()))
    })?;
    match c {
        Compiled::Glob(g) => Ok(g),
        Compiled::Regex(_) => Err(FilterError::Busy("file")),
    }
}

fn compile_regex(p: &str) -> Result<Regex, String> {
    Regex::builder()
        .configure(
            Regex::config()
                .nfa_size_limit(Some(REGEX_LIMIT))
                .onepass_size_limit(Some(REGEX_LIMIT))
                .dfa_size_limit(Some(CACHE_LIMIT))
                .hybrid_cache_capacity(CACHE_LIMIT),
        )
        .build(p)
        .map_err(|e| match (e.syntax_error(), e.size_limit()) {
            (Some(syntax), _) => format!("regex parse error: {syntax}"),
            (None, Some(limit)) => format!(
                "compiled pattern exceeds the size limit of {} KiB",
                limit >> 10
            ),
            _ => e.to_string(),
        })
}

fn parse_levels(spec: &str) -> Result<[bool; 6], FilterError> {
    let mut set = [false; 6];
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some(min) = part.strip_suffix('+') {
            let min = Level::parse_loose(min).ok_or_else(|| FilterError::Level(part.into()))?;
            for l in Level::ALL.iter().filter(|l| **l >= min) {
                set[*l as usize] = true;
            }
        } else {
            let l = Level::parse_loose(part).ok_or_else(|| FilterError::Level(part.into()))?;
            set[l as usize] = true;
        }
    }
    Ok(set)
}

/// RFC 3339 time, or a duration back from now (`90s`, `5m`, `1h30m`).
pub fn parse_since(v: &str) -> Result<i64, FilterError> {
    if let Some(ns) = parse_ts(v) {
        return Ok(ns);
    }
    let d: Duration = humantime::parse_duration(v).map_err(|_| FilterError::Since(v.into()))?;
    Ok(now_ns().saturating_sub(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(f: impl FnOnce(&mut Subscribe)) -> Subscribe {
        let mut s = Subscribe::default();
        f(&mut s);
        s
    }

    #[test]
    fn errors_name_the_field() {
        let e = Filter::compile(&sub(|s| s.grep = Some("(".into()))).unwrap_err();
        assert!(e.to_string().starts_with("grep:"), "{e}");
        let e = Filter::compile(&sub(|s| s.pod = Some("[".into()))).unwrap_err();
        assert!(e.to_string().starts_with("pod:"), "{e}");
        let e = Filter::compile(&sub(|s| s.level = Some("loud".into()))).unwrap_err();
        assert!(e.to_string().starts_with("level:"), "{e}");
        let e = Filter::compile(&sub(|s| s.since = Some("yesterday-ish".into()))).unwrap_err();
        assert!(e.to_string().starts_with("since:"), "{e}");
        let e = Filter::compile(&sub(|s| s.file = Some("a[".into()))).unwrap_err();
        assert!(e.to_string().starts_with("file:"), "{e}");
        let e = Filter::compile(&sub(|s| s.grep = Some("a".repeat(5000)))).unwrap_err();
        assert_eq!(e, FilterError::TooLong("grep"));
    }

    #[test]
    fn filters_with_the_same_pattern_share_one_compiled_copy() {
        let a = Filter::compile(&sub(|s| {
            s.grep = Some(r"\w{20}".into());
            s.file = Some("app.log".into());
        }))
        .unwrap();
        let b = Filter::compile(&sub(|s| {
            s.grep = Some(r"\w{20}".into());
            s.file = Some("app.log".into());
        }))
        .unwrap();
        assert!(Arc::ptr_eq(
            a.grep.as_ref().unwrap(),
            b.grep.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(
            a.file.as_ref().unwrap(),
            b.file.as_ref().unwrap()
        ));
        // A pod pattern of the same text is anchored: another pattern.
        let c = Filter::compile(&sub(|s| s.pod = Some(r"\w{20}".into()))).unwrap();
        assert!(!Arc::ptr_eq(
            a.grep.as_ref().unwrap(),
            c.pod.as_ref().unwrap()
        ));
    }

    #[test]
    fn patterns_past_the_budget_are_refused_until_others_are_dropped() {
        let mut p = Patterns {
            table: HashMap::new(),
            bytes: 0,
            budget: 3 << 20,
        };
        let get = |p: &mut Patterns, pat: &str| {
            let pat = pat.to_string();
            p.get((true, pat.clone()), "grep", || {
                let re = compile_regex(&pat).map_err(FilterError::Grep)?;
                let cost = re.memory_usage() + 2 * CACHE_LIMIT;
                Ok((Compiled::Regex(Arc::new(re)), cost))
            })
        };
        let big = get(&mut p, r"\w{20}").unwrap();
        let again = get(&mut p, r"\w{20}").unwrap();
        assert_eq!(p.table.len(), 1, "the same pattern is not counted twice");
        let e = get(&mut p, r"\w{19}").err().unwrap();
        assert_eq!(e, FilterError::Busy("grep"));
        assert!(e.to_string().contains("pattern memory"), "{e}");
        drop((big, again));
        assert!(
            get(&mut p, r"\w{19}").is_ok(),
            "room once nobody holds the first"
        );
    }

    #[test]
    fn level_ranges() {
        let set = parse_levels("warn+").unwrap();
        assert_eq!(set, [false, false, false, true, true, true]);
        let set = parse_levels("debug, error").unwrap();
        assert_eq!(set, [false, true, false, false, true, false]);
    }

    #[test]
    fn since_accepts_both_forms() {
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z").unwrap(),
            1_700_000_000_000_000_000
        );
        let back = parse_since("5m").unwrap();
        let expect = now_ns() - 300_000_000_000;
        assert!((back - expect).abs() < 60_000_000_000);
    }
}
