//! Compiles a [`Subscribe`] into a record filter and a start position.

use std::time::Duration;

use globset::{Glob, GlobMatcher};
use regex::Regex;

use crate::hub::{Entry, now_ns, parse_ts};
use crate::protocol::{Format, Level, Source, Subscribe};

/// Longest accepted regular expression, to bound compile cost of hostile input.
const MAX_PATTERN: usize = 1024;

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
}

/// Compiled filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Matchers are boxed: most clients set few of them, and every
    /// connection holds its filter while idle.
    file: Option<Box<GlobMatcher>>,
    levels: Option<[bool; 6]>,
    grep: Option<Box<Regex>>,
    pod: Option<Box<Regex>>,
    container: Option<Box<Regex>>,
    pub since_ns: Option<i64>,
    pub format: Format,
}

impl Filter {
    pub fn compile(s: &Subscribe) -> Result<Filter, FilterError> {
        let file = match &s.file {
            Some(f) if !f.is_empty() => {
                check_len("file", f)?;
                Some(Box::new(
                    Glob::new(f)
                        .map_err(|e| FilterError::File(e.kind().to_string()))?
                        .compile_matcher(),
                ))
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
                Some(Box::new(compile_regex(g).map_err(FilterError::Grep)?))
            }
            _ => None,
        };
        let label =
            |field: &'static str, v: &Option<String>| -> Result<Option<Box<Regex>>, FilterError> {
                match v {
                    Some(p) if !p.is_empty() => {
                        check_len(field, p)?;
                        compile_regex(&format!("^(?:{p})$"))
                            .map(|r| Some(Box::new(r)))
                            .map_err(|reason| FilterError::Label { field, reason })
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
            && !g.is_match(&e.line)
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

fn compile_regex(p: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(p)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| e.to_string())
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
