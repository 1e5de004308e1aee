//! The stream entry format, both ways.
//!
//! An event is one entry of stream `{prefix}:{shard}` with the entry id `<ts_ms>-<seq>` and
//! the fields `id` (`<shard>:<seq>`), `ts` (nanoseconds, decimal), `data` (the payload, byte
//! for byte) and, for an event mirrored from another node, `origin`
//! (`<node as 16 hex digits>:<shard>:<seq>`). The ids are formatted into buffers the writer
//! keeps, so encoding allocates nothing of its own per event.

use std::fmt::Write as _;

use ::redis::Value;
use bytes::Bytes;
use net_engine::Origin;

use crate::source::SourceEvent;

/// Field names.
pub(crate) const F_ID: &str = "id";
pub(crate) const F_TS: &str = "ts";
pub(crate) const F_DATA: &str = "data";
pub(crate) const F_ORIGIN: &str = "origin";

/// Writes the entry id of an event: `<ts_ms>-<seq>`. A shard's timestamps and sequence
/// numbers both strictly increase, so its entry ids do too.
pub(crate) fn entry_id(buf: &mut String, ts_ns: u64, seq: u64) {
    buf.clear();
    let _ = write!(buf, "{}-{seq}", ts_ns / 1_000_000);
}

/// Writes the event id: `<shard>:<seq>`.
pub(crate) fn event_id(buf: &mut String, shard: u16, seq: u64) {
    buf.clear();
    let _ = write!(buf, "{shard}:{seq}");
}

/// Writes the origin: `<node:016x>:<shard>:<seq>`.
pub(crate) fn origin_text(buf: &mut String, origin: &Origin) {
    buf.clear();
    let _ = write!(buf, "{:016x}:{}:{}", origin.node, origin.shard, origin.seq);
}

/// Parses `<shard>:<seq>`.
pub(crate) fn parse_event_id(text: &[u8]) -> Option<(u16, u64)> {
    let text = std::str::from_utf8(text).ok()?;
    let (shard, seq) = text.split_once(':')?;
    Some((parse_decimal(shard)?, parse_decimal(seq)?))
}

/// Parses `<node:016x>:<shard>:<seq>`.
pub(crate) fn parse_origin(text: &[u8]) -> Option<Origin> {
    let text = std::str::from_utf8(text).ok()?;
    let mut parts = text.split(':');
    let (node, shard, seq) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || node.len() != 16 || !node.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    Some(Origin {
        node: u64::from_str_radix(node, 16).ok()?,
        shard: parse_decimal(shard)?,
        seq: parse_decimal(seq)?,
    })
}

/// Parses a stream entry id, `<ms>-<seq>` or `<ms>`.
pub(crate) fn parse_stream_id(text: &str) -> Option<(u64, u64)> {
    match text.split_once('-') {
        Some((ms, seq)) => Some((parse_decimal(ms)?, parse_decimal(seq)?)),
        None => Some((parse_decimal(text)?, 0)),
    }
}

/// Digits only (no sign, no spaces), within the type's range.
fn parse_decimal<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// One stream entry as `XRANGE`/`XREVRANGE` return it: its id and its field/value pairs.
#[derive(Debug)]
pub(crate) struct RawEntry {
    pub id: String,
    pub fields: Vec<(Value, Value)>,
}

/// Splits an `XRANGE`/`XREVRANGE` reply into its entries; an error says how the reply is not
/// shaped like one.
pub(crate) fn entries(reply: Value) -> Result<Vec<RawEntry>, String> {
    let items = match reply {
        Value::Array(items) => items,
        Value::Nil => return Ok(Vec::new()),
        other => return Err(format!("expected an array of entries, got {other:?}")),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut pair) = item else {
            return Err(format!("expected an entry [id, fields], got {item:?}"));
        };
        if pair.len() != 2 {
            return Err(format!("expected an entry [id, fields], got {} items", pair.len()));
        }
        let fields = pair.pop().unwrap_or(Value::Nil);
        let id = pair.pop().unwrap_or(Value::Nil);
        let id = match text(&id) {
            Some(id) => id.to_owned(),
            None => return Err(format!("expected an entry id, got {id:?}")),
        };
        let fields = match fields {
            Value::Array(flat) => {
                if flat.len() % 2 != 0 {
                    return Err(format!("entry {id}: an odd number of field/value items"));
                }
                let mut pairs = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                pairs
            }
            Value::Map(pairs) => pairs,
            // An entry whose fields were all deleted reads as nil on some versions.
            Value::Nil => Vec::new(),
            other => return Err(format!("entry {id}: expected its fields, got {other:?}")),
        };
        out.push(RawEntry { id, fields });
    }
    Ok(out)
}

/// The bytes of a string reply.
fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&str> {
    std::str::from_utf8(bytes_of(v)?).ok()
}

fn field<'a>(entry: &'a RawEntry, name: &str) -> Result<Option<&'a Value>, String> {
    let mut found = None;
    for (k, v) in &entry.fields {
        if bytes_of(k) == Some(name.as_bytes()) {
            if found.is_some() {
                return Err(format!("field `{name}` appears twice"));
            }
            found = Some(v);
        }
    }
    Ok(found)
}

fn required<'a>(entry: &'a RawEntry, name: &str) -> Result<&'a [u8], String> {
    let v = field(entry, name)?.ok_or_else(|| format!("no `{name}` field"))?;
    bytes_of(v).ok_or_else(|| format!("field `{name}` is not a string: {v:?}"))
}

