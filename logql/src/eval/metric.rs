//! Metric queries: range functions over a log query's lines (counts and
//! bytes, or `| unwrap` samples), vector aggregations and arithmetic, at
//! every step of a range.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{Direction, ERROR_LABEL, EntryChunks, Labels, run_pipeline, select};
use crate::{AggOp, BinOp, Grouping, LogQuery, MetricExpr, RangeFn, Unwrap, UnwrapConv};

// ---------------------------------------------------------------------------
// Metric queries

/// Evaluation times `start + i * step` for `i < count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steps {
    pub start: i64,
    pub step: i64,
    pub count: usize,
}

impl Steps {
    pub fn instant(t: i64) -> Steps {
        Steps {
            start: t,
            step: 1,
            count: 1,
        }
    }

    pub fn at(&self, i: usize) -> i64 {
        self.start + self.step * i as i64
    }

    pub fn last(&self) -> i64 {
        self.at(self.count.saturating_sub(1))
    }
}

/// One time series; `values[i]` is the sample at step `i`, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub values: Vec<Option<f64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Grid {
    Scalar(f64),
    Vector(Vec<Series>),
}

/// The window of entries a metric expression needs for `steps`: `[from, to]`.
pub fn needed_window(expr: &MetricExpr, steps: &Steps) -> (i64, i64) {
    (
        steps.start.saturating_sub(expr.lookback_ns()),
        steps.last().saturating_add(expr.lookahead_ns()),
    )
}

/// Evaluates a metric expression at every step.
pub fn metric_query<C: EntryChunks + ?Sized>(
    expr: &MetricExpr,
    entries: &C,
    steps: &Steps,
) -> Result<Grid, crate::LokiError> {
    Ok(match expr {
        MetricExpr::Scalar(n) => Grid::Scalar(*n),
        MetricExpr::Vector(n) => Grid::Vector(vec![Series {
            labels: Labels::new(),
            values: vec![Some(*n); steps.count],
        }]),
        MetricExpr::Range {
            func,
            query,
            range_ns,
            offset_ns,
            unwrap: None,
            ..
        } => Grid::Vector(range_fn(
            *func, query, *range_ns, *offset_ns, entries, steps,
        )?),
        MetricExpr::Range {
            func,
            query,
            range_ns,
            offset_ns,
            unwrap: Some(u),
            param,
            grouping,
        } => Grid::Vector(unwrapped_fn(
            &Unwrapped {
                func: *func,
                param: *param,
                query,
                unwrap: u,
                grouping: grouping.as_ref(),
                range_ns: *range_ns,
                offset_ns: *offset_ns,
            },
            entries,
            steps,
        )?),
        MetricExpr::Agg {
            op,
            grouping,
            inner,
        } => match metric_query(inner, entries, steps)? {
            Grid::Vector(series) => Grid::Vector(aggregate(*op, grouping.as_ref(), series, steps)),
            Grid::Scalar(_) => {
                return Err(crate::LokiError::Query(
                    "expected a range vector or instant vector, got a scalar".into(),
                ));
            }
        },
        MetricExpr::LabelReplace {
            inner,
            dst,
            replacement,
            src,
            regex,
        } => match metric_query(inner, entries, steps)? {
            Grid::Vector(series) => Grid::Vector(
                series
                    .into_iter()
                    .map(|mut s| {
                        let value = s.labels.get(src).map_or("", String::as_str);
                        if let Some(caps) = regex.captures(value) {
                            let mut out = String::new();
                            caps.expand(replacement, &mut out);
                            if out.is_empty() {
                                s.labels.remove(dst);
                            } else {
                                s.labels.insert(dst.clone(), out);
                            }
                        }
                        s
                    })
                    .collect(),
            ),
            Grid::Scalar(_) => {
                return Err(crate::LokiError::Query(
                    "expected a range vector or instant vector, got a scalar".into(),
                ));
            }
        },
        MetricExpr::TopK {
            k,
            bottom,
            grouping,
            inner,
        } => match metric_query(inner, entries, steps)? {
            Grid::Vector(series) => {
                Grid::Vector(topk(*k, *bottom, grouping.as_ref(), series, steps))
            }
            Grid::Scalar(_) => {
                return Err(crate::LokiError::Query(
                    "expected a range vector or instant vector, got a scalar".into(),
                ));
            }
        },
        MetricExpr::Binary { op, lhs, rhs } => binary(
            *op,
            metric_query(lhs, entries, steps)?,
            metric_query(rhs, entries, steps)?,
        ),
    })
}

/// A series' labels and its (time, bytes) points.
type Points = (Arc<Labels>, Vec<(i64, u64)>);

