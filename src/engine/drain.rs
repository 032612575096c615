//! Disabling a service under traffic: what happens to its established connections.
//!
//! NetScaler (Down State Flush, enabled by default, CTX124710) flushes a service's connections
//! when it is disabled; `disable service NAME DELAY` keeps them for DELAY seconds, then flushes;
//! `-graceFul YES` without a delay lets them finish on their own. New connections never go to a
//! disabled service (the balancer skips it). This module owns the delay timers: one task per
//! draining service, aborted when the service is re-enabled or removed before it fires.
//! It reads the previous and the new snapshot only; it must not decide health (monitor.rs).

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::snapshot::Snapshot;
use crate::engine::stats::{lock, Stats};

/// Pending delayed flushes, by service name. Locked by commits only.
#[derive(Default)]
pub(crate) struct Drains {
    timers: HashMap<String, JoinHandle<()>>,
}

impl Drains {
    /// Acts on the services that `snap` disables and `prev` had enabled.
    pub fn follow(&mut self, prev: Option<&Snapshot>, snap: &Snapshot, stats: &Stats) {
        self.timers.retain(|name, t| {
            let keep = snap.services.get(name).is_some_and(|s| !s.enabled) && !t.is_finished();
            if !keep {
                t.abort();
            }
            keep
        });
        // Only services that changed can have gone from enabled to disabled: walk the diff.
        let Some(prev) = prev else { return };
        for d in prev.services.diff(&snap.services) {
            let imbl::ordmap::DiffItem::Update {
                old: (_, was),
                new: (name, svc),
            } = d
            else {
                continue;
            };
            if svc.enabled || !was.enabled {
                continue;
            }
            let Some(rec) = lock(&stats.services).get(name).cloned() else {
                continue;
            };
            match svc.drain_delay_secs {
                None => {
                    tracing::info!("service {name} disabled: closing its connections");
                    rec.close_connections();
                }
                Some(0) => {
                    tracing::info!(
                        "service {name} disabled gracefully: connections finish on their own"
                    );
                }
                Some(d) => {
                    tracing::info!(
                        "service {name} disabled gracefully: connections close in {d} s"
                    );
                    let name2 = name.clone();
                    let t = tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(u64::from(d))).await;
                        tracing::info!(
                            "service {name2}: graceful delay over, closing its connections"
                        );
                        rec.close_connections();
                    });
                    if let Some(old) = self.timers.insert(name.clone(), t) {
                        old.abort();
                    }
                }
            }
        }
    }

    /// Cancels every pending timer (engine shutdown).
    pub fn clear(&mut self) {
        for (_, t) in self.timers.drain() {
            t.abort();
        }
    }
}
