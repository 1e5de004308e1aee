//! A small blocking client of netd's socket (used by `netd publish`/`netd read`, the tests
//! and the bench). Any language can speak the framing (`crate::frame`); this is the Rust one.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::frame::{self, Reply};

/// What went wrong talking to netd.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// netd closed the connection with this error.
    #[error("netd refused (code {code}): {message}")]
    Refused {
        /// The ERROR frame's code.
        code: u16,
        /// Its message.
        message: String,
    },
    /// netd said something this client does not understand.
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

/// One event read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEvent {
    /// Its shard.
    pub shard: u16,
    /// Its sequence number in the shard.
    pub seq: u64,
    /// Its timestamp, ns since the epoch.
    pub ts_ns: u64,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// A connection to netd.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    out: Vec<u8>,
    inbuf: Vec<u8>,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        Ok(Client {
            stream: UnixStream::connect(path)?,
            out: Vec::new(),
            inbuf: Vec::new(),
        })
    }

    /// Sends one PUBLISH frame of `(key, payload)` events; with `ack`, netd acknowledges it
    /// once durable (collect it with [`Client::wait_ack`]).
    pub fn publish<'e>(
        &mut self,
        events: impl IntoIterator<Item = (&'e [u8], &'e [u8])>,
        ack: bool,
    ) -> Result<(), ClientError> {
        self.out.clear();
        frame::encode_publish(&mut self.out, ack, events);
        self.stream.write_all(&self.out)?;
        Ok(())
    }

    /// Sends raw bytes (tests of bad frames).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Asks for an acknowledgement of everything sent and waits for it: `(through, dropped)`.
    pub fn sync(&mut self) -> Result<(u64, u64), ClientError> {
        self.out.clear();
        frame::encode_sync(&mut self.out);
        self.stream.write_all(&self.out)?;
        self.wait_ack()
    }

    /// Waits for the next ACK: `(through, dropped)`.
    pub fn wait_ack(&mut self) -> Result<(u64, u64), ClientError> {
        let body = self.next_frame()?;
        match frame::decode_reply(&body).map_err(|e| ClientError::Protocol(e.what))? {
            Reply::Ack { through, dropped } => Ok((through, dropped)),
            other => Err(unexpected(other)),
        }
    }

    /// Reads up to `max_events` after `cursor` (empty: the beginning), waiting up to
    /// `wait_ms` for some: the events and the cursor to read on from.
    pub fn read(
        &mut self,
        cursor: &str,
        max_events: u32,
        wait_ms: u32,
    ) -> Result<(Vec<ReadEvent>, String), ClientError> {
        self.out.clear();
        frame::encode_read(&mut self.out, max_events, wait_ms, cursor);
        self.stream.write_all(&self.out)?;
        let body = self.next_frame()?;
        match frame::decode_reply(&body).map_err(|e| ClientError::Protocol(e.what))? {
            Reply::Events { cursor, events } => Ok((
                events
                    .into_iter()
                    .map(|e| ReadEvent {
                        shard: e.shard,
                        seq: e.seq,
                        ts_ns: e.ts_ns,
                        payload: e.payload.to_vec(),
                    })
                    .collect(),
                cursor.to_string(),
            )),
            other => Err(unexpected(other)),
        }
    }

    /// The next frame's body (an ERROR frame becomes [`ClientError::Refused`]).
    pub fn next_frame(&mut self) -> Result<Vec<u8>, ClientError> {
        let mut len = [0u8; frame::LEN_BYTES];
        self.stream.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 || len > 1 << 30 {
            return Err(ClientError::Protocol(format!("frame length {len}")));
        }
        self.inbuf.resize(len, 0);
        self.stream.read_exact(&mut self.inbuf)?;
        if let Ok(Reply::Error { code, message }) = frame::decode_reply(&self.inbuf) {
            return Err(ClientError::Refused {
                code,
                message: message.to_string(),
            });
        }
        Ok(std::mem::take(&mut self.inbuf))
    }
}

fn unexpected(r: Reply<'_>) -> ClientError {
    ClientError::Protocol(format!("{r:?}"))
}