fn range_fn(
    func: RangeFn,
    q: &LogQuery,
    range_ns: i64,
    offset_ns: i64,
    entries: &(impl EntryChunks + ?Sized),
    steps: &Steps,
) -> Result<Vec<Series>, crate::LokiError> {
    // Window for step t: (t - offset - range, t - offset].
    let from = steps
        .start
        .saturating_sub(offset_ns)
        .saturating_sub(range_ns)
        .saturating_add(1);
    let to = steps.last().saturating_sub(offset_ns).saturating_add(1);
    let mut by_series: HashMap<Arc<Labels>, Vec<(i64, u64)>> = HashMap::new();
    entries.each_chunk(
        from,
        to,
        Direction::Forward,
        &mut |_, _| true,
        &mut |chunk| {
            // Rows of one stream share their labels' Arc within a chunk (a
            // pipeline that changes no label keeps it): grouped by its
            // address first, a label set is hashed once per chunk, not once
            // per line.
            let mut local: HashMap<*const Labels, Points> = HashMap::new();
            for r in select(q, chunk, from, to) {
                local
                    .entry(Arc::as_ptr(&r.labels))
                    .or_insert_with(|| (r.labels.clone(), Vec::new()))
                    .1
                    .push((r.ts_ns, r.line.len() as u64));
            }
            for (_, (labels, points)) in local {
                by_series.entry(labels).or_default().extend(points);
            }
        },
    )?;
    let secs = range_ns as f64 / 1e9;
    let mut out: Vec<Series> = by_series
        .into_iter()
        .map(|(labels, mut points)| {
            // Chunks of a store arrive nearly in time order: often sorted.
            if !points.is_sorted() {
                points.sort_unstable();
            }
            let mut prefix = Vec::with_capacity(points.len() + 1);
            prefix.push(0u64);
            let mut acc = 0u64;
            for (_, b) in &points {
                acc += b;
                prefix.push(acc);
            }
            let values = (0..steps.count)
                .map(|i| {
                    let hi_t = steps.at(i) - offset_ns;
                    let lo_t = hi_t - range_ns;
                    let lo = points.partition_point(|(ts, _)| *ts <= lo_t);
                    let hi = points.partition_point(|(ts, _)| *ts <= hi_t);
                    if hi <= lo {
                        return None;
                    }
                    let count = (hi - lo) as f64;
                    let bytes =
                        prefix.get(hi).copied().unwrap_or(0) - prefix.get(lo).copied().unwrap_or(0);
                    Some(match func {
                        RangeFn::CountOverTime => count,
                        RangeFn::Rate => count / secs,
                        RangeFn::BytesOverTime => bytes as f64,
                        // The parser lets no other function here without unwrap.
                        _ => bytes as f64 / secs,
                    })
                })
                .collect();
            Series {
                labels: Arc::unwrap_or_clone(labels),
                values,
            }
        })
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}

/// A range function over unwrapped samples.
struct Unwrapped<'a> {
    func: RangeFn,
    param: Option<f64>,
    query: &'a LogQuery,
    unwrap: &'a Unwrap,
    grouping: Option<&'a Grouping>,
    range_ns: i64,
    offset_ns: i64,
}

/// An unwrapped label's value as a sample.
fn sample(v: &str, conv: UnwrapConv) -> Option<f64> {
    let v = v.trim();
    match conv {
        UnwrapConv::Number => v.parse::<f64>().ok(),
        UnwrapConv::Duration => crate::parse_duration(v).map(|ns| ns as f64 / 1e9),
        UnwrapConv::Bytes => {
            let at = v
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(v.len());
            let n: f64 = v[..at].parse().ok()?;
            let mult = match v[at..].trim().to_ascii_uppercase().as_str() {
                "" | "B" => 1.0,
                "KB" => 1e3,
                "MB" => 1e6,
                "GB" => 1e9,
                "TB" => 1e12,
                "KIB" => 1024.0,
                "MIB" => 1024.0 * 1024.0,
                "GIB" => 1024.0 * 1024.0 * 1024.0,
                "TIB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
                _ => return None,
            };
            Some(n * mult)
        }
    }
}

