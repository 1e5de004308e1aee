//! The conventional baseline: what an encrypted UDP link usually looks like in Rust. A tokio
//! `UdpSocket` per side on its own current-thread runtime, one datagram per `send_to` /
//! `recv_from`, each payload sealed by snow after a real Noise handshake. snow's resolver is
//! named explicitly (`DefaultResolver`: pure-Rust ChaCha20-Poly1305 and BLAKE2s), because other
//! crates of the workspace enable snow's `ring-accelerated` feature, which changes what
//! `Builder::new` picks.
//!
//! A datagram is `seq u64 LE | ciphertext of the payload | 16-byte tag`; the sequence number
//! travels in the clear and is the Noise nonce (stateless transport mode).

use super::raw::socket_pair;
use super::{IDLE, SEQ_BYTES, Seen, Tally, Window, io_failure, pin, two_cores};
use crate::{Failure, alloc};
use snow::resolvers::DefaultResolver;
use snow::{Builder, HandshakeState, StatelessTransportState};
use std::time::{Duration, Instant};

/// The Noise protocol of the baseline (and of net's mesh).
pub const NOISE_PARAMS: &str = "Noise_NKpsk0_25519_ChaChaPoly_BLAKE2s";

/// Poly1305 tag bytes after every sealed payload.
pub const TAG_BYTES: usize = 16;

/// The pre-shared key: any 32 bytes will do.
const PSK: [u8; 32] = *b"net-bench transport baseline psk";

/// What the baseline measured.
#[derive(Debug, Clone)]
pub struct BaselineResult {
    pub sent: u64,
    /// Malformed counts datagrams that failed authentication too.
    pub tally: Tally,
    pub payload: usize,
    /// First send to last receive.
    pub elapsed: Duration,
    /// Allocations of the whole process while sender and receiver ran.
    pub allocations: alloc::Snapshot,
    pub pinned: bool,
}

impl BaselineResult {
    /// Bytes of each datagram on the wire (UDP payload).
    pub fn datagram_bytes(&self) -> usize {
        SEQ_BYTES + self.payload + TAG_BYTES
    }
}

impl super::Delivery for BaselineResult {
    fn parts(&self) -> super::DeliveryParts {
        super::DeliveryParts {
            sent: self.sent,
            received: self.tally.received,
            payload: self.payload,
            elapsed: self.elapsed,
            allocations: self.allocations,
        }
    }
}

fn snow_failure(context: &str) -> impl FnOnce(snow::Error) -> Failure {
    move |error| Failure::Io {
        context: context.to_owned(),
        source: std::io::Error::other(error),
    }
}

fn builder<'a>() -> Result<Builder<'a>, Failure> {
    let params = NOISE_PARAMS
        .parse()
        .map_err(snow_failure("parsing the Noise parameters"))?;
    Ok(Builder::with_resolver(params, Box::new(DefaultResolver)))
}

/// A complete `NKpsk0` handshake, in memory: the initiator knows the responder's static key,
/// both know the PSK. Returns the initiator's and the responder's transport states.
pub fn handshake() -> Result<(StatelessTransportState, StatelessTransportState), Failure> {
    let responder_keys = builder()?
        .generate_keypair()
        .map_err(snow_failure("generating the responder's static key"))?;
    let mut initiator = builder()?
        .psk(0, &PSK)
        .and_then(|b| b.remote_public_key(&responder_keys.public))
        .and_then(Builder::build_initiator)
        .map_err(snow_failure("building the initiator"))?;
    let mut responder = builder()?
        .psk(0, &PSK)
        .and_then(|b| b.local_private_key(&responder_keys.private))
        .and_then(Builder::build_responder)
        .map_err(snow_failure("building the responder"))?;
    let mut message = [0u8; 256];
    let mut payload = [0u8; 256];
    let exchange = |from: &mut HandshakeState,
                    to: &mut HandshakeState,
                    message: &mut [u8],
                    payload: &mut [u8]|
     -> Result<(), snow::Error> {
        let len = from.write_message(&[], message)?;
        to.read_message(&message[..len], payload)?;
        Ok(())
    };
    exchange(&mut initiator, &mut responder, &mut message, &mut payload)
        .map_err(snow_failure("handshake message 1 (-> e, es, psk)"))?;
    exchange(&mut responder, &mut initiator, &mut message, &mut payload)
        .map_err(snow_failure("handshake message 2 (<- e, ee)"))?;
    let initiator = initiator
        .into_stateless_transport_mode()
        .map_err(snow_failure("initiator's transport mode"))?;
    let responder = responder
        .into_stateless_transport_mode()
        .map_err(snow_failure("responder's transport mode"))?;
    Ok((initiator, responder))
}

