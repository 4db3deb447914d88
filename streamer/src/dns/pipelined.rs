//! Many one-answer requests to one DNS server over a few pipelined TCP
//! connections: `check-config`'s probes and the status's SOA queries, which
//! at 50,000 zones are 50,000 questions to one server.
//!
//! A connection per question does not scale: BIND admits 150 TCP clients
//! (`tcp-clients`) and logs nothing when full, each connection costs a
//! handshake and a socket in TIME_WAIT, and 8 at a time made `check-config`
//! take 16 s at 50,000 zones. RFC 7766 §6.2.1: "In order to achieve
//! performance on par with UDP, DNS clients SHOULD pipeline their queries.
//! When a DNS client sends multiple queries to a server, it SHOULD NOT wait
//! for an outstanding reply before sending the next query." Answers may
//! come in any order (§7), so they are matched by message ID, which is
//! unique among the requests waiting on one connection.
//!
//! Each connection sends a burst of requests (up to `in_flight` waiting),
//! then reads answers until half of them are answered, then sends the next
//! burst: nothing reads while a
//! burst is written, and the answers then wait in the socket (at most
//! `in_flight` of them, each a few hundred bytes). A request unanswered
//! after `timeout`, or a connection that fails, fails every request
//! waiting on that connection; the rest go on over a new one.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::dns::conn::{frame, Connection};

/// How much of the server the requests may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// TCP connections at most.
    pub connections: usize,
    /// Requests awaiting an answer at most, per connection.
    pub in_flight: usize,
    /// How long one request may wait for its answer.
    pub timeout: Duration,
}

/// Why a request got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AskError {
    /// No connection to the server.
    #[error("cannot connect")]
    Connect(#[source] Arc<io::Error>),
    /// The connection failed or closed while the request waited.
    #[error("the connection failed before the answer")]
    Connection(#[source] Arc<io::Error>),
    /// No answer within the timeout.
    #[error("no answer in {} s", .0.as_secs_f64())]
    Timeout(Duration),
    /// The request is too long for TCP framing.
    #[error("the request cannot be sent")]
    Request(#[source] Arc<io::Error>),
    /// The server task that was to send it stopped (status SOA queries).
    #[error("the server's task stopped")]
    Stopped,
}

/// Sends `count` requests to `server` and returns each one's answer (its
/// first message), in request order. `request(i, id)` builds request `i`
/// with message ID `id` (the ID is the transport's, and a TSIG MAC covers
/// it, so the caller signs after it is chosen).
pub async fn ask_all<F>(
    server: SocketAddr,
    count: usize,
    bounds: Bounds,
    request: F,
) -> Vec<Result<Vec<u8>, AskError>>
where
    F: Fn(usize, u16) -> Vec<u8> + Sync,
{
    let next = AtomicUsize::new(0);
    let results: Results = Mutex::new((0..count).map(|_| None).collect());
    let shared = Shared {
        server,
        count,
        bounds,
        next: &next,
        results: &results,
    };
    let workers = bounds.connections.clamp(1, count.max(1));
    futures_util::future::join_all((0..workers).map(|_| shared.worker(&request))).await;
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.unwrap_or(Err(AskError::Timeout(bounds.timeout))))
        .collect()
}

/// Each request's answer once it is known.
type Results = Mutex<Vec<Option<Result<Vec<u8>, AskError>>>>;

/// What the connections of one [`ask_all`] share.
struct Shared<'a> {
    server: SocketAddr,
    count: usize,
    bounds: Bounds,
    /// The next request to send.
    next: &'a AtomicUsize,
    results: &'a Results,
}