/// The labels of `l` a grouping keeps: `by` the listed ones, `without`
/// the others.
fn grouped(l: &Labels, g: &Grouping) -> Labels {
    l.iter()
        .filter(|(k, _)| g.labels.contains(k) != g.without)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The group of a series under a vector aggregation (`sum`, `topk`...):
/// without a grouping, all series are one group.
fn group_key(l: &Labels, g: Option<&Grouping>) -> Labels {
    g.map_or_else(Labels::new, |g| grouped(l, g))
}

/// `sum_over_time` and its kin (and `rate`) over `| unwrap` samples. As in
/// Loki, the unwrapped label leaves the series' labels, and a sample that
/// does not convert is an error for the query unless a label filter after
/// the unwrap drops it (`| __error__=""`).
fn unwrapped_fn(
    u: &Unwrapped<'_>,
    entries: &(impl EntryChunks + ?Sized),
    steps: &Steps,
) -> Result<Vec<Series>, crate::LokiError> {
    let from = steps
        .start
        .saturating_sub(u.offset_ns)
        .saturating_sub(u.range_ns)
        .saturating_add(1);
    let to = steps.last().saturating_sub(u.offset_ns).saturating_add(1);
    let mut by_series: HashMap<Labels, Vec<(i64, f64)>> = HashMap::new();
    let mut failed: Option<crate::LokiError> = None;
    entries.each_chunk(from, to, Direction::Forward, &mut |_, _| true, &mut |chunk| {
        if failed.is_some() {
            return;
        }
        for r in select(u.query, chunk, from, to) {
            let mut labels = Arc::unwrap_or_clone(r.labels);
            let value = labels
                .remove(&u.unwrap.label)
                .and_then(|v| sample(&v, u.unwrap.conv));
            if value.is_none() {
                labels.insert(ERROR_LABEL.into(), "SampleExtractionErr".into());
            }
            if !u.unwrap.post.is_empty() {
                let Some((_, changed)) = run_pipeline(&u.unwrap.post, &labels, &r.line, r.ts_ns)
                else {
                    continue;
                };
                if let Some(c) = changed {
                    labels = c;
                }
            }
            if let Some(err) = labels.get(ERROR_LABEL) {
                failed = Some(crate::LokiError::Query(format!(
                    "pipeline error: '{err}' for series: '{labels:?}'. Use a label filter to intentionally skip this error. (e.g | __error__!=\"{err}\")"
                )));
                return;
            }
            let Some(v) = value else { continue };
            by_series
                .entry(match u.grouping {
                    None => labels,
                    Some(g) => grouped(&labels, g),
                })
                .or_default()
                .push((r.ts_ns, v));
        }
    })?;
    if let Some(e) = failed {
        return Err(e);
    }
    let secs = u.range_ns as f64 / 1e9;
    let mut out: Vec<Series> = by_series
        .into_iter()
        .map(|(labels, mut points)| {
            points.sort_by_key(|p| p.0);
            let values = (0..steps.count)
                .map(|i| {
                    let hi_t = steps.at(i) - u.offset_ns;
                    let lo_t = hi_t - u.range_ns;
                    let lo = points.partition_point(|(ts, _)| *ts <= lo_t);
                    let hi = points.partition_point(|(ts, _)| *ts <= hi_t);
                    let w: Vec<f64> = points.get(lo..hi)?.iter().map(|p| p.1).collect();
                    over_time(u.func, u.param, &w, secs)
                })
                .collect();
            Series { labels, values }
        })
        .collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(out)
}

/// One window's value of a function over samples (in time order).
fn over_time(func: RangeFn, param: Option<f64>, w: &[f64], secs: f64) -> Option<f64> {
    let (first, last) = (*w.first()?, *w.last()?);
    let n = w.len() as f64;
    let sum: f64 = w.iter().sum();
    let mean = sum / n;
    let var = w.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    Some(match func {
        RangeFn::SumOverTime => sum,
        RangeFn::AvgOverTime => mean,
        RangeFn::MinOverTime => w.iter().copied().fold(f64::INFINITY, f64::min),
        RangeFn::MaxOverTime => w.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        RangeFn::FirstOverTime => first,
        RangeFn::LastOverTime => last,
        RangeFn::StddevOverTime => var.sqrt(),
        RangeFn::StdvarOverTime => var,
        RangeFn::QuantileOverTime => quantile(param.unwrap_or(0.5), w),
        RangeFn::Rate => sum / secs,
        RangeFn::CountOverTime => n,
        RangeFn::BytesOverTime | RangeFn::BytesRate => return None,
    })
}

/// Prometheus's φ-quantile: linear interpolation between ranks; φ outside
/// [0, 1] is ±∞.
fn quantile(phi: f64, w: &[f64]) -> f64 {
    if phi < 0.0 {
        return f64::NEG_INFINITY;
    }
    if phi > 1.0 {
        return f64::INFINITY;
    }
    let mut v = w.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = phi * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    let (a, b) = (
        v.get(lo).copied().unwrap_or(0.0),
        v.get(hi).copied().unwrap_or(0.0),
    );
    a + (b - a) * (rank - lo as f64)
}

#[derive(Clone, Copy)]
struct Acc {
    sum: f64,
    count: f64,
    min: f64,
    max: f64,
}

fn aggregate(op: AggOp, g: Option<&Grouping>, series: Vec<Series>, steps: &Steps) -> Vec<Series> {
    let mut groups: BTreeMap<Labels, Vec<Option<Acc>>> = BTreeMap::new();
    for s in series {
        let key = group_key(&s.labels, g);
        let accs = groups.entry(key).or_insert_with(|| vec![None; steps.count]);
        for (acc, v) in accs.iter_mut().zip(&s.values) {
            if let Some(v) = v {
                *acc = Some(match acc {
                    None => Acc {
                        sum: *v,
                        count: 1.0,
                        min: *v,
                        max: *v,
                    },
                    Some(a) => Acc {
                        sum: a.sum + v,
                        count: a.count + 1.0,
                        min: a.min.min(*v),
                        max: a.max.max(*v),
                    },
                });
            }
        }
    }
    groups
        .into_iter()
        .map(|(labels, accs)| Series {
            labels,
            values: accs
                .into_iter()
                .map(|a| {
                    a.map(|a| match op {
                        AggOp::Sum => a.sum,
                        AggOp::Avg => a.sum / a.count,
                        AggOp::Min => a.min,
                        AggOp::Max => a.max,
                        AggOp::Count => a.count,
                    })
                })
                .collect(),
        })
        .filter(|s| s.values.iter().any(Option::is_some))
        .collect()
}

/// Per step and group, the `k` highest (`bottom`: lowest) samples keep
/// their values; the others are dropped at that step.
fn topk(
    k: usize,
    bottom: bool,
    g: Option<&Grouping>,
    mut series: Vec<Series>,
    steps: &Steps,
) -> Vec<Series> {
    let mut groups: BTreeMap<Labels, Vec<usize>> = BTreeMap::new();
    for (i, s) in series.iter().enumerate() {
        groups.entry(group_key(&s.labels, g)).or_default().push(i);
    }
    for members in groups.values() {
        for step in 0..steps.count {
            let mut ranked: Vec<(f64, usize)> = members
                .iter()
                .filter_map(|&i| Some((series.get(i)?.values.get(step).copied().flatten()?, i)))
                .collect();
            ranked.sort_by(|a, b| {
                let o = a.0.total_cmp(&b.0);
                if bottom { o } else { o.reverse() }
            });
            for &(_, i) in ranked.iter().skip(k) {
                if let Some(v) = series.get_mut(i).and_then(|s| s.values.get_mut(step)) {
                    *v = None;
                }
            }
        }
    }
    series.retain(|s| s.values.iter().any(Option::is_some));
    series
}

fn binary(op: BinOp, lhs: Grid, rhs: Grid) -> Grid {
    let map = |series: Vec<Series>, f: &dyn Fn(f64) -> Option<f64>| {
        series
            .into_iter()
            .map(|s| Series {
                labels: s.labels,
                values: s.values.into_iter().map(|v| v.and_then(f)).collect(),
            })
            .filter(|s| s.values.iter().any(Option::is_some))
            .collect()
    };
    match (lhs, rhs) {
        // The parser lets a comparison between scalars through only with
        // `bool`, which always has a value.
        (Grid::Scalar(a), Grid::Scalar(b)) => Grid::Scalar(op.apply(a, b, a).unwrap_or(f64::NAN)),
        (Grid::Vector(v), Grid::Scalar(b)) => Grid::Vector(map(v, &|a| op.apply(a, b, a))),
        (Grid::Scalar(a), Grid::Vector(v)) => Grid::Vector(map(v, &|b| op.apply(a, b, b))),
        (Grid::Vector(l), Grid::Vector(r)) => {
            let right: HashMap<&Labels, &Series> = r.iter().map(|s| (&s.labels, s)).collect();
            Grid::Vector(
                l.into_iter()
                    .filter_map(|s| {
                        let other = right.get(&s.labels)?;
                        let values = s
                            .values
                            .iter()
                            .zip(&other.values)
                            .map(|(a, b)| op.apply((*a)?, (*b)?, (*a)?))
                            .collect();
                        Some(Series {
                            labels: s.labels,
                            values,
                        })
                    })
                    .filter(|s| s.values.iter().any(Option::is_some))
                    .collect(),
            )
        }
    }
}

/// Formats a sample value the way Prometheus and Loki do (Go's
/// `FormatFloat(v, 'f', -1, 64)`, `+Inf`, `-Inf`, `NaN`).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}
