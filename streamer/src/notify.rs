//! systemd's readiness protocol, for a `Type=notify` unit.
//!
//! sd_notify(3): "a service notifies the service manager about state
//! changes" by sending a datagram of newline-separated `VARIABLE=value`
//! assignments to the `AF_UNIX` socket named by `$NOTIFY_SOCKET` (a path,
//! or an abstract name written with a leading `@`). pg2dns says `READY=1`
//! once it streams, or once it waits, paused or halted, for the operator
//! (so that `systemctl start` returns and `systemctl status` shows why),
//! `RELOADING=1` on SIGHUP (the next `READY=1` ends the reload),
//! `STOPPING=1` on SIGTERM, and a `STATUS=` line with each.
//!
//! Written by hand rather than with a crate: the protocol is one `sendto`
//! on a datagram socket, which the standard library does. Without
//! `$NOTIFY_SOCKET` (not under systemd) every call does nothing; a failed
//! send is logged at debug level and otherwise ignored, since the stream
//! matters more than the service manager's view of it.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use tracing::debug;

/// The socket systemd listens on, from `$NOTIFY_SOCKET`.
fn socket_addr() -> Option<io::Result<SocketAddr>> {
    let name = std::env::var_os("NOTIFY_SOCKET")?;
    let name = name.to_string_lossy().into_owned();
    Some(match name.strip_prefix('@') {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        }
        None => SocketAddr::from_pathname(name),
    })
}

/// Sends `state` (newline-separated assignments) to the service manager.
fn send(state: &str) {
    let Some(addr) = socket_addr() else { return };
    let sent = addr.and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        debug!(error = %e, "cannot notify the service manager");
    }
}

/// One line of `STATUS=`: newlines would end the assignment early.
fn status_line(status: &str) -> String {
    status.replace('\n', " ")
}

/// The service is up and settled (streaming, or waiting for the operator).
pub fn ready(status: &str) {
    send(&format!("READY=1\nSTATUS={}", status_line(status)));
}

/// The configuration is being read again; the next [`ready`] ends it.
pub fn reloading() {
    send("RELOADING=1\nSTATUS=reading the configuration again");
}

/// The service is stopping.
pub fn stopping() {
    send("STOPPING=1\nSTATUS=stopping");
}

/// A new status text, without a change of state.
pub fn status(status: &str) {
    send(&format!("STATUS={}", status_line(status)));
}
