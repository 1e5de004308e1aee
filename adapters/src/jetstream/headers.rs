//! The headers an event carries in JetStream, and reading them back.
//!
//! - `Nats-Msg-Id: <shard>:<seq>` — the event's id; the server drops a message whose id it
//!   already stored within the stream's duplicate window, which makes a retried publish
//!   idempotent.
//! - `Net-Ts: <ts_ns>` — the shard's timestamp, nanoseconds since the Unix epoch.
//! - `Net-Origin: <node as 16 hex digits>:<shard>:<seq>` — only for an event mirrored from
//!   another node; absent otherwise (never an empty or "null" value).
//!
//! The payload is the event's bytes, as they are.

use std::fmt::Write as _;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue, NATS_MESSAGE_ID};
use net_engine::Origin;

/// `Net-Ts`.
pub const NET_TS: HeaderName = HeaderName::from_static("Net-Ts");
/// `Net-Origin`.
pub const NET_ORIGIN: HeaderName = HeaderName::from_static("Net-Origin");
/// `Nats-Msg-Id`.
pub const MSG_ID: HeaderName = NATS_MESSAGE_ID;

/// The headers of one event. The client takes a header map per message; this builds it
/// with one string per value and no other work (no JSON).
pub(crate) fn event_headers(shard: u16, seq: u64, ts_ns: u64, origin: Option<Origin>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut id = String::with_capacity(26);
    // Writing into a String cannot fail.
    let _ = write!(id, "{shard}:{seq}");
    headers.insert(MSG_ID, HeaderValue::from(id));
    headers.insert(NET_TS, HeaderValue::from(ts_ns));
    if let Some(o) = origin {
        headers.insert(NET_ORIGIN, HeaderValue::from(origin_text(&o)));
    }
    headers
}

/// `<node:016x>:<shard>:<seq>`.
pub fn origin_text(o: &Origin) -> String {
    format!("{:016x}:{}:{}", o.node, o.shard, o.seq)
}

/// Parses `<shard>:<seq>`.
pub fn parse_msg_id(text: &str) -> Result<(u16, u64), String> {
    let Some((shard, seq)) = text.split_once(':') else {
        return Err(format!("Nats-Msg-Id `{text}` is not `<shard>:<seq>`"));
    };
    let shard = shard.parse::<u16>().map_err(|_| {
        format!("Nats-Msg-Id `{text}`: shard `{shard}` is not a number below 65536")
    })?;
    let seq = seq
        .parse::<u64>()
        .map_err(|_| format!("Nats-Msg-Id `{text}`: sequence `{seq}` is not a number"))?;
    Ok((shard, seq))
}

/// Parses `<node:016x>:<shard>:<seq>`.
pub fn parse_origin(text: &str) -> Result<Origin, String> {
    let mut parts = text.split(':');
    let (Some(node), Some(shard), Some(seq), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "Net-Origin `{text}` is not `<node as 16 hex digits>:<shard>:<seq>`"
        ));
    };
    if node.len() != 16 {
        return Err(format!(
            "Net-Origin `{text}`: node `{node}` is not 16 hex digits"
        ));
    }
    let node = u64::from_str_radix(node, 16)
        .map_err(|_| format!("Net-Origin `{text}`: node `{node}` is not 16 hex digits"))?;
    let shard = shard
        .parse::<u16>()
        .map_err(|_| format!("Net-Origin `{text}`: shard `{shard}` is not a number below 65536"))?;
    let seq = seq
        .parse::<u64>()
        .map_err(|_| format!("Net-Origin `{text}`: sequence `{seq}` is not a number"))?;
    Ok(Origin { node, shard, seq })
}

/// An event read back: what its headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub shard: u16,
    pub seq: u64,
    pub ts_ns: u64,
    pub origin: Option<Origin>,
}

/// Reads an event's headers, for a message of `shard`'s subject; the error says what is wrong.
pub(crate) fn decode(headers: Option<&HeaderMap>, shard: u16) -> Result<Decoded, String> {
    let Some(headers) = headers else {
        return Err("it has no headers (no Nats-Msg-Id, no Net-Ts)".into());
    };
    let Some(id) = headers.get(MSG_ID) else {
        return Err("it has no Nats-Msg-Id header".into());
    };
    let (id_shard, seq) = parse_msg_id(id.as_str())?;
    if id_shard != shard {
        return Err(format!(
            "its Nats-Msg-Id `{}` names shard {id_shard}, but it is on shard {shard}'s subject",
            id.as_str()
        ));
    }
    let Some(ts) = headers.get(NET_TS) else {
        return Err("it has no Net-Ts header".into());
    };
    let ts_ns = ts.as_str().parse::<u64>().map_err(|_| {
        format!(
            "its Net-Ts `{}` is not a number of nanoseconds",
            ts.as_str()
        )
    })?;
    let origin = match headers.get(NET_ORIGIN) {
        None => None,
        Some(o) => Some(parse_origin(o.as_str())?),
    };
    Ok(Decoded {
        shard,
        seq,
        ts_ns,
        origin,
    })
}
