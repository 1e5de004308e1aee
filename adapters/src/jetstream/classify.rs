//! Which JetStream client errors retrying can help with.
//!
//! Each table names the kinds that are truly transient — a timeout, nobody answering (a server
//! restarting, a stream leader being elected), a broken connection, the client's own
//! in-flight limit — and everything else is fatal, `Other` included: a permission violation, a
//! wrong stream or subject, bad configuration or a malformed request never starts working by
//! itself, and a sink that retried it would retry forever while reporting nothing.
//!
//! Kinds that only wrap a cause (`Request`, `Other`, `Response`) take the class of that cause
//! when it is one this module recognises — a JetStream API error code, or a request that timed
//! out or found no responders — and are fatal otherwise.

use std::error::Error as StdError;

use async_nats::ConnectErrorKind;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::pull::BatchErrorKind;
use async_nats::jetstream::context::{
    CreateStreamErrorKind, GetStreamErrorKind, PublishErrorKind, RequestErrorKind,
};
use async_nats::jetstream::stream::{ConsumerErrorKind, LastRawMessageErrorKind};

use crate::error::ErrorClass;

use ErrorClass::{Fatal, Transient};

/// A publish, or its acknowledgement. `StreamNotFound` is what the client reports when
/// nobody answered the publish (no responders): a server that is restarting or a stream whose
/// leader is being elected, as well as a stream that is gone. It is transient here because the
/// writer confirms it at once through the JetStream API, which says definitively whether the
/// stream exists and covers the subject (fatal when not).
pub fn classify_publish(kind: PublishErrorKind) -> ErrorClass {
    match kind {
        PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe
        | PublishErrorKind::MaxAckPending
        | PublishErrorKind::StreamNotFound => Transient,
        PublishErrorKind::WrongLastMessageId
        | PublishErrorKind::WrongLastSequence
        | PublishErrorKind::Other => Fatal,
    }
}

/// A JetStream API request (stream info, message get, consumer create).
pub fn classify_request(kind: RequestErrorKind) -> ErrorClass {
    match kind {
        RequestErrorKind::TimedOut | RequestErrorKind::NoResponders => Transient,
        RequestErrorKind::Other => Fatal,
    }
}

/// A core request (the client's own kinds, found inside JetStream errors).
pub fn classify_core_request(kind: async_nats::RequestErrorKind) -> ErrorClass {
    match kind {
        async_nats::RequestErrorKind::TimedOut | async_nats::RequestErrorKind::NoResponders => {
            Transient
        }
        async_nats::RequestErrorKind::Other => Fatal,
    }
}

/// An error answered by the JetStream API: transient only while the system or the stream is
/// temporarily unavailable (no leader, offline during recovery).
pub fn classify_code(code: ErrorCode) -> ErrorClass {
    match code {
        ErrorCode::CLUSTER_NOT_AVAILABLE
        | ErrorCode::CLUSTER_NOT_LEADER
        | ErrorCode::STREAM_OFFLINE
        | ErrorCode::CONSUMER_OFFLINE => Transient,
        _ => Fatal,
    }
}

/// Connecting. `Io` (refused, reset) and `Dns` are what a server that is restarting or a
/// network that is coming up look like; credentials, TLS and a malformed address are fatal.
pub fn classify_connect(kind: ConnectErrorKind) -> ErrorClass {
    match kind {
        ConnectErrorKind::TimedOut
        | ConnectErrorKind::Io
        | ConnectErrorKind::Dns
        | ConnectErrorKind::MaxReconnects => Transient,
        ConnectErrorKind::ServerParse
        | ConnectErrorKind::Authentication
        | ConnectErrorKind::AuthorizationViolation
        | ConnectErrorKind::Tls => Fatal,
    }
}

/// Creating the stream.
pub fn classify_create_stream(kind: &CreateStreamErrorKind) -> ErrorClass {
    match kind {
        CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => Transient,
        CreateStreamErrorKind::JetStream(e) => classify_code(e.error_code()),
        CreateStreamErrorKind::EmptyStreamName
        | CreateStreamErrorKind::InvalidStreamName
        | CreateStreamErrorKind::DomainAndExternalSet
        | CreateStreamErrorKind::Response
        | CreateStreamErrorKind::NotFound
        | CreateStreamErrorKind::ResponseParse => Fatal,
    }
}

/// Reading the stream's info (`Request` wraps the request's own error: see the module docs).
pub fn classify_get_stream(kind: &GetStreamErrorKind) -> ErrorClass {
    match kind {
        GetStreamErrorKind::JetStream(e) => classify_code(e.error_code()),
        GetStreamErrorKind::EmptyName
        | GetStreamErrorKind::Request
        | GetStreamErrorKind::InvalidStreamName => Fatal,
    }
}

/// Reading the last message of a subject (`NoMessageFound` is no error: the subject is empty).
pub fn classify_last_message(kind: &LastRawMessageErrorKind) -> ErrorClass {
    match kind {
        LastRawMessageErrorKind::JetStream(e) => classify_code(e.error_code()),
        LastRawMessageErrorKind::NoMessageFound
        | LastRawMessageErrorKind::InvalidSubject
        | LastRawMessageErrorKind::Other => Fatal,
    }
}

/// Creating or deleting a consumer.
pub fn classify_consumer(kind: &ConsumerErrorKind) -> ErrorClass {
    match kind {
        ConsumerErrorKind::TimedOut => Transient,
        ConsumerErrorKind::JetStream(e) => classify_code(e.error_code()),
        ConsumerErrorKind::Request
        | ConsumerErrorKind::InvalidConsumerType
        | ConsumerErrorKind::InvalidName
        | ConsumerErrorKind::Other => Fatal,
    }
}

/// Starting a fetch. These fail only when the client itself has closed (a full command queue
/// waits instead of failing), which no retry on that client mends.
pub fn classify_batch(kind: BatchErrorKind) -> ErrorClass {
    match kind {
        BatchErrorKind::Subscribe
        | BatchErrorKind::Pull
        | BatchErrorKind::Flush
        | BatchErrorKind::Serialize => Fatal,
    }
}

/// The class of a cause this module recognises in `err`'s chain of sources: a JetStream API
/// error (by code) or a request error (by kind); `None` when there is none.
pub fn classify_cause(err: &(dyn StdError + 'static)) -> Option<ErrorClass> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(js) = e.downcast_ref::<async_nats::jetstream::Error>() {
            return Some(classify_code(js.error_code()));
        }
        if let Some(r) = e.downcast_ref::<async_nats::jetstream::context::RequestError>() {
            if r.kind() != RequestErrorKind::Other {
                return Some(classify_request(r.kind()));
            }
        }
        if let Some(r) = e.downcast_ref::<async_nats::RequestError>() {
            if r.kind() != async_nats::RequestErrorKind::Other {
                return Some(classify_core_request(r.kind()));
            }
        }
        next = e.source();
    }
    None
}

/// The class of `err` whose kind alone was classed `by_kind`: a fatal kind that wraps a
/// recognised transient cause is transient; nothing else changes.
pub fn refine(by_kind: ErrorClass, err: &(dyn StdError + 'static)) -> ErrorClass {
    match by_kind {
        Transient => Transient,
        Fatal => match err.source().and_then(classify_cause) {
            Some(Transient) => Transient,
            _ => Fatal,
        },
    }
}
