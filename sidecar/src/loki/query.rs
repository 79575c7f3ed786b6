//! `/query` and `/query_range`: a snapshot of the history, evaluated off the
//! async threads, as streams, a matrix or a vector.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;

use super::Loki;
use super::params::{bounds, direction, limit, params, step, time_param};
use super::response::{Data, Refusal, StreamOut, metric_response, success};
use super::select::{blocking, history_warning, snapshot};
use crate::hub::now_ns;
use crate::server::state::AppState;
use logstream_logql::eval::{self, Direction, Steps};
use logstream_logql::{self as logql, LogQuery, LokiError, MetricExpr, Query};

/// Loki's cap on points per series of a range query.
const MAX_POINTS: i64 = 11_000;

// ---------------------------------------------------------------------------
// Handlers

pub(super) async fn query_range(
    State(lk): State<Loki>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let p = params(raw, &body);
    let q = logql::parse(p.get("query").unwrap_or(""))?;
    let (start, end) = bounds(&p, now_ns())?;
    if end < start {
        return Err(LokiError::Param(
            "end timestamp must not be before or equal to start time".into(),
        )
        .into());
    }
    Ok(match q {
        Query::Log(q) => {
            let (limit, dir) = (limit(&p)?, direction(&p)?);
            log_response(&lk.app, q, start, end, limit, dir).await?
        }
        Query::Metric(m) => {
            let steps = range_steps(start, end, step(&p, start, end)?)?;
            metric_eval(&lk.app, m, steps, start, false).await?
        }
    })
}

/// Steps on multiples of `step`, the last one at or after `end` so the
/// newest lines are counted.
fn range_steps(start: i64, end: i64, step: i64) -> Result<Steps, LokiError> {
    if (end - start) / step > MAX_POINTS {
        return Err(LokiError::Limit(
            "exceeded maximum resolution of 11,000 points per time series. Try increasing the value of the step parameter".into(),
        ));
    }
    let first = start.div_euclid(step) * step;
    let last = end.div_euclid(step) * step + if end.rem_euclid(step) == 0 { 0 } else { step };
    Ok(Steps {
        start: first,
        step,
        count: ((last - first) / step) as usize + 1,
    })
}

async fn log_response(
    app: &Arc<AppState>,
    q: LogQuery,
    start: i64,
    end: i64,
    limit: usize,
    dir: Direction,
) -> Result<Response, Refusal> {
    let app = app.clone();
    let result = blocking(move || {
        let snap = snapshot(&app, start, end, &[&q], true);
        let r = eval::log_query(&q, &snap, start, end, limit, dir);
        // A result cut at `limit` carries no notice, as in Loki: Explore
        // asks for 1000 lines and says itself when it got that many.
        r.map(|r| (r, history_warning(&snap, start)))
    })
    .await;
    let (r, warnings) = match result {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return Err(e.into()),
        Err(resp) => return Ok(resp),
    };
    let result: Vec<StreamOut<'_>> = r
        .streams
        .iter()
        .map(|s| StreamOut {
            stream: &s.labels,
            values: s
                .values
                .iter()
                .map(|(ts, line)| (ts.to_string(), line.as_str()))
                .collect(),
        })
        .collect();
    Ok(success(
        Data {
            result_type: "streams",
            result,
        },
        warnings,
    ))
}

async fn metric_eval(
    app: &Arc<AppState>,
    m: MetricExpr,
    steps: Steps,
    start: i64,
    instant: bool,
) -> Result<Response, Refusal> {
    let app = app.clone();
    let result = blocking(move || {
        let (from, to) = eval::needed_window(&m, &steps);
        let snap = snapshot(&app, from, to, &m.log_queries(), m.reads_lines());
        eval::metric_query(&m, &snap, &steps).map(|g| (g, history_warning(&snap, start.min(from))))
    })
    .await;
    Ok(match result {
        Ok(Ok((grid, warnings))) => metric_response(&grid, &steps, instant, warnings),
        Ok(Err(e)) => return Err(e.into()),
        Err(resp) => resp,
    })
}

pub(super) async fn query(
    State(lk): State<Loki>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, Refusal> {
    let p = params(raw, &body);
    let q = logql::parse(p.get("query").unwrap_or(""))?;
    let t = time_param(&p, "time", now_ns())?;
    match q {
        Query::Log(_) => Err(LokiError::Query(
            "log queries are not supported as an instant query type, please change your query to a range query type".into(),
        )
        .into()),
        Query::Metric(m) => metric_eval(&lk.app, m, Steps::instant(t), t, true).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_steps_cover_the_end_and_cap_points() {
        let s = range_steps(1_000, 10_500, 1_000).unwrap();
        assert_eq!((s.start, s.step, s.count), (1_000, 1_000, 11));
        let s = range_steps(1_000, 10_000, 1_000).unwrap();
        assert_eq!(s.count, 10);
        assert!(matches!(
            range_steps(0, 11_001 * 1_000, 1_000),
            Err(LokiError::Limit(_))
        ));
    }
}
