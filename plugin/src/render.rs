//! How a line is printed: `pretty` (a prefix naming pod, container and file
//! in a colour stable per pod), `raw` (the line alone) or `json` (one
//! object per line). Pure: the printer loop owns the terminal.

use logstream::aggregator::merge::Timed;
use logstream::protocol::{Level, Record, SourceId};
use serde::Serialize;

/// One line on its way to the terminal.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Line {
    pub pod: String,
    pub container: String,
    pub file: String,
    pub ts: String,
    #[serde(skip)]
    pub ts_ns: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    pub line: String,
    #[serde(skip)]
    pub sid: SourceId,
}

impl Line {
    pub fn from_record(r: Record) -> Line {
        Line {
            ts_ns: logstream::hub::parse_ts(&r.ts).unwrap_or_else(logstream::hub::now_ns),
            pod: r.source.pod,
            container: r.source.container,
            file: r.source.file,
            ts: r.ts,
            level: r.level,
            line: r.line,
            sid: r.sid,
        }
    }
}

/// Lines of one file keep their order; files are ordered by time.
impl Timed for Line {
    type Source = SourceId;
    fn source(&self) -> SourceId {
        self.sid
    }
    fn ts_ns(&self) -> i64 {
        self.ts_ns
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Pretty,
    Raw,
    Json,
}

#[derive(Clone, Copy, Debug)]
pub struct Style {
    pub output: Output,
    pub timestamps: bool,
    pub color: bool,
}

/// ANSI colours that read on dark and light terminals.
const COLORS: [u8; 6] = [32, 33, 34, 35, 36, 31];

/// FNV-1a: a colour per pod that stays the same across runs and machines.
fn color_of(pod: &str) -> u8 {
    let mut h: u32 = 0x811c_9dc5;
    for b in pod.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    COLORS[(h as usize) % COLORS.len()]
}

/// The printed form of one line, without its newline.
pub fn render(l: &Line, style: Style) -> String {
    let ts = if style.timestamps {
        format!("{} ", l.ts)
    } else {
        String::new()
    };
    match style.output {
        Output::Json => serde_json::to_string(l).unwrap_or_default(),
        Output::Raw => format!("{ts}{}", l.line),
        Output::Pretty => {
            let prefix = format!("{} {} {}", l.pod, l.container, l.file);
            if style.color {
                format!("\x1b[{}m{prefix}\x1b[0m {ts}{}", color_of(&l.pod), l.line)
            } else {
                format!("{prefix} {ts}{}", l.line)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(pod: &str, text: &str) -> Line {
        Line {
            pod: pod.into(),
            container: "app".into(),
            file: "app.log".into(),
            ts: "2026-12-04T10:00:00.000000001Z".into(),
            ts_ns: 1,
            level: Some(Level::Warn),
            line: text.into(),
            sid: SourceId(7),
        }
    }

    #[test]
    fn every_output_keeps_the_line_and_names_its_source() {
        let l = line("web-1", "disk \"full\"");
        let plain = Style {
            output: Output::Pretty,
            timestamps: false,
            color: false,
        };
        assert_eq!(render(&l, plain), "web-1 app app.log disk \"full\"");
        let raw = Style {
            output: Output::Raw,
            timestamps: true,
            ..plain
        };
        assert_eq!(
            render(&l, raw),
            "2026-12-04T10:00:00.000000001Z disk \"full\""
        );
        let json: serde_json::Value = serde_json::from_str(&render(
            &l,
            Style {
                output: Output::Json,
                ..plain
            },
        ))
        .unwrap();
        assert_eq!(json["pod"], "web-1");
        assert_eq!(json["line"], "disk \"full\"");
        assert_eq!(json["level"], "warn");
        assert_eq!(json["ts"], "2026-12-04T10:00:00.000000001Z");
    }

    #[test]
    fn a_pod_keeps_its_colour() {
        let c = Style {
            output: Output::Pretty,
            timestamps: false,
            color: true,
        };
        let a = render(&line("web-1", "x"), c);
        assert_eq!(a, render(&line("web-1", "y"), c).replace(" y", " x"));
        assert!(a.starts_with(&format!(
            "\x1b[{}mweb-1 app app.log\x1b[0m",
            color_of("web-1")
        )));
        // Not all pods of a Deployment share one colour.
        let colours: std::collections::BTreeSet<u8> =
            (0..20).map(|i| color_of(&format!("web-{i}"))).collect();
        assert!(colours.len() > 2, "{colours:?}");
    }

    #[test]
    fn the_merge_orders_pods_by_time_and_keeps_each_file_in_order() {
        use logstream::aggregator::merge::Reorder;
        let mut r: Reorder<Line> = Reorder::new(std::time::Duration::from_nanos(10));
        let mut a = line("a", "a1");
        a.ts_ns = 30;
        let mut b = line("b", "b1");
        b.ts_ns = 10;
        b.sid = SourceId(8);
        let mut a2 = line("a", "a2");
        a2.ts_ns = 20; // a clock step back within one file keeps file order
        r.push(a, 0);
        r.push(b, 1);
        r.push(a2, 2);
        let out: Vec<String> = r.pop_ready(12).into_iter().map(|l| l.line).collect();
        assert_eq!(out, ["b1", "a1", "a2"]);
    }
}
