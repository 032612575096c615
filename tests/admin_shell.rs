//! End-to-end tests of the command language as an admin uses it: the real binary, the lab's
//! commands piped into `nsemu cli`, mistakes, save and restart.

mod common;

use common::{lab_dir, lab_script, tally, Appliance};

#[test]
fn lab_commands_piped_into_cli_all_succeed_and_save() {
    let dir = lab_dir();
    let app = Appliance::start(dir.path());
    let script = lab_script("127.2.1");
    let (out, ok) = app.cli(&script);
    assert!(ok, "{out}");
    let (done, errors) = tally(&out);
    assert_eq!((done, errors), (script.lines().count(), 0), "{out}");
    // Each command is echoed before its result, as a transcript.
    assert!(out.contains("> add user vs u_vserver_azureiot MQTT 127.2.1.10 1883 -defaultlb lb_vserver_azureiot\n Done"));
    let saved = std::fs::read_to_string(dir.path().join("ns.conf")).expect("ns.conf");
    assert!(saved.starts_with("#NS"), "{saved}");
    assert!(saved
        .lines()
        .nth(1)
        .is_some_and(|l| l.starts_with("# Last modified by `save config`, ")));
    assert!(saved.contains("\nadd user vserver u_vserver_azureiot_ssl MQTT_SSL 127.2.1.10 8883 -defaultLB lb_vserver_azureiot\n"));
    assert!(saved.contains("\nbind ssl vserver u_vserver_azureiot_ssl -certkeyName lab\n"));
}

#[test]
fn adding_a_server_twice_gets_netscaler_error_and_changes_nothing() {
    let dir = lab_dir();
    let app = Appliance::start(dir.path());
    assert!(app.run("add server AzureIOTEdge1 127.2.2.11").1);
    let before = app.running_config();
    let (out, ok) = app.run("add server AzureIOTEdge1 127.2.2.99");
    assert!(!ok);
    assert_eq!(
        out,
        "ERROR: Resource already exists [name, AzureIOTEdge1]\n"
    );
    assert_eq!(app.running_config(), before);
}

#[test]
fn abbreviations_and_case_work_as_on_netscaler() {
    let dir = lab_dir();
    let app = Appliance::start(dir.path());
    let (out, ok) = app.cli(
        "ADD SERVER s1 127.2.3.11\nadd serv s2 127.2.3.12\nadd lb vs v1 tcp 127.2.3.10 80 -lbmeth roundrobin\nbind lb vs v1 s1\nsh lb vs v1\nsho run\nsave config\nsho save\n",
    );
    // `bind lb vs v1 s1` names a server, not a service: NetScaler's error.
    assert!(
        out.contains("ERROR: No such resource [serviceName, s1]"),
        "{out}"
    );
    assert!(!ok);
    assert!(out.contains("add lb vserver v1 TCP 127.2.3.10 80 -persistenceType NONE -lbMethod ROUNDROBIN -cltTimeout 9000"), "{out}");
    assert!(out.contains("\tConfigured Method: ROUNDROBIN"), "{out}");
    assert!(out.contains("#NS14.1"), "sho save shows the file: {out}");
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let dir = lab_dir();
    let app = Appliance::start(dir.path());
    assert!(app.cli(&lab_script("127.2.4")).1);
    // A non-SSL vserver, to show that SSL settings are refused on it.
    assert!(app.run("add lb vs tcpvs TCP 127.2.4.21 80").1);
    let before = app.running_config();
    let long_name = "n".repeat(128);
    let cases: Vec<(String, &str)> = vec![
        ("frobnicate all".into(), "ERROR: No such command"),
        ("add lb bogus x".into(), "ERROR: No such command"),
        ("s server x".into(), "ERROR: Ambiguous command name"),
        (
            "add server x 127.2.4.50 -bogus 1".into(),
            "ERROR: No such argument [-bogus]",
        ),
        (
            "add lb vserver x TCP 127.2.4.50 81 -h 1".into(),
            "ERROR: Ambiguous argument name",
        ),
        (
            "add server".into(),
            "ERROR: Required argument missing [name]",
        ),
        (
            "add server x 127.2.4.50 extra".into(),
            "ERROR: Too many arguments [extra]",
        ),
        (
            "add lb vserver x TCP -lbMethod FASTEST".into(),
            "ERROR: Invalid argument value [lbMethod, FASTEST]",
        ),
        (
            "add service x AzureIOTEdge1 TCP 0".into(),
            "ERROR: Integer value below minimum [port, 0]",
        ),
        (
            "add service x AzureIOTEdge1 TCP 65536".into(),
            "ERROR: Integer value exceeds maximum [port, 65536]",
        ),
        (
            "add server x 300.1.1.1".into(),
            "ERROR: Invalid IP address [IPAddress, 300.1.1.1]",
        ),
        (
            format!("add server {long_name} 127.2.4.50"),
            "ERROR: String length exceeds maximum [name, 127]",
        ),
        (
            "add server bad$name 127.2.4.50".into(),
            "ERROR: Invalid name",
        ),
        ("add server \"x 127.2.4.50".into(), "ERROR: Unmatched quote"),
        (
            "add service x nosuchserver TCP 80".into(),
            "ERROR: No such resource [serverName, nosuchserver]",
        ),
        (
            "rm lb vserver lb_vserver_azureiot".into(),
            "ERROR: Resource in use",
        ),
        (
            "rm ssl certKey lab".into(),
            "ERROR: Certificate is referenced",
        ),
        (
            "add user vs u2 MQTT 127.2.4.20 1883 -defaultLB nosuch".into(),
            "ERROR: No such resource [defaultLB, nosuch]",
        ),
        (
            "add lb vs userlb USER_TCP 127.2.4.22 80".into(),
            "ERROR: Invalid argument [IPAddress",
        ),
        (
            "set ssl vserver tcpvs -tls12 DISABLED".into(),
            "ERROR: Objects protocol type is not SSL",
        ),
        (
            "add lb monitor m1 TCP -interval 2 -resptimeout 2".into(),
            "ERROR: Monitor interval must be greater than response timeout",
        ),
        (
            "set ssl service lb_service_azureiot1 -tls12 DISABLED -tls13 DISABLED".into(),
            "ERROR: SSL configuration error [service lb_service_azureiot1: no TLS protocol version enabled",
        ),
        (
            "add server r[1-3] 127.2.4.[1-2]".into(),
            "ERROR: Ranges are different sizes",
        ),
    ];
    for (cmd, want) in &cases {
        let (out, ok) = app.run(cmd);
        assert!(!ok, "{cmd} should fail: {out}");
        assert!(out.starts_with(want), "{cmd}: got {out:?}, want {want:?}");
    }
    // A 1 MB line and binary garbage through the control socket.
    let (out, ok) = app.cli(&format!(
        "add server {} 127.2.4.60\n",
        "x".repeat(1_000_000)
    ));
    assert!(
        !ok && out.contains("ERROR: Command line too long"),
        "{}",
        &out[out.len().saturating_sub(200)..]
    );
    {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&app.socket).expect("connect");
        // The appliance answers and closes after 1 MiB, so the rest of the write may fail.
        let _ = s.write_all(&vec![b'y'; 2 * 1024 * 1024]);
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(reply.starts_with("ERROR: Command line too long"), "{reply}");
    }
    let (out, ok) = app.cli("add server \u{1}\u{2}\u{7f} 1.1.1.1\n");
    assert!(!ok && out.contains("ERROR: Invalid character"), "{out}");
    assert_eq!(app.running_config(), before);
}

