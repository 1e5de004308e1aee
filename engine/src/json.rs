//! Strict reading of JSON configuration documents, before serde maps them onto typed structs.
//!
//! serde's derived structs are lenient in ways that make a config file mean something other
//! than what it says: a JSON array fills a struct's fields by position (`{"lane": [65536]}`
//! set `lane.capacity_bytes`), text after the document is ignored (`{"shards":2}{"shards":4}`),
//! and a duplicate key is reported against the whole document instead of the key. This module
//! reads the text once into a [`serde_json::Value`] tree and refuses, naming the dotted path:
//! - anything but exactly one JSON value followed by whitespace;
//! - a key repeated within one object;
//! - a value that is not an object where the reference configuration has an object.
//!
//! Error texts may quote what the document said; [`clip`] cuts every quoted run to a short
//! prefix, so a hostile 600 KB value never comes back in an error message or a log line.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Quoted runs in error texts longer than this many characters are cut ...
const ECHO_CHARS_MAX: usize = 40;
/// ... to this many, followed by how long they were.
const ECHO_PREFIX_CHARS: usize = 24;
/// Longest error text, whatever it holds.
const ERROR_CHARS_MAX: usize = 600;
/// Deepest nesting read (serde_json's own limit is 128; configs are 3 deep).
const DEPTH_MAX: usize = 32;

/// Why a document was refused: the dotted path (or `(document)`) and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) field: String,
    pub(crate) what: String,
}

impl Refusal {
    fn new(field: impl Into<String>, what: impl Into<String>) -> Refusal {
        Refusal {
            field: clip(&field.into()),
            what: clip(&what.into()),
        }
    }
}

/// The path used when the problem is the document as a whole.
pub(crate) const DOCUMENT: &str = "(document)";

/// Reads `text` as exactly one JSON object with unique keys, whose values are objects wherever
/// `template` (the serialised reference configuration) holds an object.
pub(crate) fn read_object(text: &str, template: &Value) -> Result<Value, Refusal> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = Strict {
        path: String::new(),
        depth: 0,
        duplicate: &duplicate,
    };
    let value = match seed.deserialize(&mut de) {
        Ok(v) => v,
        Err(e) => {
            if let Some(path) = duplicate.into_inner() {
                return Err(Refusal::new(path, "this key appears more than once"));
            }
            return Err(Refusal::new(DOCUMENT, e.to_string()));
        }
    };
    de.end().map_err(|e| {
        Refusal::new(
            DOCUMENT,
            format!("text after the JSON document ({e}); a config file holds one object"),
        )
    })?;
    check_shape(&value, template, "")?;
    Ok(value)
}

/// Requires an object wherever the template has one.
fn check_shape(value: &Value, template: &Value, path: &str) -> Result<(), Refusal> {
    let Value::Object(expected) = template else {
        return Ok(());
    };
    let Value::Object(given) = value else {
        let field = if path.is_empty() { DOCUMENT } else { path };
        return Err(Refusal::new(
            field,
            format!("expected an object, found {}", kind(value)),
        ));
    };
    for (key, v) in given {
        if let Some(t) = expected.get(key) {
            check_shape(v, t, &join(path, key))?;
        }
    }
    Ok(())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Cuts quoted runs (between backticks or double quotes) longer than [`ECHO_CHARS_MAX`] to a
/// prefix and their length, and the whole text to [`ERROR_CHARS_MAX`] characters.
pub(crate) fn clip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len().min(ERROR_CHARS_MAX * 4));
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let close = (c == '`' || c == '"')
            .then(|| chars[i + 1..].iter().position(|&d| d == c))
            .flatten();
        match close {
            Some(len) if len > ECHO_CHARS_MAX => {
                out.push(c);
                out.extend(&chars[i + 1..i + 1 + ECHO_PREFIX_CHARS]);
                out.push_str(&format!("… ({len} characters)"));
                out.push(c);
                i += len + 2;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    if out.chars().count() > ERROR_CHARS_MAX {
        let cut: String = out.chars().take(ERROR_CHARS_MAX).collect();
        return format!("{cut}… (message cut)");
    }
    out
}

/// Deserialises any JSON value into a [`Value`], refusing duplicate keys (their path is left
/// in `duplicate`, since serde errors carry only text).
struct Strict<'a> {
    path: String,
    depth: usize,
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.depth > DEPTH_MAX {
            return Err(de::Error::custom(format!(
                "nested deeper than {DEPTH_MAX} levels"
            )));
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self.child(&items.len().to_string()))? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let child = self.child(&key);
            if out.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(child.path);
                return Err(de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(child)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

impl<'a> Strict<'a> {
    fn child(&self, key: &str) -> Strict<'a> {
        Strict {
            path: join(&self.path, key),
            depth: self.depth + 1,
            duplicate: self.duplicate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Value {
        serde_json::json!({"a": {"b": 1, "c": {"d": 2}}, "e": 3, "f": null})
    }

    #[test]
    fn arrays_where_objects_belong_and_trailing_text_are_refused() {
        let t = template();
        assert_eq!(read_object("[]", &t).unwrap_err().field, DOCUMENT);
        assert_eq!(read_object(r#"{"a": [1]}"#, &t).unwrap_err().field, "a");
        let r = read_object(r#"{"a": {"c": [2]}}"#, &t).unwrap_err();
        assert_eq!((r.field.as_str(), r.what.contains("array")), ("a.c", true));
        assert_eq!(read_object("{}}", &t).unwrap_err().field, DOCUMENT);
        let r = read_object(r#"{"e":2}{"e":4}"#, &t).unwrap_err();
        assert!(r.what.contains("after the JSON document"), "{r:?}");
        assert!(read_object(r#" {"a": {"b": 5}, "f": [1]} "#, &t).is_ok());
    }

    #[test]
    fn a_duplicate_key_is_named_by_its_path() {
        let r = read_object(r#"{"a": {"b": 1, "b": 2}}"#, &template()).unwrap_err();
        assert_eq!(r.field, "a.b");
        let r = read_object(r#"{"e": 1, "e": 1}"#, &template()).unwrap_err();
        assert_eq!(r.field, "e");
    }

    #[test]
    fn long_echoes_are_cut() {
        let long = "x".repeat(600_000);
        let text = format!("unknown variant `{long}`, expected `never`");
        let clipped = clip(&text);
        assert!(clipped.len() < 200, "{}", clipped.len());
        assert!(clipped.contains("(600000 characters)") && clipped.ends_with("`never`"));
        assert_eq!(clip("short `ok` \"fine\""), "short `ok` \"fine\"");
        let r = read_object(&format!("{{\"{long}\": 1}}"), &template());
        assert!(r.is_ok(), "unknown keys are serde's to refuse");
        let huge_field = Refusal::new(long.clone(), long);
        assert!(huge_field.field.len() <= ERROR_CHARS_MAX * 4 + 20);
        assert!(huge_field.what.len() <= ERROR_CHARS_MAX * 4 + 20);
    }
}
