//! LogQL: lexer, AST and a recursive-descent parser for the subset logstream
//! evaluates (see the module docs of [`crate::loki`] for the list).
//!
//! Errors carry the line and column of the offending token and print like
//! Loki's own: `parse error at line L, col C: ...`; errors about the query as
//! a whole (no usable matcher) have no position: `parse error : ...`.

use std::fmt;

use regex::Regex;

/// Longest accepted query, to bound parse and regex compile cost.
pub const MAX_QUERY_BYTES: usize = 64 << 10;

/// Loki's message for a selector without a matcher that excludes the empty value.
pub const EMPTY_SELECTOR: &str = "queries require at least one regexp or equality matcher that does not have an empty-compatible value. For instance, app=~\".*\" does not meet this requirement, but app=~\".+\" will";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based; 0 with `col` 0 when the error concerns the whole query.
    pub line: usize,
    pub col: usize,
    pub msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 && self.col == 0 {
            write!(f, "parse error : {}", self.msg)
        } else {
            write!(
                f,
                "parse error at line {}, col {}: {}",
                self.line, self.col, self.msg
            )
        }
    }
}

impl std::error::Error for ParseError {}

// ---------------------------------------------------------------------------
// AST

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
}

/// A line filter; several patterns (`|= "a" or "b"`) match if any does
/// (for the negated forms: if none does).
#[derive(Debug, Clone)]
pub struct LineFilter {
    pub op: LineOp,
    pub patterns: Vec<String>,
    res: Vec<Regex>,
}

impl LineFilter {
    pub fn matches(&self, line: &str) -> bool {
        let any = match self.op {
            LineOp::Contains | LineOp::NotContains => {
                self.patterns.iter().any(|p| line.contains(p.as_str()))
            }
            LineOp::Match | LineOp::NotMatch => self.res.iter().any(|r| r.is_match(line)),
        };
        match self.op {
            LineOp::Contains | LineOp::Match => any,
            LineOp::NotContains | LineOp::NotMatch => !any,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeFn {
    CountOverTime,
    Rate,
    BytesOverTime,
    BytesRate,
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
}

impl BinOp {
    pub fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            BinOp::Add => a + b,
            BinOp::Sub => a - b,
            BinOp::Mul => a * b,
            BinOp::Div => a / b,
            BinOp::Mod => a % b,
            BinOp::Pow => a.powf(b),
        }
    }
}

#[derive(Debug, Clone)]
pub enum MetricExpr {
    Range {
        func: RangeFn,
        query: LogQuery,
        range_ns: i64,
        offset_ns: i64,
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
            MetricExpr::Agg { inner, .. } => inner.lookback_ns(),
            MetricExpr::Binary { lhs, rhs, .. } => lhs.lookback_ns().max(rhs.lookback_ns()),
            MetricExpr::Scalar(_) | MetricExpr::Vector(_) => 0,
        }
    }

    /// How far after an evaluation time this expression reads entries
    /// (negative offsets look forward).
    pub fn lookahead_ns(&self) -> i64 {
        match self {
            MetricExpr::Range { offset_ns, .. } => (-offset_ns).max(0),
            MetricExpr::Agg { inner, .. } => inner.lookahead_ns(),
            MetricExpr::Binary { lhs, rhs, .. } => lhs.lookahead_ns().max(rhs.lookahead_ns()),
            MetricExpr::Scalar(_) | MetricExpr::Vector(_) => 0,
        }
    }

    /// The log queries this expression reads.
    pub fn log_queries(&self) -> Vec<&LogQuery> {
        match self {
            MetricExpr::Range { query, .. } => vec![query],
            MetricExpr::Agg { inner, .. } => inner.log_queries(),
            MetricExpr::Binary { lhs, rhs, .. } => {
                let mut v = lhs.log_queries();
                v.extend(rhs.log_queries());
                v
            }
            MetricExpr::Scalar(_) | MetricExpr::Vector(_) => Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------
// Entry points

/// Parses a query for `/query`, `/query_range` and `/tail`: every selector
/// needs a matcher that rejects the empty value (`{}` is refused, like Loki).
pub fn parse(input: &str) -> Result<Query, ParseError> {
    Parser::new(input, false)?.parse_query()
}

/// Parses a selector with an optional pipeline for metadata endpoints
/// (`/series`, `/labels?query=`), where `{}` means "every stream".
pub fn parse_selector(input: &str) -> Result<LogQuery, ParseError> {
    let mut p = Parser::new(input, true)?;
    let start = p.peek_pos();
    match p.parse_query()? {
        Query::Log(q) => Ok(q),
        Query::Metric(_) => Err(ParseError {
            line: start.0,
            col: start.1,
            msg: "only label matchers are supported".into(),
        }),
    }
}

/// Parses a duration such as `15s`, `2000ms`, `1h30m`, `1d`, `1.5s`.
pub fn parse_duration(s: &str) -> Option<i64> {
    if s.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86_400e9,
            "w" => 7.0 * 86_400e9,
            "y" => 365.0 * 86_400e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * unit;
    }
    if !total.is_finite() || total > i64::MAX as f64 {
        return None;
    }
    Some(total as i64)
}

fn compile(p: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(p)
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .build()
        .map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    LBrace,
    RBrace,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Pipe,
    PipeExact,
    PipeMatch,
    PipePattern,
    Eq,
    EqEq,
    Neq,
    Re,
    Nre,
    Gt,
    Ge,
    Lt,
    Le,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Ident(String),
    Str(String),
    Num(f64),
    /// Nanoseconds, and the text as written.
    Dur(i64, String),
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("IDENTIFIER {s:?}"),
            Tok::Str(s) => format!("STRING {s:?}"),
            Tok::Num(n) => format!("NUMBER {n}"),
            Tok::Dur(_, s) => format!("DURATION {s}"),
            Tok::Eof => "end of input".into(),
            other => format!("{:?}", other.text()),
        }
    }

