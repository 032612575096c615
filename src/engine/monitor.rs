//! Health monitors: one task per (service, monitor) binding, following commits live.
//!
//! Owns the monitor tasks, their counters (probes, failures, last response) and the judgement of
//! a monitor's state from its probes (retries, successRetries, downTime). It does not own service
//! health itself: when a monitor's verdict changes it calls the engine's `Notify`, which combines
//! the verdicts of the service's monitors and updates the engine's health table (see
//! `Engine::monitor_changed`).
//!
//! Which monitors run (NetScaler's rules, decided in `wanted`):
//! - only for enabled services with `-healthMonitor YES` that the engine proxies;
//! - with no monitor bound, the snapshot's built-in `tcp-default` (`ping-default` for a
//!   wildcard port); for TLS service types (SSL, SSL_TCP, USER_SSL_TCP) the default probe is a
//!   TLS handshake, since a TCP accept says little about a TLS gateway;
//! - bindings with `-monState DISABLED` and disabled monitors (`disable lb monitor`) do not run;
//!   a service whose monitors are all disabled is UP.
//! - A snapshot without the monitor a binding names (hand-built snapshots in tests carry no
//!   built-ins) runs nothing for it; such services keep whatever `Engine::set_service_health`
//!   said.
//!
//! A binding whose monitor spec and target are unchanged by a commit keeps its task and counters;
//! a changed one is restarted with its counters and verdict carried over. Tasks are aborted when
//! their binding goes away (the table entry drops its `JoinHandle` with an abort).
//!
//! Timing, per NetScaler: a probe every `interval`, each bounded by `resptimeout`; `retries`
//! consecutive failures mark the monitor DOWN; while DOWN it probes every `downTime` and
//! `successRetries` consecutive successes mark it UP again. The very first probe of a new binding
//! decides at once (UP or DOWN), so a dead backend added to a running pool is not given traffic
//! for `interval x retries`; until that first answer the service counts as UP.

use imbl::ordmap::DiffItem;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::ClientConfig;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::snapshot::{MonitorSpec, ServiceSpec, Snapshot, Target};
use crate::engine::backend::ServiceRuntime;
use crate::engine::probe::{Outcome, Probe, ProbeKind, ProbeSpec, Prober};
use crate::engine::stats::lock;
use crate::engine::status::{MonitorStatus, State};
use crate::engine::tls;

/// Called with the service name when one of its monitors changes verdict. Held by every task;
/// the engine's implementation holds only a weak reference to the engine.
pub(crate) type Notify = Arc<dyn Fn(&str) + Send + Sync>;

/// A monitor's timing options, in the units the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    pub interval: Duration,
    pub resp_timeout: Duration,
    /// Consecutive failures that mark the monitor DOWN (at least 1).
    pub retries: u32,
    /// Consecutive successes that mark it UP again (at least 1).
    pub success_retries: u32,
    /// Probe interval while DOWN.
    pub down_time: Duration,
}

/// Counters and verdict of one binding; shared by its task (writer) and `status` (reader).
#[derive(Debug, Clone, Default)]
pub(crate) struct MonitorState {
    /// `None` until the first probe answered.
    pub verdict: Option<bool>,
    pub probes: u64,
    pub failed_total: u64,
    pub failed_current: u64,
    pub success_current: u64,
    pub last_response: String,
}

/// What a binding's task runs with; a change restarts the task.
#[derive(Debug, Clone, PartialEq)]
struct TaskSpec {
    probe: ProbeSpec,
    timing: Timing,
}

struct Task {
    spec: TaskSpec,
    state: Arc<Mutex<MonitorState>>,
    handle: JoinHandle<()>,
}

/// Every running monitor task, by (service, monitor). Lives in the engine behind a mutex, locked
/// by commits (reconcile), `status` and verdict changes; never held across an `.await`.
#[derive(Default)]
pub(crate) struct Monitors {
    tasks: BTreeMap<(String, String), Task>,
}

// === impl Timing ===

impl Timing {
    pub fn of(m: &MonitorSpec) -> Timing {
        let ms = |v: u64, floor: u64| Duration::from_millis(v.max(floor));
        Timing {
            interval: ms(m.interval_ms, 10),
            resp_timeout: ms(m.resp_timeout_ms, 10),
            retries: m.retries.max(1),
            success_retries: m.success_retries.max(1),
            down_time: ms(m.down_time_ms, 10),
        }
    }
}

// === impl MonitorState ===

