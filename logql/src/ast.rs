//! The parsed form of a query.

use regex::Regex;

use crate::compile;

/// A parsed query.
#[derive(Debug, Clone)]
pub enum Query {
    Log(LogQuery),
    Metric(MetricExpr),
}

/// A stream selector and its pipeline.
#[derive(Debug, Clone)]
pub struct LogQuery {
    pub matchers: Vec<Matcher>,
    pub pipeline: Vec<Stage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Eq,
    Neq,
    Re,
    Nre,
}

/// `name op "value"`; regexes are fully anchored.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    re: Option<Regex>,
}

impl Matcher {
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Matcher, String> {
        let re = match op {
            MatchOp::Re | MatchOp::Nre => Some(compile(&format!("^(?:{value})$"))?),
            MatchOp::Eq | MatchOp::Neq => None,
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value: value.to_string(),
            re,
        })
    }

    /// Whether a label value (`""` when the label is absent) satisfies this matcher.
    pub fn matches(&self, v: &str) -> bool {
        match (self.op, &self.re) {
            (MatchOp::Eq, _) => v == self.value,
            (MatchOp::Neq, _) => v != self.value,
            (MatchOp::Re, Some(re)) => re.is_match(v),
            (MatchOp::Nre, Some(re)) => !re.is_match(v),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineOp {
    /// `|=`
    Contains,
    /// `!=`
    NotContains,
    /// `|~`
    Match,
    /// `!~`
    NotMatch,
    /// `|>`: the line has the shape of a pattern (`<_>` stands for any text)
    Pattern,
    /// `!>`
    NotPattern,
}

/// A line filter; several patterns (`|= "a" or "b"`) match if any does
/// (for the negated forms: if none does).
#[derive(Debug, Clone)]
pub struct LineFilter {
    pub op: LineOp,
    pub patterns: Vec<String>,
    pub(crate) res: Vec<Regex>,
}

impl LineFilter {
    pub fn matches(&self, line: &str) -> bool {
        let any = match self.op {
            LineOp::Contains | LineOp::NotContains => {
                self.patterns.iter().any(|p| line.contains(p.as_str()))
            }
            LineOp::Match | LineOp::NotMatch | LineOp::Pattern | LineOp::NotPattern => {
                self.res.iter().any(|r| r.is_match(line))
            }
        };
        match self.op {
            LineOp::Contains | LineOp::Match | LineOp::Pattern => any,
            LineOp::NotContains | LineOp::NotMatch | LineOp::NotPattern => !any,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Neq,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CmpOp {
    pub fn apply(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Eq => a == b,
            CmpOp::Neq => a != b,
            CmpOp::Gt => a > b,
            CmpOp::Ge => a >= b,
            CmpOp::Lt => a < b,
            CmpOp::Le => a <= b,
        }
    }
}

/// `| name op value`, combined with `and`/`,`/juxtaposition and `or`.
#[derive(Debug, Clone)]
pub enum LabelFilter {
    And(Box<LabelFilter>, Box<LabelFilter>),
    Or(Box<LabelFilter>, Box<LabelFilter>),
    Str(Matcher),
    Num {
        name: String,
        op: CmpOp,
        value: f64,
    },
    /// Compared as seconds; the label must hold a Go-style duration (`1.5s`).
    Dur {
        name: String,
        op: CmpOp,
        secs: f64,
    },
}

/// A `drop`/`keep` item: a bare name, or a name with a value matcher.
#[derive(Debug, Clone)]
pub enum LabelRef {
    Name(String),
    Matcher(Matcher),
}

impl LabelRef {
    pub fn name(&self) -> &str {
        match self {
            LabelRef::Name(n) => n,
            LabelRef::Matcher(m) => &m.name,
        }
    }

    /// Whether the label `name="value"` is the one this reference names.
    pub fn selects(&self, name: &str, value: &str) -> bool {
        match self {
            LabelRef::Name(n) => n == name,
            LabelRef::Matcher(m) => m.name == name && m.matches(value),
        }
    }
}

/// A `line_format`/`label_format` template: only literal text and
/// `{{.label}}`, `{{__line__}}`, `{{__timestamp__}}` actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(pub Vec<TplPart>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TplPart {
    Lit(String),
    Label(String),
    Line,
    Timestamp,
}

#[derive(Debug, Clone)]
pub enum LabelFmt {
    /// `dst=src`
    Rename(String),
    /// `dst="template"`
    Template(Template),
}

#[derive(Debug, Clone)]
pub enum Stage {
    Line(LineFilter),
    Json,
    Logfmt,
    Regexp(Regex),
    LabelFilter(LabelFilter),
    Drop(Vec<LabelRef>),
    Keep(Vec<LabelRef>),
    LineFormat(Template),
    LabelFormat(Vec<(String, LabelFmt)>),
    Decolorize,
    /// `| unpack`: a JSON line's string fields become labels, `_entry`
    /// becomes the line (what Promtail's `pack` stage wrote).
    Unpack,
    /// `| unwrap [bytes|duration](label)`: only inside a metric query's
    /// range, where the parser moves it (and what follows) to the range's
    /// [`Unwrap`]; a no-op anywhere else.
    Unwrap(Unwrap),
}

/// How an unwrapped label's value becomes a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnwrapConv {
    /// A number.
    Number,
    /// `bytes(label)`: `10KB`, `1.5MiB`, `512B` as bytes.
    Bytes,
    /// `duration(label)`, `duration_seconds(label)`: `150ms`, `1h2m` as seconds.
    Duration,
}

/// `| unwrap`: the label whose value is the sample, and the stages after it
/// (label filters, usually `| __error__=""`).
#[derive(Debug, Clone)]
pub struct Unwrap {
    pub label: String,
    pub conv: UnwrapConv,
    pub post: Vec<Stage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeFn {
    CountOverTime,
    Rate,
    BytesOverTime,
    BytesRate,
    // Over unwrapped samples:
    SumOverTime,
    AvgOverTime,
    MinOverTime,
    MaxOverTime,
    FirstOverTime,
    LastOverTime,
    StddevOverTime,
    StdvarOverTime,
    QuantileOverTime,
}

impl RangeFn {
    /// Whether the function reads unwrapped samples (and must have them).
    pub fn needs_unwrap(self) -> bool {
        !matches!(
            self,
            RangeFn::CountOverTime | RangeFn::Rate | RangeFn::BytesOverTime | RangeFn::BytesRate
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping {
    pub without: bool,
    pub labels: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    /// `== != > >= < <=`; with `bool` the result is 1 or 0, without it a
    /// sample whose comparison is false is dropped.
    Cmp {
        op: CmpOp,
        bool_mod: bool,
    },
}

impl BinOp {
    /// The result of `a op b` whose kept value (a comparison without
    /// `bool` keeps the vector's sample) is `keep`; `None`: dropped.
    pub fn apply(self, a: f64, b: f64, keep: f64) -> Option<f64> {
        Some(match self {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            BinOp::Div => a / b,
            BinOp::Mod => a % b,
            BinOp::Pow => a.powf(b),
            BinOp::Cmp { op, bool_mod: true } => f64::from(u8::from(op.apply(a, b))),
            BinOp::Cmp {
                op,
                bool_mod: false,
            } => {
                if op.apply(a, b) {
                    keep
                } else {
                    return None;
                }
            }
        })
    }
}

#[derive(Debug, Clone)]
pub enum MetricExpr {
    Range {
        func: RangeFn,
        query: LogQuery,
        range_ns: i64,
        offset_ns: i64,
        /// The samples' label, for the functions over values (and `rate`).
        unwrap: Option<Unwrap>,
        /// `quantile_over_time`'s φ.
        param: Option<f64>,
        /// `fn(...) by (...)`: allowed on functions over unwrapped samples.
        grouping: Option<Grouping>,
    },
    /// `label_replace(inner, "dst", "replacement", "src", "regex")`: where
    /// the (anchored) regex matches `src`'s value, `dst` becomes the
    /// replacement with `$1`/`${name}` expanded.
    LabelReplace {
        inner: Box<MetricExpr>,
        dst: String,
        replacement: String,
        src: String,
        regex: Regex,
    },
    /// `topk(k, inner)` / `bottomk`: per step and group, the `k` series
    /// with the highest (lowest) values keep theirs.
    TopK {
        k: usize,
        bottom: bool,
        grouping: Option<Grouping>,
        inner: Box<MetricExpr>,
    },
    Agg {
        op: AggOp,
        grouping: Option<Grouping>,
        inner: Box<MetricExpr>,
    },
    /// A number literal.
    Scalar(f64),
    /// `vector(n)`: one sample with no labels.
    Vector(f64),
    Binary {
        op: BinOp,
        lhs: Box<MetricExpr>,
        rhs: Box<MetricExpr>,
    },
}

impl MetricExpr {
    /// How far before an evaluation time this expression reads entries.
    pub fn lookback_ns(&self) -> i64 {
        match self {
            MetricExpr::Range {
                range_ns,
                offset_ns,
                ..
            } => range_ns.saturating_add(*offset_ns),
            MetricExpr::Agg { inner, .. }
            | MetricExpr::TopK { inner, .. }
            | MetricExpr::LabelReplace { inner, .. } => inner.lookback_ns(),
            MetricExpr::Binary { lhs, rhs, .. } => lhs.lookback_ns().max(rhs.lookback_ns()),
            MetricExpr::Scalar(_) | MetricExpr::Vector(_) => 0,
        }
    }

    /// How far after an evaluation time this expression reads entries
    /// (negative offsets look forward).
    pub fn lookahead_ns(&self) -> i64 {
        match self {
            MetricExpr::Range { offset_ns, .. } => (-offset_ns).max(0),
            MetricExpr::Agg { inner, .. }
            | MetricExpr::TopK { inner, .. }
            | MetricExpr::LabelReplace { inner, .. } => inner.lookahead_ns(),
            MetricExpr::Binary { lhs, rhs, .. } => lhs.lookahead_ns().max(rhs.lookahead_ns()),
            MetricExpr::Scalar(_) | MetricExpr::Vector(_) => 0,
        }
    }

    /// Whether evaluating it reads the lines' text: not when every range
    /// function counts lines (`count_over_time`, `rate`) of a bare
    /// selector, so a store may leave the lines compressed.
    pub fn reads_lines(&self) -> bool {
        match self {
            MetricExpr::Range {
                func,
                query,
                unwrap,
                ..
            } => {
                !query.pipeline.is_empty()
                    || unwrap.is_some()
                    || !matches!(func, crate::RangeFn::CountOverTime | crate::RangeFn::Rate)
            }
            MetricExpr::Agg { inner, .. }
            | MetricExpr::TopK { inner, .. }
            | MetricExpr::LabelReplace { inner, .. } => inner.reads_lines(),
            MetricExpr::Binary { lhs, rhs, .. } => lhs.reads_lines() || rhs.reads_lines(),
            MetricExpr::Scalar(_) | MetricExpr::Vector(_) => false,
        }
    }

    /// The log queries this expression reads.
    pub fn log_queries(&self) -> Vec<&LogQuery> {
        match self {
            MetricExpr::Range { query, .. } => vec![query],
            MetricExpr::Agg { inner, .. }
            | MetricExpr::TopK { inner, .. }
            | MetricExpr::LabelReplace { inner, .. } => inner.log_queries(),
            MetricExpr::Binary { lhs, rhs, .. } => {
                let mut v = lhs.log_queries();
                v.extend(rhs.log_queries());
                v
            }
            MetricExpr::Scalar(_) | MetricExpr::Vector(_) => Vec::new(),
        }
    }
}

/// A pattern (`<_> level=info <_>`, `<ip> - <_>`) as an anchored regular
/// expression: every `<name>` or `<_>` is any text, the rest is literal,
/// and a run of spaces matches any run of whitespace (patterns are written
/// with single spaces).
pub fn pattern_regex(pattern: &str) -> String {
    let mut re = String::from("(?s)^");
    let mut rest = pattern;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('<')
            && let Some(end) = after.find('>')
            && after[..end]
                .chars()
                .all(|c| c == '_' || c.is_ascii_alphanumeric())
            && end > 0
        {
            re.push_str(".*?");
            rest = &after[end + 1..];
            continue;
        }
        let c = rest.chars().next().unwrap_or(' ');
        if c.is_whitespace() {
            re.push_str(r"\s+");
            rest = rest.trim_start();
        } else {
            re.push_str(&regex::escape(&c.to_string()));
            rest = &rest[c.len_utf8()..];
        }
    }
    re.push('$');
    re
}

/// The `| pattern` parser's expression as a regular expression: `<name>`
/// captures into label `name` (lazily; the last one to the end of the
/// line), `<_>` skips, the rest is literal; anchored at the start of the
/// line. At least one named capture; names are not repeated.
pub fn pattern_captures(pattern: &str) -> Result<String, String> {
    let mut re = String::from("(?s)^");
    let mut rest = pattern;
    let mut names = std::collections::BTreeSet::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('<')
            && let Some(end) = after.find('>')
            && end > 0
            && after[..end]
                .chars()
                .all(|c| c == '_' || c.is_ascii_alphanumeric())
        {
            let name = &after[..end];
            rest = &after[end + 1..];
            let lazy = if rest.is_empty() { "" } else { "?" };
            if name == "_" {
                re.push_str(&format!(".*{lazy}"));
            } else {
                if name.starts_with(|c: char| c.is_ascii_digit()) || !names.insert(name) {
                    return Err(format!("capture <{name}> is not a label name or repeats"));
                }
                re.push_str(&format!("(?P<{name}>.*{lazy})"));
            }
            continue;
        }
        let c = rest.chars().next().unwrap_or(' ');
        re.push_str(&regex::escape(&c.to_string()));
        rest = &rest[c.len_utf8()..];
    }
    if names.is_empty() {
        return Err("at least one named capture must be supplied".into());
    }
    Ok(re)
}
