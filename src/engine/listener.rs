//! Listening sockets and their accept loops.
//!
//! A `Listener` is keyed by its socket address only: what it serves (which vserver, plain or TLS,
//! which certificate, which snapshot) is a `Route` it reads from a `watch` channel on every
//! accept. A commit that changes the route of an address therefore swaps it in place: the socket
//! is never rebound, the backlog is kept, and a new certificate applies to new handshakes only.
//! Dropping a `Listener` aborts its accept loop and closes the socket; connections already
//! accepted run in their own tasks and are not affected (they keep flowing until they end).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::engine::proxy;
use crate::engine::supervisor::{Route, Shared};

/// Pending connections the kernel may queue per listener.
const BACKLOG: i32 = 1024;

/// A bound, accepting socket.
pub(crate) struct Listener {
    /// The accept loop holds the receiver; replaced routes take effect on the next accept.
    route: watch::Sender<Arc<Route>>,
    /// Shared with the accept loop, so that dropping the `Listener` can stop the socket at once
    /// (see `Drop`) instead of whenever the runtime gets round to dropping the aborted task.
    sock: Arc<TcpListener>,
    task: JoinHandle<()>,
}

/// Binds `addr` with SO_REUSEADDR (so a restart does not wait out TIME_WAIT) and registers it
/// with tokio. Runs in commit's prepare phase: an error here aborts the commit.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    TcpListener::from_std(sock.into())
}

// === impl Listener ===

impl Listener {
    /// Starts accepting on `sock`, serving `route`.
    pub fn start(sock: TcpListener, route: Arc<Route>, shared: Arc<Shared>) -> Listener {
        let (tx, rx) = watch::channel(route);
        let sock = Arc::new(sock);
        let task = tokio::spawn(accept_loop(sock.clone(), rx, shared));
        Listener {
            route: tx,
            sock,
            task,
        }
    }

    /// The route currently served (for tests that drive connections by hand).
    #[cfg(test)]
    pub fn route(&self) -> Arc<Route> {
        self.route.borrow().clone()
    }

    /// Serves `route` from the next accepted connection on.
    pub fn set_route(&self, route: Arc<Route>) {
        self.route.send_replace(route);
    }
}

impl Drop for Listener {
    /// Stops listening synchronously: `shutdown` moves the socket out of LISTEN now, so the very
    /// next commit can bind the same address again (SO_REUSEADDR allows binding next to a
    /// non-listening socket), e.g. `rm user vserver X` followed at once by `add user vserver X`.
    /// The accept task is aborted and drops the descriptor later.
    fn drop(&mut self) {
        let _ = socket2::SockRef::from(&*self.sock).shutdown(std::net::Shutdown::Both);
        self.task.abort();
    }
}

async fn accept_loop(
    sock: Arc<TcpListener>,
    route: watch::Receiver<Arc<Route>>,
    shared: Arc<Shared>,
) {
    loop {
        match sock.accept().await {
            Ok((tcp, peer)) => {
                let r = route.borrow().clone();
                tokio::spawn(proxy::serve(tcp, peer, r, shared.clone()));
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS and aborted handshakes: back off briefly rather than spin
                // on a listener that stays readable; the loop itself never ends on an error.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
