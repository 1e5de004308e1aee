//! The memories event format: one JSON object per event payload, with exactly one key naming
//! the operation.
//!
//! ```text
//! {"stored":  {"id": "a", "version": 3, "value": <any JSON>, "tags": ["x", "y"], "pinned": true}}
//! {"deleted": {"id": "a", "version": 4}}
//! {"pin":     {"id": "a"}}
//! {"unpin":   {"id": "a"}}
//! {"tags":    {"id": "a", "add": ["x"], "remove": ["y"]}}
//! ```
//!
//! `version` is optional in `stored` and `deleted`, `pinned` is optional in `stored` (false
//! when absent), `add`/`remove` are optional in `tags` (empty when absent); every other field
//! is required and an unknown field is refused. `id` and tags are non-empty strings; a tag
//! must not hold NUL. `value` is kept as the exact bytes sent (borrowed, never re-encoded).
//!
//! **Two parsers, one language.** Most events are read by a small scanner for exactly these
//! shapes (strings without escapes, plain integers, a value checked against the JSON
//! grammar), which borrows everything and allocates nothing. Whatever it is not sure of — an escape, a duplicate or unknown field, a malformed number,
//! anything that is not plainly valid — it hands to serde (`serde_json` with the derived
//! structs below), which decides, so every accepted event means the same thing and every
//! refused one gets serde's message either way. The scanner only ever accepts a subset of
//! what serde accepts, with the same result (checked against serde in the tests below).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::FoldError;

/// The deepest nesting of a value the scanner checks (deeper goes to serde).
const FAST_DEPTH: u32 = 64;

/// Which operation an event is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Stored,
    Deleted,
    Pin,
    Unpin,
    Tags,
}

/// A list of strings from an event: the scanner's (the array's text between its brackets,
/// checked: strings without escapes, commas and whitespace), or serde's.
#[derive(Debug)]
pub(crate) enum Strs<'a> {
    Scanned(&'a str),
    Parsed(Vec<Cow<'a, str>>),
}

impl Default for Strs<'_> {
    fn default() -> Self {
        Strs::Scanned("")
    }
}

impl<'a> Strs<'a> {
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> + Clone {
        let (scanned, parsed): (&str, &[Cow<'a, str>]) = match self {
            Strs::Scanned(text) => (text, &[]),
            Strs::Parsed(v) => ("", v),
        };
        // `"a" , "b"` splits on its quotes into `["", "a", " , ", "b", ""]`: every other piece.
        scanned
            .split('"')
            .skip(1)
            .step_by(2)
            .chain(parsed.iter().map(|c| &**c))
    }

    pub(crate) fn contains(&self, s: &str) -> bool {
        self.iter().any(|t| t == s)
    }
}

/// One parsed memories event, borrowing from the payload. Fields an operation does not have
/// are left empty.
#[derive(Debug)]
pub(crate) struct Op<'a> {
    pub(crate) kind: Kind,
    pub(crate) id: Cow<'a, str>,
    /// `stored`, `deleted`.
    pub(crate) version: Option<u64>,
    /// `stored`: the value's exact text.
    pub(crate) value: &'a str,
    /// `stored`.
    pub(crate) pinned: bool,
    /// `stored`: its tags; `tags`: the ones to add.
    pub(crate) tags: Strs<'a>,
    /// `tags`: the ones to remove.
    pub(crate) remove: Strs<'a>,
}

