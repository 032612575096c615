//! The object graph: objects by kind and name, their parameters and their bindings.
//!
//! Parameters are kept as canonical strings keyed by the grammar's parameter names, so a new
//! option needs no change here; bindings are typed because NetScaler's rules are about them.
//! Objects remember their creation sequence: ns.conf prints each kind in creation order.

use std::collections::BTreeMap;

/// The object kinds nsemu models. The order is ns.conf's dependency order of `add` lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Extension,
    UserProtocol,
    Server,
    Service,
    ServiceGroup,
    CertKey,
    LbVserver,
    UserVserver,
    Monitor,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Extension,
        Kind::UserProtocol,
        Kind::Server,
        Kind::Service,
        Kind::ServiceGroup,
        Kind::CertKey,
        Kind::LbVserver,
        Kind::UserVserver,
        Kind::Monitor,
    ];

    /// The grammar's object key.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Extension => "nsextension",
            Kind::UserProtocol => "userprotocol",
            Kind::Server => "server",
            Kind::Service => "service",
            Kind::ServiceGroup => "servicegroup",
            Kind::CertKey => "sslcertkey",
            Kind::LbVserver => "lbvserver",
            Kind::UserVserver => "uservserver",
            Kind::Monitor => "lbmonitor",
        }
    }

    pub fn from_key(key: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.key() == key)
    }

    /// The argument name NetScaler uses for this kind's name in messages.
    pub fn name_arg(self) -> &'static str {
        match self {
            Kind::ServiceGroup => "serviceGroupName",
            Kind::CertKey => "certkeyName",
            Kind::Monitor => "monitorName",
            _ => "name",
        }
    }

    /// User protocol names are not case sensitive; every other name is.
    fn fold(self, name: &str) -> String {
        if self == Kind::UserProtocol {
            name.to_ascii_uppercase()
        } else {
            name.to_string()
        }
    }
}

/// A binding of a service (or service group) to an lb vserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbMember {
    pub service: String,
    pub weight: u32,
}

/// A monitor bound to a service or service group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorBind {
    pub monitor: String,
    pub weight: u32,
    pub enabled: bool,
    pub passive: bool,
}

/// A member of a service group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub server: String,
    pub port: String,
    pub weight: u32,
    pub enabled: bool,
}

/// A certkey bound to an SSL entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertBind {
    pub certkey: String,
    pub ca: bool,
    pub sni: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Object {
    pub name: String,
    /// Canonical values by grammar parameter name (positionals and options of `add`).
    pub params: BTreeMap<String, String>,
    /// Creation order.
    pub seq: u64,
    /// lb vserver: bound services and groups, in binding order.
    pub members: Vec<LbMember>,
    /// service, service group: bound monitors.
    pub monitors: Vec<MonitorBind>,
    /// service group: members.
    pub group_members: Vec<GroupMember>,
    /// SSL entities (lb vserver, user vserver, service): `set ssl vserver|service` values.
    pub ssl: BTreeMap<String, String>,
    /// SSL entities: bound certkeys.
    pub certs: Vec<CertBind>,
    /// SSL entities: bound ECC curves (recorded, not used by the engine).
    pub ecc_curves: Vec<String>,
    /// Extension: the imported source text (the latest `import`).
    pub code: Option<String>,
    /// Extension: loaded into the engine (`add ns extension`, or import of a new name).
    pub loaded: bool,
    /// Extension: the source the engine runs, fixed by `add ns extension`, `update ns extension`
    /// or the import of a new name. `import -overwrite` changes only `code` until `update`.
    pub loaded_code: Option<String>,
    /// Service or server: graceful disable delay in seconds (runtime only, never saved).
    pub drain_delay: Option<u32>,
}

impl Object {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    pub fn enabled(&self) -> bool {
        self.get("state") != Some("DISABLED")
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// Persistent map: cloning a config for a transaction is O(1) and a clone shares all
    /// untouched objects, so `diff` against the previous config visits only what changed.
    objects: imbl::OrdMap<(Kind, String), Object>,
    next_seq: u64,
    /// Services by server name: NetScaler's rules about a server's services (duplicates, `rm
    /// server`) must not scan every service, or a 100,000-object config replays in quadratic time.
    by_server: imbl::OrdMap<String, imbl::OrdSet<String>>,
    /// Lb vservers by the service or service group they bind, for the same reason (`rm
    /// service` unbinds it everywhere). Members change only through `bind_member`,
    /// `unbind_member` and `rename_member`, which keep it current.
    lbs_of: imbl::OrdMap<String, imbl::OrdSet<String>>,
}

// === impl Config ===

impl Config {
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Object> {
        self.objects.get(&(kind, kind.fold(name)))
    }

    pub fn get_mut(&mut self, kind: Kind, name: &str) -> Option<&mut Object> {
        self.objects.get_mut(&(kind, kind.fold(name)))
    }

    pub fn contains(&self, kind: Kind, name: &str) -> bool {
        self.get(kind, name).is_some()
    }

