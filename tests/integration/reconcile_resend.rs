//! Reconcile's repair against a primary that fails for a moment: a repair
//! UPDATE answered SERVFAIL, or whose connection is cut before the answer,
//! is sent again on a fresh connection after the stream's backoff, as the
//! stream would send it; a server that keeps failing ends the zone with an
//! error naming the zone, the server, the attempts and the last reason.
//!
//! The faults come from a front on loopback between pg2dns and the real
//! primary: it relays every message both ways, except the UPDATEs its
//! script names, which it answers SERVFAIL itself (as a server that failed
//! and undid the update does, RFC 2136 §3.4.2.1), leaves unanswered, cuts
//! the connection on, or passes on and then loses the answer of.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::stack::FORWARD;
use crate::harness::{Primary, Stack, DNS_DEADLINE};
use crate::reconcile::{report, stack_with_rows, zone};

on_each_primary!(
    a_repair_answered_servfail_then_cut_then_unanswered_is_sent_again_and_the_zone_repaired
);

/// What the front does to one UPDATE instead of relaying it.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Answer SERVFAIL itself (unsigned, as the answer of a failed server
    /// may be).
    ServFail,
    /// Close the connection without an answer.
    Cut,
    /// Keep the connection open and never answer.
    Silent,
    /// Relay it to the server, wait for the server's answer, and close the
    /// connection without passing that answer on: applied, answer lost.
    Lost,
}

/// A front on a free loopback port relaying to a primary, with the UPDATEs
/// it has seen counted.
struct FaultyFront {
    addr: SocketAddr,
    updates: Arc<AtomicUsize>,
}

impl FaultyFront {
    /// Starts a front to `to`: the n-th UPDATE it sees meets `script[n]`,
    /// those after the script `then` (relayed if `None`).
    async fn start(to: SocketAddr, script: &[Fault], then: Option<Fault>) -> Result<FaultyFront> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let updates = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let counted = updates.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (script, counted) = (script.clone(), counted.clone());
                tokio::spawn(async move {
                    let _ = relay(client, to, script, then, counted).await;
                });
            }
        });
        Ok(FaultyFront { addr, updates })
    }

    fn updates(&self) -> usize {
        self.updates.load(Ordering::SeqCst)
    }
}

async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Vec<u8>> {
    let len = r.read_u16().await?;
    let mut body = vec![0; usize::from(len)];
    r.read_exact(&mut body).await?;
    Ok(body)
}

async fn write_frame(w: &mut (impl AsyncWrite + Unpin), body: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(body.len()).map_err(std::io::Error::other)?;
    let mut frame = len.to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    w.write_all(&frame).await
}

