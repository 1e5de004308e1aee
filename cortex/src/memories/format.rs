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
//! is required and an unknown field is refused. `id` and tags are non-empty strings; a tag must not hold NUL. `value`
//! is kept as the exact bytes sent (a borrowed `RawValue`, never re-encoded).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::FoldError;

/// One parsed memories event, borrowing from the payload.
#[derive(Debug, Deserialize)]
pub(crate) enum Op<'a> {
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
pub(crate) struct StoredOp<'a> {
    #[serde(borrow)]
    pub(crate) id: Cow<'a, str>,
    #[serde(default)]
    pub(crate) version: Option<u64>,
    #[serde(borrow)]
    pub(crate) value: &'a RawValue,
    #[serde(borrow)]
    pub(crate) tags: Vec<Cow<'a, str>>,
    #[serde(default)]
    pub(crate) pinned: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeletedOp<'a> {
    #[serde(borrow)]
    pub(crate) id: Cow<'a, str>,
    #[serde(default)]
    pub(crate) version: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IdOp<'a> {
    #[serde(borrow)]
    pub(crate) id: Cow<'a, str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TagsOp<'a> {
    #[serde(borrow)]
    pub(crate) id: Cow<'a, str>,
    #[serde(default, borrow)]
    pub(crate) add: Vec<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(crate) remove: Vec<Cow<'a, str>>,
}

impl<'a> Op<'a> {
    /// Parses and checks a payload; the error says what was wrong with it.
    pub(crate) fn parse(payload: &'a [u8]) -> Result<Op<'a>, FoldError> {
        let op: Op<'a> = serde_json::from_slice(payload)
            .map_err(|e| FoldError::new(format!("not a memories event: {e}")))?;
        let (id, tags): (&str, &[&[Cow<'a, str>]]) = match &op {
            Op::Stored(s) => (&s.id, &[&s.tags]),
            Op::Deleted(d) => (&d.id, &[]),
            Op::Pin(p) | Op::Unpin(p) => (&p.id, &[]),
            Op::Tags(t) => (&t.id, &[&t.add, &t.remove]),
        };
        if id.is_empty() {
            return Err(FoldError::new("the id is empty"));
        }
        if tags
            .iter()
            .any(|list| list.iter().any(|t| t.is_empty() || t.contains('\0')))
        {
            return Err(FoldError::new(format!(
                "memory {id:?}: a tag is empty or holds NUL"
            )));
        }
        Ok(op)
    }
}