impl MonitorState {
    /// Counts one probe's outcome; returns the new verdict when it changed.
    pub fn record(&mut self, o: Outcome, t: &Timing) -> Option<bool> {
        self.probes += 1;
        self.last_response = o.response;
        let before = self.verdict;
        if o.up {
            self.failed_current = 0;
            self.success_current += 1;
            match self.verdict {
                None => self.verdict = Some(true),
                Some(false) if self.success_current >= u64::from(t.success_retries) => {
                    self.verdict = Some(true)
                }
                _ => {}
            }
        } else {
            self.success_current = 0;
            self.failed_total += 1;
            self.failed_current += 1;
            match self.verdict {
                None => self.verdict = Some(false),
                Some(true) if self.failed_current >= u64::from(t.retries) => {
                    self.verdict = Some(false)
                }
                _ => {}
            }
        }
        (self.verdict != before).then_some(self.verdict.unwrap_or(true))
    }

    /// How long to wait after the probe just recorded: `downTime` while DOWN and failing.
    fn next_wait(&self, t: &Timing) -> Duration {
        if self.verdict == Some(false) && self.success_current == 0 {
            t.down_time
        } else {
            t.interval
        }
    }

    fn status(&self, name: &str) -> MonitorStatus {
        MonitorStatus {
            name: name.to_string(),
            state: if self.verdict == Some(false) {
                State::Down
            } else {
                State::Up
            },
            probes: self.probes,
            failed_total: self.failed_total,
            failed_current: self.failed_current,
            last_response: if self.probes == 0 {
                "Probe not yet sent.".to_string()
            } else {
                self.last_response.clone()
            },
        }
    }
}

/// Probes forever on the monitor's schedule, calling `changed` on each verdict change.
pub(crate) async fn run<P: Probe + ?Sized>(
    probe: Arc<P>,
    timing: Timing,
    state: Arc<Mutex<MonitorState>>,
    changed: impl Fn(),
) {
    loop {
        let start = Instant::now();
        let outcome = tokio::time::timeout(timing.resp_timeout, probe.probe())
            .await
            .unwrap_or_else(|_| Outcome::timed_out());
        let (flip, wait) = {
            let mut s = lock(&state);
            let flip = s.record(outcome, &timing);
            (flip, s.next_wait(&timing))
        };
        if flip.is_some() {
            changed();
        }
        tokio::time::sleep_until(start + wait).await;
    }
}

// === impl Monitors ===

impl Monitors {
    /// Starts, restarts and stops tasks so that they match `snap`, given the snapshot `prev`
    /// they matched before. Only the services in the snapshot diff are looked at (a change of
    /// the monitors themselves, which is rare, looks at every service). Returns the services
    /// whose set of monitors changed (their health must be recombined).
    pub fn reconcile(
        &mut self,
        prev: Option<&Snapshot>,
        snap: &Snapshot,
        provider: &Arc<CryptoProvider>,
        notify: &Notify,
    ) -> BTreeSet<String> {
        let services: Vec<String> = match prev {
            Some(p) if p.monitors == snap.monitors => p
                .services
                .diff(&snap.services)
                .map(|d| match d {
                    DiffItem::Add(k, _) | DiffItem::Remove(k, _) => k.clone(),
                    DiffItem::Update { new: (k, _), .. } => k.clone(),
                })
                .collect(),
            _ => {
                let mut all: BTreeSet<String> = snap.services.keys().cloned().collect();
                all.extend(self.tasks.keys().map(|(svc, _)| svc.clone()));
                all.into_iter().collect()
            }
        };
        let mut touched = BTreeSet::new();
        for name in services {
            let old_keys: Vec<(String, String)> = self
                .tasks
                .range((name.clone(), String::new())..)
                .take_while(|((svc, _), _)| *svc == name)
                .map(|(k, _)| k.clone())
                .collect();
            let mut old: BTreeMap<(String, String), Task> = old_keys
                .into_iter()
                .filter_map(|k| self.tasks.remove_entry(&k))
                .collect();
            let wanted = snap
                .services
                .get(&name)
                .map(|svc| wanted_for(snap, &name, svc))
                .unwrap_or_default();
            for (key, spec) in wanted {
                let task = match old.remove(&key) {
                    Some(t) if t.spec == spec => t,
                    Some(t) => {
                        // Changed options: restart, keep counters and verdict.
                        t.handle.abort();
                        spawn(&key, spec, t.state, snap, provider, notify)
                    }
                    None => {
                        touched.insert(key.0.clone());
                        spawn(&key, spec, Arc::default(), snap, provider, notify)
                    }
                };
                self.tasks.insert(key, task);
            }
            for ((svc, _), t) in old {
                t.handle.abort();
                touched.insert(svc);
            }
        }
        touched
    }