#[test]
fn save_restart_gives_identical_running_config_and_backups() {
    let dir = lab_dir();
    let app = Appliance::start(dir.path());
    assert!(app.cli(&lab_script("127.2.5")).1);
    assert!(
        app.run("add lb monitor mqtt_mon MQTT -interval 1 -resptimeout 500 MSEC")
            .1
    );
    assert!(
        app.run("bind service lb_service_azureiot1 -monitorName mqtt_mon")
            .1
    );
    assert!(
        app.run(
            "set lb vserver lb_vserver_azureiot -lbMethod ROUNDROBIN -comment \"two gateways\""
        )
        .1
    );
    assert!(app.run("save ns config").1);
    let before = app.running_config();
    let saved = std::fs::read_to_string(dir.path().join("ns.conf")).expect("ns.conf");
    assert!(
        dir.path().join("ns.conf.0").exists(),
        "the previous file is kept as ns.conf.0"
    );
    app.stop();
    let app = Appliance::start(dir.path());
    assert_eq!(app.running_config(), before);
    let (show, _) = app.run("show ns config");
    assert!(
        show.contains("Configuration changed since last save: NO"),
        "{show}"
    );
    assert!(app.run("save config").1);
    let resaved = std::fs::read_to_string(dir.path().join("ns.conf")).expect("ns.conf");
    let body = |s: &str| s.lines().skip(2).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(body(&resaved), body(&saved));
    assert!(
        !app.log.iter().any(|l| l.contains("ERROR")),
        "{:#?}",
        app.log
    );
}

#[test]
fn boot_reports_bad_and_unsupported_lines_and_loads_the_rest() {
    let dir = lab_dir();
    std::fs::write(
        dir.path().join("ns.conf"),
        "#NS13.0 Build 79.64\n# Last modified by `save config`, Sat May  7 12:22:28 2022\nset ns hostName adc1\nadd server a 127.2.6.11\nadd service s1 nosuch TCP 80\nadd dns nsRec . a.root-servers.net -TTL 3600000\nadd server b 127.2.6.12\n",
    )
    .expect("write");
    let mut app = Appliance::start(dir.path());
    let cfg = app.running_config();
    assert!(
        cfg.contains("add server a 127.2.6.11") && cfg.contains("add server b 127.2.6.12"),
        "{cfg}"
    );
    let line5 = app.wait_log(
        "ns.conf:5: ERROR: No such resource [serverName, nosuch]",
        std::time::Duration::from_secs(1),
    );
    assert!(line5.contains("add service s1"));
    app.wait_log("ns.conf:3: unsupported", std::time::Duration::from_secs(1));
    app.wait_log("ns.conf:6: unsupported", std::time::Duration::from_secs(1));
}