    fn text(&self) -> &'static str {
        match self {
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::Comma => ",",
            Tok::Pipe => "|",
            Tok::PipeExact => "|=",
            Tok::PipeMatch => "|~",
            Tok::PipePattern => "|>",
            Tok::Eq => "=",
            Tok::EqEq => "==",
            Tok::Neq => "!=",
            Tok::Re => "=~",
            Tok::Nre => "!~",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Add => "+",
            Tok::Sub => "-",
            Tok::Mul => "*",
            Tok::Div => "/",
            Tok::Mod => "%",
            Tok::Pow => "^",
            _ => "",
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
    col: usize,
}

struct Lexer<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
    src: &'a str,
    line: usize,
    col: usize,
}

impl<'a> Lexer<'a> {
    fn bump(&mut self) -> Option<char> {
        let (_, c) = self.chars.next()?;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    /// Consumes the second character of a two-character token.
    fn take(&mut self, t: Tok) -> Tok {
        self.bump();
        t
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|(_, c)| *c)
    }

    fn offset(&mut self) -> usize {
        self.chars.peek().map_or(self.src.len(), |(i, _)| *i)
    }

    fn tokens(mut self) -> Result<Vec<Token>, ParseError> {
        let mut out = Vec::new();
        loop {
            // Whitespace and comments.
            while let Some(c) = self.peek() {
                if c.is_whitespace() {
                    self.bump();
                } else if c == '#' {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                } else {
                    break;
                }
            }
            let (line, col) = (self.line, self.col);
            let err = |msg: String| ParseError { line, col, msg };
            let Some(c) = self.bump() else {
                out.push(Token {
                    tok: Tok::Eof,
                    line,
                    col,
                });
                return Ok(out);
            };
            let next = self.peek();
            let tok = match c {
                '{' => Tok::LBrace,
                '}' => Tok::RBrace,
                '(' => Tok::LParen,
                ')' => Tok::RParen,
                '[' => Tok::LBracket,
                ']' => Tok::RBracket,
                ',' => Tok::Comma,
                '+' => Tok::Add,
                '-' => Tok::Sub,
                '*' => Tok::Mul,
                '/' => Tok::Div,
                '%' => Tok::Mod,
                '^' => Tok::Pow,
                '|' => match next {
                    Some('=') => self.take(Tok::PipeExact),
                    Some('~') => self.take(Tok::PipeMatch),
                    Some('>') => self.take(Tok::PipePattern),
                    _ => Tok::Pipe,
                },
                '=' => match next {
                    Some('~') => self.take(Tok::Re),
                    Some('=') => self.take(Tok::EqEq),
                    _ => Tok::Eq,
                },
                '!' => match next {
                    Some('=') => self.take(Tok::Neq),
                    Some('~') => self.take(Tok::Nre),
                    _ => return Err(err("syntax error: unexpected \"!\"".into())),
                },
                '>' => match next {
                    Some('=') => self.take(Tok::Ge),
                    _ => Tok::Gt,
                },
                '<' => match next {
                    Some('=') => self.take(Tok::Le),
                    _ => Tok::Lt,
                },
                '"' => Tok::Str(self.quoted().map_err(err)?),
                '`' => {
                    let mut s = String::new();
                    loop {
                        match self.bump() {
                            Some('`') => break,
                            Some(c) => s.push(c),
                            None => return Err(err("unterminated raw string".into())),
                        }
                    }
                    Tok::Str(s)
                }
                c if c.is_ascii_digit()
                    || (c == '.' && next.is_some_and(|n| n.is_ascii_digit())) =>
                {
                    let start = self.offset() - c.len_utf8();
                    while self
                        .peek()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == 'µ')
                    {
                        self.bump();
                    }
                    let text = &self.src[start..self.offset()];
                    if let Ok(n) = text.parse::<f64>() {
                        Tok::Num(n)
                    } else if let Some(ns) = parse_duration(text) {
                        Tok::Dur(ns, text.to_string())
                    } else {
                        return Err(err(format!(
                            "syntax error: invalid number or duration {text:?}"
                        )));
                    }
                }
                c if c.is_ascii_alphabetic() || c == '_' => {
                    let start = self.offset() - c.len_utf8();
                    while self
                        .peek()
                        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        self.bump();
                    }
                    Tok::Ident(self.src[start..self.offset()].to_string())
                }
                other => return Err(err(format!("syntax error: unexpected character {other:?}"))),
            };
            out.push(Token { tok, line, col });
        }
    }

    /// The body of a `"..."` string with Go escapes (the opening quote is consumed).
    fn quoted(&mut self) -> Result<String, String> {
        let mut s = String::new();
        loop {
            let c = self.bump().ok_or("unterminated string")?;
            match c {
                '"' => return Ok(s),
                '\n' => return Err("newline in string".into()),
                '\\' => {
                    let e = self.bump().ok_or("unterminated string")?;
                    match e {
                        'a' => s.push('\u{7}'),
                        'b' => s.push('\u{8}'),
                        'f' => s.push('\u{c}'),
                        'n' => s.push('\n'),
                        'r' => s.push('\r'),
                        't' => s.push('\t'),
                        'v' => s.push('\u{b}'),
                        '\\' => s.push('\\'),
                        '"' => s.push('"'),
                        '\'' => s.push('\''),
                        'x' => s.push(self.hex_escape(2)?),
                        'u' => s.push(self.hex_escape(4)?),
                        'U' => s.push(self.hex_escape(8)?),
                        '0'..='7' => {
                            let mut v = e.to_digit(8).unwrap_or(0);
                            for _ in 0..2 {
                                let d = self
                                    .bump()
                                    .and_then(|c| c.to_digit(8))
                                    .ok_or("invalid octal escape")?;
                                v = v * 8 + d;
                            }
                            if v > 255 {
                                return Err("invalid octal escape".into());
                            }
                            s.push(char::from(v as u8));
                        }
                        other => return Err(format!("unknown escape sequence \\{other}")),
                    }
                }
                c => s.push(c),
            }
        }
    }

    fn hex_escape(&mut self, n: usize) -> Result<char, String> {
        let mut v: u32 = 0;
        for _ in 0..n {
            let d = self
                .bump()
                .and_then(|c| c.to_digit(16))
                .ok_or("invalid hex escape")?;
            v = v * 16 + d;
        }
        char::from_u32(v).ok_or_else(|| "invalid unicode escape".into())
    }
}