/// The baseline: `packets` datagrams of `payload` sealed bytes from one tokio task to another,
/// each on its own thread and current-thread runtime, over sockets with `socket_buffer`-byte
/// buffers; the receiver opens each one and stops after every packet or `IDLE` without one.
/// Allocations are counted from both tasks' release to both tasks' end.
pub fn tokio_snow_baseline(
    packets: u64,
    payload: usize,
    socket_buffer: usize,
) -> Result<BaselineResult, Failure> {
    let (initiator, responder) = handshake()?;
    let (tx, rx, _) = socket_pair(socket_buffer, true, false)?;
    let to = rx.local_addr().map_err(Failure::io("reading an address"))?;
    let cores = two_cores();
    let window = Window::new(2);
    let (sent, received, allocations) = std::thread::scope(|s| {
        let sender = s.spawn(|| {
            pin(cores.map(|c| c[0]));
            let mut pass = window.worker();
            runtime()?.block_on(async {
                let socket = tokio::net::UdpSocket::from_std(tx)
                    .map_err(Failure::io("registering the sender's socket"))?;
                let mut datagram = vec![0u8; SEQ_BYTES + payload + TAG_BYTES];
                let plaintext = vec![0xA5u8; payload];
                pass.start();
                let first = Instant::now();
                for seq in 0..packets {
                    datagram[..SEQ_BYTES].copy_from_slice(&seq.to_le_bytes());
                    let len = initiator
                        .write_message(seq, &plaintext, &mut datagram[SEQ_BYTES..])
                        .map_err(snow_failure("sealing a payload"))?;
                    socket
                        .send_to(&datagram[..SEQ_BYTES + len], to)
                        .await
                        .map_err(io_failure("send_to"))?;
                }
                pass.finish();
                Ok::<_, Failure>(first)
            })
        });
        let receiver = s.spawn(|| {
            pin(cores.map(|c| c[1]));
            let mut pass = window.worker();
            runtime()?.block_on(async {
                let socket = tokio::net::UdpSocket::from_std(rx)
                    .map_err(Failure::io("registering the receiver's socket"))?;
                // Larger than any datagram, so a wrong one is seen whole.
                let mut datagram = vec![0u8; 1 << 16];
                let mut plaintext = vec![0u8; payload + TAG_BYTES];
                let mut seen = Seen::new(packets);
                let mut tally = Tally::default();
                let mut last = None;
                pass.start();
                while tally.received < packets {
                    let Ok(outcome) =
                        tokio::time::timeout(IDLE, socket.recv_from(&mut datagram)).await
                    else {
                        break;
                    };
                    let (len, _from) = outcome.map_err(io_failure("recv_from"))?;
                    last = Some(Instant::now());
                    let opened = match datagram[..len].split_at_checked(SEQ_BYTES) {
                        Some((head, sealed)) => {
                            let seq = super::raw::seq_of(head);
                            match responder.read_message(seq, sealed, &mut plaintext) {
                                Ok(n) if n == payload => Some(seq),
                                _ => None,
                            }
                        }
                        None => None,
                    };
                    match opened {
                        Some(seq) => tally.count(&mut seen, seq),
                        None => tally.malformed += 1,
                    }
                }
                pass.finish();
                Ok::<_, Failure>((tally, last))
            })
        });
        let allocations = window.measure();
        let sent = sender.join().expect("the baseline's sender does not panic");
        let received = receiver
            .join()
            .expect("the baseline's receiver does not panic");
        (sent, received, allocations)
    });
    let (first, (tally, last)) = (sent?, received?);
    tally.verify("tokio+snow")?;
    Ok(BaselineResult {
        sent: packets,
        tally,
        payload,
        elapsed: last.unwrap_or(first).saturating_duration_since(first),
        allocations,
        pinned: cores.is_some(),
    })
}

/// One side's runtime: current-thread, with the I/O and time drivers.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::io("building a tokio runtime"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_keys_both_directions_alike() {
        let (initiator, responder) = handshake().unwrap();
        let mut sealed = [0u8; 64];
        let mut opened = [0u8; 64];
        let len = initiator.write_message(7, b"hello", &mut sealed).unwrap();
        assert_eq!(len, 5 + TAG_BYTES);
        let n = responder
            .read_message(7, &sealed[..len], &mut opened)
            .unwrap();
        assert_eq!(&opened[..n], b"hello");
        assert!(
            responder
                .read_message(8, &sealed[..len], &mut opened)
                .is_err()
        );
    }
}