#[test]
fn check_reports_every_bad_line_with_its_number() {
    let dir = lab_dir();
    let f = dir.path().join("mine.conf");
    std::fs::write(&f, "add server a 127.2.7.1\nadd server a 127.2.7.2\nadd lb vs v TCP 127.2.7.3 99999\nenable ns feature LB\nadd lb vs w TCP 127.2.7.3 80\n").expect("write");
    let out = std::process::Command::new(common::BIN)
        .arg("check")
        .arg(&f)
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("mine.conf:2: ERROR: Resource already exists [name, a]"),
        "{text}"
    );
    assert!(
        text.contains("mine.conf:3: ERROR: Integer value exceeds maximum [port, 99999]"),
        "{text}"
    );
    assert!(text.contains("mine.conf:4: unsupported"), "{text}");
    assert!(text.contains("2 errors, 1 unsupported"), "{text}");
    std::fs::write(&f, "add server a 127.2.7.1\n").expect("write");
    let ok = std::process::Command::new(common::BIN)
        .arg("check")
        .arg(&f)
        .status()
        .expect("check");
    assert!(ok.success());
}

#[test]
fn cli_exit_status_tells_whether_every_command_succeeded() {
    let dir = lab_dir();
    let app = Appliance::start(dir.path());
    let (out, ok) = app.cli("add server a 127.2.8.1\nadd server a 127.2.8.1\nshow server a\n");
    assert!(!ok, "{out}");
    assert_eq!(tally(&out), (2, 1), "{out}");
    assert!(app.cli("show server\n").1);
    let (out, ok) = app.run("show server nosuch");
    assert!(!ok);
    assert_eq!(out, "ERROR: No such resource [name, nosuch]\n");
}

#[test]
fn two_sessions_and_a_garbage_peer_share_the_control_socket() {
    use std::io::{Read, Write};
    let dir = lab_dir();
    let app = Appliance::start(dir.path());
    // A peer that sends binary garbage gets an error answer; the appliance stays up.
    let mut peer = std::os::unix::net::UnixStream::connect(&app.socket).expect("connect");
    peer.write_all(&[0xff, 0xfe, 0x00, 0x13, b'\n'])
        .expect("write");
    let mut buf = [0u8; 256];
    let n = peer.read(&mut buf).expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("ERROR:"));
    // A second session works while the first is open.
    let mut first = std::os::unix::net::UnixStream::connect(&app.socket).expect("connect");
    first
        .write_all(b"add server one 127.2.9.1\n")
        .expect("write");
    let n = first.read(&mut buf).expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with(" Done"));
    assert!(app.run("add server two 127.2.9.2").1);
    drop(peer);
    let cfg = app.running_config();
    assert!(cfg.contains("add server one") && cfg.contains("add server two"));
    let mode = std::fs::metadata(&app.socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.ok(), Some(0o600));
}

#[test]
fn help_prints_usage_from_the_grammar() {
    let dir = lab_dir();
    let app = Appliance::start(dir.path());
    let (out, ok) = app.run("help add lb vs");
    assert!(ok);
    assert!(
        out.starts_with("Usage: add lb vserver <name> <serviceType>"),
        "{out}"
    );
    assert!(
        out.contains("lbMethod = ( ROUNDROBIN | LEASTCONNECTION"),
        "{out}"
    );
}

#[test]
fn boot_leaves_out_only_the_line_the_engine_refuses() {
    // Another process holds the address one vserver wants: that line fails at boot, the rest
    // (including a second listening vserver) loads and serves, and nothing is lost from the file.
    let taken = std::net::TcpListener::bind("127.2.10.10:80").expect("bind");
    let dir = lab_dir();
    std::fs::write(
        dir.path().join("ns.conf"),
        "add server a 127.2.10.11\nadd service s1 a TCP 80\nadd lb vserver busy TCP 127.2.10.10 80\nadd lb vserver free TCP 127.2.10.20 80\nbind lb vserver free s1\n",
    )
    .expect("write");
    let mut app = Appliance::start(dir.path());
    app.wait_log(
        "ns.conf:3: ERROR: Address already in use",
        std::time::Duration::from_secs(1),
    );
    let cfg = app.running_config();
    assert!(
        cfg.contains("add lb vserver free TCP 127.2.10.20 80"),
        "{cfg}"
    );
    assert!(cfg.contains("bind lb vserver free s1"), "{cfg}");
    assert!(!cfg.contains("busy"), "{cfg}");
    assert!(
        std::net::TcpStream::connect("127.2.10.20:80").is_ok(),
        "the rest of the file serves"
    );
    drop(taken);
}