// ---------------------------------------------------------------------------
// Parser

/// Names Loki knows that this parser deliberately does not evaluate, so the
/// error can say "not supported" rather than "unexpected".
const UNSUPPORTED_FUNCS: &[&str] = &[
    "avg_over_time",
    "sum_over_time",
    "min_over_time",
    "max_over_time",
    "stddev_over_time",
    "stdvar_over_time",
    "quantile_over_time",
    "first_over_time",
    "last_over_time",
    "absent_over_time",
    "rate_counter",
    "topk",
    "bottomk",
    "stddev",
    "stdvar",
    "sort",
    "sort_desc",
    "label_replace",
    "approx_topk",
];

enum Node {
    Log(LogQuery, (usize, usize)),
    Metric(MetricExpr),
}

struct Parser {
    toks: Vec<Token>,
    pos: usize,
    allow_empty_selector: bool,
}

type PResult<T> = Result<T, ParseError>;

impl Parser {
    fn new(input: &str, allow_empty_selector: bool) -> PResult<Parser> {
        if input.len() > MAX_QUERY_BYTES {
            return Err(ParseError {
                line: 0,
                col: 0,
                msg: format!("query longer than {MAX_QUERY_BYTES} bytes"),
            });
        }
        let toks = Lexer {
            chars: input.char_indices().peekable(),
            src: input,
            line: 1,
            col: 1,
        }
        .tokens()?;
        Ok(Parser {
            toks,
            pos: 0,
            allow_empty_selector,
        })
    }

    fn peek(&self) -> &Tok {
        self.peek_at(0)
    }

    fn peek_at(&self, n: usize) -> &Tok {
        let i = (self.pos + n).min(self.toks.len().saturating_sub(1));
        self.toks.get(i).map_or(&Tok::Eof, |t| &t.tok)
    }