/// The `(shard, seq)` of an entry's `id` field; an error says what is wrong with it.
pub(crate) fn held_id(entry: &RawEntry) -> Result<(u16, u64), String> {
    let id = required(entry, F_ID)?;
    parse_event_id(id).ok_or_else(|| {
        format!(
            "field `id` is `{}`, not `<shard>:<seq>`",
            String::from_utf8_lossy(id)
        )
    })
}

/// Decodes an entry of stream `shard` into an event; an error says what is wrong with it.
pub(crate) fn decode(shard: u16, entry: RawEntry) -> Result<SourceEvent, String> {
    let (id_shard, seq) = held_id(&entry)?;
    if id_shard != shard {
        return Err(format!(
            "field `id` names shard {id_shard}, but the entry is in the stream of shard {shard}"
        ));
    }
    let ts = required(&entry, F_TS)?;
    let ts_ns = std::str::from_utf8(ts)
        .ok()
        .and_then(parse_decimal::<u64>)
        .ok_or_else(|| {
            format!(
                "field `ts` is `{}`, not nanoseconds as a decimal number",
                String::from_utf8_lossy(ts)
            )
        })?;
    let origin = match field(&entry, F_ORIGIN)? {
        None => None,
        Some(v) => {
            let raw = bytes_of(v).ok_or_else(|| format!("field `origin` is not a string: {v:?}"))?;
            Some(parse_origin(raw).ok_or_else(|| {
                format!(
                    "field `origin` is `{}`, not `<node as 16 hex digits>:<shard>:<seq>`",
                    String::from_utf8_lossy(raw)
                )
            })?)
        }
    };
    required(&entry, F_DATA)?;
    // Take the payload out of the reply without copying it.
    let mut payload = None;
    for (k, v) in entry.fields {
        if bytes_of(&k) == Some(F_DATA.as_bytes()) {
            payload = Some(match v {
                Value::BulkString(b) => Bytes::from(b),
                other => Bytes::copy_from_slice(bytes_of(&other).unwrap_or_default()),
            });
            break;
        }
    }
    Ok(SourceEvent {
        shard,
        seq,
        ts_ns,
        origin,
        payload: payload.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &[u8])]) -> Value {
        let mut flat = Vec::new();
        for (k, v) in fields {
            flat.push(bulk(k.as_bytes()));
            flat.push(bulk(v));
        }
        Value::Array(vec![bulk(id.as_bytes()), Value::Array(flat)])
    }

    #[test]
    fn ids_round_trip() {
        let mut buf = String::new();
        entry_id(&mut buf, 1_700_000_000_123_456_789, 42);
        assert_eq!(buf, "1700000000123-42");
        event_id(&mut buf, 3, 42);
        assert_eq!(buf, "3:42");
        assert_eq!(parse_event_id(buf.as_bytes()), Some((3, 42)));
        let o = Origin {
            node: 0xab,
            shard: 7,
            seq: u64::MAX,
        };
        origin_text(&mut buf, &o);
        assert_eq!(buf, "00000000000000ab:7:18446744073709551615");
        assert_eq!(parse_origin(buf.as_bytes()), Some(o));
        for bad in ["", "1", "1:", ":1", "x:1", "1:-1", "65536:1", "1:1:1", " 1:1"] {
            assert_eq!(parse_event_id(bad.as_bytes()), None, "{bad}");
        }
        for bad in ["ab:7:1", "00000000000000ab:7", "00000000000000ab:7:1:1", "0000000000000zab:7:1"]
        {
            assert_eq!(parse_origin(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(parse_stream_id("5-6"), Some((5, 6)));
        assert_eq!(parse_stream_id("5"), Some((5, 0)));
        for bad in ["", "-", "5-", "-6", "a-1", "1-1-1", "+", "$"] {
            assert_eq!(parse_stream_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn entries_decode_and_bad_ones_say_why() {
        let reply = Value::Array(vec![
            entry(
                "1-1",
                &[("id", b"0:1"), ("ts", b"1000000"), ("data", b"\x00\xffab")],
            ),
            entry(
                "1-2",
                &[
                    ("id", b"0:2"),
                    ("ts", b"1000001"),
                    ("data", b""),
                    ("origin", b"00000000000000ab:7:9"),
                    ("extra", b"ignored"),
                ],
            ),
            entry("1-3", &[("id", b"0:3"), ("ts", b"1")]),
            entry("1-4", &[("id", b"1:4"), ("ts", b"1"), ("data", b"")]),
            entry("1-5", &[("id", b"0:5"), ("ts", b"-1"), ("data", b"")]),
            entry(
                "1-6",
                &[("id", b"0:6"), ("ts", b"1"), ("data", b""), ("data", b"")],
            ),
        ]);
        let mut es = entries(reply).expect("well formed").into_iter();
        let a = decode(0, es.next().expect("1")).expect("good");
        assert_eq!((a.seq, a.ts_ns, a.origin), (1, 1_000_000, None));
        assert_eq!(&a.payload[..], b"\x00\xffab");
        let b = decode(0, es.next().expect("2")).expect("good");
        assert_eq!(
            b.origin,
            Some(Origin {
                node: 0xab,
                shard: 7,
                seq: 9
            })
        );
        assert!(b.payload.is_empty());
        let wrong: Vec<String> = es.map(|e| decode(0, e).expect_err("bad")).collect();
        assert!(wrong[0].contains("no `data` field"), "{}", wrong[0]);
        assert!(wrong[1].contains("names shard 1"), "{}", wrong[1]);
        assert!(wrong[2].contains("field `ts`"), "{}", wrong[2]);
        assert!(wrong[3].contains("appears twice"), "{}", wrong[3]);
        assert!(entries(Value::Int(1)).is_err());
        assert!(entries(Value::Array(vec![Value::Int(1)])).is_err());
        assert!(entries(Value::Nil).expect("nil").is_empty());
    }
}
