//! MQTT 3.1.1 load generator for `bench/run.sh` (raw packets over TCP or TLS 1.3; not part of
//! nsemu). Each mode prints one JSON line on stdout.
//!
//! ```text
//! mqtt_load throughput --pub ADDR --sub ADDR [--tls] --qos 0|1 --size B --count N [--window W] [--pids PID,..]
//! mqtt_load latency    --pub ADDR --sub ADDR [--tls] --rate MSG_PER_S --secs S
//! mqtt_load connect    --addr ADDR [--tls] --concurrency C --secs S
//! mqtt_load hold       --addr ADDR [--tls] --n N [--concurrency C] [--pids PID,..]
//! ```
//!
//! - Client TLS is TLS 1.3 only, without session resumption (a full handshake per connection)
//!   and without certificate verification (the bench measures cost, not trust).
//! - throughput: one subscriber and one publisher, both through the target. The publisher first
//!   sends probes and reconnects until a probe reaches the subscriber (the brokers are not
//!   bridged), then streams `count` messages, at most `window` ahead of what the subscriber has
//!   received (mosquitto drops QoS 0 beyond its queue limit otherwise). With `--pids`, the CPU
//!   time (utime+stime, of each PID and its children) spent while streaming is reported.
//! - latency: QoS 0 at a fixed rate, publish-to-receive time (the first 10% are warm-up).
//! - connect: new connections per second: TCP + TLS handshake + CONNECT/CONNACK + DISCONNECT.
//! - hold: opens N idle MQTT connections and reports the RSS and PSS of `--pids` (and children)
//!   before (after one warm-up connection) and while holding them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

type BoxErr = Box<dyn std::error::Error + Send + Sync>;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type Conn = Box<dyn Io>;

#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    tls: Option<Arc<ClientConfig>>,
}

/// Accepts any server certificate; signatures are still checked.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config() -> Result<Arc<ClientConfig>, BoxErr> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

async fn dial(t: &Target) -> Result<Conn, BoxErr> {
    let tcp = TcpStream::connect(t.addr).await?;
    tcp.set_nodelay(true)?;
    match &t.tls {
        None => Ok(Box::new(tcp)),
        Some(cfg) => {
            let c = tokio_rustls::TlsConnector::from(cfg.clone());
            Ok(Box::new(
                c.connect(ServerName::from(t.addr.ip()), tcp).await?,
            ))
        }
    }
}

// === MQTT packets ===

fn put_len(b: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut x = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            x |= 0x80;
        }
        b.push(x);
        if n == 0 {
            break;
        }
    }
}

fn put_str(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u16).to_be_bytes());
    b.extend_from_slice(s);
}

fn connect_pkt(id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.extend_from_slice(&[4, 2, 0, 0]); // 3.1.1, clean session, no keepalive
    put_str(&mut body, id.as_bytes());
    let mut p = vec![0x10];
    put_len(&mut p, body.len());
    p.extend(body);
    p
}

fn subscribe_pkt(topic: &str, qos: u8) -> Vec<u8> {
    let mut body = vec![0, 1];
    put_str(&mut body, topic.as_bytes());
    body.push(qos);
    let mut p = vec![0x82];
    put_len(&mut p, body.len());
    p.extend(body);
    p
}

fn publish_pkt(out: &mut Vec<u8>, topic: &[u8], qos: u8, pid: u16, payload: &[u8]) {
    out.push(0x30 | (qos << 1));
    let len = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
    put_len(out, len);
    put_str(out, topic);
    if qos > 0 {
        out.extend_from_slice(&pid.to_be_bytes());
    }
    out.extend_from_slice(payload);
}

const DISCONNECT: [u8; 2] = [0xe0, 0];