    /// Inserts a new object at the end of its kind's creation order.
    pub fn insert(&mut self, kind: Kind, mut obj: Object) {
        obj.seq = self.next_seq;
        self.next_seq += 1;
        self.index(kind, &obj);
        self.objects.insert((kind, kind.fold(&obj.name)), obj);
    }

    pub fn remove(&mut self, kind: Kind, name: &str) -> Option<Object> {
        let o = self.objects.remove(&(kind, kind.fold(name)))?;
        if kind == Kind::LbVserver {
            for m in &o.members {
                if let Some(set) = self.lbs_of.get_mut(&m.service) {
                    set.remove(&o.name);
                }
            }
        }
        if kind == Kind::Service {
            if let Some(set) = o.get("serverName").and_then(|s| self.by_server.get_mut(s)) {
                set.remove(&o.name);
            }
        }
        Some(o)
    }

    fn index(&mut self, kind: Kind, o: &Object) {
        if kind == Kind::LbVserver {
            for m in &o.members {
                self.lbs_of
                    .entry(m.service.clone())
                    .or_default()
                    .insert(o.name.clone());
            }
        }
        if kind == Kind::Service {
            if let Some(server) = o.get("serverName") {
                self.by_server
                    .entry(server.to_string())
                    .or_default()
                    .insert(o.name.clone());
            }
        }
    }

    /// Names of the lb vservers that bind a service or service group.
    pub fn lb_vservers_binding(&self, service: &str) -> Vec<String> {
        self.lbs_of
            .get(service)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Binds a member to an lb vserver (which must exist).
    pub fn bind_member(&mut self, lb: &str, member: LbMember) {
        if let Some(v) = self.objects.get_mut(&(Kind::LbVserver, lb.to_string())) {
            self.lbs_of
                .entry(member.service.clone())
                .or_default()
                .insert(lb.to_string());
            v.members.push(member);
        }
    }

    /// Unbinds a member from an lb vserver.
    pub fn unbind_member(&mut self, lb: &str, service: &str) {
        if let Some(v) = self.objects.get_mut(&(Kind::LbVserver, lb.to_string())) {
            v.members.retain(|m| m.service != service);
            if let Some(set) = self.lbs_of.get_mut(service) {
                set.remove(lb);
            }
        }
    }

    /// A bound service or group was renamed: its bindings follow it.
    pub fn rename_member(&mut self, old: &str, new: &str) {
        let Some(lbs) = self.lbs_of.remove(old) else {
            return;
        };
        for lb in lbs.iter() {
            if let Some(v) = self.objects.get_mut(&(Kind::LbVserver, lb.clone())) {
                for m in &mut v.members {
                    if m.service == old {
                        m.service = new.to_string();
                    }
                }
            }
        }
        self.lbs_of.insert(new.to_string(), lbs);
    }

    /// Names of the services of a server.
    pub fn services_of(&self, server: &str) -> Vec<String> {
        self.by_server
            .get(server)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Moves a server's services to its new name in the index (after `rename server`).
    pub fn reindex_server(&mut self, old: &str, new: &str) {
        if let Some(set) = self.by_server.remove(old) {
            self.by_server.insert(new.to_string(), set);
        }
    }

    /// Renames in place, keeping the creation order.
    pub fn rename_object(&mut self, kind: Kind, old: &str, new: &str) {
        if let Some(mut o) = self.remove(kind, old) {
            o.name = new.to_string();
            self.index(kind, &o);
            self.objects.insert((kind, kind.fold(new)), o);
        }
    }

    /// Objects of a kind in name order.
    pub fn iter(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        self.objects
            .range((kind, String::new())..)
            .take_while(move |((k, _), _)| *k == kind)
            .map(|(_, o)| o)
    }

    /// Objects of a kind in creation order (ns.conf and show order).
    pub fn in_order(&self, kind: Kind) -> Vec<&Object> {
        let mut v: Vec<&Object> = self.iter(kind).collect();
        v.sort_by_key(|o| o.seq);
        v
    }

    /// Applies `f` to every object of `kind` for which `pred` holds. Only those objects are
    /// copied out of the structure shared with earlier configs.
    pub fn modify_where(
        &mut self,
        kind: Kind,
        pred: impl Fn(&Object) -> bool,
        mut f: impl FnMut(&mut Object),
    ) {
        let keys: Vec<(Kind, String)> = self
            .objects
            .range((kind, String::new())..)
            .take_while(|((k, _), _)| *k == kind)
            .filter(|(_, o)| pred(o))
            .map(|(key, _)| key.clone())
            .collect();
        for key in keys {
            if let Some(o) = self.objects.get_mut(&key) {
                f(o);
            }
        }
    }

    /// What differs between an earlier config and this one, as (kind, name) keys. Shared
    /// structure is skipped, so after one command this costs about O(log n).
    pub fn changed_since(&self, earlier: &Config) -> Vec<(Kind, String)> {
        use imbl::ordmap::DiffItem;
        earlier
            .objects
            .diff(&self.objects)
            .map(|d| match d {
                DiffItem::Add(k, _) | DiffItem::Remove(k, _) => k.clone(),
                DiffItem::Update { new: (k, _), .. } => k.clone(),
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}
