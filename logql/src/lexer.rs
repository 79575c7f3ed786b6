//! Tokens of a query, with their line and column.

use crate::{ParseError, parse_duration};

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
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
    NotPattern,
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
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("IDENTIFIER {s:?}"),
            Tok::Str(s) => format!("STRING {s:?}"),
            Tok::Num(n) => format!("NUMBER {n}"),
            Tok::Dur(_, s) => format!("DURATION {s}"),
            Tok::Eof => "end of input".into(),
            other => format!("{:?}", other.text()),
        }
    }

    pub(crate) fn text(&self) -> &'static str {
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
            Tok::NotPattern => "!>",
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
pub(crate) struct Token {
    pub(crate) tok: Tok,
    pub(crate) line: usize,
    pub(crate) col: usize,
}

/// The tokens of `input`, ending with [`Tok::Eof`].
pub(crate) fn tokenize(input: &str) -> Result<Vec<Token>, ParseError> {
    Lexer {
        chars: input.char_indices().peekable(),
        src: input,
        line: 1,
        col: 1,
    }
    .tokens()
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
                    Some('>') => self.take(Tok::NotPattern),
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