impl Shared<'_> {
    fn take(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.count).then_some(i)
    }

    fn set(&self, i: usize, result: Result<Vec<u8>, AskError>) {
        if let Some(slot) = self
            .results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(i)
        {
            *slot = Some(result);
        }
    }

    fn fail_all(&self, pending: &mut HashMap<u16, usize>, error: &AskError) {
        for (_, i) in pending.drain() {
            self.set(i, Err(error.clone()));
        }
    }

    /// One connection's share of the requests (a new connection after a
    /// failure), until none is left.
    async fn worker<F>(&self, request: &F)
    where
        F: Fn(usize, u16) -> Vec<u8> + Sync,
    {
        let in_flight = self.bounds.in_flight.max(1);
        let mut id = crate::dns::axfr::fresh_id();
        let mut pending: HashMap<u16, usize> = HashMap::new();
        // Sent IDs in order with their deadline; answered ones are skipped.
        let mut order: VecDeque<(u16, Instant)> = VecDeque::new();
        'connection: while self.next.load(Ordering::Relaxed) < self.count {
            let mut conn = match Connection::connect(self.server).await {
                Ok(c) => c,
                Err(e) => {
                    // The server cannot be reached: what is left fails (a
                    // connection that works elsewhere takes its share first).
                    let error = AskError::Connect(Arc::new(e));
                    while let Some(i) = self.take() {
                        self.set(i, Err(error.clone()));
                    }
                    return;
                }
            };
            order.clear();
            loop {
                let mut burst = Vec::new();
                let sent_at = Instant::now();
                // Refilled once half the room is free: bursts, not a write
                // per answer.
                let refill = pending.len() <= in_flight / 2;
                while refill && pending.len() < in_flight {
                    let Some(i) = self.take() else { break };
                    loop {
                        id = id.wrapping_add(1);
                        if !pending.contains_key(&id) {
                            break;
                        }
                    }
                    match frame(&request(i, id)) {
                        Ok(f) => {
                            burst.extend_from_slice(&f);
                            pending.insert(id, i);
                            order.push_back((id, sent_at + self.bounds.timeout));
                        }
                        Err(e) => self.set(i, Err(AskError::Request(Arc::new(e)))),
                    }
                }
                if !burst.is_empty() {
                    if let Err(e) = conn.send_framed(&burst).await {
                        self.fail_all(&mut pending, &AskError::Connection(Arc::new(e)));
                        continue 'connection;
                    }
                }
                while order.front().is_some_and(|(i, _)| !pending.contains_key(i)) {
                    order.pop_front();
                }
                let Some(&(_, deadline)) = order.front() else {
                    // Nothing waits here and nothing is left to send.
                    return;
                };
                match tokio::time::timeout_at(deadline, conn.recv()).await {
                    Err(_) => {
                        self.fail_all(&mut pending, &AskError::Timeout(self.bounds.timeout));
                        continue 'connection;
                    }
                    Ok(None) => {
                        let closed = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server closed the connection",
                        );
                        self.fail_all(&mut pending, &AskError::Connection(Arc::new(closed)));
                        continue 'connection;
                    }
                    Ok(Some(Err(e))) => {
                        self.fail_all(&mut pending, &AskError::Connection(Arc::new(e)));
                        continue 'connection;
                    }
                    Ok(Some(Ok(answer))) => {
                        let Some(answer_id) = answer.get(..2) else {
                            continue;
                        };
                        let answer_id = u16::from_be_bytes([answer_id[0], answer_id[1]]);
                        // An unknown ID (a late answer, the rest of a zone
                        // transfer) is not ours to route: skipped.
                        if let Some(i) = pending.remove(&answer_id) {
                            self.set(i, Ok(answer));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers each request with its own bytes, in reverse
    /// order of each burst, and never answers requests whose byte 2 is 0xff.
    async fn echo_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = bytes::BytesMut::new();
                    loop {
                        let mut frames = Vec::new();
                        while let Some(f) = crate::dns::conn::take_frame(&mut buf) {
                            frames.push(f);
                        }
                        for f in frames.iter().rev() {
                            if f.get(2) == Some(&0xff) {
                                continue;
                            }
                            if s.write_all(&frame(f).unwrap()).await.is_err() {
                                return;
                            }
                        }
                        match s.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        addr
    }

    fn request(i: usize, id: u16) -> Vec<u8> {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&(i as u32).to_be_bytes());
        m
    }

    #[tokio::test]
    async fn every_answer_reaches_its_request_whatever_the_order() {
        let server = echo_server().await;
        let bounds = Bounds {
            connections: 3,
            in_flight: 7,
            timeout: Duration::from_secs(5),
        };
        let answers = ask_all(server, 1000, bounds, request).await;
        assert_eq!(answers.len(), 1000);
        for (i, a) in answers.iter().enumerate() {
            let a = a.as_ref().unwrap();
            assert_eq!(a[2..], (i as u32).to_be_bytes(), "answer {i}");
        }
    }

    #[tokio::test]
    async fn an_unanswered_request_times_out_and_the_others_still_answer() {
        let server = echo_server().await;
        let bounds = Bounds {
            connections: 1,
            in_flight: 1,
            timeout: Duration::from_millis(200),
        };
        // Request 5's byte 2 is 0xff: the server ignores it.
        let answers = ask_all(server, 10, bounds, |i, id| {
            let mut m = request(i, id);
            if i == 5 {
                m[2] = 0xff;
            }
            m
        })
        .await;
        assert!(matches!(answers[5], Err(AskError::Timeout(_))));
        for (i, a) in answers.iter().enumerate().filter(|(i, _)| *i != 5) {
            assert!(a.is_ok(), "request {i}: {a:?}");
        }
    }

    #[tokio::test]
    async fn a_server_that_cannot_be_reached_fails_every_request() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let bounds = Bounds {
            connections: 2,
            in_flight: 4,
            timeout: Duration::from_secs(1),
        };
        let answers = ask_all(addr, 20, bounds, request).await;
        assert!(answers
            .iter()
            .all(|a| matches!(a, Err(AskError::Connect(_)))));
    }
}
