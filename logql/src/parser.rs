//! A recursive-descent parser from tokens to the AST.

use crate::lexer::{Tok, Token, tokenize};
use crate::*;

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

/// Names Loki knows that this parser deliberately does not evaluate, so the
/// error can say "not supported" rather than "unexpected".
const UNSUPPORTED_FUNCS: &[&str] = &[
    "absent_over_time",
    "rate_counter",
    "stddev",
    "stdvar",
    "sort",
    "sort_desc",
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
        let toks = tokenize(input)?;
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
            Node::Log(q, pos) => {
                if q.pipeline.iter().any(|s| matches!(s, Stage::Unwrap(_))) {
                    return Err(ParseError {
                        line: pos.0,
                        col: pos.1,
                        msg: "unwrap is only allowed inside a range aggregation such as sum_over_time(... | unwrap x [1m])".into(),
                    });
                }
                Query::Log(q)
            }
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
                Tok::EqEq => (
                    BinOp::Cmp {
                        op: CmpOp::Eq,
                        bool_mod: false,
                    },
                    0,
                ),
                Tok::Neq => (
                    BinOp::Cmp {
                        op: CmpOp::Neq,
                        bool_mod: false,
                    },
                    0,
                ),
                Tok::Gt => (
                    BinOp::Cmp {
                        op: CmpOp::Gt,
                        bool_mod: false,
                    },
                    0,
                ),
                Tok::Ge => (
                    BinOp::Cmp {
                        op: CmpOp::Ge,
                        bool_mod: false,
                    },
                    0,
                ),
                Tok::Lt => (
                    BinOp::Cmp {
                        op: CmpOp::Lt,
                        bool_mod: false,
                    },
                    0,
                ),
                Tok::Le => (
                    BinOp::Cmp {
                        op: CmpOp::Le,
                        bool_mod: false,
                    },
                    0,
                ),
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
                _ => break,
            };
            if prec < min_prec {
                break;
            }
            let op_pos = self.peek_pos();
            self.next();
            let op = match op {
                BinOp::Cmp { op, .. } if self.is_ident(0, "bool") => {
                    self.next();
                    BinOp::Cmp { op, bool_mod: true }
                }
                op => op,
            };
            let next_min = if op == BinOp::Pow { prec } else { prec + 1 };
            let rhs = self.expr(next_min)?;
            let lhs_m = self.metric(lhs)?;
            let rhs_m = self.metric(rhs)?;
            if let BinOp::Cmp {
                bool_mod: false, ..
            } = op
                && matches!(lhs_m, MetricExpr::Scalar(_))
                && matches!(rhs_m, MetricExpr::Scalar(_))
            {
                return Err(ParseError {
                    line: op_pos.0,
                    col: op_pos.1,
                    msg: "comparisons between scalars must use BOOL modifier".into(),
                });
            }
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
                "count_over_time" | "rate" | "bytes_over_time" | "bytes_rate" | "sum_over_time"
                | "avg_over_time" | "min_over_time" | "max_over_time" | "first_over_time"
                | "last_over_time" | "stddev_over_time" | "stdvar_over_time"
                | "quantile_over_time" => self.range_agg().map(Node::Metric),
                "sum" | "avg" | "min" | "max" | "count" => self.vector_agg().map(Node::Metric),
                "topk" | "bottomk" => self.topk().map(Node::Metric),
                "label_replace" => self.label_replace().map(Node::Metric),
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
                Tok::PipePattern => LineOp::Pattern,
                Tok::NotPattern => LineOp::NotPattern,
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
            if matches!(op, LineOp::Pattern | LineOp::NotPattern) {
                res.push(
                    compile(&crate::ast::pattern_regex(&p)).map_err(|e| ParseError {
                        line: pos.0,
                        col: pos.1,
                        msg: format!("invalid pattern: {e}"),
                    })?,
                );
            } else if matches!(op, LineOp::Match | LineOp::NotMatch) {
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
            "pattern" => {
                let pos = self.peek_pos();
                let p = self.string()?;
                let re = crate::ast::pattern_captures(&p)
                    .and_then(|re| compile(&re))
                    .map_err(|e| ParseError {
                        line: pos.0,
                        col: pos.1,
                        msg: format!("invalid pattern: {e}"),
                    })?;
                // Extracting a pattern is a regexp with named captures.
                Ok(Stage::Regexp(re))
            }
            "unpack" => Ok(Stage::Unpack),
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
            "unwrap" => self.unwrap_stage(),
            "distinct" => Err(unsupported(&format!("| {name}"))),
            _ => Err(ParseError {
                line: pos.0,
                col: pos.1,
                msg: format!(
                    "syntax error: unexpected IDENTIFIER {name:?}, expecting a parser (json, logfmt, regexp), a label filter, drop, keep, line_format or label_format"
                ),
            }),
        }
    }

    /// `| unwrap label`, `| unwrap bytes(label)`, `| unwrap duration(label)`
    /// (after `unwrap`).
    fn unwrap_stage(&mut self) -> PResult<Stage> {
        let Tok::Ident(first) = self.peek().clone() else {
            return Err(self.unexpected("IDENTIFIER"));
        };
        self.next();
        let conv = match first.as_str() {
            "bytes" => Some(UnwrapConv::Bytes),
            "duration" | "duration_seconds" => Some(UnwrapConv::Duration),
            _ => None,
        };
        let (label, conv) = match conv {
            Some(conv) if *self.peek() == Tok::LParen => {
                self.next();
                let label = self.ident("label name")?;
                self.expect(Tok::RParen)?;
                (label, conv)
            }
            _ => (first, UnwrapConv::Number),
        };
        Ok(Stage::Unwrap(Unwrap {
            label,
            conv,
            post: Vec::new(),
        }))
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

mod metric;
