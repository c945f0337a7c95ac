//! Prompt acknowledgements on an SSH connection's socket (Linux).
//!
//! OpenSSH's `sshd` leaves Nagle's algorithm on for sessions without a
//! terminal, which is how `maki` runs its commands. Right after the login
//! it writes two small packets, and the second waits until the first is
//! acknowledged. Linux delays that acknowledgement by up to 40 ms when the
//! client has just sent something itself (its channel request) and has
//! nothing more to send. So the first answer of every login waited about
//! 40 ms for a timer (measured: "state asked" 49–53 ms after the login on
//! an idle one-node cluster; 7–9 ms with the route set to `quickack 1`).
//!
//! The cure is `TCP_QUICKACK`, which the kernel clears again as the
//! connection goes on, so it has to be set again whenever data arrives.
//! async-ssh2-tokio opens the socket itself and does not hand it out. So,
//! once logged in, the socket connected to the machine is found among this
//! process's descriptors and duplicated, and a task sets the option each
//! time the socket becomes readable. The task holds the duplicate: it ends,
//! closing it, when the connection ends or the [`PromptAck`] is dropped.
//!
//! Anything unexpected (no such socket, two of them, an error) leaves the
//! connection as it was: slower by one timer, never wrong.

use std::net::SocketAddr;

/// Keeps acknowledgements prompt while it lives.
// Elsewhere than on Linux none is ever made (see `start`).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub struct PromptAck {
    #[cfg(target_os = "linux")]
    task: tokio::task::AbortHandle,
}

impl Drop for PromptAck {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        self.task.abort();
    }
}

/// Starts keeping acknowledgements prompt on this process's one TCP
/// connection to `peer`. None when that connection cannot be told apart
/// (or on systems without `TCP_QUICKACK`).
#[cfg(target_os = "linux")]
pub fn start(peer: SocketAddr) -> Option<PromptAck> {
    use socket2::SockRef;
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    let fd = linux::connected_to(peer)?;
    SockRef::from(&fd).set_tcp_quickack(true).ok()?;
    // SAFETY: `fd` is an `OwnedFd`: open, owned by the `AsyncFd` until it
    // is dropped, and never closed or replaced meanwhile.
    let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return;
            };
            let closed = ready.ready().is_read_closed();
            // Cleared before the option is set, so that data arriving
            // meanwhile wakes this task again.
            ready.clear_ready();
            if closed || SockRef::from(fd.get_ref()).set_tcp_quickack(true).is_err() {
                return;
            }
        }
    });
    Some(PromptAck {
        task: task.abort_handle(),
    })
}

#[cfg(not(target_os = "linux"))]
pub fn start(_peer: SocketAddr) -> Option<PromptAck> {
    None
}

#[cfg(target_os = "linux")]
mod linux {
    use std::net::SocketAddr;
    use std::os::fd::{BorrowedFd, OwnedFd};

    use socket2::{SockRef, Type};

    /// A duplicate of the one TCP socket of this process connected to
    /// `peer`; None if there is none or more than one. Descriptors that
    /// share one socket (the same inode) count as one.
    pub fn connected_to(peer: SocketAddr) -> Option<OwnedFd> {
        let mut found: Option<(std::ffi::OsString, OwnedFd)> = None;
        for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
            let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(link) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let link = link.into_os_string();
            if !link.as_encoded_bytes().starts_with(b"socket:") {
                continue;
            }
            if found.as_ref().is_some_and(|(inode, _)| *inode == link) {
                continue;
            }
            // SAFETY: the descriptor is borrowed only for the `fcntl` that
            // duplicates it. If another thread closed it in between, the
            // call fails or duplicates whatever now has that number, and
            // the checks below, made on the duplicate this function owns,
            // turn that away. Nothing is ever done through the borrowed
            // descriptor itself.
            let Ok(dup) = unsafe { BorrowedFd::borrow_raw(n) }.try_clone_to_owned() else {
                continue;
            };
            if !is_tcp_to(&dup, peer) {
                continue;
            }
            if found.is_some() {
                return None;
            }
            found = Some((link, dup));
        }
        found.map(|(_, fd)| fd)
    }

    fn is_tcp_to(fd: &OwnedFd, peer: SocketAddr) -> bool {
        let sock = SockRef::from(fd);
        sock.r#type().is_ok_and(|t| t == Type::STREAM)
            && sock
                .peer_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .is_some_and(|a| a == peer)
    }
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// A listener, and one connection to it: (its address, the listener,
    /// our end, the accepted end).
    async fn connected() -> (SocketAddr, TcpListener, TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ours = TcpStream::connect(addr).await.unwrap();
        let (served, _) = listener.accept().await.unwrap();
        (addr, listener, ours, served)
    }

    #[tokio::test]
    async fn finds_the_one_connection_to_a_peer_and_not_two() {
        let (addr, _listener, first, _served) = connected().await;
        // The accepted end's peer is `first`'s local address, not `addr`.
        let found = linux::connected_to(addr).expect("the connection to the listener");
        assert_eq!(
            socket2::SockRef::from(&found)
                .local_addr()
                .unwrap()
                .as_socket(),
            Some(first.local_addr().unwrap())
        );
        drop(found);
        assert!(start(addr).is_some());

        let second = TcpStream::connect(addr).await.unwrap();
        assert!(
            linux::connected_to(addr).is_none(),
            "two connections: neither is guessed"
        );
        drop(second);
    }

    #[tokio::test]
    async fn lets_go_of_the_socket_when_the_connection_ends() {
        let (addr, _listener, ours, served) = connected().await;
        let kept = start(addr).expect("the connection to the listener");
        // The other end closes, then ours: the task sees the end and
        // closes its duplicate, so no descriptor of that socket is left.
        drop(served);
        drop(ours);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while linux::connected_to(addr).is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the duplicate is still open"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        drop(kept);
    }
}
