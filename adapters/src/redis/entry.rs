//! The stream entry format, both ways.
//!
//! An event is one entry of its shard's stream `{prefix}:{shard}`, with the explicit entry id
//! `{ts_ms}-{seq}` and the fields `id` (`{shard}:{seq}`), `ts` (nanoseconds, decimal), `data`
//! (the payload, byte for byte) and, for an event mirrored from another node, `origin`
//! (`{node:016x}:{shard}:{seq}`). Writing formats into one reused buffer; reading takes the
//! payload's bytes out of the reply without copying them.

use std::fmt::Write as _;

use bytes::Bytes;
use net_engine::Origin;
use redis::Value;

use crate::event::OutEvent;
use crate::source::SourceEvent;

/// Writes the entry id of `e` (`{ts_ms}-{seq}`) into `out`.
pub(crate) fn entry_id(out: &mut String, e: &OutEvent<'_>) {
    out.clear();
    let _ = write!(out, "{}-{}", e.ts_ns / 1_000_000, e.seq);
}

/// Writes the `id` field of `e` (`{shard}:{seq}`) into `out`.
pub(crate) fn id_field(out: &mut String, shard: u16, seq: u64) {
    out.clear();
    let _ = write!(out, "{shard}:{seq}");
}

/// Writes the `origin` field (`{node:016x}:{shard}:{seq}`) into `out`.
pub(crate) fn origin_field(out: &mut String, o: &Origin) {
    out.clear();
    let _ = write!(out, "{:016x}:{}:{}", o.node, o.shard, o.seq);
}

/// Whether `id` is a stream entry id `{ms}-{seq}` (two decimal u64s).
pub(crate) fn is_entry_id(id: &str) -> bool {
    match id.split_once('-') {
        Some((ms, seq)) => decimal::<u64>(ms).is_some() && decimal::<u64>(seq).is_some(),
        None => false,
    }
}

/// Digits only (no sign, no space: `str::parse` would take `+5`), within the type's range.
fn decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// One entry of a stream reply: its id and its fields, as Redis sent them.
#[derive(Debug)]
pub(crate) struct RawEntry {
    pub(crate) id: String,
    pub(crate) fields: Vec<Value>,
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

/// Splits an XRANGE/XREVRANGE reply into its entries; `Err` names what is not an entry list
/// (a reply of another shape means the connection or the server is not what we think).
pub(crate) fn entries(reply: Value) -> Result<Vec<RawEntry>, String> {
    let list = match reply {
        Value::Array(list) => list,
        Value::Nil => return Ok(Vec::new()),
        other => return Err(format!("expected a list of entries, got {other:?}")),
    };
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let Value::Array(mut pair) = item else {
            return Err(format!("expected an entry [id, fields], got {item:?}"));
        };
        if pair.len() != 2 {
            return Err(format!(
                "expected an entry [id, fields], got {} items",
                pair.len()
            ));
        }
        let fields = pair.pop();
        let id = pair.pop();
        let id = match id.as_ref().and_then(text) {
            Some(id) => id.to_owned(),
            None => return Err(format!("expected an entry id, got {id:?}")),
        };
        let fields = match fields {
            Some(Value::Array(f)) if f.len() % 2 == 0 => f,
            Some(Value::Array(f)) => {
                return Err(format!(
                    "entry {id}: an odd number ({}) of field/value items",
                    f.len()
                ));
            }
            Some(Value::Map(m)) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            Some(Value::Nil) => Vec::new(),
            other => return Err(format!("entry {id}: expected its fields, got {other:?}")),
        };
        out.push(RawEntry { id, fields });
    }
    Ok(out)
}

/// Parses an `id` field `{shard}:{seq}`.
pub(crate) fn parse_id(text: &str) -> Option<(u16, u64)> {
    let (shard, seq) = text.split_once(':')?;
    Some((decimal(shard)?, decimal(seq)?))
}

fn parse_origin(text: &str) -> Option<Origin> {
    let mut parts = text.split(':');
    let node = parts.next()?;
    let shard = parts.next()?;
    let seq = parts.next()?;
    if parts.next().is_some() || node.len() != 16 || !node.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(Origin {
        node: u64::from_str_radix(node, 16).ok()?,
        shard: decimal(shard)?,
        seq: decimal(seq)?,
    })
}

impl RawEntry {
    /// The field named `name`; a field given twice is an error (which one is meant?).
    fn field(&self, name: &str) -> Result<Option<&Value>, String> {
        let mut found = None;
        for kv in self.fields.chunks_exact(2) {
            if text(&kv[0]) == Some(name) {
                if found.is_some() {
                    return Err(format!("its `{name}` field appears twice"));
                }
                found = Some(&kv[1]);
            }
        }
        Ok(found)
    }

    /// The `id` field as `(shard, seq)`; `Err` says what is wrong with it.
    pub(crate) fn event_id(&self) -> Result<(u16, u64), String> {
        let Some(v) = self.field("id")? else {
            return Err("it has no `id` field".into());
        };
        let Some(t) = text(v) else {
            return Err(format!("its `id` field is not text: {v:?}"));
        };
        parse_id(t).ok_or_else(|| format!("its `id` field `{t}` is not `<shard>:<seq>`"))
    }