impl<'a> Op<'a> {
    /// Parses and checks a payload; the error says what was wrong with it.
    pub(crate) fn parse(payload: &'a [u8]) -> Result<Op<'a>, FoldError> {
        let op = match fast(payload) {
            Some(op) => op,
            None => serde_op(payload)?,
        };
        if op.id.is_empty() {
            return Err(FoldError::new("the id is empty"));
        }
        if op
            .tags
            .iter()
            .chain(op.remove.iter())
            .any(|t| t.is_empty() || t.contains('\0'))
        {
            return Err(FoldError::new(format!(
                "memory {:?}: a tag is empty or holds NUL",
                op.id
            )));
        }
        Ok(op)
    }

    fn new(kind: Kind, id: Cow<'a, str>) -> Op<'a> {
        Op {
            kind,
            id,
            version: None,
            value: "",
            pinned: false,
            tags: Strs::default(),
            remove: Strs::default(),
        }
    }
}

// ---- serde: the reference, and the path for whatever the scanner is not sure of ----

#[derive(Debug, Deserialize)]
enum SerdeOp<'a> {
    #[serde(rename = "stored", borrow)]
    Stored(StoredOp<'a>),
    #[serde(rename = "deleted", borrow)]
    Deleted(DeletedOp<'a>),
    #[serde(rename = "pin", borrow)]
    Pin(IdOp<'a>),
    #[serde(rename = "unpin", borrow)]
    Unpin(IdOp<'a>),
    #[serde(rename = "tags", borrow)]
    Tags(TagsOp<'a>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredOp<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(borrow)]
    value: &'a RawValue,
    #[serde(borrow)]
    tags: Vec<Cow<'a, str>>,
    #[serde(default)]
    pinned: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeletedOp<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default)]
    version: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdOp<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TagsOp<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default, borrow)]
    add: Vec<Cow<'a, str>>,
    #[serde(default, borrow)]
    remove: Vec<Cow<'a, str>>,
}

fn serde_op(payload: &[u8]) -> Result<Op<'_>, FoldError> {
    let op: SerdeOp<'_> = serde_json::from_slice(payload)
        .map_err(|e| FoldError::new(format!("not a memories event: {e}")))?;
    Ok(match op {
        SerdeOp::Stored(s) => Op {
            version: s.version,
            value: s.value.get(),
            pinned: s.pinned,
            tags: Strs::Parsed(s.tags),
            ..Op::new(Kind::Stored, s.id)
        },
        SerdeOp::Deleted(d) => Op {
            version: d.version,
            ..Op::new(Kind::Deleted, d.id)
        },
        SerdeOp::Pin(p) => Op::new(Kind::Pin, p.id),
        SerdeOp::Unpin(p) => Op::new(Kind::Unpin, p.id),
        SerdeOp::Tags(t) => Op {
            tags: Strs::Parsed(t.add),
            remove: Strs::Parsed(t.remove),
            ..Op::new(Kind::Tags, t.id)
        },
    })
}

// ---- the scanner ----

/// The scanner's reading of a payload, or `None` when serde must decide.
fn fast(payload: &[u8]) -> Option<Op<'_>> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut s = Scan {
        text,
        b: payload,
        i: 0,
    };
    s.ws();
    s.eat(b'{')?;
    s.ws();
    let kind = match s.string()? {
        "stored" => Kind::Stored,
        "deleted" => Kind::Deleted,
        "pin" => Kind::Pin,
        "unpin" => Kind::Unpin,
        "tags" => Kind::Tags,
        _ => return None,
    };
    s.ws();
    s.eat(b':')?;
    s.ws();
    let mut op = Op::new(kind, Cow::Borrowed(""));
    // Fields seen: id, version, value, tags (or add), pinned, remove.
    let mut seen = [false; 6];
    s.items(b'{', b'}', |s| {
        let field = match (kind, s.string()?) {
            (_, "id") => 0,
            (Kind::Stored | Kind::Deleted, "version") => 1,
            (Kind::Stored, "value") => 2,
            (Kind::Stored, "tags") | (Kind::Tags, "add") => 3,
            (Kind::Stored, "pinned") => 4,
            (Kind::Tags, "remove") => 5,
            _ => return None,
        };
        if std::mem::replace(&mut seen[field], true) {
            return None;
        }
        s.ws();
        s.eat(b':')?;
        s.ws();
        match field {
            0 => op.id = Cow::Borrowed(s.string()?),
            1 => op.version = s.version()?,
            2 => op.value = s.value_text()?,
            3 => op.tags = s.list()?,
            4 => op.pinned = s.boolean()?,
            _ => op.remove = s.list()?,
        }
        Some(())
    })?;
    s.ws();
    s.eat(b'}')?;
    s.ws();
    if s.i != s.b.len() {
        return None;
    }
    let required = match kind {
        Kind::Stored => seen[0] && seen[2] && seen[3],
        _ => seen[0],
    };
    required.then_some(op)
}