/// One client connection: frames relayed both ways, UPDATEs (opcode 5)
/// first offered to the script.
async fn relay(
    client: TcpStream,
    to: SocketAddr,
    script: Arc<Mutex<VecDeque<Fault>>>,
    then: Option<Fault>,
    updates: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let server = TcpStream::connect(to).await?;
    let (mut from_client, to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let to_client = Arc::new(tokio::sync::Mutex::new(to_client));
    let back = to_client.clone();
    let down = tokio::spawn(async move {
        while let Ok(frame) = read_frame(&mut from_server).await {
            if write_frame(&mut *back.lock().await, &frame).await.is_err() {
                break;
            }
        }
    });
    let result = async {
        while let Ok(frame) = read_frame(&mut from_client).await {
            let is_update = frame.get(2).is_some_and(|b| (b >> 3) & 0x0F == 5);
            let fault = if is_update {
                updates.fetch_add(1, Ordering::SeqCst);
                script.lock().expect("script lock").pop_front().or(then)
            } else {
                None
            };
            match fault {
                None => write_frame(&mut to_server, &frame).await?,
                Some(Fault::ServFail) => {
                    write_frame(&mut *to_client.lock().await, &servfail(&frame)).await?
                }
                Some(Fault::Cut) => break,
                Some(Fault::Silent) => {}
                Some(Fault::Lost) => {
                    let mut aside = TcpStream::connect(to).await?;
                    write_frame(&mut aside, &frame).await?;
                    read_frame(&mut aside).await?;
                    break;
                }
            }
        }
        Ok(())
    }
    .await;
    down.abort();
    let _ = down.await;
    result
}

/// The unsigned SERVFAIL answer to `request`: its ID, QR, opcode UPDATE,
/// RCODE 2, and its zone section alone.
fn servfail(request: &[u8]) -> Vec<u8> {
    let mut end = 12;
    while let Some(&len) = request.get(end) {
        end += 1 + usize::from(len);
        if len == 0 {
            break;
        }
    }
    end += 4;
    let mut answer = request[..end.min(request.len())].to_vec();
    answer[2] = 0x80 | (5 << 3);
    answer[3] = 2;
    answer[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    answer
}

/// Points the forward zone's `primary` at `to` in the stack's config.
fn route_forward_zone_through(stack: &Stack, primary: Primary, to: SocketAddr) -> Result<()> {
    let server = stack.server(primary)?.addr();
    let config = std::fs::read_to_string(stack.config_path())?;
    let from = format!("name = \"{FORWARD}\"\nprimary = \"{server}\"");
    ensure!(
        config.contains(&from),
        "the config lists {FORWARD} as expected:\n{config}"
    );
    std::fs::write(
        stack.config_path(),
        config.replace(&from, &format!("name = \"{FORWARD}\"\nprimary = \"{to}\"")),
    )?;
    Ok(())
}

/// A stack in sync, then changed behind pg2dns's back: a rogue record
/// added, a UTF-8 TXT with an escaped quote deleted.
async fn stack_out_of_sync(label: &str, primary: Primary) -> Result<Stack> {
    let stack = stack_with_rows(
        label,
        primary,
        r#"('www.example.test.', 300, 'A', '192.0.2.10'),
           ('txt.example.test.', 300, 'TXT', '"Grüße \"zwei\"" "drei"')"#,
    )
    .await?;
    stack
        .server(primary)?
        .nsupdate(
            "update add rogue.example.test. 300 A 192.0.2.99\n\
             update delete txt.example.test. TXT",
        )
        .await?;
    ensure!(
        !stack.query("rogue.example.test.", "A").await?.is_empty(),
        "the rogue record was added"
    );
    Ok(stack)
}

async fn a_repair_answered_servfail_then_cut_then_unanswered_is_sent_again_and_the_zone_repaired(
    primary: Primary,
) -> Result<()> {
    let stack = stack_out_of_sync("reconcile-resend", primary).await?;
    let server: SocketAddr = stack.server(primary)?.addr().parse()?;
    let front =
        FaultyFront::start(server, &[Fault::ServFail, Fault::Cut, Fault::Silent], None).await?;
    route_forward_zone_through(&stack, primary, front.addr)?;
    stack.append_config("\n[limits]\ndns_timeout_ms = 2000\n")?;

    let output = stack.reconcile(&["--json", "--apply"], &[]).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let (code, json) = report(&output)?;
    let forward = zone(&json, FORWARD)?;
    ensure!(
        code == 0 && forward["in_sync_after"] == true,
        "the repair is sent again and the zone repaired (exit {code}): {forward:#}\n{stderr}"
    );
    ensure!(
        forward["resends"] == 3 && front.updates() == 4,
        "one message sent four times (SERVFAIL, cut, unanswered, applied): resends {}, UPDATEs seen {}\n{stderr}",
        forward["resends"],
        front.updates()
    );
    ensure!(
        stderr.contains("the server answered SERVFAIL")
            && stderr.contains("the server closed the connection")
            && stderr.contains("no answer in time")
            && stderr.contains("sending it again"),
        "each resend is logged with its reason:\n{stderr}"
    );

    // What the primary itself serves now equals the table.
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    let (code, json) = report(&stack.reconcile(&["--json"], &[]).await?)?;
    ensure!(code == 0, "a second run finds the zones in sync: {json:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_the_server_keeps_answering_servfail_ends_the_zone_naming_server_and_attempts(
) -> Result<()> {
    let primary = Primary::Bind;
    let stack = stack_out_of_sync("reconcile-servfail-bound", primary).await?;
    let server: SocketAddr = stack.server(primary)?.addr().parse()?;
    let front = FaultyFront::start(server, &[], Some(Fault::ServFail)).await?;
    route_forward_zone_through(&stack, primary, front.addr)?;

    let output = stack.reconcile(&["--json", "--apply"], &[]).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let (code, json) = report(&output)?;
    let forward = zone(&json, FORWARD)?;
    let error = forward["error"]
        .as_str()
        .with_context(|| format!("the zone ends with an error: {forward:#}\n{stderr}"))?;
    let expected = format!(
        "zone {FORWARD}: repair UPDATE to {} failed 10 times in a row",
        front.addr
    );
    ensure!(
        code == 2 && error.contains(&expected) && error.contains("the server answered SERVFAIL"),
        "exit 2 with an error naming zone, server, attempts and the last reason (exit {code}): {error}\n{stderr}"
    );
    ensure!(
        front.updates() == 10 && forward["resends"] == 9,
        "ten attempts, nine of them resends: UPDATEs seen {}, resends {}",
        front.updates(),
        forward["resends"]
    );
    ensure!(
        stderr.contains("attempt=9"),
        "the last resend is logged with its attempt number:\n{stderr}"
    );
    // Nothing reached the primary: the rogue record is still there.
    ensure!(
        !stack.query("rogue.example.test.", "A").await?.is_empty(),
        "a repair that was never applied changed nothing"
    );
    Ok(())
}

/// The first copy was applied but its answer lost: the resent copy fails
/// the SOA guard (the serial the first one moved), the zone is transferred
/// again and found repaired; nothing is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_applied_whose_answer_was_lost_is_resent_fails_the_guard_and_ends_in_sync(
) -> Result<()> {
    let primary = Primary::Bind;
    let stack = stack_out_of_sync("reconcile-lost-answer", primary).await?;
    let server: SocketAddr = stack.server(primary)?.addr().parse()?;
    let serial_before = stack.serial(FORWARD).await?;
    let front = FaultyFront::start(server, &[Fault::Lost], None).await?;
    route_forward_zone_through(&stack, primary, front.addr)?;

    let output = stack.reconcile(&["--json", "--apply"], &[]).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let (code, json) = report(&output)?;
    let forward = zone(&json, FORWARD)?;
    ensure!(
        code == 0 && forward["in_sync_after"] == true,
        "the zone ends in sync (exit {code}): {forward:#}\n{stderr}"
    );
    ensure!(
        forward["resends"] == 1
            && forward["retries"] == 1
            && forward["messages_applied"] == 0
            && front.updates() == 2,
        "sent twice, the second copy refused by the guard, then a fresh transfer found nothing to do: {forward:#}\nUPDATEs seen {}\n{stderr}",
        front.updates()
    );
    // The first copy alone changed the zone: one serial step.
    let serial_after = stack.serial(FORWARD).await?;
    ensure!(
        serial_after == serial_before + 1,
        "one UPDATE applied: serial {serial_before} -> {serial_after}"
    );
    stack.wait_until_dns_matches_table(DNS_DEADLINE).await?;
    Ok(())
}