    /// The combined verdict of a service's monitors: UP only when every one says UP (a monitor
    /// that has not answered yet counts as UP), with the last response of the first one DOWN.
    /// `None` when no monitor runs for it.
    pub fn health(&self, service: &str) -> Option<(bool, String)> {
        let mut any = false;
        for ((_, _), t) in self.range(service) {
            any = true;
            let s = lock(&t.state);
            if s.verdict == Some(false) {
                return Some((false, s.last_response.clone()));
            }
        }
        any.then(|| {
            let last = self
                .range(service)
                .next()
                .map(|(_, t)| lock(&t.state).last_response.clone())
                .unwrap_or_default();
            (true, last)
        })
    }

    /// Status of each running monitor of `service`, for `show service`.
    pub fn statuses(&self, service: &str) -> Vec<MonitorStatus> {
        self.range(service)
            .map(|((_, m), t)| lock(&t.state).status(m))
            .collect()
    }

    fn range<'a>(
        &'a self,
        service: &'a str,
    ) -> impl Iterator<Item = (&'a (String, String), &'a Task)> + 'a {
        self.tasks
            .range((service.to_string(), String::new())..)
            .take_while(move |((s, _), _)| s == service)
    }

    /// Stops every task (engine shutdown).
    pub fn clear(&mut self) {
        for (_, t) in std::mem::take(&mut self.tasks) {
            t.handle.abort();
        }
    }
}

impl Drop for Monitors {
    fn drop(&mut self) {
        self.clear();
    }
}

fn spawn(
    key: &(String, String),
    spec: TaskSpec,
    state: Arc<Mutex<MonitorState>>,
    snap: &Snapshot,
    provider: &Arc<CryptoProvider>,
    notify: &Notify,
) -> Task {
    let tls = spec
        .probe
        .tls
        .then(|| snap.services.get(&key.0))
        .flatten()
        .and_then(|svc| probe_tls(svc, provider));
    let prober = Arc::new(Prober::new(spec.probe.clone(), tls));
    let (timing, st, notify, svc) = (spec.timing, state.clone(), notify.clone(), key.0.clone());
    let handle = tokio::spawn(async move {
        run(prober, timing, st, move || notify(&svc)).await;
    });
    Task {
        spec,
        state,
        handle,
    }
}

/// The accept-any client config monitors use (they check liveness, not identity).
fn probe_tls(svc: &ServiceSpec, provider: &Arc<CryptoProvider>) -> Option<Arc<ClientConfig>> {
    let mut spec = svc.clone();
    spec.server_auth = false;
    match tls::client_config(&spec, &[], provider) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(service = %svc.name, error = %e, "monitor TLS config");
            None
        }
    }
}

