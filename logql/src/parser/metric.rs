//! The metric half of the parser: range functions (`count_over_time`,
//! `rate`, the `*_over_time` functions over `| unwrap`), vector
//! aggregations and their grouping.

use super::{PResult, Parser};
use crate::lexer::Tok;
use crate::*;

impl Parser {
    pub(super) fn duration(&mut self) -> PResult<i64> {
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
    pub(super) fn range_agg(&mut self) -> PResult<MetricExpr> {
        let fn_pos = self.peek_pos();
        let name = self.ident("function")?;
        let func = match name.as_str() {
            "count_over_time" => RangeFn::CountOverTime,
            "rate" => RangeFn::Rate,
            "bytes_over_time" => RangeFn::BytesOverTime,
            "sum_over_time" => RangeFn::SumOverTime,
            "avg_over_time" => RangeFn::AvgOverTime,
            "min_over_time" => RangeFn::MinOverTime,
            "max_over_time" => RangeFn::MaxOverTime,
            "first_over_time" => RangeFn::FirstOverTime,
            "last_over_time" => RangeFn::LastOverTime,
            "stddev_over_time" => RangeFn::StddevOverTime,
            "stdvar_over_time" => RangeFn::StdvarOverTime,
            "quantile_over_time" => RangeFn::QuantileOverTime,
            _ => RangeFn::BytesRate,
        };
        self.expect(Tok::LParen)?;
        let param = if func == RangeFn::QuantileOverTime {
            let q = self.number()?;
            self.expect(Tok::Comma)?;
            Some(q)
        } else {
            None
        };
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
        let (query, unwrap) = split_unwrap(query);
        if func.needs_unwrap() && unwrap.is_none() {
            return Err(ParseError {
                line: fn_pos.0,
                col: fn_pos.1,
                msg: format!("invalid aggregation {name} without unwrap"),
            });
        }
        if unwrap.is_some() && !func.needs_unwrap() && func != RangeFn::Rate {
            return Err(ParseError {
                line: fn_pos.0,
                col: fn_pos.1,
                msg: format!("invalid aggregation {name} with unwrap"),
            });
        }
        let grouping = if self.is_ident(0, "by") || self.is_ident(0, "without") {
            if unwrap.is_none() {
                return Err(self.err_here(format!(
                    "grouping is not allowed on {name}; use sum by (...) ({name}(...))"
                )));
            }
            self.grouping()?
        } else {
            None
        };
        Ok(MetricExpr::Range {
            func,
            query,
            range_ns,
            offset_ns,
            unwrap,
            param,
            grouping,
        })
    }

    pub(super) fn grouping(&mut self) -> PResult<Option<Grouping>> {
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

    pub(super) fn vector_agg(&mut self) -> PResult<MetricExpr> {
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
}

impl Parser {
    /// `topk(k, expr)`, `bottomk`, with `by`/`without` before or after.
    pub(super) fn topk(&mut self) -> PResult<MetricExpr> {
        let name = self.ident("aggregation")?;
        let before = self.grouping()?;
        self.expect(Tok::LParen)?;
        let pos = self.peek_pos();
        let k = self.number()?;
        if k < 1.0 || k.fract() != 0.0 || k > 1e9 {
            return Err(ParseError {
                line: pos.0,
                col: pos.1,
                msg: format!("invalid parameter for {name}: {k} is not a positive integer"),
            });
        }
        self.expect(Tok::Comma)?;
        let inner = self.expr(0)?;
        let inner = self.metric(inner)?;
        self.expect(Tok::RParen)?;
        let after = self.grouping()?;
        if before.is_some() && after.is_some() {
            return Err(self.err_here("syntax error: grouping given twice"));
        }
        Ok(MetricExpr::TopK {
            k: k as usize,
            bottom: name == "bottomk",
            grouping: before.or(after),
            inner: Box::new(inner),
        })
    }
}

impl Parser {
    /// `label_replace(expr, "dst", "replacement", "src", "regex")`.
    pub(super) fn label_replace(&mut self) -> PResult<MetricExpr> {
        self.next();
        self.expect(Tok::LParen)?;
        let inner = self.expr(0)?;
        let inner = self.metric(inner)?;
        let mut args = Vec::new();
        let mut re_pos = self.peek_pos();
        for _ in 0..4 {
            self.expect(Tok::Comma)?;
            re_pos = self.peek_pos();
            args.push(self.string()?);
        }
        self.expect(Tok::RParen)?;
        let [dst, replacement, src, re] = <[String; 4]>::try_from(args)
            .map_err(|_| self.err_here("label_replace takes 5 arguments"))?;
        let regex = compile(&format!("^(?:{re})$")).map_err(|e| ParseError {
            line: re_pos.0,
            col: re_pos.1,
            msg: format!("invalid regular expression in label_replace(): {e}"),
        })?;
        if dst.is_empty() || !dst.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
            return Err(self.err_here(format!(
                "invalid destination label name in label_replace(): {dst}"
            )));
        }
        Ok(MetricExpr::LabelReplace {
            inner: Box::new(inner),
            dst,
            replacement,
            src,
            regex,
        })
    }
}

/// Moves `| unwrap` and the stages after it out of a range's log query.
fn split_unwrap(mut q: LogQuery) -> (LogQuery, Option<Unwrap>) {
    let Some(i) = q
        .pipeline
        .iter()
        .position(|s| matches!(s, Stage::Unwrap(_)))
    else {
        return (q, None);
    };
    let mut rest = q.pipeline.split_off(i).into_iter();
    let Some(Stage::Unwrap(mut u)) = rest.next() else {
        return (q, None);
    };
    u.post = rest.collect();
    (q, Some(u))
}
