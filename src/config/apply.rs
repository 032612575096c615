//! Applying one parsed command to the configuration, with NetScaler's rules.
//!
//! Every handler checks all its preconditions before it changes anything, so a command that fails
//! leaves the configuration exactly as it was (the shell relies on this; a unit test checks it for
//! every error path it exercises). Handlers are found by command path; `handled_paths` lists them
//! so a test can check that grammar and handlers match one to one.

use super::error::ConfigError;
use super::model::{CertBind, Config, GroupMember, Kind, LbMember, MonitorBind, Object};
use super::rules;
use crate::cli::Command;
use crate::grammar::grammar;

/// What the shell supplies for commands that need I/O done outside config.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// `import ns extension`: the source text read from the file.
    pub extension_code: Option<String>,
}

/// A command that succeeded; warnings are printed as `Warning: ...` before ` Done`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    pub warnings: Vec<String>,
}

type Res = Result<Applied, ConfigError>;

/// Every command path that changes the configuration, and so has a handler here.
pub const MUTATING: &[&str] = &[
    "import ns extension",
    "add ns extension",
    "update ns extension",
    "set ns extension",
    "unset ns extension",
    "rm ns extension",
    "clear ns config",
    "add user protocol",
    "rm user protocol",
    "set user protocol",
    "unset user protocol",
    "add user vserver",
    "rm user vserver",
    "set user vserver",
    "unset user vserver",
    "enable user vserver",
    "disable user vserver",
    "add server",
    "rm server",
    "set server",
    "unset server",
    "enable server",
    "disable server",
    "rename server",
    "add service",
    "rm service",
    "set service",
    "unset service",
    "bind service",
    "unbind service",
    "enable service",
    "disable service",
    "rename service",
    "add serviceGroup",
    "rm serviceGroup",
    "set serviceGroup",
    "unset serviceGroup",
    "bind serviceGroup",
    "unbind serviceGroup",
    "enable serviceGroup",
    "disable serviceGroup",
    "rename serviceGroup",
    "add lb vserver",
    "rm lb vserver",
    "set lb vserver",
    "unset lb vserver",
    "bind lb vserver",
    "unbind lb vserver",
    "enable lb vserver",
    "disable lb vserver",
    "rename lb vserver",
    "add lb monitor",
    "rm lb monitor",
    "set lb monitor",
    "unset lb monitor",
    "bind lb monitor",
    "enable lb monitor",
    "disable lb monitor",
    "add ssl certKey",
    "rm ssl certKey",
    "update ssl certKey",
    "set ssl vserver",
    "unset ssl vserver",
    "bind ssl vserver",
    "unbind ssl vserver",
    "set ssl service",
    "unset ssl service",
    "bind ssl service",
    "unbind ssl service",
];

pub fn is_mutating(cmd: &Command) -> bool {
    MUTATING.contains(&cmd.path().as_str())
}

fn done() -> Res {
    Ok(Applied::default())
}

fn warn(w: String) -> Res {
    Ok(Applied { warnings: vec![w] })
}

fn arg<'a>(cmd: &'a Command, name: &str) -> Result<&'a str, ConfigError> {
    cmd.get(name)
        .ok_or_else(|| ConfigError::new(1095, "Required argument missing", Some(name.to_string())))
}