/// One frame at the start of `b`: (first byte, body start, end).
fn frame(b: &[u8]) -> Option<(u8, usize, usize)> {
    let (mut len, mut mul, mut i) = (0usize, 1usize, 1usize);
    loop {
        let x = *b.get(i)?;
        len += (x & 0x7f) as usize * mul;
        mul *= 128;
        i += 1;
        if x & 0x80 == 0 {
            break;
        }
    }
    (b.len() >= i + len).then_some((b[0], i, i + len))
}

/// Buffered MQTT packet reader.
struct Reader<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(r: R) -> Self {
        Reader {
            r,
            buf: Vec::with_capacity(16384),
            start: 0,
        }
    }

    /// The next complete packet already buffered, as (first byte, body range).
    fn try_next(&mut self) -> Option<(u8, std::ops::Range<usize>)> {
        let (h, bs, end) = frame(&self.buf[self.start..])?;
        let s = self.start;
        self.start += end;
        Some((h, s + bs..s + end))
    }

    async fn fill(&mut self) -> Result<(), BoxErr> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16384);
        }
        if self.r.read_buf(&mut self.buf).await? == 0 {
            return Err("connection closed".into());
        }
        Ok(())
    }

    async fn next(&mut self) -> Result<(u8, std::ops::Range<usize>), BoxErr> {
        loop {
            if let Some(p) = self.try_next() {
                return Ok(p);
            }
            self.fill().await?;
        }
    }
}

type Session = (Reader<ReadHalf<Conn>>, WriteHalf<Conn>);

async fn mqtt_connect(t: &Target, id: &str) -> Result<Session, BoxErr> {
    let mut c = dial(t).await?;
    c.write_all(&connect_pkt(id)).await?;
    let (r, w) = tokio::io::split(c);
    let mut rd = Reader::new(r);
    let (h, body) = rd.next().await?;
    if h != 0x20 || rd.buf.get(body.start + 1) != Some(&0) {
        return Err(format!("no CONNACK from {}", t.addr).into());
    }
    Ok((rd, w))
}

// === CPU and memory of the proxy's processes ===

/// The PIDs and their direct children (NGINX workers; HAProxy and nsemu are one process).
fn pid_tree(roots: &[u32]) -> Vec<u32> {
    let mut all = roots.to_vec();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some(st) = stat_fields(pid) {
                if st
                    .get(1)
                    .and_then(|p| p.parse::<u32>().ok())
                    .is_some_and(|pp| roots.contains(&pp))
                {
                    all.push(pid);
                }
            }
        }
    }
    all
}

/// Fields of /proc/PID/stat after the command name: [state, ppid, ...].
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime+stime in clock ticks (field 14 and 15 of stat) over the tree.
fn cpu_ticks(pids: &[u32]) -> u64 {
    pid_tree(pids)
        .iter()
        .filter_map(|p| stat_fields(*p))
        .map(|f| {
            f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
                + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        })
        .sum()
}

