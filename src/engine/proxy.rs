//! The data path of one client connection: TLS termination, backend selection, the protocol
//! extension's callbacks, and the byte pump between client and server.
//!
//! Each accepted connection is one task running `serve`. It reads only what its `Route` (and the
//! `Runtime` inside) says, never the live configuration, so a commit does not change a
//! connection's path. Three things end a connection besides its peers: the idle timeouts, the
//! engine's shutdown signal, and its service's drain signal (`ServiceShared::close_connections`).
//!
//! Memory per idle connection is kept small on purpose (the target is below HAProxy's ~45 KB per
//! held TLS connection): the native pump reads into a buffer on the task's stack for the
//! duration of one poll, and only bytes the other side cannot take at once are copied to a heap
//! buffer, which is freed as soon as it drains. An idle connection therefore holds no copy
//! buffers at all, only its sockets and TLS state.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::snapshot::Persistence;
use crate::engine::backend::{tune_socket, BackendStream, ClientStream, ServiceRuntime};
use crate::engine::balance::Candidate;
use crate::engine::extension::{Action, Extension, Session, SessionContext};
use crate::engine::stats::{Counters, Gauge, GaugeGuard};
use crate::engine::supervisor::{Route, Shared};

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read per chunk (and the most a direction holds in its stack buffer per read).
const CHUNK: usize = 16 * 1024;
/// Reads per direction per wake-up before yielding, so one busy connection cannot starve others.
const READS_PER_POLL: usize = 8;
/// Extension-phase read buffer (freed when both directions go native).
const EXT_CHUNK: usize = 8 * 1024;

/// Why a connection ended abnormally (logged at debug level; never reaches the admin).
#[derive(Debug)]
pub(crate) enum ProxyError {
    Io(io::Error),
    Handshake(String),
    /// No usable service, or every attempt to reach one failed.
    NoService,
    /// The extension raised an error; the client is reset.
    Extension(String),
    IdleTimeout,
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::Io(e) => write!(f, "i/o: {e}"),
            ProxyError::Handshake(e) => write!(f, "TLS handshake: {e}"),
            ProxyError::NoService => f.write_str("no usable service"),
            ProxyError::Extension(e) => write!(f, "extension error: {e}"),
            ProxyError::IdleTimeout => f.write_str("idle timeout"),
        }
    }
}

/// An open backend connection and what it holds up.
struct Backend {
    stream: BackendStream,
    svc: Arc<ServiceRuntime>,
    /// Changes when the service is drained.
    kill: watch::Receiver<u64>,
    _svc_client: GaugeGuard,
    _svc_server: GaugeGuard,
    _lb_server: GaugeGuard,
    _front_server: Option<GaugeGuard>,
}

/// Counts bytes of one connection into the front vserver, its lb vserver and the service.
struct Meter<'a> {
    front: &'a Counters,
    lb: Option<&'a Counters>,
    svc: Arc<Counters>,
}

/// One direction of the native pump.
#[derive(Default)]
struct Direction {
    /// Bytes read but not yet written (only under backpressure; empty and unallocated otherwise).
    pending: Vec<u8>,
    pos: usize,
    eof: bool,
    done: bool,
    need_flush: bool,
    /// When bytes last arrived from this direction's reader.
    last_read: Option<Instant>,
}

/// Connection-wide context passed to the helpers below.
struct Conn {
    route: Arc<Route>,
    shared: Arc<Shared>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
}

/// Serves one accepted connection to completion. Never panics on network input.
pub(crate) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    route: Arc<Route>,
    shared: Arc<Shared>,
) {
    Counters::add(&route.front.counters.hits, 1);
    let _front_client = GaugeGuard::new(&route.front.counters, Gauge::Client);
    let mut shutdown = shared.shutdown.subscribe();
    if *shutdown.borrow() {
        return;
    }
    let conn = Conn {
        local: tcp.local_addr().ok(),
        route,
        shared: shared.clone(),
        peer,
    };
    let res = tokio::select! {
        r = conn.run(tcp) => r,
        _ = shutdown.wait_for(|s| *s) => Ok(()),
    };
    if let Err(e) = res {
        tracing::debug!(vserver = %conn.route.name, client = %peer, error = %e, "connection ended");
    }
}

// === impl Conn ===