/// Options of the command other than the positionals used to find the object.
fn options<'a>(cmd: &'a Command, skip: &[&str]) -> Vec<(&'a str, &'a str)> {
    cmd.args
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// A new object with the command's arguments as parameters.
fn object_from(cmd: &Command, name: &str) -> Object {
    let mut o = Object {
        name: name.to_string(),
        ..Object::default()
    };
    for (k, v) in &cmd.args {
        o.params.insert(k.clone(), v.clone());
    }
    o
}

impl Config {
    /// Applies one command. On error nothing has changed.
    pub fn apply(&mut self, cmd: &Command, inputs: &Inputs) -> Res {
        let path = cmd.path();
        match path.as_str() {
            "import ns extension" => self.import_extension(cmd, inputs),
            "add ns extension" => self.add_extension(cmd),
            "update ns extension" => self.update_extension(cmd),
            "set ns extension" | "unset ns extension" => self.set_extension(cmd),
            "rm ns extension" => self.rm_extension(cmd),
            "clear ns config" => {
                *self = Config::default();
                done()
            }
            "add user protocol" => self.add_user_protocol(cmd),
            "rm user protocol" => self.rm_user_protocol(cmd),
            "set user protocol" => self.set_simple(Kind::UserProtocol, cmd, "name"),
            "unset user protocol" => self.unset_simple(Kind::UserProtocol, cmd, "name"),
            "add user vserver" => self.add_user_vserver(cmd),
            "rm user vserver" => self.rm_plain(Kind::UserVserver, cmd, "name"),
            "set user vserver" => self.set_user_vserver(cmd),
            "unset user vserver" => self.unset_simple(Kind::UserVserver, cmd, "name"),
            "enable user vserver" => self.set_state(Kind::UserVserver, cmd, "name", true),
            "disable user vserver" => self.set_state(Kind::UserVserver, cmd, "name", false),
            "add server" => self.add_server(cmd),
            "rm server" => self.rm_server(cmd),
            "set server" => self.set_server(cmd),
            "unset server" => self.unset_simple(Kind::Server, cmd, "name"),
            "enable server" => self.set_state(Kind::Server, cmd, "name", true),
            "disable server" => self.disable_with_delay(Kind::Server, cmd),
            "rename server" => self.rename_cmd(Kind::Server, cmd, "name"),
            "add service" => self.add_service(cmd),
            "rm service" => self.rm_service(cmd),
            "set service" => self.set_simple(Kind::Service, cmd, "name"),
            "unset service" => self.unset_service(cmd),
            "bind service" => self.bind_monitor(Kind::Service, cmd, "name"),
            "unbind service" => self.unbind_monitor(Kind::Service, cmd, "name"),
            "enable service" => self.set_state(Kind::Service, cmd, "name", true),
            "disable service" => self.disable_with_delay(Kind::Service, cmd),
            "rename service" => self.rename_cmd(Kind::Service, cmd, "name"),
            "add serviceGroup" => self.add_service_group(cmd),
            "rm serviceGroup" => self.rm_service(cmd),
            "set serviceGroup" => self.set_simple(Kind::ServiceGroup, cmd, "serviceGroupName"),
            "unset serviceGroup" => self.unset_service(cmd),
            "bind serviceGroup" => self.bind_service_group(cmd),
            "unbind serviceGroup" => self.unbind_service_group(cmd),
            "enable serviceGroup" => self.group_state(cmd, true),
            "disable serviceGroup" => self.group_state(cmd, false),
            "rename serviceGroup" => self.rename_cmd(Kind::ServiceGroup, cmd, "serviceGroupName"),
            "add lb vserver" => self.add_lb_vserver(cmd),
            "rm lb vserver" => self.rm_lb_vserver(cmd),
            "set lb vserver" => self.set_lb_vserver(cmd),
            "unset lb vserver" => self.unset_lb_vserver(cmd),
            "bind lb vserver" => self.bind_lb_vserver(cmd),
            "unbind lb vserver" => self.unbind_lb_vserver(cmd),
            "enable lb vserver" => self.set_state(Kind::LbVserver, cmd, "name", true),
            "disable lb vserver" => self.set_state(Kind::LbVserver, cmd, "name", false),
            "rename lb vserver" => self.rename_cmd(Kind::LbVserver, cmd, "name"),
            "add lb monitor" => self.add_monitor(cmd),
            "rm lb monitor" => self.rm_monitor(cmd),
            "set lb monitor" => self.set_monitor(cmd, false),
            "unset lb monitor" => self.set_monitor(cmd, true),
            "bind lb monitor" => self.bind_lb_monitor(cmd),
            "enable lb monitor" => self.set_state(Kind::Monitor, cmd, "monitorName", true),
            "disable lb monitor" => self.set_state(Kind::Monitor, cmd, "monitorName", false),
            "add ssl certKey" => self.add_certkey(cmd),
            "rm ssl certKey" => self.rm_certkey(cmd),
            "update ssl certKey" => self.update_certkey(cmd),
            "set ssl vserver" | "set ssl service" => self.set_ssl(cmd, false),
            "unset ssl vserver" | "unset ssl service" => self.set_ssl(cmd, true),
            "bind ssl vserver" | "bind ssl service" => self.bind_ssl(cmd),
            "unbind ssl vserver" | "unbind ssl service" => self.unbind_ssl(cmd),
            _ => Err(ConfigError::new(1088, "No such command", Some(path))),
        }
    }

    fn need(&self, kind: Kind, arg: &str, name: &str) -> Result<&Object, ConfigError> {
        self.get(kind, name)
            .ok_or_else(|| ConfigError::no_such(arg, name))
    }

    fn need_new(&self, kind: Kind, name: &str) -> Result<(), ConfigError> {
        if self.contains(kind, name) {
            return Err(ConfigError::exists(kind.name_arg(), name));
        }
        Ok(())
    }

    // --- generic verbs ---

    fn set_simple(&mut self, kind: Kind, cmd: &Command, key: &str) -> Res {
        let name = arg(cmd, key)?;
        self.need(kind, key, name)?;
        let opts = options(cmd, &[key]);
        if opts.is_empty() {
            return Err(ConfigError::new(431, "No arguments to set", None));
        }
        if let Some(o) = self.get_mut(kind, name) {
            for (k, v) in opts {
                o.params.insert(k.to_string(), v.to_string());
            }
        }
        done()
    }

    fn unset_simple(&mut self, kind: Kind, cmd: &Command, key: &str) -> Res {
        let name = arg(cmd, key)?;
        self.need(kind, key, name)?;
        let opts = options(cmd, &[key]);
        if opts.is_empty() {
            return Err(ConfigError::new(431, "No arguments to set", None));
        }
        if let Some(o) = self.get_mut(kind, name) {
            for (k, _) in opts {
                o.params.remove(k);
            }
        }
        done()
    }

    fn set_state(&mut self, kind: Kind, cmd: &Command, key: &str, enable: bool) -> Res {
        let name = arg(cmd, key)?;
        if kind == Kind::Monitor && rules::builtin_monitor(name).is_some() {
            return Err(ConfigError::new(
                2132,
                "Cannot modify a built-in monitor",
                Some(name.into()),
            ));
        }
        self.need(kind, key, name)?;
        if let Some(o) = self.get_mut(kind, name) {
            if enable {
                o.params.remove("state");
                o.drain_delay = None;
            } else {
                o.params.insert("state".into(), "DISABLED".into());
            }
        }
        done()
    }

    fn rm_plain(&mut self, kind: Kind, cmd: &Command, key: &str) -> Res {
        let name = arg(cmd, key)?;
        self.need(kind, key, name)?;
        self.remove(kind, name);
        done()
    }

    fn rename_cmd(&mut self, kind: Kind, cmd: &Command, key: &str) -> Res {
        let old = arg(cmd, key)?.to_string();
        let new = arg(cmd, "newName")?.to_string();
        self.need(kind, key, &old)?;
        self.need_new(kind, &new)?;
        if kind == Kind::Service && self.contains(Kind::ServiceGroup, &new)
            || kind == Kind::ServiceGroup && self.contains(Kind::Service, &new)
        {
            return Err(ConfigError::exists("newName", &new));
        }
        self.rename_raw(kind, &old, &new);
        // References by name follow the object.
        match kind {
            Kind::Server => {
                self.reindex_server(&old, &new);
                self.modify_where(
                    Kind::Service,
                    |s| s.get("serverName") == Some(old.as_str()),
                    |s| {
                        s.params.insert("serverName".into(), new.clone());
                    },
                );
                self.modify_where(
                    Kind::ServiceGroup,
                    |g| g.group_members.iter().any(|m| m.server == old),
                    |g| {
                        for m in &mut g.group_members {
                            if m.server == old {
                                m.server = new.clone();
                            }
                        }
                    },
                );
            }
            Kind::Service | Kind::ServiceGroup => self.rename_member(&old, &new),
            Kind::LbVserver => {
                self.modify_where(
                    Kind::UserVserver,
                    |u| u.get("defaultLB") == Some(old.as_str()),
                    |u| {
                        u.params.insert("defaultLB".into(), new.clone());
                    },
                );
            }
            _ => {}
        }
        done()
    }

    fn rename_raw(&mut self, kind: Kind, old: &str, new: &str) {
        let key = match kind {
            Kind::ServiceGroup => "serviceGroupName",
            Kind::CertKey => "certkeyName",
            Kind::Monitor => "monitorName",
            _ => "name",
        };
        self.rename_object(kind, old, new);
        if let Some(o) = self.get_mut(kind, new) {
            o.params.insert(key.into(), new.to_string());
        }
    }

    // --- extensions ---

    fn import_extension(&mut self, cmd: &Command, inputs: &Inputs) -> Res {
        let name = arg(cmd, "name")?;
        if name.len() > 31 {
            return Err(ConfigError::new(
                1106,
                "String length exceeds maximum",
                Some("name, 31".into()),
            ));
        }
        let code = inputs.extension_code.clone().ok_or_else(|| {
            ConfigError::new(
                3963,
                "Extension loading error.",
                Some("src, no source text".into()),
            )
        })?;
        match self.get_mut(Kind::Extension, name) {
            Some(_) if !cmd.has("overwrite") => Err(ConfigError::exists("name", name)),
            Some(o) => {
                o.code = Some(code);
                o.params.insert("src".into(), arg(cmd, "src")?.to_string());
                if let Some(c) = cmd.get("comment") {
                    o.params.insert("comment".into(), c.to_string());
                }
                done()
            }
            None => {
                // Importing a new name also loads it, as the 12.x tutorials expect.
                let mut o = object_from(cmd, name);
                o.params.remove("overwrite");
                o.loaded_code = Some(code.clone());
                o.code = Some(code);
                o.loaded = true;
                self.insert(Kind::Extension, o);
                done()
            }
        }
    }

    fn add_extension(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?;
        let o = self.get_mut(Kind::Extension, name).ok_or_else(|| {
            ConfigError::new(
                3949,
                "Extension is not added.",
                Some(format!("name, {name}")),
            )
        })?;
        if o.loaded {
            return Err(ConfigError::exists("name", name));
        }
        o.loaded = true;
        o.loaded_code = o.code.clone();
        if let Some(c) = cmd.get("comment") {
            o.params.insert("comment".into(), c.to_string());
        }
        done()
    }

    fn update_extension(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?;
        let o = self.need(Kind::Extension, "name", name)?;
        if !o.loaded {
            return Err(ConfigError::new(
                3948,
                "Add the extension before updating.",
                None,
            ));
        }
        if let Some(u) = self.user_vserver_using_extension(name) {
            return Err(ConfigError::new(
                1502,
                "Cant update the extension as the user protocol using this extension is in use",
                Some(u),
            ));
        }
        // Load the last imported code; the engine compiles it at commit.
        if let Some(o) = self.get_mut(Kind::Extension, name) {
            o.loaded_code = o.code.clone();
        }
        done()
    }

    fn user_vserver_using_extension(&self, ext: &str) -> Option<String> {
        self.iter(Kind::UserVserver)
            .find(|u| {
                u.get("userProtocol")
                    .and_then(|p| self.get(Kind::UserProtocol, p))
                    .and_then(|p| p.get("extension"))
                    == Some(ext)
            })
            .map(|u| u.name.clone())
    }

    fn set_extension(&mut self, cmd: &Command) -> Res {
        let unset = cmd.verb() == "unset";
        if unset {
            self.unset_simple(Kind::Extension, cmd, "name")
        } else {
            self.set_simple(Kind::Extension, cmd, "name")
        }
    }

    fn rm_extension(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?;
        self.need(Kind::Extension, "name", name)?;
        if let Some(p) = self
            .iter(Kind::UserProtocol)
            .find(|p| p.get("extension") == Some(name))
        {
            return Err(ConfigError::in_use(
                "name",
                name,
                &format!("user protocol {}", p.name),
            ));
        }
        self.remove(Kind::Extension, name);
        done()
    }

    // --- user protocols and user vservers ---

    fn add_user_protocol(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?;
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ConfigError::invalid(
                "name",
                "letters, digits and underscore only",
            ));
        }
        self.need_new(Kind::UserProtocol, name)?;
        let ext = arg(cmd, "extension")?;
        if !self.get(Kind::Extension, ext).is_some_and(|e| e.loaded) {
            return Err(ConfigError::new(
                3949,
                "Extension is not added.",
                Some(format!("extension, {ext}")),
            ));
        }
        self.insert(Kind::UserProtocol, object_from(cmd, name));
        done()
    }

    fn rm_user_protocol(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?;
        let p = self.need(Kind::UserProtocol, "name", name)?.name.clone();
        if let Some(u) = self.iter(Kind::UserVserver).find(|u| {
            u.get("userProtocol")
                .is_some_and(|up| up.eq_ignore_ascii_case(&p))
        }) {
            return Err(ConfigError::in_use(
                "name",
                name,
                &format!("user vserver {}", u.name),
            ));
        }
        self.remove(Kind::UserProtocol, name);
        done()
    }

    fn check_default_lb(&self, lb: &str) -> Result<(), ConfigError> {
        let v = self.need(Kind::LbVserver, "defaultLB", lb)?;
        if !rules::is_user_type(v.get("serviceType").unwrap_or("")) {
            return Err(ConfigError::new(
                2832,
                "Default Load Balancing virtual servers protocol type should be a user type.",
                Some(format!("defaultLB, {lb}")),
            ));
        }
        Ok(())
    }

    /// Another vserver (user or lb) already listening on ip:port.
    fn address_taken(&self, ip: &str, port: &str, except: &str) -> Option<String> {
        self.iter(Kind::UserVserver)
            .chain(self.iter(Kind::LbVserver))
            .find(|o| {
                o.name != except && o.get("IPAddress") == Some(ip) && o.get("port") == Some(port)
            })
            .map(|o| o.name.clone())
    }

    fn add_user_vserver(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?;
        self.need_new(Kind::UserVserver, name)?;
        let proto = arg(cmd, "userProtocol")?;
        let canonical = self
            .need(Kind::UserProtocol, "userProtocol", proto)?
            .name
            .clone();
        self.check_default_lb(arg(cmd, "defaultLB")?)?;
        let (ip, port) = (arg(cmd, "IPAddress")?, arg(cmd, "port")?);
        if let Some(other) = self.address_taken(ip, port, name) {
            return Err(ConfigError::exists(
                "IPAddress:port",
                &format!("{ip}:{port} used by {other}"),
            ));
        }
        if let Some(p) = cmd.get("params") {
            check_params(p)?;
        }
        let mut o = object_from(cmd, name);
        o.params.insert("userProtocol".into(), canonical);
        self.insert(Kind::UserVserver, o);
        done()
    }

    fn set_user_vserver(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?;
        let cur = self.need(Kind::UserVserver, "name", name)?;
        if let Some(lb) = cmd.get("defaultLB") {
            self.check_default_lb(lb)?;
        }
        if let Some(ip) = cmd.get("IPAddress") {
            let port = cur.get("port").unwrap_or("");
            if let Some(other) = self.address_taken(ip, port, name) {
                return Err(ConfigError::exists(
                    "IPAddress:port",
                    &format!("{ip}:{port} used by {other}"),
                ));
            }
        }
        if let Some(p) = cmd.get("params") {
            check_params(p)?;
        }
        self.set_simple(Kind::UserVserver, cmd, "name")
    }

    // --- servers ---

    fn add_server(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?;
        self.need_new(Kind::Server, name)?;
        let is_ip = arg(cmd, "IPAddress")?.parse::<std::net::IpAddr>().is_ok();
        if is_ip && cmd.has("domainResolveRetry") {
            return Err(ConfigError::new(
                1092,
                "Arguments cannot both be specified",
                Some("IPAddress, domainResolveRetry".into()),
            ));
        }
        self.insert(Kind::Server, object_from(cmd, name));
        done()
    }

    fn services_of_server(&self, server: &str) -> Vec<String> {
        self.services_of(server)
    }

    /// NetScaler removes a server's services with it (and their bindings).
    fn rm_server(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?.to_string();
        self.need(Kind::Server, "name", &name)?;
        if let Some(g) = self
            .iter(Kind::ServiceGroup)
            .find(|g| g.group_members.iter().any(|m| m.server == name))
        {
            return Err(ConfigError::in_use(
                "name",
                &name,
                &format!("service group {}", g.name),
            ));
        }
        for svc in self.services_of_server(&name) {
            self.drop_service(&svc);
        }
        self.remove(Kind::Server, &name);
        done()
    }

    fn set_server(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?;
        let cur = self.need(Kind::Server, "name", name)?;
        let cur_is_ip = cur
            .get("IPAddress")
            .is_some_and(|a| a.parse::<std::net::IpAddr>().is_ok());
        if let Some(ip) = cmd.get("IPAddress") {
            if !cur_is_ip {
                return Err(ConfigError::new(
                    2194,
                    "IP Address cannot be set on a domain based server",
                    Some(format!("IPAddress, {ip}")),
                ));
            }
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(ConfigError::new(
                    1110,
                    "Invalid IP address",
                    Some(format!("IPAddress, {ip}")),
                ));
            }
        }
        self.set_simple(Kind::Server, cmd, "name")
    }

    // --- services and service groups ---

    /// Resolves a service's server argument: a server name, or an IP that names (and if needed
    /// creates) a server.
    fn server_for(&self, server: &str) -> Result<Option<Object>, ConfigError> {
        if self.contains(Kind::Server, server) {
            return Ok(None);
        }
        if server.parse::<std::net::IpAddr>().is_ok() {
            let mut o = Object {
                name: server.to_string(),
                ..Object::default()
            };
            o.params.insert("name".into(), server.to_string());
            o.params.insert("IPAddress".into(), server.to_string());
            return Ok(Some(o));
        }
        Err(ConfigError::no_such("serverName", server))
    }

    fn add_service(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?;
        self.need_new(Kind::Service, name)?;
        if self.contains(Kind::ServiceGroup, name) {
            return Err(ConfigError::exists("name", name));
        }
        let server = arg(cmd, "serverName")?;
        let new_server = self.server_for(server)?;
        let (ty, port) = (arg(cmd, "serviceType")?, arg(cmd, "port")?);
        let siblings = self.services_of_server(server);
        if let Some(s) = siblings
            .iter()
            .filter_map(|n| self.get(Kind::Service, n))
            .find(|s| s.get("port") == Some(port) && s.get("serviceType") == Some(ty))
        {
            return Err(ConfigError::new(
                2305,
                "Service exists with the same port and service type",
                Some(format!("name, {}", s.name)),
            ));
        }
        let mut o = object_from(cmd, name);
        fill_service_defaults(&mut o, ty);
        if let Some(s) = new_server {
            self.insert(Kind::Server, s);
        }
        self.insert(Kind::Service, o);
        done()
    }

    fn add_service_group(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "serviceGroupName")?;
        self.need_new(Kind::ServiceGroup, name)?;
        if self.contains(Kind::Service, name) {
            return Err(ConfigError::exists("serviceGroupName", name));
        }
        let mut o = object_from(cmd, name);
        fill_service_defaults(&mut o, arg(cmd, "serviceType")?);
        self.insert(Kind::ServiceGroup, o);
        done()
    }

    /// Removes a service (or group) with its lb vserver bindings. NetScaler's lb parameter
    /// allowBoundSvcRemoval defaults to ENABLED, so a bound service may be removed.
    fn rm_service(&mut self, cmd: &Command) -> Res {
        let (kind, key) = if cmd.has("serviceGroupName") {
            (Kind::ServiceGroup, "serviceGroupName")
        } else {
            (Kind::Service, "name")
        };
        let name = arg(cmd, key)?.to_string();
        self.need(kind, key, &name)?;
        self.drop_service(&name);
        done()
    }

    fn drop_service(&mut self, name: &str) {
        for lb in self.lb_vservers_binding(name) {
            self.unbind_member(&lb, name);
        }
        if self.remove(Kind::Service, name).is_none() {
            self.remove(Kind::ServiceGroup, name);
        }
    }

    fn unset_service(&mut self, cmd: &Command) -> Res {
        let (kind, key) = if cmd.has("serviceGroupName") {
            (Kind::ServiceGroup, "serviceGroupName")
        } else {
            (Kind::Service, "name")
        };
        self.unset_simple(kind, cmd, key)?;
        let name = arg(cmd, key)?;
        if let Some(o) = self.get_mut(kind, name) {
            let ty = o.get("serviceType").unwrap_or("TCP").to_string();
            fill_service_defaults(o, &ty);
        }
        done()
    }

    /// `disable service|server NAME [DELAY] [-graceFul YES]`: the drain delay is runtime only.
    fn disable_with_delay(&mut self, kind: Kind, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?;
        self.need(kind, "name", name)?;
        let graceful = cmd.get("graceFul") == Some("YES");
        let delay = cmd.get("delay").and_then(|d| d.parse::<u32>().ok());
        if let Some(o) = self.get_mut(kind, name) {
            o.params.insert("state".into(), "DISABLED".into());
            o.drain_delay = if graceful || delay.is_some() {
                Some(delay.unwrap_or(0))
            } else {
                None
            };
        }
        done()
    }

    fn monitor_type(&self, name: &str) -> Option<String> {
        rules::builtin_monitor(name)
            .map(str::to_string)
            .or_else(|| {
                self.get(Kind::Monitor, name)
                    .and_then(|m| m.get("type"))
                    .map(str::to_string)
            })
    }

    fn bind_monitor(&mut self, kind: Kind, cmd: &Command, key: &str) -> Res {
        let name = arg(cmd, key)?;
        let mon = arg(cmd, "monitorName")?;
        let obj = self.need(kind, key, name)?;
        if self.monitor_type(mon).is_none() {
            return Err(ConfigError::new(
                2171,
                "Monitor does not exist",
                Some(format!("monitorName, {mon}")),
            ));
        }
        if rules::DEFAULT_MONITORS.contains(&mon) {
            return Err(ConfigError::new(
                2165,
                "Cannot bind default monitor",
                Some(format!("monitorName, {mon}")),
            ));
        }
        if obj.monitors.iter().any(|m| m.monitor == mon) {
            return Err(ConfigError::new(
                2133,
                "The monitor is already bound to the service",
                None,
            ));
        }
        let bind = MonitorBind {
            monitor: mon.to_string(),
            weight: cmd.get("weight").and_then(|w| w.parse().ok()).unwrap_or(1),
            enabled: cmd.get("monState") != Some("DISABLED"),
            passive: cmd.has("passive"),
        };
        if let Some(o) = self.get_mut(kind, name) {
            o.monitors.push(bind);
        }
        done()
    }

    fn unbind_monitor(&mut self, kind: Kind, cmd: &Command, key: &str) -> Res {
        let name = arg(cmd, key)?;
        let mon = arg(cmd, "monitorName")?;
        let obj = self.need(kind, key, name)?;
        if !obj.monitors.iter().any(|m| m.monitor == mon) {
            return Err(ConfigError::new(
                2170,
                "Monitor not bound to service",
                Some(format!("monitorName, {mon}")),
            ));
        }
        if let Some(o) = self.get_mut(kind, name) {
            o.monitors.retain(|m| m.monitor != mon);
        }
        done()
    }

    fn bind_lb_monitor(&mut self, cmd: &Command) -> Res {
        let mon = arg(cmd, "monitorName")?;
        let svc = arg(cmd, "serviceName")?;
        let mut args = std::collections::BTreeMap::new();
        args.insert("name".to_string(), svc.to_string());
        args.insert("monitorName".to_string(), mon.to_string());
        let def = grammar()
            .command(&["bind", "service"])
            .ok_or_else(|| ConfigError::no_such("command", "bind service"))?;
        self.bind_monitor(Kind::Service, &Command { def, args }, "name")?;
        warn("Argument deprecated [serviceName]".into())
    }

    fn member_args(&self, cmd: &Command) -> Result<Option<(String, String)>, ConfigError> {
        match (cmd.get("serverName"), cmd.get("port")) {
            (Some(s), Some(p)) => Ok(Some((s.to_string(), p.to_string()))),
            _ => Ok(None),
        }
    }

    fn bind_service_group(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "serviceGroupName")?;
        self.need(Kind::ServiceGroup, "serviceGroupName", name)?;
        let member = self.member_args(cmd)?;
        match (member, cmd.get("monitorName")) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                1092,
                "Arguments cannot both be specified",
                Some("serverName, monitorName".into()),
            )),
            (None, None) => Err(ConfigError::new(
                1095,
                "Required argument missing",
                Some("serverName".into()),
            )),
            (None, Some(_)) => self.bind_monitor(Kind::ServiceGroup, cmd, "serviceGroupName"),
            (Some((server, port)), None) => {
                let g = self.need(Kind::ServiceGroup, "serviceGroupName", name)?;
                if g.group_members
                    .iter()
                    .any(|m| m.server == server && m.port == port)
                {
                    return Err(ConfigError::exists(
                        "serverName",
                        &format!("{server} {port}"),
                    ));
                }
                let new_server = self.server_for(&server)?;
                if let Some(s) = new_server {
                    self.insert(Kind::Server, s);
                }
                let weight = cmd.get("weight").and_then(|w| w.parse().ok()).unwrap_or(1);
                if let Some(g) = self.get_mut(Kind::ServiceGroup, name) {
                    g.group_members.push(GroupMember {
                        server,
                        port,
                        weight,
                        enabled: true,
                    });
                }
                done()
            }
        }
    }

    fn unbind_service_group(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "serviceGroupName")?;
        let g = self.need(Kind::ServiceGroup, "serviceGroupName", name)?;
        match self.member_args(cmd)? {
            Some((server, port)) => {
                if !g
                    .group_members
                    .iter()
                    .any(|m| m.server == server && m.port == port)
                {
                    return Err(ConfigError::no_such(
                        "serverName",
                        &format!("{server} {port}"),
                    ));
                }
                if let Some(g) = self.get_mut(Kind::ServiceGroup, name) {
                    g.group_members
                        .retain(|m| !(m.server == server && m.port == port));
                }
                done()
            }
            None if cmd.has("monitorName") => {
                self.unbind_monitor(Kind::ServiceGroup, cmd, "serviceGroupName")
            }
            None => Err(ConfigError::new(
                1095,
                "Required argument missing",
                Some("serverName".into()),
            )),
        }
    }

    fn group_state(&mut self, cmd: &Command, enable: bool) -> Res {
        let name = arg(cmd, "serviceGroupName")?;
        let g = self.need(Kind::ServiceGroup, "serviceGroupName", name)?;
        match self.member_args(cmd)? {
            None => self.set_state(Kind::ServiceGroup, cmd, "serviceGroupName", enable),
            Some((server, port)) => {
                if !g
                    .group_members
                    .iter()
                    .any(|m| m.server == server && m.port == port)
                {
                    return Err(ConfigError::no_such(
                        "serverName",
                        &format!("{server} {port}"),
                    ));
                }
                if let Some(g) = self.get_mut(Kind::ServiceGroup, name) {
                    for m in &mut g.group_members {
                        if m.server == server && m.port == port {
                            m.enabled = enable;
                        }
                    }
                }
                done()
            }
        }
    }

    // --- lb vservers ---

    fn add_lb_vserver(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?;
        self.need_new(Kind::LbVserver, name)?;
        let ty = arg(cmd, "serviceType")?;
        if rules::is_user_type(ty) && cmd.has("IPAddress") {
            return Err(ConfigError::invalid(
                "IPAddress",
                "a USER_TCP or USER_SSL_TCP virtual server takes no IP address or port",
            ));
        }
        if let (Some(ip), Some(port)) = (cmd.get("IPAddress"), cmd.get("port")) {
            if let Some(other) = self.address_taken(ip, port, name) {
                return Err(ConfigError::exists(
                    "IPAddress:port",
                    &format!("{ip}:{port} used by {other}"),
                ));
            }
        }
        let mut o = object_from(cmd, name);
        o.params
            .entry("cltTimeout".into())
            .or_insert_with(|| rules::vserver_clt_timeout(ty).to_string());
        o.params
            .entry("persistenceType".into())
            .or_insert_with(|| "NONE".into());
        self.insert(Kind::LbVserver, o);
        done()
    }

    fn rm_lb_vserver(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?;
        self.need(Kind::LbVserver, "name", name)?;
        if let Some(u) = self
            .iter(Kind::UserVserver)
            .find(|u| u.get("defaultLB") == Some(name))
        {
            return Err(ConfigError::in_use(
                "name",
                name,
                &format!("default lb vserver of user vserver {}", u.name),
            ));
        }
        self.remove(Kind::LbVserver, name);
        done()
    }

    fn set_lb_vserver(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?;
        let v = self.need(Kind::LbVserver, "name", name)?;
        if let Some(ip) = cmd.get("IPAddress") {
            if rules::is_user_type(v.get("serviceType").unwrap_or("")) {
                return Err(ConfigError::invalid(
                    "IPAddress",
                    "a USER_TCP or USER_SSL_TCP virtual server takes no IP address or port",
                ));
            }
            if v.get("port").is_none() {
                return Err(ConfigError::invalid(
                    "IPAddress",
                    "the virtual server has no port",
                ));
            }
            if let Some(other) = self.address_taken(ip, v.get("port").unwrap_or(""), name) {
                return Err(ConfigError::exists(
                    "IPAddress",
                    &format!("{ip} used by {other}"),
                ));
            }
        }
        self.set_simple(Kind::LbVserver, cmd, "name")
    }

    fn unset_lb_vserver(&mut self, cmd: &Command) -> Res {
        self.unset_simple(Kind::LbVserver, cmd, "name")?;
        let name = arg(cmd, "name")?;
        if let Some(o) = self.get_mut(Kind::LbVserver, name) {
            let ty = o.get("serviceType").unwrap_or("TCP").to_string();
            o.params
                .entry("cltTimeout".into())
                .or_insert_with(|| rules::vserver_clt_timeout(&ty).to_string());
            o.params
                .entry("persistenceType".into())
                .or_insert_with(|| "NONE".into());
        }
        done()
    }

    fn bind_lb_vserver(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?;
        let svc = arg(cmd, "serviceName")?;
        let v = self.need(Kind::LbVserver, "name", name)?;
        let target = self
            .get(Kind::Service, svc)
            .or_else(|| self.get(Kind::ServiceGroup, svc))
            .ok_or_else(|| ConfigError::no_such("serviceName", svc))?;
        let (vt, st) = (
            v.get("serviceType").unwrap_or(""),
            target.get("serviceType").unwrap_or(""),
        );
        if !rules::compatible(vt, st) {
            return Err(ConfigError::new(
                1304,
                "Service type mismatch between the vserver and service",
                Some(format!("{vt}, {st}")),
            ));
        }
        if v.members.iter().any(|m| m.service == svc) {
            return Err(ConfigError::exists("serviceName", svc));
        }
        let weight = cmd.get("weight").and_then(|w| w.parse().ok()).unwrap_or(1);
        let service = svc.to_string();
        self.bind_member(name, LbMember { service, weight });
        done()
    }

    fn unbind_lb_vserver(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "name")?;
        let svc = arg(cmd, "serviceName")?;
        let v = self.need(Kind::LbVserver, "name", name)?;
        if !v.members.iter().any(|m| m.service == svc) {
            return Err(ConfigError::new(
                1303,
                "Service not bound to Vserver",
                Some(format!("serviceName, {svc}")),
            ));
        }
        self.unbind_member(name, svc);
        done()
    }

    // --- monitors ---

    fn add_monitor(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "monitorName")?;
        if rules::builtin_monitor(name).is_some() {
            return Err(ConfigError::exists("monitorName", name));
        }
        self.need_new(Kind::Monitor, name)?;
        let o = object_from(cmd, name);
        check_monitor_timing(&o)?;
        self.insert(Kind::Monitor, o);
        done()
    }

    fn rm_monitor(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "monitorName")?;
        if rules::builtin_monitor(name).is_some() {
            return Err(ConfigError::new(
                2132,
                "Cannot remove a built-in monitor",
                Some(name.into()),
            ));
        }
        let m = self.need(Kind::Monitor, "monitorName", name)?;
        if let Some(t) = cmd.get("type") {
            if m.get("type") != Some(t) {
                return Err(ConfigError::new(
                    2155,
                    "Existing monitor is of different type than given",
                    None,
                ));
            }
        }
        let bound = self
            .iter(Kind::Service)
            .chain(self.iter(Kind::ServiceGroup))
            .find(|s| s.monitors.iter().any(|b| b.monitor == name));
        if let Some(s) = bound {
            return Err(ConfigError::new(
                2131,
                "Monitor must be unbound before it can be deleted",
                Some(format!("monitorName, {name}: bound to {}", s.name)),
            ));
        }
        self.remove(Kind::Monitor, name);
        done()
    }

    fn set_monitor(&mut self, cmd: &Command, unset: bool) -> Res {
        let name = arg(cmd, "monitorName")?;
        if rules::builtin_monitor(name).is_some() {
            return Err(ConfigError::new(
                2132,
                "Cannot modify a built-in monitor",
                Some(name.into()),
            ));
        }
        let m = self.need(Kind::Monitor, "monitorName", name)?;
        if m.get("type") != cmd.get("type") {
            return Err(ConfigError::new(
                2155,
                "Existing monitor is of different type than given",
                None,
            ));
        }
        let opts = options(cmd, &["monitorName", "type"]);
        if opts.is_empty() {
            return Err(ConfigError::new(431, "No arguments to set", None));
        }
        let mut candidate = m.clone();
        for (k, v) in opts {
            if unset {
                candidate.params.remove(k);
            } else {
                candidate.params.insert(k.to_string(), v.to_string());
            }
        }
        check_monitor_timing(&candidate)?;
        if let Some(m) = self.get_mut(Kind::Monitor, name) {
            *m = candidate;
        }
        done()
    }

    // --- SSL ---

    fn add_certkey(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "certkeyName")?;
        self.need_new(Kind::CertKey, name)?;
        if cmd.get("inform").is_some_and(|i| i != "PEM") {
            return Err(ConfigError::invalid("inform", "nsemu reads PEM files only"));
        }
        if cmd.has("password") {
            return Err(ConfigError::invalid(
                "password",
                "encrypted keys are not supported",
            ));
        }
        self.insert(Kind::CertKey, object_from(cmd, name));
        done()
    }

    fn rm_certkey(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "certkeyName")?;
        self.need(Kind::CertKey, "certkeyName", name)?;
        if let Some(user) = self.certkey_user(name) {
            return Err(ConfigError::new(
                1541,
                "Certificate is referenced by a CRL, OCSP responder, vserver, service, ...",
                Some(format!("certkeyName, {name}: bound to {user}")),
            ));
        }
        self.remove(Kind::CertKey, name);
        done()
    }

    fn certkey_user(&self, ck: &str) -> Option<String> {
        [Kind::LbVserver, Kind::UserVserver, Kind::Service]
            .into_iter()
            .flat_map(|k| self.iter(k))
            .find(|o| o.certs.iter().any(|c| c.certkey == ck))
            .map(|o| o.name.clone())
    }

    fn update_certkey(&mut self, cmd: &Command) -> Res {
        let name = arg(cmd, "certkeyName")?;
        self.need(Kind::CertKey, "certkeyName", name)?;
        let opts: Vec<(String, String)> = options(cmd, &["certkeyName", "noDomainCheck"])
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if opts.is_empty() {
            return Err(ConfigError::new(431, "No arguments to set", None));
        }
        if let Some(o) = self.get_mut(Kind::CertKey, name) {
            for (k, v) in opts {
                o.params.insert(k, v);
            }
        }
        done()
    }

    /// The SSL entity a `... ssl vserver|service` command names.
    fn ssl_entity(&self, cmd: &Command) -> Result<(Kind, String), ConfigError> {
        if let Some(svc) = cmd.get("serviceName") {
            let s = self.need(Kind::Service, "serviceName", svc)?;
            if !rules::is_ssl_type(s.get("serviceType").unwrap_or("")) {
                return Err(not_ssl(svc));
            }
            return Ok((Kind::Service, svc.to_string()));
        }
        let name = arg(cmd, "vServerName")?;
        if let Some(v) = self.get(Kind::LbVserver, name) {
            if !rules::is_ssl_type(v.get("serviceType").unwrap_or("")) {
                return Err(not_ssl(name));
            }
            return Ok((Kind::LbVserver, name.to_string()));
        }
        if let Some(u) = self.get(Kind::UserVserver, name) {
            let transport = u
                .get("userProtocol")
                .and_then(|p| self.get(Kind::UserProtocol, p))
                .and_then(|p| p.get("transport"));
            if transport != Some("SSL") {
                return Err(not_ssl(name));
            }
            return Ok((Kind::UserVserver, name.to_string()));
        }
        Err(ConfigError::no_such("vServerName", name))
    }

    fn set_ssl(&mut self, cmd: &Command, unset: bool) -> Res {
        let (kind, name) = self.ssl_entity(cmd)?;
        let opts = options(cmd, &["vServerName", "serviceName"]);
        if opts.is_empty() {
            return Err(ConfigError::new(431, "No arguments to set", None));
        }
        let mut warnings = Vec::new();
        for (k, v) in &opts {
            if !unset && *v == "ENABLED" && matches!(*k, "ssl2" | "ssl3" | "tls1" | "tls11") {
                warnings.push(format!(
                    "Protocol version accepted in the configuration but not offered: the engine speaks TLS 1.2 and 1.3 only [{k}]"
                ));
            }
        }
        let defaults = grammar().object(if kind == Kind::Service {
            "sslservice"
        } else {
            "sslvserver"
        });
        if let Some(o) = self.get_mut(kind, &name) {
            for (k, v) in opts {
                let default = defaults
                    .and_then(|d| d.param(k))
                    .and_then(|p| p.default.as_deref());
                if unset || default == Some(v) {
                    o.ssl.remove(k);
                } else {
                    o.ssl.insert(k.to_string(), v.to_string());
                }
            }
        }
        Ok(Applied { warnings })
    }

    fn bind_ssl(&mut self, cmd: &Command) -> Res {
        let (kind, name) = self.ssl_entity(cmd)?;
        let mut warnings = Vec::new();
        let bind = match (cmd.get("certkeyName"), cmd.get("eccCurveName")) {
            (Some(ck), _) => {
                if !self.contains(Kind::CertKey, ck) {
                    return Err(ConfigError::new(
                        1540,
                        "Certificate does not exist",
                        Some(format!("certkeyName, {ck}")),
                    ));
                }
                Some(CertBind {
                    certkey: ck.to_string(),
                    ca: cmd.has("CA"),
                    sni: cmd.has("SNICert"),
                })
            }
            (None, Some(_)) => None,
            (None, None) if cmd.has("cipherName") => None,
            (None, None) => {
                return Err(ConfigError::new(
                    1095,
                    "Required argument missing",
                    Some("certkeyName".into()),
                ))
            }
        };
        let o = self
            .get(kind, &name)
            .ok_or_else(|| ConfigError::no_such("vServerName", &name))?;
        if let Some(b) = &bind {
            if o.certs.iter().any(|c| c.certkey == b.certkey) {
                return Err(ConfigError::exists("certkeyName", &b.certkey));
            }
            if !b.ca && !b.sni && o.certs.iter().any(|c| !c.ca && !c.sni) {
                warnings.push("Current certificate replaces the previous binding".to_string());
            }
        }
        let curve = cmd.get("eccCurveName").map(str::to_string);
        if let Some(o) = self.get_mut(kind, &name) {
            if let Some(b) = bind {
                if !b.ca && !b.sni {
                    o.certs.retain(|c| c.ca || c.sni);
                }
                o.certs.push(b);
            }
            if let Some(c) = curve {
                if !o.ecc_curves.contains(&c) {
                    o.ecc_curves.push(c);
                }
            }
        }
        Ok(Applied { warnings })
    }

    fn unbind_ssl(&mut self, cmd: &Command) -> Res {
        let (kind, name) = self.ssl_entity(cmd)?;
        let o = self
            .get(kind, &name)
            .ok_or_else(|| ConfigError::no_such("vServerName", &name))?;
        if let Some(ck) = cmd.get("certkeyName") {
            if !o.certs.iter().any(|c| c.certkey == ck) {
                return Err(ConfigError::new(
                    1542,
                    "Certificate binding does not exist",
                    Some(format!("certkeyName, {ck}")),
                ));
            }
        }
        let (ck, curve) = (cmd.get("certkeyName"), cmd.get("eccCurveName"));
        if let Some(o) = self.get_mut(kind, &name) {
            if let Some(ck) = ck {
                o.certs.retain(|c| c.certkey != ck);
            }
            if let Some(c) = curve {
                o.ecc_curves.retain(|x| x != c);
            }
        }
        done()
    }
}

