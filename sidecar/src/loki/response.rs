//! Loki's response shapes: the success envelope, seconds as numbers and
//! values as strings for metrics, and 400 `text/plain` for every
//! [`LokiError`] ([`Refusal`], the one place that maps them).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use logstream_logql::eval::{self, Grid, Labels, Steps};
use logstream_logql::{LokiError, ParseError};

/// A refused Loki request as the HTTP response Loki gives: 400, `text/plain`,
/// the error's message and a newline. Handlers return `Result<Response,
/// Refusal>` and use `?` on anything that is a [`LokiError`].
#[derive(Debug)]
pub(super) struct Refusal(pub(super) LokiError);

impl From<LokiError> for Refusal {
    fn from(e: LokiError) -> Refusal {
        Refusal(e)
    }
}

impl From<ParseError> for Refusal {
    fn from(e: ParseError) -> Refusal {
        Refusal(e.into())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.0),
        )
            .into_response()
    }
}

pub(super) fn json<T: Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[derive(Serialize)]
struct Envelope<T: Serialize> {
    pub(super) status: &'static str,
    pub(super) data: T,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) warnings: Vec<String>,
}

pub(super) fn success<T: Serialize>(data: T, warnings: Vec<String>) -> Response {
    json(&Envelope {
        status: "success",
        data,
        warnings,
    })
}

/// A sample time: seconds as a JSON number, with millisecond precision.
#[derive(Clone, Copy)]
pub(super) struct Secs(pub(super) i64);

impl Serialize for Secs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = self.0.div_euclid(1_000_000);
        if ms % 1000 == 0 {
            s.serialize_i64(ms / 1000)
        } else {
            s.serialize_f64(ms as f64 / 1000.0)
        }
    }
}

#[derive(Serialize)]
pub(super) struct Data<R: Serialize> {
    #[serde(rename = "resultType")]
    pub(super) result_type: &'static str,
    pub(super) result: R,
}

#[derive(Serialize)]
pub(super) struct StreamOut<'a> {
    pub(super) stream: &'a Labels,
    pub(super) values: Vec<(String, &'a str)>,
}

#[derive(Serialize)]
struct MatrixOut<'a> {
    pub(super) metric: &'a Labels,
    pub(super) values: Vec<(Secs, String)>,
}

#[derive(Serialize)]
struct VectorOut<'a> {
    pub(super) metric: &'a Labels,
    pub(super) value: (Secs, String),
}

/// Renders a metric result: a matrix for range queries, a vector (or
/// scalar) for instant ones.
pub(super) fn metric_response(
    grid: &Grid,
    steps: &Steps,
    instant: bool,
    warnings: Vec<String>,
) -> Response {
    let empty = Labels::new();
    match (grid, instant) {
        (Grid::Scalar(v), true) => success(
            Data {
                result_type: "scalar",
                result: (Secs(steps.start), eval::format_value(*v)),
            },
            warnings,
        ),
        (Grid::Vector(series), true) => {
            let result: Vec<VectorOut<'_>> = series
                .iter()
                .filter_map(|s| {
                    let v = s.values.first().copied().flatten()?;
                    Some(VectorOut {
                        metric: &s.labels,
                        value: (Secs(steps.start), eval::format_value(v)),
                    })
                })
                .collect();
            success(
                Data {
                    result_type: "vector",
                    result,
                },
                warnings,
            )
        }
        (grid, false) => {
            let scalar;
            let series: &[eval::Series] = match grid {
                Grid::Vector(s) => s,
                Grid::Scalar(v) => {
                    scalar = [eval::Series {
                        labels: empty.clone(),
                        values: vec![Some(*v); steps.count],
                    }];
                    &scalar
                }
            };
            let result: Vec<MatrixOut<'_>> = series
                .iter()
                .map(|s| MatrixOut {
                    metric: &s.labels,
                    values: s
                        .values
                        .iter()
                        .enumerate()
                        .filter_map(|(i, v)| Some((Secs(steps.at(i)), eval::format_value((*v)?))))
                        .collect(),
                })
                .filter(|m| !m.values.is_empty())
                .collect();
            success(
                Data {
                    result_type: "matrix",
                    result,
                },
                warnings,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_refusal_is_a_plain_text_400_with_lokis_message() {
        let r = Refusal(LokiError::Param("limit must be a positive value".into())).into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"limit must be a positive value\n");
        let parse = logstream_logql::parse("{").unwrap_err();
        let r = Refusal::from(parse.clone()).into_response();
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        assert_eq!(body, format!("{parse}\n"));
    }

    #[test]
    fn sample_times_are_seconds_numbers() {
        assert_eq!(serde_json::to_string(&Secs(4_000_000_000)).unwrap(), "4");
        assert_eq!(
            serde_json::to_string(&Secs(1_700_000_000_123_456_789)).unwrap(),
            "1700000000.123"
        );
    }
}