impl Conn {
    async fn run(&self, tcp: TcpStream) -> Result<(), ProxyError> {
        // Nothing can serve (the vserver is DOWN): close at once, before any TLS handshake.
        if !self.route.lb.members.iter().any(|(s, _)| usable(s)) {
            return Err(self.reject());
        }
        tune_socket(&tcp);
        let mut client = match &self.route.tls {
            None => ClientStream::Plain(tcp),
            Some(acc) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acc.accept(tcp)).await {
                Ok(Ok(s)) => ClientStream::Tls(Box::new(s)),
                Ok(Err(e)) => return Err(ProxyError::Handshake(e.to_string())),
                Err(_) => return Err(ProxyError::Handshake("timed out".into())),
            },
        };
        let ext = self
            .route
            .ext
            .clone()
            .filter(|e| e.has_client_on_data() || e.has_server_on_data());
        match ext {
            Some(ext) => self.run_extension(client, &ext).await,
            None => {
                let mut backend = self.open_backend(None, None, None).await?;
                self.pump(&mut client, &mut backend).await
            }
        }
    }

    /// The idle limit of the connection: the smaller of the vserver's client timeout and the
    /// service's server timeout (0 = none for either).
    fn idle_timeout(&self, svc: Option<&ServiceRuntime>) -> Option<Duration> {
        let secs = |s: u32| (s > 0).then(|| Duration::from_secs(u64::from(s)));
        let clt = secs(self.route.clt_timeout);
        let svr = svc.and_then(|s| secs(s.spec.svr_timeout));
        [clt, svr].into_iter().flatten().min()
    }

    fn meter(&self, svc: &ServiceRuntime) -> Meter<'_> {
        Meter {
            front: &self.route.front.counters,
            lb: (!self.route.front_is_lb).then_some(&*self.route.lb.shared.counters),
            svc: svc.shared.counters.clone(),
        }
    }

    fn reject(&self) -> ProxyError {
        Counters::add(&self.route.front.counters.rejected, 1);
        if !self.route.front_is_lb {
            Counters::add(&self.route.lb.shared.counters.rejected, 1);
        }
        ProxyError::NoService
    }

    // --- selection ---

    /// Chooses a member index: persistence first, then the lb method. `exclude` is a member that
    /// just failed to connect.
    fn choose(
        &self,
        token: Option<&str>,
        session: Option<&str>,
        exclude: Option<usize>,
    ) -> Option<usize> {
        let lb = &self.route.lb;
        let cands: Vec<Option<Candidate<'_>>> = lb
            .members
            .iter()
            .enumerate()
            .map(|(i, (svc, weight))| {
                let s = &svc.spec;
                let conns = svc
                    .shared
                    .counters
                    .cur_server_conns
                    .load(std::sync::atomic::Ordering::Relaxed);
                let usable = Some(i) != exclude && usable(svc);
                usable.then_some(Candidate {
                    name: &s.name,
                    weight: *weight,
                    conns,
                })
            })
            .collect();
        let key = match lb.spec.persistence {
            Persistence::SourceIp => Some(self.peer.ip().to_string()),
            Persistence::UserSession => session.map(str::to_string),
            _ => None,
        };
        let timeout = self.persistence_timeout();
        if let Some(k) = &key {
            if let Some(svc) =
                self.shared
                    .persistence
                    .get(&lb.spec.name, k, Instant::now(), timeout)
            {
                if let Some(i) = cands.iter().position(|c| c.is_some_and(|c| c.name == svc)) {
                    return Some(i);
                }
            }
        }
        let i = lb.balancer.pick(&cands, Some(self.peer.ip()), token)?;
        if let Some(k) = &key {
            self.shared.persistence.put(
                &lb.spec.name,
                k,
                &lb.members[i].0.spec.name,
                Instant::now(),
                timeout,
            );
        }
        Some(i)
    }

    /// `-timeout` minutes; 0 is taken as NetScaler's maximum (1440 minutes).
    fn persistence_timeout(&self) -> Duration {
        let m = match self.route.lb.spec.persistence_timeout_min {
            0 => 1440,
            m => m,
        };
        Duration::from_secs(u64::from(m) * 60)
    }

    /// Picks a service and connects to it; on a connect failure tries one other service, then
    /// gives up (the caller closes the client). `reuse` is the current backend, kept when the new
    /// decision lands on the same service.
    async fn open_backend(
        &self,
        token: Option<&str>,
        session: Option<&str>,
        reuse: Option<Backend>,
    ) -> Result<Backend, ProxyError> {
        let mut exclude = None;
        let mut reuse = reuse;
        for _attempt in 0..2 {
            let Some(i) = self.choose(token, session, exclude) else {
                return Err(self.reject());
            };
            let svc = self.route.lb.members[i].0.clone();
            if let Some(b) = reuse.take() {
                if Arc::ptr_eq(&b.svc, &svc) {
                    return Ok(b);
                }
            }
            // Subscribe to the service's flush signal before connecting: a flush (DOWN, disable)
            // that happens while the connect is in flight must still close this connection.
            let kill = svc.shared.kill_signal();
            match svc.connect().await {
                Ok(stream) => {
                    Counters::add(&svc.shared.counters.hits, 1);
                    if !self.route.front_is_lb {
                        // An lb vserver that listens itself counted the hit at accept.
                        Counters::add(&self.route.lb.shared.counters.hits, 1);
                    }
                    let lb_counters = &self.route.lb.shared.counters;
                    return Ok(Backend {
                        stream,
                        kill,
                        _svc_client: GaugeGuard::new(&svc.shared.counters, Gauge::Client),
                        _svc_server: GaugeGuard::new(&svc.shared.counters, Gauge::Server),
                        _lb_server: GaugeGuard::new(lb_counters, Gauge::Server),
                        _front_server: (!self.route.front_is_lb)
                            .then(|| GaugeGuard::new(&self.route.front.counters, Gauge::Server)),
                        svc,
                    });
                }
                Err(e) => {
                    tracing::debug!(service = %svc.spec.name, error = %e, "backend connect failed");
                    exclude = Some(i);
                }
            }
        }
        Err(self.reject())
    }

    // --- native pump ---

    /// Copies both ways until both sides have closed, an idle timeout fires, or the service is
    /// drained. Half-close: when one side ends its stream, the other side's write is shut down
    /// and the opposite direction keeps flowing.
    async fn pump(
        &self,
        client: &mut ClientStream,
        backend: &mut Backend,
    ) -> Result<(), ProxyError> {
        // Held for the whole pump: the lb vserver counts this client as current.
        let _lb_client = (!self.route.front_is_lb)
            .then(|| GaugeGuard::new(&self.route.lb.shared.counters, Gauge::Client));
        let idle = self.idle_timeout(Some(&backend.svc));
        let meter = self.meter(&backend.svc);
        let mut kill = backend.kill.clone();
        let copy = pump_streams(client, &mut backend.stream, &meter, idle);
        tokio::select! {
            r = copy => r,
            _ = drained(&mut kill) => Ok(()),
        }
    }

    // --- extension path ---

    /// Starts the extension's session for this connection and runs it.
    async fn run_extension(&self, client: ClientStream, ext: &Extension) -> Result<(), ProxyError> {
        let ctx = SessionContext {
            vserver_name: self.route.name.clone(),
            client_addr: self.peer,
            vserver_addr: self.local.unwrap_or(self.peer),
            params: self.route.params.clone(),
        };
        let session = ext
            .new_session(ctx)
            .map_err(|e| self.ext_failed(&client, e.message))?;
        self.run_callbacks(
            client,
            session,
            ext.has_client_on_data(),
            ext.has_server_on_data(),
        )
        .await
    }

    /// Feeds the callbacks until neither direction needs them, then pumps natively.
    async fn run_callbacks<S: Callbacks>(
        &self,
        mut client: ClientStream,
        mut session: S,
        client_lua: bool,
        server_lua: bool,
    ) -> Result<(), ProxyError> {
        let mut st = ExtState {
            client_lua,
            server_lua,
            backend: None,
            message_done: false,
            client_eof: false,
            server_eof: false,
            closed: false,
        };
        let _lb_client = (!self.route.front_is_lb)
            .then(|| GaugeGuard::new(&self.route.lb.shared.counters, Gauge::Client));
        let mut cbuf = vec![0u8; EXT_CHUNK];
        let mut sbuf = vec![0u8; EXT_CHUNK];
        let mut last_activity = Instant::now();
        loop {
            if st.closed || (st.client_eof && st.server_eof) {
                return Ok(());
            }
            if !st.client_lua && st.backend.is_none() {
                st.backend = Some(self.open_backend(None, None, None).await?);
                st.server_eof = false;
            }
            if !st.client_lua && !st.server_lua && !st.client_eof && !st.server_eof {
                if let Some(mut b) = st.backend.take() {
                    // Neither callback runs again: free the session (its Lua state) and the
                    // buffers before a possibly very long native phase.
                    drop((cbuf, sbuf, session));
                    return self.pump(&mut client, &mut b).await;
                }
            }
            let deadline = self
                .idle_timeout(st.backend.as_ref().map(|b| &*b.svc))
                .map(|d| last_activity + d);
            let backend_stream = st.backend.as_mut().map(|b| (&mut b.stream, &mut b.kill));
            let (bstream, bkill) = match backend_stream {
                Some((s, k)) => (Some(s), Some(k)),
                None => (None, None),
            };
            tokio::select! {
                r = client.read(&mut cbuf), if !st.client_eof => {
                    let n = r.map_err(ProxyError::Io)?;
                    last_activity = Instant::now();
                    if n == 0 {
                        st.client_eof = true;
                        match st.backend.as_mut() {
                            Some(b) => { let _ = b.stream.shutdown().await; }
                            None => return Ok(()),
                        }
                        continue;
                    }
                    Counters::add(&self.route.front.counters.request_bytes, n as u64);
                    if st.client_lua {
                        let actions = session
                            .on_client_data(&cbuf[..n])
                            .map_err(|e| self.ext_failed(&client, e))?;
                        self.perform(&mut st, &mut client, actions).await?;
                    } else if let Some(b) = st.backend.as_mut() {
                        self.to_server(b, &cbuf[..n]).await?;
                    }
                }
                r = read_opt(bstream, &mut sbuf), if !st.server_eof => {
                    let n = r.map_err(ProxyError::Io)?;
                    last_activity = Instant::now();
                    if n == 0 {
                        st.server_eof = true;
                        let _ = client.shutdown().await;
                        continue;
                    }
                    if let Some(b) = st.backend.as_ref() {
                        Counters::add(&b.svc.shared.counters.response_bytes, n as u64);
                        if !self.route.front_is_lb {
                            Counters::add(&self.route.lb.shared.counters.response_bytes, n as u64);
                        }
                    }
                    if st.server_lua {
                        let actions = session
                            .on_server_data(&sbuf[..n])
                            .map_err(|e| self.ext_failed(&client, e))?;
                        self.perform(&mut st, &mut client, actions).await?;
                    } else {
                        client.write_all(&sbuf[..n]).await.map_err(ProxyError::Io)?;
                        Counters::add(&self.route.front.counters.response_bytes, n as u64);
                    }
                }
                _ = drained_opt(bkill) => return Ok(()),
                _ = sleep_opt(deadline) => return Err(ProxyError::IdleTimeout),
            }
        }
    }

    /// Performs a callback's actions in order.
    async fn perform(
        &self,
        st: &mut ExtState,
        client: &mut ClientStream,
        actions: Vec<Action>,
    ) -> Result<(), ProxyError> {
        for a in actions {
            match a {
                Action::ToServer {
                    data,
                    eom,
                    token,
                    session,
                } => {
                    Counters::add(&self.route.front.counters.ext_messages, 1);
                    Counters::add(&self.route.front.counters.ext_bytes, data.len() as u64);
                    if st.backend.is_none() || st.message_done {
                        // A new load-balancing decision: on the first data, and after each EOM.
                        let current = st.backend.take().filter(|_| !st.server_eof);
                        let b = self
                            .open_backend(token.as_deref(), session.as_deref(), current)
                            .await?;
                        st.backend = Some(b);
                        st.server_eof = false;
                        st.message_done = false;
                    }
                    if let Some(b) = st.backend.as_mut() {
                        if !data.is_empty() {
                            self.to_server(b, &data).await?;
                        }
                    }
                    if eom {
                        st.message_done = true;
                    }
                }
                Action::ToClient { data, .. } => {
                    Counters::add(&self.route.front.counters.ext_messages, 1);
                    Counters::add(&self.route.front.counters.ext_bytes, data.len() as u64);
                    client.write_all(&data).await.map_err(ProxyError::Io)?;
                    Counters::add(&self.route.front.counters.response_bytes, data.len() as u64);
                }
                Action::PipeClient => st.client_lua = false,
                Action::PipeServer => st.server_lua = false,
                Action::Close => {
                    let _ = client.shutdown().await;
                    st.closed = true;
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    async fn to_server(&self, b: &mut Backend, data: &[u8]) -> Result<(), ProxyError> {
        b.stream.write_all(data).await.map_err(ProxyError::Io)?;
        Counters::add(&b.svc.shared.counters.request_bytes, data.len() as u64);
        if !self.route.front_is_lb {
            Counters::add(
                &self.route.lb.shared.counters.request_bytes,
                data.len() as u64,
            );
        }
        Ok(())
    }

    /// Counts an extension error and arranges for the client to be reset (RST, not FIN) when
    /// the connection is dropped.
    fn ext_failed(&self, client: &ClientStream, message: String) -> ProxyError {
        Counters::add(&self.route.front.counters.ext_errors, 1);
        let tcp = match client {
            ClientStream::Plain(s) => s,
            ClientStream::Tls(s) => s.get_ref().0,
        };
        let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
        ProxyError::Extension(message)
    }
}

/// The two data callbacks of an extension session. A trait so the action handling can be tested
/// with scripted sessions; `extension::Session` is the implementation used at run time.
pub(crate) trait Callbacks {
    fn on_client_data(&mut self, data: &[u8]) -> Result<Vec<Action>, String>;
    fn on_server_data(&mut self, data: &[u8]) -> Result<Vec<Action>, String>;
}

impl Callbacks for Session {
    fn on_client_data(&mut self, data: &[u8]) -> Result<Vec<Action>, String> {
        Session::on_client_data(self, data).map_err(|e| e.message)
    }

    fn on_server_data(&mut self, data: &[u8]) -> Result<Vec<Action>, String> {
        Session::on_server_data(self, data).map_err(|e| e.message)
    }
}

/// Extension-phase state of one connection.
struct ExtState {
    /// The client callback still sees client data (no `PipeClient` yet).
    client_lua: bool,
    server_lua: bool,
    backend: Option<Backend>,
    /// The last `ToServer` carried an EOM: the next one gets a new decision.
    message_done: bool,
    client_eof: bool,
    server_eof: bool,
    closed: bool,
}

/// A service new connections may go to: enabled, not DOWN, below its `-maxClient`.
fn usable(svc: &ServiceRuntime) -> bool {
    let s = &svc.spec;
    let conns = svc
        .shared
        .counters
        .cur_server_conns
        .load(std::sync::atomic::Ordering::Relaxed);
    s.enabled
        && (!s.health_monitor || svc.shared.healthy())
        && (s.max_client == 0 || conns < u64::from(s.max_client))
}

async fn read_opt(s: Option<&mut BackendStream>, buf: &mut [u8]) -> io::Result<usize> {
    match s {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the service asks its connections to close. A closed channel (cannot happen
/// while the service record lives) never resolves.
async fn drained(kill: &mut watch::Receiver<u64>) {
    if kill.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn drained_opt(kill: Option<&mut watch::Receiver<u64>>) {
    match kill {
        Some(k) => drained(k).await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

// === the native pump ===

/// Copies client<->server until both directions are done, or until no byte has moved either
/// way for `idle` (the smaller of the client and server idle timeouts: every byte crosses both
/// sockets, so both see the same idleness).
async fn pump_streams(
    client: &mut ClientStream,
    server: &mut BackendStream,
    meter: &Meter<'_>,
    idle: Option<Duration>,
) -> Result<(), ProxyError> {
    let start = Instant::now();
    let mut c2s = Direction {
        last_read: Some(start),
        ..Direction::default()
    };
    let mut s2c = Direction {
        last_read: Some(start),
        ..Direction::default()
    };
    // One timer, re-armed lazily to the real deadline when it fires (no timer update per
    // chunk). Never polled, and so never registered, when there is no idle limit.
    let mut timer = std::pin::pin!(tokio::time::sleep(idle.unwrap_or(Duration::ZERO)));
    poll_fn(|cx| {
        if let Some(idle) = idle {
            while timer.as_mut().poll(cx).is_ready() {
                let last = c2s.last_read.max(s2c.last_read).unwrap_or(start);
                let deadline = last + idle;
                if deadline <= Instant::now() {
                    return Poll::Ready(Err(ProxyError::IdleTimeout));
                }
                timer.as_mut().reset(deadline.into());
            }
        }
        let a = poll_direction(cx, &mut c2s, &mut *client, &mut *server, |n| {
            Counters::add(&meter.front.request_bytes, n);
            if let Some(lb) = meter.lb {
                Counters::add(&lb.request_bytes, n);
            }
            Counters::add(&meter.svc.request_bytes, n);
        });
        if let Poll::Ready(Err(e)) = a {
            return Poll::Ready(Err(ProxyError::Io(e)));
        }
        let b = poll_direction(cx, &mut s2c, &mut *server, &mut *client, |n| {
            Counters::add(&meter.front.response_bytes, n);
            if let Some(lb) = meter.lb {
                Counters::add(&lb.response_bytes, n);
            }
            Counters::add(&meter.svc.response_bytes, n);
        });
        if let Poll::Ready(Err(e)) = b {
            return Poll::Ready(Err(ProxyError::Io(e)));
        }
        if c2s.done && s2c.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Advances one direction: drain what is pending, read a chunk, write it straight through, keep
/// only the unwritten rest. `Ready(Ok)` once the reader hit EOF and the writer was shut down.
fn poll_direction<R, W>(
    cx: &mut Context<'_>,
    d: &mut Direction,
    r: &mut R,
    w: &mut W,
    mut count: impl FnMut(u64),
) -> Poll<io::Result<()>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if d.done {
        return Poll::Ready(Ok(()));
    }
    for _ in 0..READS_PER_POLL {
        // 1. Whatever the writer could not take last time goes first (backpressure: no new read
        //    until it is gone).
        while d.pos < d.pending.len() {
            let n = ready!(Pin::new(&mut *w).poll_write(cx, &d.pending[d.pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            d.pos += n;
            d.need_flush = true;
        }
        if !d.pending.is_empty() {
            // Drained: give the memory back; idle connections hold no copy buffer.
            d.pending = Vec::new();
            d.pos = 0;
        }
        // 2. Reader ended: flush and pass the half-close on.
        if d.eof {
            ready!(Pin::new(&mut *w).poll_flush(cx))?;
            ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
            d.done = true;
            return Poll::Ready(Ok(()));
        }
        // 3. Read a chunk into the stack and write it straight through.
        let mut stack = [MaybeUninit::<u8>::uninit(); CHUNK];
        let mut rb = ReadBuf::uninit(&mut stack);
        match Pin::new(&mut *r).poll_read(cx, &mut rb) {
            Poll::Pending => {
                if d.need_flush {
                    ready!(Pin::new(&mut *w).poll_flush(cx))?;
                    d.need_flush = false;
                }
                return Poll::Pending;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        let data = rb.filled();
        if data.is_empty() {
            d.eof = true;
            continue;
        }
        d.last_read = Some(Instant::now());
        count(data.len() as u64);
        let mut off = 0;
        while off < data.len() {
            match Pin::new(&mut *w).poll_write(cx, &data[off..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    off += n;
                    d.need_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    d.pending = data[off..].to_vec();
                    d.pos = 0;
                    return Poll::Pending;
                }
            }
        }
    }
    // Budget spent: let other tasks run, come back at once.
    if d.need_flush {
        ready!(Pin::new(&mut *w).poll_flush(cx))?;
        d.need_flush = false;
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

#[cfg(test)]
mod tests {
    //! The extension action handling, driven by scripted sessions (the Lua engine is tested on
    //! its own). Addresses: 127.3.40.x.

    use super::*;
    use crate::config::snapshot::*;
    use crate::engine::balance::PersistenceTable;
    use crate::engine::stats::Stats;
    use crate::engine::supervisor::Reconciler;
    use tokio::net::TcpListener;

    /// Per-message LB: every client chunk is one message (EOM); "HI" is answered locally,
    /// "CLOSE" closes, "ERR" fails; server data comes back wrapped in <>.
    struct Scripted;

    impl Callbacks for Scripted {
        fn on_client_data(&mut self, data: &[u8]) -> Result<Vec<Action>, String> {
            Ok(match data {
                b"HI" => vec![Action::ToClient {
                    data: b"hello".to_vec(),
                    eom: true,
                }],
                b"CLOSE" => vec![Action::Close],
                b"ERR" => return Err("boom".into()),
                _ => vec![Action::ToServer {
                    data: data.to_vec(),
                    eom: true,
                    token: None,
                    session: None,
                }],
            })
        }

        fn on_server_data(&mut self, data: &[u8]) -> Result<Vec<Action>, String> {
            let mut v = b"<".to_vec();
            v.extend_from_slice(data);
            v.push(b'>');
            Ok(vec![Action::ToClient {
                data: v,
                eom: false,
            }])
        }
    }

    async fn echo(ip: &str) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let l = TcpListener::bind((ip, 0)).await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n2 = n.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                n2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut b = [0u8; 1024];
                    while let Ok(k) = s.read(&mut b).await {
                        if k == 0 || s.write_all(&b[..k]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (addr, n)
    }

    fn svc(name: &str, addr: SocketAddr) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            server: name.into(),
            target: Target::Ip(addr.ip()),
            port: addr.port(),
            service_type: ServiceType::UserTcp,
            enabled: true,
            max_client: 0,
            clt_timeout: 0,
            svr_timeout: 0,
            health_monitor: true,
            monitors: vec![],
            server_auth: false,
            common_name: None,
            ca_certkeys: vec![],
            tls: Default::default(),
            down_state_flush: true,
            drain_delay_secs: None,
        }
    }

    async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut v))
            .await
            .expect("in time")
            .expect("read");
        v
    }

    /// Like mqtt.lua: the first chunk carries the device id as token and session, then pipe.
    struct TokenThenPipe;

    impl Callbacks for TokenThenPipe {
        fn on_client_data(&mut self, data: &[u8]) -> Result<Vec<Action>, String> {
            let id = String::from_utf8_lossy(data).to_string();
            Ok(vec![
                Action::ToServer {
                    data: data.to_vec(),
                    eom: false,
                    token: Some(id.clone()),
                    session: Some(id),
                },
                Action::PipeClient,
            ])
        }

        fn on_server_data(&mut self, _data: &[u8]) -> Result<Vec<Action>, String> {
            Err("server callback must not run".into())
        }
    }

    fn user(vip: SocketAddr) -> UserVserverSpec {
        UserVserverSpec {
            name: "u".into(),
            ip: vip.ip(),
            port: vip.port(),
            transport: Transport::Tcp,
            extension: None,
            default_lb: "lb".into(),
            params: vec![],
            enabled: true,
            certkey: None,
            tls: TlsVersions::default(),
            clt_timeout: 0,
        }
    }

    fn lb(method: LbMethod, persistence: Persistence) -> LbVserverSpec {
        LbVserverSpec {
            name: "lb".into(),
            service_type: ServiceType::UserTcp,
            listen: None,
            method,
            persistence,
            persistence_timeout_min: 2,
            clt_timeout: 0,
            enabled: true,
            members: ["s1", "s2"]
                .iter()
                .map(|s| Member {
                    service: s.to_string(),
                    weight: 1,
                })
                .collect(),
            certkey: None,
            tls: TlsVersions::default(),
        }
    }

    fn shared() -> Arc<Shared> {
        Arc::new(Shared {
            stats: Stats::default(),
            persistence: PersistenceTable::default(),
            shutdown: watch::channel(false).0,
            provider: crate::engine::tls::provider(),
        })
    }

    /// A connected pair: the test's end and the engine's end (a `ClientStream`).
    async fn client_pair(side: &TcpListener) -> (TcpStream, ClientStream, SocketAddr) {
        let t = TcpStream::connect(side.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (e, peer) = side.accept().await.expect("accept");
        (t, ClientStream::Plain(e), peer)
    }

    #[tokio::test]
    async fn user_token_and_session_keep_a_device_on_one_service() {
        let (a1, n1) = echo("127.3.41.11").await;
        let (a2, n2) = echo("127.3.41.12").await;
        let vip: SocketAddr = "127.3.41.10:7041".parse().expect("addr");
        for persistence in [Persistence::None, Persistence::UserSession] {
            let snap = Snapshot {
                user_vservers: imbl::OrdMap::from_iter([("u".to_string(), user(vip))]),
                lb_vservers: imbl::OrdMap::from_iter([(
                    "lb".to_string(),
                    lb(LbMethod::UserToken, persistence),
                )]),
                services: imbl::OrdMap::from_iter([
                    ("s1".to_string(), svc("s1", a1)),
                    ("s2".to_string(), svc("s2", a2)),
                ]),
                ..Snapshot::default()
            };
            let shared = shared();
            let mut rec = Reconciler::default();
            rec.commit(Arc::new(snap), &shared).expect("commit");
            let route = rec.route(vip).expect("route");
            let side = TcpListener::bind("127.3.41.20:0").await.expect("bind");
            let before = (
                n1.load(std::sync::atomic::Ordering::SeqCst),
                n2.load(std::sync::atomic::Ordering::SeqCst),
            );
            for _ in 0..4 {
                let (mut t, c, peer) = client_pair(&side).await;
                let conn = Conn {
                    route: route.clone(),
                    shared: shared.clone(),
                    peer,
                    local: None,
                };
                let task =
                    tokio::spawn(
                        async move { conn.run_callbacks(c, TokenThenPipe, true, false).await },
                    );
                t.write_all(b"device-42").await.expect("write");
                assert_eq!(read_n(&mut t, 9).await, b"device-42");
                // Piped now: later bytes flow natively.
                t.write_all(b"more").await.expect("write");
                assert_eq!(read_n(&mut t, 4).await, b"more");
                drop(t);
                let _ = task.await;
            }
            let d1 = n1.load(std::sync::atomic::Ordering::SeqCst) - before.0;
            let d2 = n2.load(std::sync::atomic::Ordering::SeqCst) - before.1;
            assert!(d1 == 4 || d2 == 4, "token spread over both: {d1}/{d2}");
            let sessions = shared.persistence.list(Instant::now());
            if persistence == Persistence::UserSession {
                assert_eq!(sessions.len(), 1);
                assert_eq!(sessions[0].key, "device-42");
            } else {
                assert!(sessions.is_empty());
            }
        }
    }

    #[tokio::test]
    async fn message_based_balancing_and_actions() {
        let (a1, n1) = echo("127.3.40.11").await;
        let (a2, n2) = echo("127.3.40.12").await;
        let vip: SocketAddr = "127.3.40.10:7040".parse().expect("addr");
        let snap = Snapshot {
            user_vservers: imbl::OrdMap::from_iter([(
                "u".to_string(),
                UserVserverSpec {
                    name: "u".into(),
                    ip: vip.ip(),
                    port: vip.port(),
                    transport: Transport::Tcp,
                    extension: None,
                    default_lb: "lb".into(),
                    params: vec![],
                    enabled: true,
                    certkey: None,
                    tls: TlsVersions::default(),
                    clt_timeout: 0,
                },
            )]),
            lb_vservers: imbl::OrdMap::from_iter([(
                "lb".to_string(),
                LbVserverSpec {
                    name: "lb".into(),
                    service_type: ServiceType::UserTcp,
                    listen: None,
                    method: LbMethod::RoundRobin,
                    persistence: Persistence::None,
                    persistence_timeout_min: 2,
                    clt_timeout: 0,
                    enabled: true,
                    members: ["s1", "s2"]
                        .iter()
                        .map(|s| Member {
                            service: s.to_string(),
                            weight: 1,
                        })
                        .collect(),
                    certkey: None,
                    tls: TlsVersions::default(),
                },
            )]),
            services: imbl::OrdMap::from_iter([
                ("s1".to_string(), svc("s1", a1)),
                ("s2".to_string(), svc("s2", a2)),
            ]),
            ..Snapshot::default()
        };
        let shared = Arc::new(Shared {
            stats: Stats::default(),
            persistence: PersistenceTable::default(),
            shutdown: watch::channel(false).0,
            provider: crate::engine::tls::provider(),
        });
        let mut rec = Reconciler::default();
        rec.commit(Arc::new(snap), &shared).expect("commit");
        let route = rec.route(vip).expect("route");

        let side = TcpListener::bind("127.3.40.20:0").await.expect("bind");
        let mut test_end = TcpStream::connect(side.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (engine_end, peer) = side.accept().await.expect("accept");
        let conn = Conn {
            route: route.clone(),
            shared: shared.clone(),
            peer,
            local: None,
        };
        let task = tokio::spawn(async move {
            conn.run_callbacks(ClientStream::Plain(engine_end), Scripted, true, true)
                .await
        });

        test_end.write_all(b"m1").await.expect("write");
        assert_eq!(read_n(&mut test_end, 4).await, b"<m1>");
        test_end.write_all(b"m2").await.expect("write");
        assert_eq!(read_n(&mut test_end, 4).await, b"<m2>");
        // Two messages, two decisions, round robin: one connection to each backend.
        assert_eq!(n1.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(n2.load(std::sync::atomic::Ordering::SeqCst), 1);
        test_end.write_all(b"HI").await.expect("write");
        assert_eq!(read_n(&mut test_end, 5).await, b"hello");
        test_end.write_all(b"ERR").await.expect("write");
        let r = task.await.expect("join");
        assert!(matches!(r, Err(ProxyError::Extension(_))));
        let mut b = [0u8; 8];
        assert!(matches!(test_end.read(&mut b).await, Ok(0) | Err(_)));
        assert_eq!(
            route
                .front
                .counters
                .ext_errors
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert_eq!(
            route
                .front
                .counters
                .ext_messages
                .load(std::sync::atomic::Ordering::Relaxed),
            5,
            "m1 and m2 to the servers, their two echoes and the local answer to the client"
        );
        assert_eq!(
            route
                .front
                .counters
                .ext_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            2 + 2 + 4 + 4 + 5
        );
    }
}