fn not_ssl(name: &str) -> ConfigError {
    ConfigError::new(
        1544,
        "Objects protocol type is not SSL",
        Some(format!("vServerName, {name}")),
    )
}

/// Services and groups always carry the fixed block of ns.conf; fill what was not typed.
fn fill_service_defaults(o: &mut Object, ty: &str) {
    let (clt, svr) = rules::service_timeouts(ty);
    o.params
        .entry("cltTimeout".into())
        .or_insert_with(|| clt.to_string());
    o.params
        .entry("svrTimeout".into())
        .or_insert_with(|| svr.to_string());
    o.params
        .entry("useproxyport".into())
        .or_insert_with(|| rules::service_useproxyport(ty).into());
}

/// `-params "a=1 b=2"`: names and values at most 63 characters (NetScaler 1503).
pub fn check_params(p: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for pair in p.split_whitespace() {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k.is_empty() || k.len() > 63 || v.len() > 63 {
            return Err(ConfigError::new(
                1503,
                "Invalid parameter: names and values are at most 63 characters, written name=value",
                Some(format!("params, {pair}")),
            ));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Converts a canonical duration (`5`, `500 MSEC`, `1 MIN`) to milliseconds.
pub fn duration_ms(value: &str, default_unit: &str) -> u64 {
    let (n, unit) = value.split_once(' ').unwrap_or((value, default_unit));
    let n: u64 = n.parse().unwrap_or(0);
    match unit {
        "MSEC" => n,
        "MIN" => n * 60_000,
        _ => n * 1000,
    }
}

fn check_monitor_timing(m: &Object) -> Result<(), ConfigError> {
    let interval = duration_ms(m.get("interval").unwrap_or("5"), "SEC");
    let resp = duration_ms(m.get("resptimeout").unwrap_or("2"), "SEC");
    if resp >= interval {
        return Err(ConfigError::new(
            2128,
            "Monitor interval must be greater than response timeout",
            None,
        ));
    }
    Ok(())
}
