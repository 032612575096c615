//! Load-balancing selection and persistence: which member of an lb vserver gets a connection.
//!
//! Pure logic, no I/O and no clock of its own (callers pass `Instant`s), so it is unit-tested
//! without sockets. The caller (proxy) decides which members are *usable* (enabled, UP, under
//! `-maxClient`) and passes `None` for the others; this module only chooses among the rest.
//!
//! Methods:
//! - ROUNDROBIN: smooth weighted round robin (as nginx does): over any window the picks follow
//!   the weights, and heavy members are interleaved rather than picked in bursts.
//! - LEASTCONNECTION (NetScaler's default, and the fallback for methods nsemu does not model):
//!   lowest current connections / weight; ties rotate so idle pools still spread.
//! - SOURCEIPHASH and USER_TOKEN: weighted rendezvous (highest random weight) hashing of the
//!   client IP / the extension's token, so a pool change moves only the keys of the member that
//!   came or went. USER_TOKEN without a token falls back to LEASTCONNECTION.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::snapshot::LbMethod;
use crate::engine::stats::lock;
use crate::engine::status::PersistentSession;

/// What the balancer needs to know about one usable member.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// Service name (the identity used by the hashing methods).
    pub name: &'a str,
    /// 1-100; 0 is treated as 1.
    pub weight: u32,
    /// Current connections through the member (for LEASTCONNECTION).
    pub conns: u64,
}

/// Per-lb-vserver selection state.
#[derive(Debug)]
pub struct Balancer {
    method: LbMethod,
    /// Smooth round robin "current weights", one per member index. Locked once per pick, never
    /// on the data path.
    rr: Mutex<Vec<i64>>,
    /// Tie-break rotor for LEASTCONNECTION.
    rotor: AtomicUsize,
}

/// Persistence entries (USERSESSION and SOURCEIP), keyed by (lb vserver, key).
/// Shared by all snapshots so sessions survive commits; `engine::persist` writes them to disk.
#[derive(Debug, Default)]
pub struct PersistenceTable {
    map: Mutex<HashMap<(String, String), Persisted>>,
    /// Set by every change (new entry, refreshed expiry, removal) and cleared by `take_dirty`:
    /// the periodic writer saves the table only when it changed since the last save.
    dirty: AtomicBool,
}

/// One persistence session as saved on disk: the expiry is wall-clock time (seconds since the
/// Unix epoch), so the time the appliance was stopped counts against the timeout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSession {
    pub vserver: String,
    pub key: String,
    pub service: String,
    pub expires_unix: u64,
}

#[derive(Debug, Clone)]
struct Persisted {
    service: String,
    expires: Instant,
}

// === impl Balancer ===

impl Balancer {
    pub fn new(method: LbMethod, members: usize) -> Balancer {
        Balancer {
            method,
            rr: Mutex::new(vec![0; members]),
            rotor: AtomicUsize::new(0),
        }
    }

    pub fn method(&self) -> LbMethod {
        self.method
    }

