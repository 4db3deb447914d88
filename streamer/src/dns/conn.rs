//! A DNS-over-TCP connection: messages framed with a two-byte length.
//!
//! RFC 1035 §4.2.2: "The message is prefixed with a two byte length field
//! which gives the message length, excluding the two byte length field."
//! RFC 7766 §6.2.1 lets a client pipeline several requests on one connection;
//! answers may come in any order, so callers match them by message ID. What
//! the messages mean (TSIG, RCODEs, windows) is the sans-IO core's business:
//! this type only moves bytes.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Room kept for one read: a whole answer and its length when it is there,
/// rather than one read for the length and one for the rest.
const READ_CHUNK: usize = 64 * 1024;

/// One TCP connection to a DNS server.
///
/// Read in the caller's own task: what arrived stays in `received` across
/// cancelled [`Connection::recv`]s, so no reader task (and no wake-up of one
/// per answer, then of the caller) stands between the socket and the session.
/// Nothing reads while a `send` waits for room; the answers then wait in the
/// socket, and there are at most `[limits] window` (≤ 64) of them, each a
/// few hundred bytes: far below a receive buffer, so the server is never
/// kept from answering, nor the send from finishing.
pub struct Connection {
    stream: TcpStream,
    received: BytesMut,
}

impl Connection {
    /// Connects to `server`.
    pub async fn connect(server: SocketAddr) -> io::Result<Connection> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            received: BytesMut::new(),
        })
    }

    /// Writes one message with its length prefix.
    pub async fn send(&mut self, message: &[u8]) -> io::Result<()> {
        self.stream.write_all(&frame(message)?).await
    }

    /// Writes messages already framed (each with its length prefix, see
    /// [`frame`]) in one go: a burst of pipelined requests.
    pub async fn send_framed(&mut self, frames: &[u8]) -> io::Result<()> {
        self.stream.write_all(frames).await
    }

    /// The next message; `None` once the server closed the connection
    /// between two messages, an `UnexpectedEof` error if it closed it inside
    /// one. Cancel-safe: bytes read before a cancellation are kept for the
    /// next call.
    pub async fn recv(&mut self) -> Option<io::Result<Vec<u8>>> {
        loop {
            if let Some(frame) = take_frame(&mut self.received) {
                return Some(Ok(frame));
            }
            self.received.reserve(READ_CHUNK);
            // `read_buf` is cancel-safe: a cancelled call read nothing.
            match self.stream.read_buf(&mut self.received).await {
                Ok(0) if self.received.is_empty() => return None,
                Ok(0) => {
                    return Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection inside a message",
                    )))
                }
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Splits the first whole length-prefixed message off `buf`, if there is one.
pub(crate) fn take_frame(buf: &mut BytesMut) -> Option<Vec<u8>> {
    let len = usize::from(u16::from_be_bytes([*buf.first()?, *buf.get(1)?]));
    if buf.len() < 2 + len {
        return None;
    }
    buf.advance(2);
    Some(buf.split_to(len).to_vec())
}

/// `message` with its TCP length prefix (RFC 1035 §4.2.2), or why it cannot
/// have one.
pub fn frame(message: &[u8]) -> io::Result<Vec<u8>> {
    let len = u16::try_from(message.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a {}-byte DNS message does not fit TCP framing",
                message.len()
            ),
        )
    })?;
    let mut frame = Vec::with_capacity(message.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(message);
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_taken_whole_and_in_order_whatever_the_reads_cut() {
        let stream = [&[0u8, 3, 1, 2, 3, 0, 0, 0][..], &[1, 9]].concat();
        // Fed one byte at a time, as the worst reads would.
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in stream {
            buf.extend_from_slice(&[b]);
            while let Some(f) = take_frame(&mut buf) {
                frames.push(f);
            }
        }
        assert_eq!(frames, vec![vec![1, 2, 3], vec![], vec![9]]);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_partial_frame_stays_in_the_buffer() {
        let mut buf = BytesMut::from(&[0u8, 4, 1, 2][..]);
        assert_eq!(take_frame(&mut buf), None);
        assert_eq!(&buf[..], &[0, 4, 1, 2]);
        let mut one = BytesMut::from(&[0u8][..]);
        assert_eq!(take_frame(&mut one), None);
    }
}
