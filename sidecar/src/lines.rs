//! Turns the bytes of a file into lines: holds a partial last line until its
//! newline arrives (or a flush), splits oversized lines into marked parts and
//! replaces invalid UTF-8.

use memchr::memchr;

use crate::protocol::SplitPart;

/// A line cut out of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    /// Flushed without a newline.
    pub partial: bool,
    pub split: Option<SplitPart>,
}

/// Incremental line splitter for one file.
#[derive(Debug)]
pub struct LineSplitter {
    max_line: usize,
    buf: Vec<u8>,
    /// Parts of the current oversized line already emitted.
    parts_out: u32,
}

impl LineSplitter {
    pub fn new(max_line: usize) -> Self {
        LineSplitter {
            max_line: max_line.max(16),
            buf: Vec::new(),
            parts_out: 0,
        }
    }

    /// Bytes waiting for a newline.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feeds bytes; appends every complete line (and oversized parts) to `out`.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Line>) {
        while let Some(nl) = memchr(b'\n', data) {
            let (head, tail) = data.split_at(nl);
            data = &tail[1..];
            if self.buf.is_empty() && self.parts_out == 0 && head.len() <= self.max_line {
                out.push(Line {
                    text: to_text(strip_cr(head)),
                    partial: false,
                    split: None,
                });
                continue;
            }
            self.append(head, out);
            let rest = std::mem::take(&mut self.buf);
            let split = (self.parts_out > 0).then_some(SplitPart::Last);
            self.parts_out = 0;
            out.push(Line {
                text: to_text(strip_cr(&rest)),
                partial: false,
                split,
            });
        }
        self.append(data, out);
    }

    /// Emits what is held as a partial line (timeout or shutdown).
    pub fn flush(&mut self, out: &mut Vec<Line>) {
        if self.buf.is_empty() {
            return;
        }
        let rest = std::mem::take(&mut self.buf);
        let split = (self.parts_out > 0).then_some(SplitPart::Last);
        self.parts_out = 0;
        out.push(Line {
            text: to_text(&rest),
            partial: true,
            split,
        });
    }

    /// Forgets held bytes (the file was truncated under us: they are gone).
    pub fn reset(&mut self, out: &mut Vec<Line>) {
        self.flush(out);
    }

    fn append(&mut self, mut data: &[u8], out: &mut Vec<Line>) {
        while self.buf.len() + data.len() > self.max_line {
            let take = self.max_line - self.buf.len();
            self.buf.extend_from_slice(&data[..take]);
            // Cut on a UTF-8 boundary so a character is never split in two
            // replacement characters.
            let keep = utf8_tail_len(&self.buf);
            let carry = self.buf.split_off(self.buf.len() - keep);
            data = &data[take..];
            let part = std::mem::replace(&mut self.buf, carry);
            let split = if self.parts_out == 0 {
                SplitPart::First
            } else {
                SplitPart::Middle
            };
            self.parts_out += 1;
            out.push(Line {
                text: to_text(&part),
                partial: false,
                split: Some(split),
            });
        }
        self.buf.extend_from_slice(data);
    }
}

/// Length of an incomplete UTF-8 sequence at the end of `b` (0 when complete).
fn utf8_tail_len(b: &[u8]) -> usize {
    for back in 1..=3.min(b.len()) {
        let byte = b[b.len() - back];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: look further back
        }
        let need = match byte {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

fn strip_cr(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r").unwrap_or(b)
}

fn to_text(b: &[u8]) -> String {
    // `from_utf8` validates a word at a time; `from_utf8_lossy` walks bytes
    // even when nothing needs replacing (11% of the tailer's instructions).
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(max: usize, chunks: &[&[u8]]) -> Vec<Line> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        out
    }

    fn plain(t: &str) -> Line {
        Line {
            text: t.into(),
            partial: false,
            split: None,
        }
    }

    #[test]
    fn partial_lines_wait_for_newline() {
        let out = lines(1024, &[b"hel", b"lo\nwor", b"ld\r\n"]);
        assert_eq!(out, vec![plain("hello"), plain("world")]);
    }

    #[test]
    fn flush_marks_partial() {
        let mut s = LineSplitter::new(1024);
        let mut out = Vec::new();
        s.push(b"no newline", &mut out);
        assert!(out.is_empty());
        s.flush(&mut out);
        assert_eq!(out[0].text, "no newline");
        assert!(out[0].partial);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn oversized_lines_are_split_with_markers() {
        let out = lines(16, &[&[b'a'; 40], b"\nok\n"]);
        let parts: Vec<_> = out.iter().map(|l| (l.text.len(), l.split)).collect();
        assert_eq!(
            parts,
            vec![
                (16, Some(SplitPart::First)),
                (16, Some(SplitPart::Middle)),
                (8, Some(SplitPart::Last)),
                (2, None)
            ]
        );
        let joined: String = out[..3].iter().map(|l| l.text.as_str()).collect();
        assert_eq!(joined, "a".repeat(40));
    }

    #[test]
    fn split_never_cuts_a_character() {
        let text = "é".repeat(20); // 40 bytes, 2 each
        let mut input = text.clone().into_bytes();
        input.insert(0, b'x'); // shift so a 16-byte cut lands mid-character
        input.push(b'\n');
        let out = lines(16, &[&input]);
        assert!(out.iter().all(|l| !l.text.contains('\u{FFFD}')), "{out:?}");
        let joined: String = out.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(joined, format!("x{text}"));
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let out = lines(1024, &[b"ok \xff\xfe bytes\n", b"\x00binary\x01\n"]);
        assert_eq!(out[0].text, "ok \u{FFFD}\u{FFFD} bytes");
        assert_eq!(out[1].text, "\u{0}binary\u{1}");
    }
}