    /// Picks the index of a member among the usable ones (`Some`), or `None` if there is none.
    pub fn pick(
        &self,
        members: &[Option<Candidate<'_>>],
        client_ip: Option<IpAddr>,
        token: Option<&str>,
    ) -> Option<usize> {
        match self.method {
            LbMethod::RoundRobin => self.round_robin(members),
            LbMethod::SourceIpHash => match client_ip {
                Some(ip) => hrw_pick(members, ip.to_string().as_bytes()),
                None => self.least_connection(members),
            },
            LbMethod::UserToken => match token {
                Some(t) => hrw_pick(members, t.as_bytes()),
                None => self.least_connection(members),
            },
            LbMethod::LeastConnection | LbMethod::Other => self.least_connection(members),
        }
    }

    fn round_robin(&self, members: &[Option<Candidate<'_>>]) -> Option<usize> {
        let mut cw = lock(&self.rr);
        if cw.len() != members.len() {
            cw.resize(members.len(), 0);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (i, m) in members.iter().enumerate() {
            let Some(m) = m else { continue };
            let w = i64::from(m.weight.max(1));
            cw[i] += w;
            total += w;
            if best.is_none_or(|b| cw[i] > cw[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        cw[b] -= total;
        Some(b)
    }

    fn least_connection(&self, members: &[Option<Candidate<'_>>]) -> Option<usize> {
        let n = members.len();
        if n == 0 {
            return None;
        }
        let start = self.rotor.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, Candidate<'_>)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let Some(m) = members[i] else { continue };
            let better = match best {
                None => true,
                // a.conns / a.weight < b.conns / b.weight, without division.
                Some((_, b)) => {
                    u128::from(m.conns) * u128::from(b.weight.max(1))
                        < u128::from(b.conns) * u128::from(m.weight.max(1))
                }
            };
            if better {
                best = Some((i, m));
            }
        }
        best.map(|(i, _)| i)
    }
}

/// Weighted rendezvous hashing: each member scores `-weight / ln(u)` where `u` in (0,1) comes
/// from hash(key, member name); the highest score wins. Stable for a given key and member set,
/// and removing a member only moves the keys it held.
pub fn hrw_pick(members: &[Option<Candidate<'_>>], key: &[u8]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, m) in members.iter().enumerate() {
        let Some(m) = m else { continue };
        let h = hash64(key, m.name.as_bytes());
        // 53 random bits mapped into (0, 1), never 0 or 1.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = -f64::from(m.weight.max(1)) / u.ln();
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// FNV-1a over both parts (with a separator) followed by a splitmix64 finaliser: stable across
/// builds and Rust versions, unlike `DefaultHasher`, so a token keeps its member after upgrades.
fn hash64(a: &[u8], b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in a.iter().chain(&[0xff]).chain(b) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

// === impl PersistenceTable ===

impl PersistenceTable {
    /// The service persisted for `key` on `vserver`, if not expired; refreshes its expiry.
    pub fn get(&self, vserver: &str, key: &str, now: Instant, timeout: Duration) -> Option<String> {
        let mut map = lock(&self.map);
        let k = (vserver.to_string(), key.to_string());
        match map.get_mut(&k) {
            Some(p) if p.expires > now => {
                p.expires = now + timeout;
                self.dirty.store(true, Ordering::Relaxed);
                Some(p.service.clone())
            }
            Some(_) => {
                map.remove(&k);
                self.dirty.store(true, Ordering::Relaxed);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, vserver: &str, key: &str, service: &str, now: Instant, timeout: Duration) {
        let mut map = lock(&self.map);
        // Purge expired entries now and then so the table does not grow without bound.
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, p| p.expires > now);
        }
        map.insert(
            (vserver.to_string(), key.to_string()),
            Persisted {
                service: service.to_string(),
                expires: now + timeout,
            },
        );
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Keeps only the sessions for which `keep(lb vserver, service)` holds (after a commit: the
    /// lb vserver still exists and the service is still bound to it).
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut map = lock(&self.map);
        let before = map.len();
        map.retain(|(vs, _), p| keep(vs, &p.service));
        if map.len() != before {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// True if the table changed since the last call (and clears the mark).
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::Relaxed)
    }

    /// Marks the table changed (a failed save is retried by the next periodic write).
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// The live sessions with wall-clock expiries, sorted (for the persistence file).
    pub fn export(&self, now: Instant, wall: SystemTime) -> Vec<SavedSession> {
        let map = lock(&self.map);
        let base = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
        let mut v: Vec<SavedSession> = map
            .iter()
            .filter(|(_, p)| p.expires > now)
            .map(|((vs, key), p)| {
                // Round up so a session never loses time by being saved.
                let left = p.expires.saturating_duration_since(now);
                let expires = base + left;
                let secs = expires.as_secs() + u64::from(expires.subsec_nanos() > 0);
                SavedSession {
                    vserver: vs.clone(),
                    key: key.clone(),
                    service: p.service.clone(),
                    expires_unix: secs,
                }
            })
            .collect();
        v.sort_by(|a, b| (&a.vserver, &a.key).cmp(&(&b.vserver, &b.key)));
        v
    }

    /// Adds saved sessions that have not expired at `wall` and that `keep(lb vserver, service)`
    /// accepts; an entry already in the table wins. Returns how many were restored.
    pub fn restore(
        &self,
        saved: Vec<SavedSession>,
        now: Instant,
        wall: SystemTime,
        keep: impl Fn(&str, &str) -> bool,
    ) -> usize {
        let wall_secs = wall
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut map = lock(&self.map);
        let mut n = 0;
        for s in saved {
            if s.expires_unix <= wall_secs || !keep(&s.vserver, &s.service) {
                continue;
            }
            let left = Duration::from_secs(s.expires_unix - wall_secs);
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry((s.vserver, s.key)) {
                e.insert(Persisted {
                    service: s.service,
                    expires: now + left,
                });
                n += 1;
            }
        }
        if n > 0 {
            self.dirty.store(true, Ordering::Relaxed);
        }
        n
    }

    /// Live sessions, sorted by vserver then key (for `show lb persistentSessions`).
    pub fn list(&self, now: Instant) -> Vec<PersistentSession> {
        let mut map = lock(&self.map);
        map.retain(|_, p| p.expires > now);
        let mut v: Vec<PersistentSession> = map
            .iter()
            .map(|((vs, key), p)| PersistentSession {
                vserver: vs.clone(),
                key: key.clone(),
                service: p.service.clone(),
                remaining_secs: p.expires.saturating_duration_since(now).as_secs(),
            })
            .collect();
        v.sort_by(|a, b| (&a.vserver, &a.key).cmp(&(&b.vserver, &b.key)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands<'a>(names: &'a [&'a str], weights: &[u32]) -> Vec<Option<Candidate<'a>>> {
        names
            .iter()
            .zip(weights)
            .map(|(n, w)| {
                Some(Candidate {
                    name: n,
                    weight: *w,
                    conns: 0,
                })
            })
            .collect()
    }

    #[test]
    fn round_robin_alternates_equal_weights() {
        let b = Balancer::new(LbMethod::RoundRobin, 2);
        let m = cands(&["a", "b"], &[1, 1]);
        let picks: Vec<usize> = (0..6).filter_map(|_| b.pick(&m, None, None)).collect();
        assert_eq!(picks, vec![0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn round_robin_follows_weights_smoothly() {
        let b = Balancer::new(LbMethod::RoundRobin, 3);
        let m = cands(&["a", "b", "c"], &[5, 1, 1]);
        let picks: Vec<usize> = (0..7).filter_map(|_| b.pick(&m, None, None)).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 1);
        // Smooth: the heavy member is never picked more than 3 times in a row here.
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn round_robin_skips_unusable_members() {
        let b = Balancer::new(LbMethod::RoundRobin, 3);
        let mut m = cands(&["a", "b", "c"], &[1, 1, 1]);
        m[1] = None;
        for _ in 0..10 {
            assert_ne!(b.pick(&m, None, None), Some(1));
        }
        assert_eq!(b.pick(&[None, None], None, None), None);
    }

    #[test]
    fn least_connection_prefers_fewest_per_weight() {
        let b = Balancer::new(LbMethod::LeastConnection, 3);
        let m = vec![
            Some(Candidate {
                name: "a",
                weight: 1,
                conns: 5,
            }),
            Some(Candidate {
                name: "b",
                weight: 4,
                conns: 8,
            }),
            Some(Candidate {
                name: "c",
                weight: 1,
                conns: 3,
            }),
        ];
        // 5/1, 8/4 = 2, 3/1: b wins.
        for _ in 0..5 {
            assert_eq!(b.pick(&m, None, None), Some(1));
        }
    }

    #[test]
    fn least_connection_rotates_ties() {
        let b = Balancer::new(LbMethod::LeastConnection, 2);
        let m = cands(&["a", "b"], &[1, 1]);
        let picks: Vec<usize> = (0..4).filter_map(|_| b.pick(&m, None, None)).collect();
        assert!(picks.contains(&0) && picks.contains(&1));
    }

    #[test]
    fn source_ip_hash_is_stable_per_client() {
        let b = Balancer::new(LbMethod::SourceIpHash, 3);
        let m = cands(&["a", "b", "c"], &[1, 1, 1]);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let first = b.pick(&m, Some(ip), None);
        for _ in 0..10 {
            assert_eq!(b.pick(&m, Some(ip), None), first);
        }
    }

    #[test]
    fn user_token_moves_few_tokens_when_a_member_leaves() {
        let names = ["s1", "s2", "s3", "s4"];
        let m = cands(&names, &[1, 1, 1, 1]);
        let b = Balancer::new(LbMethod::UserToken, 4);
        let tokens: Vec<String> = (0..2000).map(|i| format!("device-{i}")).collect();
        let before: Vec<usize> = tokens
            .iter()
            .map(|t| b.pick(&m, None, Some(t)).unwrap())
            .collect();
        // Spread: each member gets a fair share.
        for i in 0..4 {
            let n = before.iter().filter(|&&x| x == i).count();
            assert!((350..650).contains(&n), "member {i} got {n}");
        }
        let mut m2 = m.clone();
        m2[2] = None;
        let mut moved = 0;
        for (t, &was) in tokens.iter().zip(&before) {
            let now = b.pick(&m2, None, Some(t)).unwrap();
            if was != 2 {
                assert_eq!(now, was, "token {t} moved without reason");
            } else {
                moved += 1;
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn user_token_honours_weights() {
        let m = cands(&["a", "b"], &[3, 1]);
        let b = Balancer::new(LbMethod::UserToken, 2);
        let a = (0..4000)
            .filter(|i| b.pick(&m, None, Some(&format!("t{i}"))) == Some(0))
            .count();
        assert!((2700..3300).contains(&a), "weighted share {a}");
    }

    #[test]
    fn persistence_expires_and_refreshes() {
        let t = PersistenceTable::default();
        let now = Instant::now();
        let to = Duration::from_secs(120);
        t.put("lb", "dev1", "svc1", now, to);
        assert_eq!(t.get("lb", "dev1", now, to).as_deref(), Some("svc1"));
        assert_eq!(
            t.get("lb", "dev1", now + Duration::from_secs(100), to)
                .as_deref(),
            Some("svc1")
        );
        // Refreshed at +100 s, so still alive at +200 s.
        assert!(t
            .get("lb", "dev1", now + Duration::from_secs(200), to)
            .is_some());
        assert!(t
            .get("lb", "dev1", now + Duration::from_secs(400), to)
            .is_none());
        assert!(t.get("other", "dev1", now, to).is_none());
    }

    #[test]
    fn user_token_moves_only_the_tokens_of_a_removed_service() {
        let names = ["svc1", "svc2", "svc3"];
        let m = cands(&names, &[1, 1, 1]);
        let b = Balancer::new(LbMethod::UserToken, 3);
        let tokens: Vec<String> = (0..200).map(|i| format!("client-{i}")).collect();
        let before: Vec<usize> = tokens
            .iter()
            .map(|t| b.pick(&m, None, Some(t)).unwrap())
            .collect();
        for i in 0..3 {
            assert!(before.contains(&i), "service {i} got no token");
        }
        // svc2 leaves the pool (disabled or DOWN): only its tokens move, to the other two.
        let mut m2 = m.clone();
        m2[1] = None;
        let after: Vec<usize> = tokens
            .iter()
            .map(|t| b.pick(&m2, None, Some(t)).unwrap())
            .collect();
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let held_by_svc2 = before.iter().filter(|&&i| i == 1).count();
        assert_eq!(moved, held_by_svc2, "only svc2's tokens move");
        assert!(after.iter().all(|&i| i != 1));
        // And when it comes back, every token returns to where it was.
        let back: Vec<usize> = tokens
            .iter()
            .map(|t| b.pick(&m, None, Some(t)).unwrap())
            .collect();
        assert_eq!(back, before);
    }

    #[test]
    fn persistence_exports_and_restores_with_wall_clock_expiry() {
        let t = PersistenceTable::default();
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_000_000);
        t.put("lb", "dev1", "s1", now, Duration::from_secs(300));
        t.put("lb", "dev2", "s2", now, Duration::from_secs(10));
        t.put("gone", "dev3", "s1", now, Duration::from_secs(300));
        assert!(t.take_dirty());
        assert!(!t.take_dirty());
        let saved = t.export(now, wall);
        assert_eq!(saved.len(), 3);
        assert_eq!(saved[1].key, "dev1");
        assert_eq!(saved[1].expires_unix, 1_000_300);

        // Restored 60 s (wall clock) later into a fresh table: dev2 expired meanwhile, the
        // "gone" lb vserver no longer exists.
        let t2 = PersistenceTable::default();
        let later = Instant::now();
        let n = t2.restore(saved, later, wall + Duration::from_secs(60), |vs, _svc| {
            vs == "lb"
        });
        assert_eq!(n, 1);
        let l = t2.list(later);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].key, "dev1");
        assert_eq!(l[0].service, "s1");
        assert_eq!(l[0].remaining_secs, 240);
        assert!(t2.take_dirty());
    }

    #[test]
    fn persistence_retain_drops_unbound_services() {
        let t = PersistenceTable::default();
        let now = Instant::now();
        t.put("lb", "a", "s1", now, Duration::from_secs(60));
        t.put("lb", "b", "s2", now, Duration::from_secs(60));
        t.take_dirty();
        t.retain(|_, svc| svc == "s1");
        assert!(t.take_dirty());
        assert_eq!(t.list(now).len(), 1);
    }

    #[test]
    fn persistence_lists_live_sessions() {
        let t = PersistenceTable::default();
        let now = Instant::now();
        t.put("lb", "b", "s2", now, Duration::from_secs(60));
        t.put("lb", "a", "s1", now, Duration::from_secs(60));
        t.put("lb", "gone", "s1", now, Duration::from_secs(1));
        let l = t.list(now + Duration::from_secs(2));
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].key, "a");
        assert_eq!(l[0].remaining_secs, 58);
    }
}