/// The (service, monitor) bindings `snap` wants running, with what each runs (module doc).
/// The monitor tasks one service wants: its bound (or default) monitors.
fn wanted_for(snap: &Snapshot, name: &str, svc: &ServiceSpec) -> Vec<((String, String), TaskSpec)> {
    let mut out = Vec::new();
    {
        if !svc.enabled || !svc.health_monitor || !ServiceRuntime::proxied(svc) {
            return out;
        }
        let default = svc.monitors.is_empty();
        let names: Vec<&str> = if default {
            vec![if svc.port == 0 {
                "ping-default"
            } else {
                "tcp-default"
            }]
        } else {
            svc.monitors
                .iter()
                .filter(|b| b.enabled)
                .map(|b| b.monitor.as_str())
                .collect()
        };
        for m in names {
            let Some(ms) = snap.monitors.get(m).filter(|ms| ms.enabled) else {
                continue;
            };
            let host = match (ms.dest_ip, &svc.target) {
                (Some(ip), _) => ip.to_string(),
                (None, Target::Ip(ip)) => ip.to_string(),
                (None, Target::Domain { name, .. }) => name.clone(),
            };
            let probe = ProbeSpec {
                kind: ProbeKind::for_type(
                    &ms.kind,
                    &ms.send,
                    &ms.recv,
                    &ms.user_name,
                    &ms.password,
                ),
                host,
                port: ms.dest_port.filter(|p| *p != 0).unwrap_or(svc.port),
                tls: ms.secure || (default && svc.service_type.is_tls()),
            };
            out.push((
                (name.to_string(), m.to_string()),
                TaskSpec {
                    probe,
                    timing: Timing::of(ms),
                },
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::future::Future;
    use std::pin::Pin;

    /// Answers from a script (then repeats the last entry); `None` hangs past any timeout.
    struct Scripted(Mutex<VecDeque<Option<bool>>>);

    impl Probe for Scripted {
        fn probe(&self) -> Pin<Box<dyn Future<Output = Outcome> + Send + '_>> {
            let next = {
                let mut q = lock(&self.0);
                if q.len() > 1 {
                    q.pop_front().flatten()
                } else {
                    q.front().copied().flatten()
                }
            };
            Box::pin(async move {
                match next {
                    Some(true) => Outcome::up("Success - TCP syn+ack received."),
                    Some(false) => Outcome::down("Failure - TCP connection refused."),
                    None => std::future::pending().await,
                }
            })
        }
    }

    fn timing(interval: u64, retries: u32, success: u32, down: u64) -> Timing {
        Timing {
            interval: Duration::from_secs(interval),
            resp_timeout: Duration::from_secs(2),
            retries,
            success_retries: success,
            down_time: Duration::from_secs(down),
        }
    }

    /// Runs the monitor over `script` and returns (seconds since start, verdict) of each change,
    /// until `until` seconds of paused time have passed.
    async fn transitions(script: Vec<Option<bool>>, t: Timing, until: u64) -> Vec<(u64, bool)> {
        let state = Arc::new(Mutex::new(MonitorState::default()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let st = state.clone();
        let probe = Arc::new(Scripted(Mutex::new(script.into())));
        let task = tokio::spawn(run(probe, t, state.clone(), move || {
            let v = lock(&st).verdict.unwrap_or(true);
            let _ = tx.send((start.elapsed().as_secs(), v));
        }));
        tokio::time::sleep(Duration::from_secs(until)).await;
        task.abort();
        let mut out = Vec::new();
        while let Ok(x) = rx.try_recv() {
            out.push(x);
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn retries_consecutive_failures_mark_down() {
        // Probes at 0,5,10,...: UP at 0; failures from t=10 on; DOWN after the 3rd (t=20).
        let got = transitions(
            vec![Some(true), Some(true), Some(false)],
            timing(5, 3, 1, 30),
            60,
        )
        .await;
        assert_eq!(got, vec![(0, true), (20, false)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_between_failures_resets_the_count() {
        let s = vec![
            Some(true),
            Some(false),
            Some(false),
            Some(true),
            Some(false),
            Some(false),
            Some(true),
        ];
        let got = transitions(s, timing(1, 3, 1, 30), 20).await;
        assert_eq!(got, vec![(0, true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn down_time_spaces_probes_and_success_retries_bring_it_back() {
        // First probe fails: DOWN at once. While DOWN probes every downTime (10 s): 10, 20.
        // Successes from t=20: needs 2 in a row; the second comes one interval later (t=22).
        let s = vec![Some(false), Some(false), Some(true)];
        let got = transitions(s, timing(2, 3, 2, 10), 40).await;
        assert_eq!(got, vec![(0, false), (22, true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_probe_times_out_after_resptimeout() {
        let state = Arc::new(Mutex::new(MonitorState::default()));
        let probe = Arc::new(Scripted(Mutex::new(vec![None].into())));
        let task = tokio::spawn(run(probe, timing(5, 1, 1, 30), state.clone(), || {}));
        tokio::time::sleep(Duration::from_millis(2100)).await;
        {
            let s = lock(&state);
            assert_eq!(s.verdict, Some(false));
            assert_eq!(s.last_response, "Failure - Probe timed out.");
            assert_eq!(s.failed_total, 1);
        }
        task.abort();
    }

    #[test]
    fn verdict_is_reported_only_on_change() {
        let t = timing(1, 2, 1, 1);
        let mut s = MonitorState::default();
        assert_eq!(s.record(Outcome::up("ok"), &t), Some(true));
        assert_eq!(s.record(Outcome::up("ok"), &t), None);
        assert_eq!(s.record(Outcome::down("no"), &t), None);
        assert_eq!(s.record(Outcome::down("no"), &t), Some(false));
        assert_eq!((s.failed_total, s.failed_current, s.probes), (2, 2, 4));
        assert_eq!(s.record(Outcome::up("ok"), &t), Some(true));
        assert_eq!(s.failed_current, 0);
    }
}