    fn peek_pos(&self) -> (usize, usize) {
        self.toks
            .get(self.pos.min(self.toks.len().saturating_sub(1)))
            .map_or((1, 1), |t| (t.line, t.col))
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        if self.pos < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn err_here(&self, msg: impl Into<String>) -> ParseError {
        let (line, col) = self.peek_pos();
        ParseError {
            line,
            col,
            msg: msg.into(),
        }
    }

    fn unexpected(&self, expecting: &str) -> ParseError {
        let got = self.peek().describe();
        if expecting.is_empty() {
            self.err_here(format!("syntax error: unexpected {got}"))
        } else {
            self.err_here(format!(
                "syntax error: unexpected {got}, expecting {expecting}"
            ))
        }
    }

    fn expect(&mut self, t: Tok) -> PResult<()> {
        if *self.peek() == t {
            self.next();
            Ok(())
        } else {
            Err(self.unexpected(&format!("{:?}", t.text())))
        }
    }

    fn ident(&mut self, what: &str) -> PResult<String> {
        match self.peek() {
            Tok::Ident(s) => {
                let s = s.clone();
                self.next();
                Ok(s)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn string(&mut self) -> PResult<String> {
        match self.peek() {
            Tok::Str(s) => {
                let s = s.clone();
                self.next();
                Ok(s)
            }
            _ => Err(self.unexpected("STRING")),
        }
    }

    fn is_ident(&self, n: usize, name: &str) -> bool {
        matches!(self.peek_at(n), Tok::Ident(s) if s == name)
    }

    fn parse_query(&mut self) -> PResult<Query> {
        if *self.peek() == Tok::Eof {
            return Err(self.err_here("syntax error: empty query"));
        }
        let node = self.expr(0)?;
        if *self.peek() != Tok::Eof {
            return Err(self.unexpected(""));
        }
        Ok(match node {
            Node::Log(q, _) => Query::Log(q),
            Node::Metric(m) => Query::Metric(m),
        })
    }

    fn metric(&self, node: Node) -> PResult<MetricExpr> {
        match node {
            Node::Metric(m) => Ok(m),
            Node::Log(_, (line, col)) => Err(ParseError {
                line,
                col,
                msg: "syntax error: a log query cannot be used here; wrap it in a range function such as count_over_time(...[1m])".into(),
            }),
        }
    }

    /// Precedence climbing over `+ -` (1), `* / %` (2), `^` (3, right-assoc).
    fn expr(&mut self, min_prec: u8) -> PResult<Node> {
        let mut lhs = self.unary()?;
        loop {
            let (op, prec) = match self.peek() {
                Tok::Add => (BinOp::Add, 1),
                Tok::Sub => (BinOp::Sub, 1),
                Tok::Mul => (BinOp::Mul, 2),
                Tok::Div => (BinOp::Div, 2),
                Tok::Mod => (BinOp::Mod, 2),
                Tok::Pow => (BinOp::Pow, 3),
                Tok::Ident(s)
                    if matches!(
                        s.as_str(),
                        "and" | "or" | "unless" | "bool" | "on" | "ignoring"
                    ) =>
                {
                    return Err(self.err_here(format!(
                        "binary operator modifier or set operator {s:?} is not supported"
                    )));
                }
                Tok::EqEq | Tok::Neq | Tok::Gt | Tok::Ge | Tok::Lt | Tok::Le
                    if matches!(lhs, Node::Metric(_)) =>
                {
                    return Err(self.err_here("comparison operators are not supported"));
                }
                _ => break,
            };
            if prec < min_prec {
                break;
            }
            self.next();
            let next_min = if op == BinOp::Pow { prec } else { prec + 1 };
            let rhs = self.expr(next_min)?;
            let lhs_m = self.metric(lhs)?;
            let rhs_m = self.metric(rhs)?;
            lhs = Node::Metric(MetricExpr::Binary {
                op,
                lhs: Box::new(lhs_m),
                rhs: Box::new(rhs_m),
            });
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> PResult<Node> {
        if *self.peek() == Tok::Sub {
            self.next();
            let inner = self.unary()?;
            let m = self.metric(inner)?;
            return Ok(Node::Metric(match m {
                MetricExpr::Scalar(n) => MetricExpr::Scalar(-n),
                other => MetricExpr::Binary {
                    op: BinOp::Mul,
                    lhs: Box::new(MetricExpr::Scalar(-1.0)),
                    rhs: Box::new(other),
                },
            }));
        }
        if *self.peek() == Tok::Add {
            self.next();
            return self.unary();
        }
        self.primary()
    }

    fn primary(&mut self) -> PResult<Node> {
        let pos = self.peek_pos();
        match self.peek().clone() {
            Tok::LParen => {
                self.next();
                let inner = self.expr(0)?;
                self.expect(Tok::RParen)?;
                Ok(inner)
            }
            Tok::Num(n) => {
                self.next();
                Ok(Node::Metric(MetricExpr::Scalar(n)))
            }
            Tok::LBrace => Ok(Node::Log(self.log_query()?, pos)),
            Tok::Ident(name) => match name.as_str() {
                "vector" => {
                    self.next();
                    self.expect(Tok::LParen)?;
                    let n = self.number()?;
                    self.expect(Tok::RParen)?;
                    Ok(Node::Metric(MetricExpr::Vector(n)))
                }
                "count_over_time" | "rate" | "bytes_over_time" | "bytes_rate" => {
                    self.range_agg().map(Node::Metric)
                }
                "sum" | "avg" | "min" | "max" | "count" => self.vector_agg().map(Node::Metric),
                n if UNSUPPORTED_FUNCS.contains(&n) => {
                    Err(self.err_here(format!("function {n} is not supported by logstream")))
                }
                _ => Err(self.unexpected("")),
            },
            _ => Err(self.unexpected("")),
        }
    }

    fn number(&mut self) -> PResult<f64> {
        let neg = if *self.peek() == Tok::Sub {
            self.next();
            true
        } else {
            false
        };
        match self.peek() {
            Tok::Num(n) => {
                let n = *n;
                self.next();
                Ok(if neg { -n } else { n })
            }
            _ => Err(self.unexpected("NUMBER")),
        }
    }

    fn duration(&mut self) -> PResult<i64> {
        match self.peek() {
            Tok::Dur(ns, _) => {
                let ns = *ns;
                self.next();
                Ok(ns)
            }
            // A bare number in a range is seconds, as in Prometheus.
            Tok::Num(n) if *n >= 0.0 => {
                let ns = (*n * 1e9) as i64;
                self.next();
                Ok(ns)
            }
            _ => Err(self.unexpected("DURATION")),
        }
    }

    /// `func ( logRange )` where logRange is `q [d]`, `{..} [d] pipeline` or `(q) [d]`.
    fn range_agg(&mut self) -> PResult<MetricExpr> {
        let name = self.ident("function")?;
        let func = match name.as_str() {
            "count_over_time" => RangeFn::CountOverTime,
            "rate" => RangeFn::Rate,
            "bytes_over_time" => RangeFn::BytesOverTime,
            _ => RangeFn::BytesRate,
        };
        self.expect(Tok::LParen)?;
        let (query, range_ns) = if *self.peek() == Tok::LParen {
            self.next();
            let q = self.log_query()?;
            self.expect(Tok::RParen)?;
            self.expect(Tok::LBracket)?;
            let d = self.duration()?;
            self.expect(Tok::RBracket)?;
            (q, d)
        } else {
            if *self.peek() != Tok::LBrace {
                return Err(self.unexpected("a log query with a range, such as {app=\"x\"}[1m]"));
            }
            let matchers = self.selector()?;
            let mut pipeline = self.pipeline()?;
            if *self.peek() != Tok::LBracket {
                return Err(self.unexpected("\"[\" and a range such as [1m]"));
            }
            self.next();
            let d = self.duration()?;
            self.expect(Tok::RBracket)?;
            // `{..}[d] | pipeline` form.
            let after = self.pipeline()?;
            if !pipeline.is_empty() && !after.is_empty() {
                return Err(self.unexpected(""));
            }
            pipeline.extend(after);
            (LogQuery { matchers, pipeline }, d)
        };
        if range_ns <= 0 {
            return Err(self.err_here("range must be greater than 0"));
        }
        let offset_ns = if self.is_ident(0, "offset") {
            self.next();
            let neg = if *self.peek() == Tok::Sub {
                self.next();
                true
            } else {
                false
            };
            let d = self.duration()?;
            if neg { -d } else { d }
        } else {
            0
        };
        if *self.peek() == Tok::Comma {
            return Err(self.err_here("range functions with parameters are not supported"));
        }
        self.expect(Tok::RParen)?;
        if self.is_ident(0, "by") || self.is_ident(0, "without") {
            return Err(self.err_here(format!(
                "grouping is not allowed on {name}; use sum by (...) ({name}(...))"
            )));
        }
        Ok(MetricExpr::Range {
            func,
            query,
            range_ns,
            offset_ns,
        })
    }

    fn grouping(&mut self) -> PResult<Option<Grouping>> {
        let without = if self.is_ident(0, "by") {
            false
        } else if self.is_ident(0, "without") {
            true
        } else {
            return Ok(None);
        };
        self.next();
        self.expect(Tok::LParen)?;
        let mut labels = Vec::new();
        while *self.peek() != Tok::RParen {
            labels.push(self.ident("label name")?);
            if *self.peek() == Tok::Comma {
                self.next();
            } else if *self.peek() != Tok::RParen {
                return Err(self.unexpected("\",\" or \")\""));
            }
        }
        self.next();
        Ok(Some(Grouping { without, labels }))
    }

    fn vector_agg(&mut self) -> PResult<MetricExpr> {
        let name = self.ident("aggregation")?;
        let op = match name.as_str() {
            "sum" => AggOp::Sum,
            "avg" => AggOp::Avg,
            "min" => AggOp::Min,
            "max" => AggOp::Max,
            _ => AggOp::Count,
        };
        let before = self.grouping()?;
        self.expect(Tok::LParen)?;
        let inner = self.expr(0)?;
        let inner = self.metric(inner)?;
        if *self.peek() == Tok::Comma {
            return Err(self.err_here("aggregation parameters are not supported"));
        }
        self.expect(Tok::RParen)?;
        let after = self.grouping()?;
        if before.is_some() && after.is_some() {
            return Err(self.err_here("syntax error: grouping given twice"));
        }
        Ok(MetricExpr::Agg {
            op,
            grouping: before.or(after),
            inner: Box::new(inner),
        })
    }

    fn log_query(&mut self) -> PResult<LogQuery> {
        let matchers = self.selector()?;
        let pipeline = self.pipeline()?;
        Ok(LogQuery { matchers, pipeline })
    }

    fn selector(&mut self) -> PResult<Vec<Matcher>> {
        self.expect(Tok::LBrace)?;
        let mut matchers = Vec::new();
        while *self.peek() != Tok::RBrace {
            matchers.push(self.matcher()?);
            match self.peek() {
                Tok::Comma => {
                    self.next();
                }
                Tok::RBrace => {}
                _ => return Err(self.unexpected("\",\" or \"}\"")),
            }
        }
        self.next();
        if !self.allow_empty_selector && matchers.iter().all(|m| m.matches("")) {
            return Err(ParseError {
                line: 0,
                col: 0,
                msg: EMPTY_SELECTOR.into(),
            });
        }
        Ok(matchers)
    }

    fn match_op(&mut self) -> Option<MatchOp> {
        let op = match self.peek() {
            Tok::Eq => MatchOp::Eq,
            Tok::Neq => MatchOp::Neq,
            Tok::Re => MatchOp::Re,
            Tok::Nre => MatchOp::Nre,
            _ => return None,
        };
        self.next();
        Some(op)
    }

    fn matcher(&mut self) -> PResult<Matcher> {
        let name = self.ident("label name")?;
        let op = self
            .match_op()
            .ok_or_else(|| self.unexpected("\"=\", \"!=\", \"=~\" or \"!~\""))?;
        let pos = self.peek_pos();
        let value = self.string()?;
        Matcher::new(&name, op, &value).map_err(|e| ParseError {
            line: pos.0,
            col: pos.1,
            msg: format!("invalid regular expression: {e}"),
        })
    }

    fn pipeline(&mut self) -> PResult<Vec<Stage>> {
        let mut stages = Vec::new();
        loop {
            let op = match self.peek() {
                Tok::PipeExact => LineOp::Contains,
                Tok::Neq => LineOp::NotContains,
                Tok::PipeMatch => LineOp::Match,
                Tok::Nre => LineOp::NotMatch,
                Tok::PipePattern => {
                    return Err(self.err_here("pattern line filters (|>) are not supported"));
                }
                Tok::Pipe => {
                    self.next();
                    stages.push(self.pipe_stage()?);
                    continue;
                }
                _ => return Ok(stages),
            };
            self.next();
            stages.push(Stage::Line(self.line_filter(op)?));
        }
    }

    fn line_filter(&mut self, op: LineOp) -> PResult<LineFilter> {
        let mut patterns = Vec::new();
        let mut res = Vec::new();
        loop {
            let pos = self.peek_pos();
            if matches!(self.peek(), Tok::Ident(s) if s == "ip") {
                return Err(self.err_here("ip() line filters are not supported"));
            }
            let p = self.string()?;
            if matches!(op, LineOp::Match | LineOp::NotMatch) {
                res.push(compile(&p).map_err(|e| ParseError {
                    line: pos.0,
                    col: pos.1,
                    msg: format!("invalid regular expression: {e}"),
                })?);
            }
            patterns.push(p);
            if self.is_ident(0, "or") && matches!(self.peek_at(1), Tok::Str(_)) {
                self.next();
                continue;
            }
            return Ok(LineFilter { op, patterns, res });
        }
    }

    fn pipe_stage(&mut self) -> PResult<Stage> {
        let pos = self.peek_pos();
        if *self.peek() == Tok::LParen {
            return Ok(Stage::LabelFilter(self.label_filter_or()?));
        }
        let Tok::Ident(name) = self.peek().clone() else {
            return Err(self.unexpected("a pipeline stage"));
        };
        // `| name op value` is a label filter even when `name` is a stage name.
        if is_cmp_tok(self.peek_at(1)) {
            return Ok(Stage::LabelFilter(self.label_filter_or()?));
        }
        let unsupported = |what: &str| ParseError {
            line: pos.0,
            col: pos.1,
            msg: format!("{what} is not supported by logstream"),
        };
        self.next();
        match name.as_str() {
            "json" => {
                if matches!(self.peek(), Tok::Ident(_)) {
                    return Err(unsupported("json with parameters"));
                }
                Ok(Stage::Json)
            }
            "logfmt" => {
                if *self.peek() == Tok::Sub || matches!(self.peek(), Tok::Ident(_)) {
                    return Err(unsupported("logfmt with flags or parameters"));
                }
                Ok(Stage::Logfmt)
            }
            "regexp" => {
                let pos = self.peek_pos();
                let p = self.string()?;
                let re = compile(&p).map_err(|e| ParseError {
                    line: pos.0,
                    col: pos.1,
                    msg: format!("invalid regular expression: {e}"),
                })?;
                if re.capture_names().flatten().next().is_none() {
                    return Err(ParseError {
                        line: pos.0,
                        col: pos.1,
                        msg: "at least one named capture must be supplied".into(),
                    });
                }
                Ok(Stage::Regexp(re))
            }
            "drop" => Ok(Stage::Drop(self.label_refs()?)),
            "keep" => Ok(Stage::Keep(self.label_refs()?)),
            "line_format" => {
                let pos = self.peek_pos();
                let t = self.string()?;
                Ok(Stage::LineFormat(template(&t).map_err(|msg| {
                    ParseError {
                        line: pos.0,
                        col: pos.1,
                        msg,
                    }
                })?))
            }
            "label_format" => {
                let mut fmts = Vec::new();
                loop {
                    let dst = self.ident("label name")?;
                    self.expect(Tok::Eq)?;
                    let pos = self.peek_pos();
                    let f = match self.next() {
                        Tok::Ident(src) => LabelFmt::Rename(src),
                        Tok::Str(t) => {
                            LabelFmt::Template(template(&t).map_err(|msg| ParseError {
                                line: pos.0,
                                col: pos.1,
                                msg,
                            })?)
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.unexpected("IDENTIFIER or STRING"));
                        }
                    };
                    fmts.push((dst, f));
                    if *self.peek() == Tok::Comma {
                        self.next();
                    } else {
                        return Ok(Stage::LabelFormat(fmts));
                    }
                }
            }
            "decolorize" => Ok(Stage::Decolorize),
            "pattern" | "unpack" | "unwrap" | "distinct" => Err(unsupported(&format!("| {name}"))),
            _ => Err(ParseError {
                line: pos.0,
                col: pos.1,
                msg: format!(
                    "syntax error: unexpected IDENTIFIER {name:?}, expecting a parser (json, logfmt, regexp), a label filter, drop, keep, line_format or label_format"
                ),
            }),
        }
    }

    fn label_refs(&mut self) -> PResult<Vec<LabelRef>> {
        let mut out = Vec::new();
        loop {
            let name = self.ident("label name")?;
            if let Some(op) = self.match_op() {
                let pos = self.peek_pos();
                let value = self.string()?;
                out.push(LabelRef::Matcher(Matcher::new(&name, op, &value).map_err(
                    |e| ParseError {
                        line: pos.0,
                        col: pos.1,
                        msg: format!("invalid regular expression: {e}"),
                    },
                )?));
            } else {
                out.push(LabelRef::Name(name));
            }
            if *self.peek() == Tok::Comma {
                self.next();
            } else {
                return Ok(out);
            }
        }
    }

    fn label_filter_or(&mut self) -> PResult<LabelFilter> {
        let mut lhs = self.label_filter_and()?;
        while self.is_ident(0, "or") {
            self.next();
            let rhs = self.label_filter_and()?;
            lhs = LabelFilter::Or(Box::new(lhs), Box::new(rhs));
        }
        Ok(lhs)
    }

    fn label_filter_and(&mut self) -> PResult<LabelFilter> {
        let mut lhs = self.label_filter_atom()?;
        loop {
            let explicit = self.is_ident(0, "and")
                || (*self.peek() == Tok::Comma
                    && matches!(self.peek_at(1), Tok::Ident(_) | Tok::LParen));
            let juxtaposed = matches!(self.peek(), Tok::Ident(s) if s != "or" && s != "and" && s != "offset")
                && is_cmp_tok(self.peek_at(1));
            if explicit {
                self.next();
            } else if !juxtaposed {
                return Ok(lhs);
            }
            let rhs = self.label_filter_atom()?;
            lhs = LabelFilter::And(Box::new(lhs), Box::new(rhs));
        }
    }

    fn label_filter_atom(&mut self) -> PResult<LabelFilter> {
        if *self.peek() == Tok::LParen {
            self.next();
            let f = self.label_filter_or()?;
            self.expect(Tok::RParen)?;
            return Ok(f);
        }
        let name = self.ident("label name")?;
        let op_tok = self.next();
        let neg = if *self.peek() == Tok::Sub {
            self.next();
            true
        } else {
            false
        };
        let value_pos = self.peek_pos();
        let cmp = match op_tok {
            Tok::Eq | Tok::EqEq => Some(CmpOp::Eq),
            Tok::Neq => Some(CmpOp::Neq),
            Tok::Gt => Some(CmpOp::Gt),
            Tok::Ge => Some(CmpOp::Ge),
            Tok::Lt => Some(CmpOp::Lt),
            Tok::Le => Some(CmpOp::Le),
            _ => None,
        };
        match (op_tok, self.peek().clone()) {
            (op @ (Tok::Eq | Tok::EqEq | Tok::Neq | Tok::Re | Tok::Nre), Tok::Str(v)) if !neg => {
                self.next();
                let op = match op {
                    Tok::Eq | Tok::EqEq => MatchOp::Eq,
                    Tok::Neq => MatchOp::Neq,
                    Tok::Re => MatchOp::Re,
                    _ => MatchOp::Nre,
                };
                Matcher::new(&name, op, &v)
                    .map(LabelFilter::Str)
                    .map_err(|e| ParseError {
                        line: value_pos.0,
                        col: value_pos.1,
                        msg: format!("invalid regular expression: {e}"),
                    })
            }
            (_, Tok::Num(n)) if cmp.is_some() => {
                self.next();
                Ok(LabelFilter::Num {
                    name,
                    op: cmp.unwrap_or(CmpOp::Eq),
                    value: if neg { -n } else { n },
                })
            }
            (_, Tok::Dur(ns, _)) if cmp.is_some() => {
                self.next();
                let secs = ns as f64 / 1e9;
                Ok(LabelFilter::Dur {
                    name,
                    op: cmp.unwrap_or(CmpOp::Eq),
                    secs: if neg { -secs } else { secs },
                })
            }
            (Tok::Ident(f), _) if f == "ip" => {
                Err(self.err_here("ip() label filters are not supported"))
            }
            _ => Err(self.unexpected("STRING, NUMBER or DURATION")),
        }
    }
}

fn is_cmp_tok(t: &Tok) -> bool {
    matches!(
        t,
        Tok::Eq | Tok::EqEq | Tok::Neq | Tok::Re | Tok::Nre | Tok::Gt | Tok::Ge | Tok::Lt | Tok::Le
    )
}

/// Parses the small template language `line_format`/`label_format` accept.
fn template(t: &str) -> Result<Template, String> {
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(TplPart::Lit(rest[..open].to_string()));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| "template: unclosed action".to_string())?;
        let action = after[..close]
            .trim_matches(|c: char| c == '-' || c.is_whitespace())
            .trim();
        let part = if action == "__line__" {
            TplPart::Line
        } else if action == "__timestamp__" {
            TplPart::Timestamp
        } else if let Some(name) = action.strip_prefix('.')
            && !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            TplPart::Label(name.to_string())
        } else {
            return Err(format!(
                "template action {{{{{action}}}}} is not supported: logstream supports only {{{{.label}}}}, {{{{__line__}}}} and {{{{__timestamp__}}}}"
            ));
        };
        parts.push(part);
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(TplPart::Lit(rest.to_string()));
    }
    Ok(Template(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(q: &str) -> LogQuery {
        match parse(q).unwrap_or_else(|e| panic!("{q}: {e}")) {
            Query::Log(l) => l,
            Query::Metric(m) => panic!("{q}: metric {m:?}"),
        }
    }

    fn metric(q: &str) -> MetricExpr {
        match parse(q).unwrap_or_else(|e| panic!("{q}: {e}")) {
            Query::Metric(m) => m,
            Query::Log(l) => panic!("{q}: log {l:?}"),
        }
    }

    fn err(q: &str) -> String {
        match parse(q) {
            Err(e) => e.to_string(),
            Ok(v) => panic!("{q} parsed: {v:?}"),
        }
    }

    #[test]
    fn selectors_with_all_operators_and_anchored_regexes() {
        let q = log(r#"{a="b", c!="d", e=~"re.*", f!~"x|y"}"#);
        assert_eq!(q.matchers.len(), 4);
        let [a, c, e, f] = &q.matchers[..] else {
            panic!()
        };
        assert!(a.matches("b") && !a.matches("bb"));
        assert!(c.matches("x") && !c.matches("d"));
        assert!(
            e.matches("red") && !e.matches("are"),
            "anchored at the start"
        );
        assert!(f.matches("xy") && !f.matches("y"), "anchored at both ends");
    }

    #[test]
    fn go_escapes_backticks_and_comments() {
        let q = log("{file=\"a\\\"b\\\\c\\x41\\u00e9\\101\"} # a comment\n |= `raw\\n`");
        assert_eq!(q.matchers[0].value, "a\"b\\cAéA");
        let Stage::Line(f) = &q.pipeline[0] else {
            panic!()
        };
        assert_eq!(f.patterns, ["raw\\n"]);
    }

    #[test]
    fn chained_line_filters_including_the_empty_one() {
        let q = log(r#"{file="app.log"} |= `` |= "err" != "debug" |~ "(?i)time.?out" !~ "^x""#);
        assert_eq!(q.pipeline.len(), 5);
        let ok = |line: &str| {
            q.pipeline.iter().all(|s| match s {
                Stage::Line(f) => f.matches(line),
                _ => true,
            })
        };
        assert!(ok("an err: TIMEOUT"));
        assert!(!ok("an err: debug timeout"));
        assert!(!ok("x err timeout"));
        assert!(!ok("err but no match"));
        let q = log(r#"{a="b"} |= "one" or "two""#);
        let Stage::Line(f) = &q.pipeline[0] else {
            panic!()
        };
        assert!(f.matches("two") && !f.matches("three"));
    }

    #[test]
    fn parsers_label_filters_drop_and_formats() {
        let q = log(
            r#"{a="b"} | json | logfmt | status >= 400 and method=~"GET|POST", latency > 250ms or (x="1" y!="2") | __error__=`` | drop __error__, a="x" | keep a | line_format "{{.a}} {{ __line__ }}" | label_format b=a, c="{{.a}}!" | decolorize | regexp `(?P<w>\w+)`"#,
        );
        assert!(matches!(q.pipeline[0], Stage::Json));
        assert!(matches!(q.pipeline[1], Stage::Logfmt));
        let Stage::LabelFilter(LabelFilter::Or(l, r)) = &q.pipeline[2] else {
            panic!("{:?}", q.pipeline[2])
        };
        assert!(matches!(**l, LabelFilter::And(..)));
        assert!(matches!(**r, LabelFilter::And(..)));
        assert!(
            matches!(&q.pipeline[3], Stage::LabelFilter(LabelFilter::Str(m)) if m.name == "__error__" && m.value.is_empty())
        );
        let Stage::Drop(d) = &q.pipeline[4] else {
            panic!()
        };
        assert_eq!(d.len(), 2);
        assert!(matches!(q.pipeline[5], Stage::Keep(_)));
        let Stage::LineFormat(t) = &q.pipeline[6] else {
            panic!()
        };
        assert_eq!(
            t.0,
            [
                TplPart::Label("a".into()),
                TplPart::Lit(" ".into()),
                TplPart::Line
            ]
        );
        assert!(matches!(q.pipeline[7], Stage::LabelFormat(ref v) if v.len() == 2));
        assert!(matches!(q.pipeline[8], Stage::Decolorize));
        assert!(matches!(q.pipeline[9], Stage::Regexp(_)));
    }

    #[test]
    fn logs_volume_queries_grafana_sends() {
        for q in [
            r#"sum by (level) (count_over_time({file="app.log"} | drop __error__[2000ms]))"#,
            r#"sum by (level, detected_level) (count_over_time({file="app.log"} |= `` | drop __error__[15s]))"#,
            r#"sum by (level) (count_over_time({file="app.log"}[1m]))"#,
            r#"sum(rate({file="app.log"} | json | __error__="" [1h])) by (level)"#,
            r#"sum without (pod) (count_over_time({file=~".+"}[1d]))"#,
            r#"count_over_time(({file="a"} |= "x")[5m] offset 1m)"#,
            r#"count_over_time({file="a"}[5m] |= "x")"#,
        ] {
            metric(q);
        }
        let m = metric(
            r#"sum by (level) (count_over_time({file="app.log"} | drop __error__[2000ms]))"#,
        );
        let MetricExpr::Agg {
            op: AggOp::Sum,
            grouping: Some(g),
            inner,
        } = m
        else {
            panic!()
        };
        assert_eq!(g.labels, ["level"]);
        let MetricExpr::Range {
            func: RangeFn::CountOverTime,
            range_ns,
            query,
            ..
        } = *inner
        else {
            panic!()
        };
        assert_eq!(range_ns, 2_000_000_000);
        assert!(matches!(query.pipeline[0], Stage::Drop(_)));
    }

    #[test]
    fn health_check_arithmetic() {
        let m = metric("vector(1)+vector(1)");
        assert!(matches!(m, MetricExpr::Binary { op: BinOp::Add, .. }));
        assert!(matches!(
            metric("1 + 2 * 3"),
            MetricExpr::Binary { op: BinOp::Add, .. }
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2000ms"), Some(2_000_000_000));
        assert_eq!(parse_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("1d"), Some(86_400_000_000_000));
        assert_eq!(parse_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5parsecs"), None);
    }

    #[test]
    fn empty_compatible_selectors_are_rejected_like_loki() {
        for q in [
            "{}",
            r#"{a=~".*"}"#,
            r#"{a!="x"}"#,
            r#"sum(count_over_time({}[1m]))"#,
        ] {
            assert_eq!(err(q), format!("parse error : {EMPTY_SELECTOR}"), "{q}");
        }
        assert!(parse_selector("{}").is_ok());
        assert!(parse(r#"{a=~".+"}"#).is_ok());
    }

    #[test]
    fn errors_have_positions() {
        assert_eq!(
            err(r#"{a="b"} |= "x" | nope"#),
            "parse error at line 1, col 18: syntax error: unexpected IDENTIFIER \"nope\", expecting a parser (json, logfmt, regexp), a label filter, drop, keep, line_format or label_format"
        );
        assert_eq!(
            err("{a=\"b\"}\n  | json |"),
            "parse error at line 2, col 11: syntax error: unexpected end of input, expecting a pipeline stage"
        );
        assert!(err(r#"{a="b"#).starts_with("parse error at line 1, col 4: unterminated string"));
        assert!(
            err(r#"{a=~"("}"#)
                .starts_with("parse error at line 1, col 5: invalid regular expression")
        );
        assert!(
            err(r#"quantile_over_time(0.5, {a="b"} | unwrap x [1m])"#).contains("not supported")
        );
        assert!(err(r#"{a="b"} | pattern "<x>""#).contains("not supported"));
        assert!(err(r#"{a="b"} | line_format "{{ .a | upper }}""#).contains("not supported"));
        assert!(err(r#"{a="b"} + 1"#).contains("log query cannot be used here"));
        assert!(err("").contains("empty query"));
        assert!(err(r#"count_over_time({a="b"})"#).contains("expecting \"[\""));
    }
}