fn kb_field(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// (RSS kB, PSS kB) summed over the tree.
fn memory(pids: &[u32]) -> (u64, u64) {
    pid_tree(pids).iter().fold((0, 0), |(r, p), pid| {
        (
            r + kb_field(&format!("/proc/{pid}/status"), "VmRSS:"),
            p + kb_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:"),
        )
    })
}

// === modes ===

struct Args(Vec<String>);

impl Args {
    fn get(&self, k: &str) -> Option<&str> {
        let i = self.0.iter().position(|a| a == k)?;
        self.0.get(i + 1).map(String::as_str)
    }
    fn num(&self, k: &str, d: u64) -> u64 {
        self.get(k).and_then(|v| v.parse().ok()).unwrap_or(d)
    }
    fn flag(&self, k: &str) -> bool {
        self.0.iter().any(|a| a == k)
    }
    fn target(&self, k: &str, tls: &Option<Arc<ClientConfig>>) -> Result<Target, BoxErr> {
        Ok(Target {
            addr: self.get(k).ok_or(format!("missing {k}"))?.parse()?,
            tls: tls.clone(),
        })
    }
    fn pids(&self) -> Vec<u32> {
        self.get("--pids")
            .map(|s| s.split(',').filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    }
}

/// Counters the subscriber task updates; `progress` wakes the publisher.
#[derive(Default)]
struct SubState {
    received: AtomicU64,
    probes: AtomicU64,
    progress: Notify,
    latencies_ns: Mutex<Vec<u64>>,
}

/// Subscribes to `topic/#` and counts (and for `latency`, times) what arrives.
async fn subscriber(
    t: &Target,
    topic: &str,
    qos: u8,
    start: Instant,
    latency: bool,
) -> Result<Arc<SubState>, BoxErr> {
    let (mut rd, mut w) = mqtt_connect(t, &format!("{topic}-sub").replace('/', "-")).await?;
    w.write_all(&subscribe_pkt(&format!("{topic}/#"), qos))
        .await?;
    let (h, _) = rd.next().await?;
    if h != 0x90 {
        return Err("no SUBACK".into());
    }
    let st = Arc::new(SubState::default());
    let s2 = st.clone();
    tokio::spawn(async move {
        let mut acks = Vec::new();
        loop {
            let mut n = 0;
            while let Some((h, body)) = rd.try_next() {
                if h >> 4 != 3 {
                    continue;
                }
                let b = &rd.buf[body];
                let tl = u16::from_be_bytes([b[0], b[1]]) as usize;
                let topic = &b[2..2 + tl];
                let mut pos = 2 + tl;
                if (h >> 1) & 3 > 0 {
                    acks.extend_from_slice(&[0x40, 2, b[pos], b[pos + 1]]);
                    pos += 2;
                }
                if topic.ends_with(b"/probe") {
                    s2.probes.fetch_add(1, Ordering::Relaxed);
                    s2.progress.notify_one();
                    continue;
                }
                if latency && b.len() >= pos + 8 {
                    let sent = u64::from_be_bytes(b[pos..pos + 8].try_into().unwrap_or([0; 8]));
                    let now = start.elapsed().as_nanos() as u64;
                    if let Ok(mut l) = s2.latencies_ns.lock() {
                        l.push(now.saturating_sub(sent));
                    }
                }
                n += 1;
            }
            if n > 0 {
                s2.received.fetch_add(n, Ordering::Release);
                s2.progress.notify_one();
            }
            if !acks.is_empty() {
                if w.write_all(&acks).await.is_err() {
                    break;
                }
                acks.clear();
            }
            if rd.fill().await.is_err() {
                break;
            }
        }
    });
    Ok(st)
}

/// Connects a publisher that reaches the subscriber's broker (probe, reconnect until it arrives).
async fn publisher(t: &Target, topic: &str, sub: &SubState) -> Result<Session, BoxErr> {
    for attempt in 0..30 {
        let (rd, mut w) =
            mqtt_connect(t, &format!("{topic}-pub{attempt}").replace('/', "-")).await?;
        let before = sub.probes.load(Ordering::Relaxed);
        let mut p = Vec::new();
        publish_pkt(&mut p, format!("{topic}/probe").as_bytes(), 0, 0, b"probe");
        w.write_all(&p).await?;
        let end = Instant::now() + Duration::from_millis(400);
        while Instant::now() < end {
            if sub.probes.load(Ordering::Relaxed) > before {
                return Ok((rd, w));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = w.write_all(&DISCONNECT).await;
    }
    Err("no publisher reached the subscriber's broker".into())
}

fn run_id() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("bench/{}-{}", std::process::id(), t % 1_000_000_000)
}

async fn throughput(a: &Args, tls: &Option<Arc<ClientConfig>>) -> Result<(), BoxErr> {
    let (pt, stt) = (a.target("--pub", tls)?, a.target("--sub", tls)?);
    let qos = a.num("--qos", 0) as u8;
    let size = a.num("--size", 64) as usize;
    let count = a.num("--count", 100_000);
    let window = a.num("--window", 64);
    let pids = a.pids();
    let topic = run_id();
    let sub = subscriber(&stt, &topic, qos, Instant::now(), false).await?;
    let (mut prd, mut w) = publisher(&pt, &topic, &sub).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let a2 = acked.clone();
    tokio::spawn(async move {
        loop {
            let mut n = 0;
            while let Some((h, _)) = prd.try_next() {
                if h >> 4 == 4 {
                    n += 1;
                }
            }
            a2.fetch_add(n, Ordering::Relaxed);
            if prd.fill().await.is_err() {
                break;
            }
        }
    });
    let data_topic = format!("{topic}/data");
    let payload = vec![b'x'; size];
    let cpu0 = cpu_ticks(&pids);
    let t0 = Instant::now();
    let (mut sent, mut pid, mut buf) = (0u64, 0u16, Vec::with_capacity(64 * (size + 64)));
    let mut last_progress = Instant::now();
    let mut last_rcv = 0;
    while sent < count {
        let rcv = sub.received.load(Ordering::Acquire);
        if rcv != last_rcv {
            last_rcv = rcv;
            last_progress = Instant::now();
        }
        let allowed = (rcv + window).min(count).saturating_sub(sent);
        if allowed == 0 {
            if last_progress.elapsed() > Duration::from_secs(2) {
                break; // messages were lost; stop and report
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), sub.progress.notified()).await;
            continue;
        }
        buf.clear();
        for _ in 0..allowed {
            pid = pid.wrapping_add(1).max(1);
            publish_pkt(&mut buf, data_topic.as_bytes(), qos, pid, &payload);
        }
        w.write_all(&buf).await?;
        sent += allowed;
    }
    // Wait for the tail.
    let mut t_end = Instant::now();
    loop {
        let rcv = sub.received.load(Ordering::Acquire);
        if rcv != last_rcv {
            last_rcv = rcv;
            t_end = Instant::now();
        }
        if rcv >= sent || t_end.elapsed() > Duration::from_secs(2) {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), sub.progress.notified()).await;
    }
    let secs = t_end.duration_since(t0).as_secs_f64();
    let cpu = cpu_ticks(&pids).saturating_sub(cpu0);
    let tick_us = 1e6 / 100.0; // USER_HZ is 100 on Linux
    let rcv = sub.received.load(Ordering::Acquire);
    let _ = w.write_all(&DISCONNECT).await;
    println!(
        "{{\"mode\":\"throughput\",\"qos\":{qos},\"size\":{size},\"sent\":{sent},\"received\":{rcv},\"acked\":{},\"secs\":{secs:.3},\"rate\":{:.0},\"cpu_ticks\":{cpu},\"cpu_us_per_msg\":{:.2}}}",
        acked.load(Ordering::Relaxed),
        rcv as f64 / secs.max(1e-9),
        cpu as f64 * tick_us / (rcv.max(1)) as f64
    );
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn latency(a: &Args, tls: &Option<Arc<ClientConfig>>) -> Result<(), BoxErr> {
    let (pt, stt) = (a.target("--pub", tls)?, a.target("--sub", tls)?);
    let rate = a.num("--rate", 1000).max(1);
    let secs = a.num("--secs", 5);
    let topic = run_id();
    let start = Instant::now();
    let sub = subscriber(&stt, &topic, 0, start, true).await?;
    let (_prd, mut w) = publisher(&pt, &topic, &sub).await?;
    let data_topic = format!("{topic}/data");
    let total = rate * secs;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::new();
    for _ in 0..total {
        tick.tick().await;
        let mut payload = [b'x'; 64];
        payload[..8].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_be_bytes());
        buf.clear();
        publish_pkt(&mut buf, data_topic.as_bytes(), 0, 0, &payload);
        w.write_all(&buf).await?;
    }
    let end = Instant::now() + Duration::from_secs(2);
    while sub.received.load(Ordering::Acquire) < total && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut l = sub
        .latencies_ns
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let received = l.len();
    let l = l.split_off(received / 10);
    let mut s = l;
    s.sort_unstable();
    let _ = w.write_all(&DISCONNECT).await;
    println!(
        "{{\"mode\":\"latency\",\"rate\":{rate},\"sent\":{total},\"received\":{received},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1}}}",
        percentile(&s, 0.5),
        percentile(&s, 0.99),
        percentile(&s, 0.999),
        percentile(&s, 1.0)
    );
    Ok(())
}

/// One full connection: TCP, TLS, CONNECT/CONNACK, DISCONNECT, close.
async fn one_connection(t: &Target, id: &str) -> Result<(), BoxErr> {
    let (_rd, mut w) = mqtt_connect(t, id).await?;
    w.write_all(&DISCONNECT).await?;
    w.shutdown().await?;
    Ok(())
}

async fn connect(a: &Args, tls: &Option<Arc<ClientConfig>>) -> Result<(), BoxErr> {
    let t = a.target("--addr", tls)?;
    let conc = a.num("--concurrency", 32);
    let secs = a.num("--secs", 5);
    let ok = Arc::new(AtomicU64::new(0));
    let err = Arc::new(AtomicU64::new(0));
    let pids = a.pids();
    let cpu0 = cpu_ticks(&pids);
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for task in 0..conc {
        let (t, ok, err) = (t.clone(), ok.clone(), err.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                match one_connection(&t, &format!("c{}-{task}-{i}", std::process::id())).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => err.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let el = t0.elapsed().as_secs_f64();
    let cpu = cpu_ticks(&pids).saturating_sub(cpu0);
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "{{\"mode\":\"connect\",\"ok\":{ok},\"errors\":{},\"secs\":{el:.3},\"rate\":{:.0},\"cpu_ticks\":{cpu},\"cpu_us_per_conn\":{:.1}}}",
        err.load(Ordering::Relaxed),
        ok as f64 / el,
        cpu as f64 * 1e4 / ok.max(1) as f64
    );
    Ok(())
}

async fn hold(a: &Args, tls: &Option<Arc<ClientConfig>>) -> Result<(), BoxErr> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let t = a.target("--addr", tls)?;
    let n = a.num("--n", 9500);
    let conc = a.num("--concurrency", 32).max(1);
    let pids = a.pids();
    one_connection(&t, "warmup").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss0, pss0) = memory(&pids);
    let held: Arc<Mutex<Vec<Session>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    let err = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (t, held, next, err) = (t.clone(), held.clone(), next.clone(), err.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                match mqtt_connect(&t, &format!("h{}-{i}", std::process::id())).await {
                    Ok(s) => {
                        if let Ok(mut h) = held.lock() {
                            h.push(s);
                        }
                    }
                    Err(_) => {
                        err.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, pss1) = memory(&pids);
    let count = held.lock().map(|h| h.len()).unwrap_or(0);
    let c = count.max(1) as f64;
    println!(
        "{{\"mode\":\"hold\",\"held\":{count},\"errors\":{},\"rss_before_kb\":{rss0},\"rss_kb\":{rss1},\"pss_before_kb\":{pss0},\"pss_kb\":{pss1},\"rss_kb_per_conn\":{:.2},\"pss_kb_per_conn\":{:.2}}}",
        err.load(Ordering::Relaxed),
        rss1.saturating_sub(rss0) as f64 / c,
        pss1.saturating_sub(pss0) as f64 / c
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxErr> {
    let a = Args(std::env::args().skip(1).collect());
    let tls = if a.flag("--tls") {
        Some(client_config()?)
    } else {
        None
    };
    match a.0.first().map(String::as_str) {
        Some("throughput") => throughput(&a, &tls).await,
        Some("latency") => latency(&a, &tls).await,
        Some("connect") => connect(&a, &tls).await,
        Some("hold") => hold(&a, &tls).await,
        _ => Err("usage: mqtt_load throughput|latency|connect|hold ... (see the source)".into()),
    }
}
