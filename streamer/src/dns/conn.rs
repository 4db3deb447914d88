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

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One TCP connection to a DNS server.
pub struct Connection {
    writer: OwnedWriteHalf,
    frames: mpsc::Receiver<io::Result<Vec<u8>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Connection {
    /// Connects to `server`.
    pub async fn connect(server: SocketAddr) -> io::Result<Connection> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        // Buffered: one read takes a whole answer (and its length) when it
        // is there, rather than one read for the length and one for the rest.
        let mut read = tokio::io::BufReader::with_capacity(64 * 1024, read);
        let (tx, frames) = mpsc::channel(64);
        // Reading runs in its own task so that callers wait on a channel,
        // which is cancel-safe, instead of on a half-read frame.
        let reader = tokio::spawn(async move {
            loop {
                let mut len = [0u8; 2];
                let frame = async {
                    read.read_exact(&mut len).await?;
                    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    read.read_exact(&mut buf).await?;
                    Ok(buf)
                }
                .await;
                let failed = frame.is_err();
                if tx.send(frame).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Connection {
            writer,
            frames,
            reader,
        })
    }

    /// Writes one message with its length prefix.
    pub async fn send(&mut self, message: &[u8]) -> io::Result<()> {
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
        self.writer.write_all(&frame).await
    }

    /// The next message; `None` once the server closed the connection.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<io::Result<Vec<u8>>> {
        self.frames.recv().await
    }
}