struct Scan<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// A string without escapes or control characters; its text without the quotes.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match self.next()? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => {}
            }
        }
        // Quotes are ASCII, so both ends are on character boundaries.
        self.text.get(start..self.i - 1)
    }

    /// `null` or a plain integer that fits a u64.
    fn version(&mut self) -> Option<Option<u64>> {
        if self.b[self.i..].starts_with(b"null") {
            self.i += 4;
            return Some(None);
        }
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
            self.i += 1;
        }
        let digits = self.i - start;
        if digits == 0 || (digits > 1 && self.b[start] == b'0') {
            return None;
        }
        Some(Some(v))
    }

    fn boolean(&mut self) -> Option<bool> {
        for (word, v) in [(&b"true"[..], true), (&b"false"[..], false)] {
            if self.b[self.i..].starts_with(word) {
                self.i += word.len();
                return Some(v);
            }
        }
        None
    }

    /// An array of strings.
    fn list(&mut self) -> Option<Strs<'a>> {
        let start = self.i + 1;
        self.items(b'[', b']', |s| s.string().map(drop))?;
        Some(Strs::Scanned(self.text.get(start..self.i - 1)?))
    }

    /// `open`, items separated by commas, `close` (whitespace anywhere between).
    fn items(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            item(self)?;
            self.ws();
            match self.next()? {
                b',' => {}
                c if c == close => return Some(()),
                _ => return None,
            }
        }
    }

    /// One JSON value, checked against the grammar; its exact text.
    fn value_text(&mut self) -> Option<&'a str> {
        let start = self.i;
        self.value(0)?;
        self.text.get(start..self.i)
    }

    fn value(&mut self, depth: u32) -> Option<()> {
        if depth > FAST_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.items(b'{', b'}', |s| {
                s.string()?;
                s.ws();
                s.eat(b':')?;
                s.ws();
                s.value(depth + 1)
            }),
            b'[' => self.items(b'[', b']', |s| s.value(depth + 1)),
            b't' | b'f' | b'n' => {
                let rest = &self.b[self.i..];
                let word: &[u8] = [&b"true"[..], b"false", b"null"]
                    .into_iter()
                    .find(|w| rest.starts_with(w))?;
                self.i += word.len();
                Some(())
            }
            _ => self.number(),
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an op means, for comparing the two parsers.
    fn meaning(op: &Op<'_>) -> String {
        let list = |s: &Strs<'_>| s.iter().collect::<Vec<_>>().join("|");
        format!(
            "{:?} id={} v={:?} value={} pinned={} tags={} remove={}",
            op.kind,
            op.id,
            op.version,
            op.value,
            op.pinned,
            list(&op.tags),
            list(&op.remove)
        )
    }

    fn agrees(payload: &str) -> bool {
        let reference = serde_op(payload.as_bytes());
        match fast(payload.as_bytes()) {
            Some(op) => {
                let r = reference.unwrap_or_else(|e| panic!("{payload}: serde refused: {e}"));
                assert_eq!(meaning(&op), meaning(&r), "{payload}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn the_scanner_takes_the_usual_shapes_and_means_what_serde_means() {
        for p in [
            r#"{"stored":{"id":"m1","value":{"n":1.0,"at":3},"tags":["t1","t0"]}}"#,
            r#" { "stored" : { "tags" : [ ] , "pinned" : true , "value" : "x" , "id" : "a" , "version" : 7 } } "#,
            r#"{"stored":{"id":"a","version":null,"value":[1,-2.5e+3,0,true,false,null,{"":[]}],"tags":["\u00e9t\u00e9"]}}"#,
            "{\"stored\":{\"id\":\"\u{e9}\",\"value\":\"\u{e9}\\u00e9\",\"tags\":[\"x\"]}}",
            r#"{"deleted":{"id":"a"}}"#,
            r#"{"deleted":{"version":18446744073709551615,"id":"a"}}"#,
            r#"{"pin":{"id":"a"}}"#,
            "{\"unpin\":\n{\"id\":\"a\"}\t}\r\n",
            r#"{"tags":{"id":"a","add":["x"],"remove":["y","z"]}}"#,
            r#"{"tags":{"id":"a"}}"#,
            r#"{"stored":{"id":"","value":0,"tags":[""]}}"#,
        ] {
            agrees(p);
        }
        assert!(agrees(
            r#"{"stored":{"id":"m1","value":{"n":1.0,"at":3},"tags":["t1","t0"]}}"#
        ));
        assert!(agrees(r#"{"tags":{"id":"a","add":["x"],"remove":["y"]}}"#));
        assert!(agrees(
            r#"{"stored":{"id":"a","value":1,"tags":[ "1","2" ,"3", "4","5","6","7","8","9" ]}}"#
        ));
    }

    #[test]
    fn the_scanner_leaves_whatever_it_is_not_sure_of_to_serde() {
        for p in [
            "",
            "not json",
            "{}",
            r#"{"stored":{"id":"a"}}"#,
            r#"{"exploded":{"id":"a"}}"#,
            r#"{"pin":{"id":"a","extra":1}}"#,
            r#"{"pin":{"id":"a","id":"b"}}"#,
            r#"{"pin":{"id":"a"},"pin":{"id":"a"}}"#,
            r#"{"pin":{"id":"a"}} x"#,
            r#"{"pin":{"id":"a",}}"#,
            r#"{"pin":{"i\u0064":"a"}}"#,
            r#"{"pin":{"id":"a\"b"}}"#,
            "{\"pin\":{\"id\":\"a\u{1}\"}}",
            r#"{"deleted":{"id":"a","version":01}}"#,
            r#"{"deleted":{"id":"a","version":1.0}}"#,
            r#"{"deleted":{"id":"a","version":-1}}"#,
            r#"{"deleted":{"id":"a","version":18446744073709551616}}"#,
            r#"{"stored":{"id":"a","value":01,"tags":[]}}"#,
            r#"{"stored":{"id":"a","value":1.,"tags":[]}}"#,
            r#"{"stored":{"id":"a","value":[1,],"tags":[]}}"#,
            r#"{"stored":{"id":"a","value":tru,"tags":[]}}"#,
            r#"{"stored":{"id":"a","value":truex,"tags":[]}}"#,
            r#"{"stored":{"id":"a","value":1,"tags":null}}"#,
            r#"{"stored":{"id":"a","value":1,"tags":[],"pinned":null}}"#,
            r#"{"tags":{"id":"a","tags":["x"]}}"#,
        ] {
            assert!(!agrees(p), "{p}");
        }
        let deep = format!(
            r#"{{"stored":{{"id":"a","value":{}{},"tags":[]}}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(!agrees(&deep));
    }
}