    /// Decodes the event of `shard`'s stream; `Err` says what is wrong with the entry.
    pub(crate) fn decode(mut self, shard: u16) -> Result<SourceEvent, String> {
        let (id_shard, seq) = self.event_id()?;
        if id_shard != shard {
            return Err(format!(
                "its `id` field names shard {id_shard}, but it is in the stream of shard {shard}"
            ));
        }
        let ts_ns = match self.field("ts")? {
            None => return Err("it has no `ts` field".into()),
            Some(v) => match text(v).and_then(decimal::<u64>) {
                Some(ts) => ts,
                None => return Err(format!("its `ts` field is not a decimal u64: {v:?}")),
            },
        };
        let origin = match self.field("origin")? {
            None => None,
            Some(v) => match text(v).and_then(parse_origin) {
                Some(o) => Some(o),
                None => {
                    return Err(format!(
                        "its `origin` field is not `<node:016x>:<shard>:<seq>`: {v:?}"
                    ));
                }
            },
        };
        self.field("data")?;
        // The payload is moved out of the reply, not copied.
        let data = self
            .fields
            .chunks_exact(2)
            .position(|kv| text(&kv[0]) == Some("data"))
            .map(|i| std::mem::replace(&mut self.fields[2 * i + 1], Value::Nil));
        let payload = match data {
            None => return Err("it has no `data` field".into()),
            Some(Value::BulkString(b)) => Bytes::from(b),
            Some(Value::SimpleString(s)) => Bytes::from(s.into_bytes()),
            Some(Value::VerbatimString { text, .. }) => Bytes::from(text.into_bytes()),
            Some(other) => return Err(format!("its `data` field is not a string: {other:?}")),
        };
        Ok(SourceEvent {
            shard,
            seq,
            ts_ns,
            origin,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &[u8])]) -> Value {
        Value::Array(vec![
            bulk(id.as_bytes()),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k.as_bytes()), bulk(v)])
                    .collect(),
            ),
        ])
    }

    #[test]
    fn formats_and_parses() {
        let mut s = String::new();
        let o = Origin {
            node: 0xabc,
            shard: 3,
            seq: 9,
        };
        origin_field(&mut s, &o);
        assert_eq!(s, "0000000000000abc:3:9");
        assert_eq!(parse_origin(&s), Some(o));
        assert_eq!(parse_origin("abc:3:9"), None);
        id_field(&mut s, 2, 41);
        assert_eq!(parse_id(&s), Some((2, 41)));
        assert!(is_entry_id("1700000000000-5"));
        assert!(!is_entry_id("1700000000000"));
        assert!(!is_entry_id("a-5"));
        assert!(!is_entry_id("+1-5"));
        for bad in [
            "", "1", "1:", ":1", "x:1", "1:-1", "1:+1", "65536:1", "1:1:1", " 1:1",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
        for bad in [
            "ab:7:1",
            "00000000000000ab:7",
            "00000000000000ab:7:1:1",
            "+000000000000ab:7:1",
        ] {
            assert_eq!(parse_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn decodes_good_entries_and_names_what_is_wrong_with_bad_ones() {
        let reply = Value::Array(vec![
            entry(
                "1-5",
                &[("id", b"0:5"), ("ts", b"1000005"), ("data", b"\x00\xff")],
            ),
            entry(
                "1-6",
                &[
                    ("id", b"0:6"),
                    ("ts", b"1000006"),
                    ("data", b""),
                    ("origin", b"0000000000000001:2:3"),
                ],
            ),
            entry("1-7", &[("id", b"0:7"), ("ts", b"1")]),
            entry("1-8", &[("id", b"1:8"), ("ts", b"1"), ("data", b"x")]),
            entry("1-9", &[("id", b"zero"), ("ts", b"1"), ("data", b"x")]),
            entry("1-10", &[("id", b"0:10"), ("ts", b"soon"), ("data", b"x")]),
            entry(
                "1-11",
                &[
                    ("id", b"0:11"),
                    ("ts", b"1"),
                    ("data", b"x"),
                    ("data", b"y"),
                ],
            ),
        ]);
        let mut es = entries(reply).unwrap().into_iter();
        let e = es.next().unwrap().decode(0).unwrap();
        assert_eq!(
            (e.seq, e.ts_ns, &e.payload[..], e.origin),
            (5, 1000005, &b"\x00\xff"[..], None)
        );
        let e = es.next().unwrap().decode(0).unwrap();
        assert_eq!(
            e.origin,
            Some(Origin {
                node: 1,
                shard: 2,
                seq: 3
            })
        );
        let wrong: Vec<String> = es.map(|e| e.decode(0).unwrap_err()).collect();
        assert!(wrong[0].contains("no `data`"), "{}", wrong[0]);
        assert!(wrong[1].contains("names shard 1"), "{}", wrong[1]);
        assert!(wrong[2].contains("`id` field `zero`"), "{}", wrong[2]);
        assert!(wrong[3].contains("`ts`"), "{}", wrong[3]);
        assert!(
            wrong[4].contains("`data` field appears twice"),
            "{}",
            wrong[4]
        );
        let odd = Value::Array(vec![Value::Array(vec![
            bulk(b"1-1"),
            Value::Array(vec![bulk(b"id")]),
        ])]);
        assert!(entries(odd).unwrap_err().contains("odd number"));
        assert!(entries(Value::Int(3)).is_err());
        assert!(entries(Value::Nil).unwrap().is_empty());
    }
}
