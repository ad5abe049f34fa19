//! Per-VM network isolation, tested for real as root without a VM: probes run inside a VM's
//! namespace, as `nobody` (how passt opens a guest's connections) and as root. Only successful
//! connects count (refused and dropped look alike), and every "unreachable" sits next to a
//! positive control that shows the probe could have succeeded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support {

    use std::future::Future;
    use std::process::Stdio;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use mayfly_vm::network::VmNetwork;
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpListener;
    use tokio::process::{Child, Command};

    pub const TEST_TIMEOUT: Duration = Duration::from_secs(90);

    /// Runs `body` with a timeout, then destroys every VM network with one of `indexes` (found
    /// through `leftovers()`, so this works even if the body panicked before keeping a record).
    pub async fn with_cleanup<F>(indexes: &[u32], body: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        require_root();
        let handle = tokio::spawn(body);
        let abort = handle.abort_handle();
        let result = tokio::time::timeout(TEST_TIMEOUT, handle).await;
        abort.abort();
        for record in VmNetwork::leftovers().await.unwrap_or_default() {
            if indexes.contains(&record.index) {
                VmNetwork::destroy(&record).await;
            }
        }
        match result {
            Err(_) => panic!("test timed out after {TEST_TIMEOUT:?}"),
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("test task failed: {e}"),
            Ok(Ok(())) => {}
        }
    }

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the network tests make namespaces and nftables rules: run them as root"
        );
    }

    /// A runtime dir under /run (reachable by `nobody`, unlike a 0700 dir in /tmp's children).
    pub fn runtime_dir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("mayfly-nettest-")
            .tempdir_in("/run")
            .unwrap()
    }

    /// Who makes the connection inside the namespace.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum As {
        /// uid 0 in the namespace (what an escape from QEMU would have).
        Root,
        /// uid 65534, which is how passt opens a guest's connections.
        Nobody,
    }

    /// Whether a TCP connect from inside `netns` to `host:port` succeeds within 3 s. Refused and
    /// dropped both give `false`; only `true` carries information.
    pub async fn connects(netns: &str, who: As, host: &str, port: u16) -> bool {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]);
        if who == As::Nobody {
            cmd.args([
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ]);
        }
        let script = format!("exec 3<>/dev/tcp/{host}/{port}");
        cmd.args(["timeout", "3", "bash", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        cmd.status().await.map(|s| s.success()).unwrap_or(false)
    }

    /// Runs many probes at once; returns `(label, connected)` in input order.
    pub async fn probe_all(probes: Vec<(String, String, As, String, u16)>) -> Vec<(String, bool)> {
        let mut set = tokio::task::JoinSet::new();
        for (i, (label, netns, who, host, port)) in probes.into_iter().enumerate() {
            set.spawn(async move { (i, label, connects(&netns, who, &host, port).await) });
        }
        let mut out = Vec::new();
        while let Some(done) = set.join_next().await {
            out.push(done.unwrap());
        }
        out.sort_by_key(|(i, _, _)| *i);
        out.into_iter().map(|(_, label, ok)| (label, ok)).collect()
    }

    /// A TCP listener in the test process (the host) that counts every connection it accepts.
    pub struct HostListener {
        pub port: u16,
        accepted: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl HostListener {
        pub async fn bind(addr: &str) -> Self {
            let listener = TcpListener::bind(addr).await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let accepted = Arc::new(AtomicUsize::new(0));
            let counter = accepted.clone();
            let task = tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    drop(stream);
                }
            });
            Self {
                port,
                accepted,
                task,
            }
        }

        pub fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }
    }

    impl Drop for HostListener {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    const LISTENER_PY: &str = concat!(
        "import socket,sys\n",
        "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n",
        "s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64); print('ready', flush=True)\n",
        "while True:\n",
        "    c,_=s.accept(); c.close()\n",
    );

    /// Starts a TCP listener on `bind:port` with `command` (an `ip netns exec …` command), and
    /// waits until it listens. Killed when the returned child is dropped.
    pub async fn spawn_listener(mut command: Command, bind: &str, port: u16) -> Child {
        command
            .args([
                "/usr/bin/python3",
                "-u",
                "-c",
                LISTENER_PY,
                bind,
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .expect("listener did not start within 10 s")
        .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "listener on {bind}:{port} failed to start"
        );
        child
    }

    /// A port unlikely to collide with other tests: derived from the test's first index.
    pub fn port_for(index: u32, n: u16) -> u16 {
        20000 + u16::try_from(index % 1000).unwrap() * 10 + n
    }

    /// Every IPv4 address of the host (the main interface, every VM link's host side, the
    /// stand-in link's host side); loopback excluded (the bypass test covers it).
    pub async fn host_ipv4_addrs() -> Vec<String> {
        let out = Command::new("ip")
            .args(["-4", "-o", "addr", "show"])
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
            .filter_map(|cidr| cidr.split('/').next())
            .filter(|a| !a.starts_with("127."))
            .map(str::to_owned)
            .collect()
    }

    /// The host's global IPv6 addresses.
    pub async fn host_ipv6_addrs() -> Vec<String> {
        let out = Command::new("ip")
            .args(["-6", "-o", "addr", "show", "scope", "global"])
            .output()
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet6").nth(1))
            .filter_map(|cidr| cidr.split('/').next())
            .map(str::to_owned)
            .collect()
    }

    /// Runs a command to completion and asserts it succeeded.
    pub async fn sh(program: &str, args: &[&str]) -> String {
        let out = Command::new(program).args(args).output().await.unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

use std::time::Duration;

use mayfly_vm::network::{InternetStandIn, NetworkError, NetworkRecord, NetworkSpec, VmNetwork};
use support::{
    connects, host_ipv4_addrs, host_ipv6_addrs, port_for, probe_all, sh, spawn_listener,
    with_cleanup, As, HostListener,
};

async fn create(index: u32, dir: &tempfile::TempDir) -> VmNetwork {
    let spec = NetworkSpec {
        index,
        runtime_dir: dir.path().to_owned(),
    };
    match VmNetwork::create(&spec).await {
        Ok(net) => net,
        Err(e) => panic!("create network {index}: {e}"),
    }
}

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// From inside VM A, as passt's user and as root: the internet stand-in answers; no address of
/// the host, nothing in VM B, not the metadata address, not A's own namespace services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_reaches_the_internet_and_nothing_else() {
    const A: u32 = 16301;
    const B: u32 = 16302;
    with_cleanup(&[A, B], async {
        let inet = InternetStandIn::ensure().await.unwrap();
        let (dir_a, dir_b) = (support::runtime_dir(), support::runtime_dir());
        let a = create(A, &dir_a).await;
        let b = create(B, &dir_b).await;
        let (p_inet, p_b, p_a) = (port_for(A, 1), port_for(A, 2), port_for(A, 3));

        // Listeners: on every host address (v4 and v6), in the stand-in (also answering as the
        // metadata address, routed there from the host), in B's namespace and in A's own.
        let host = HostListener::bind("[::]:0").await;
        let _inet_srv = spawn_listener(inet.command("env"), "0.0.0.0", p_inet).await;
        let _b_srv = spawn_listener(b.command("env"), "0.0.0.0", p_b).await;
        let _a_srv = spawn_listener(a.command("env"), "0.0.0.0", p_a).await;
        let _ = sh("ip", &["-n", inet.netns(), "addr", "replace", "169.254.169.254/32", "dev", "eth0"]).await;
        sh("ip", &["route", "replace", "169.254.169.254/32", "via", &inet.addr().to_string()]).await;

        // The listeners work: the host reaches the stand-in's, B reaches its own.
        assert!(connects(b.netns(), As::Root, &b.guest_addr().to_string(), p_b).await, "control: B's listener");
        for (addr, port) in [(inet.addr().to_string(), p_inet), ("169.254.169.254".to_owned(), p_inet)] {
            let ok = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect((addr.as_str(), port)))
                .await
                .is_ok_and(|r| r.is_ok());
            assert!(ok, "control: the host cannot reach {addr}:{port}; the probes below would prove nothing");
        }

        let ns = a.netns().to_owned();
        let mut probes = Vec::new();
        for who in [As::Nobody, As::Root] {
            let mut add = |label: &str, host: String, port: u16| {
                probes.push((format!("{label} as {who:?}"), ns.clone(), who, host, port));
            };
            add("internet stand-in", inet.addr().to_string(), p_inet);
            add("metadata 169.254.169.254", "169.254.169.254".to_owned(), p_inet);
            add("VM B's namespace", b.guest_addr().to_string(), p_b);
            for addr in host_ipv4_addrs().await {
                add(&format!("host address {addr}"), addr, host.port);
            }
            for addr in host_ipv6_addrs().await {
                add(&format!("host address [{addr}]"), addr, host.port);
            }
        }
        for addr in ["127.0.0.1".to_owned(), a.guest_addr().to_string()] {
            probes.push((format!("A's own {addr} as Nobody"), ns.clone(), As::Nobody, addr.clone(), p_a));
            probes.push((format!("A's own {addr} as Root"), ns.clone(), As::Root, addr, p_a));
        }
        let results = probe_all(probes).await;
        let _ = sh("ip", &["route", "del", "169.254.169.254/32"]).await;

        let expect_reachable = |label: &str| label.starts_with("internet stand-in") || label.ends_with("as Root") && label.starts_with("A's own");
        let wrong: Vec<_> = results.iter().filter(|(label, ok)| *ok != expect_reachable(label)).collect();
        assert!(wrong.is_empty(), "unexpected reachability (label, connected): {wrong:?}\nall: {results:?}");
        assert_eq!(host.accepted(), 0, "a connection from the VM namespace reached the host");
        // Nothing new may enter a VM: not from the "internet", not from another VM.
        assert!(!connects(inet.netns(), As::Root, &a.guest_addr().to_string(), p_a).await, "stand-in reached VM A");
        assert!(!connects(b.netns(), As::Root, &a.guest_addr().to_string(), p_a).await, "VM B reached VM A");
        drop((dir_a, dir_b));
    })
    .await;
}

/// DESIGN.md §5's bypass: with route_localnet=1, loopback down and 127.0.0.1 routed out via the
/// gateway, the host's 127.0.0.1 listener still hears nothing, even with the host's own
/// martian filter on the VM link turned off (so nftables is what stops it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_localnet_bypass_does_not_reach_host_loopback() {
    const C: u32 = 16303;
    with_cleanup(&[C], async {
        let inet = InternetStandIn::ensure().await.unwrap();
        let dir = support::runtime_dir();
        let c = create(C, &dir).await;
        let p_inet = port_for(C, 1);
        let _inet_srv = spawn_listener(inet.command("env"), "0.0.0.0", p_inet).await;
        let host = HostListener::bind("127.0.0.1:0").await;
        let gw = c.host_addr().to_string();
        let ns = c.netns();
        let host_knob = format!("net.ipv4.conf.{}.route_localnet=1", c.host_veth());
        sh("sysctl", &["-q", "-w", &host_knob]).await;
        sh(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.conf.all.route_localnet=1",
                "net.ipv4.conf.eth0.route_localnet=1",
            ],
        )
        .await;
        sh("ip", &["-n", ns, "link", "set", "lo", "down"]).await;
        // While 127.0.0.1 is one of its own addresses, the namespace drops the host's replies
        // from 127.0.0.1 as martians; a root guest removes it too (checked: with the host's
        // INPUT rule turned into accept, this exact sequence connects).
        sh("ip", &["-n", ns, "addr", "del", "127.0.0.1/8", "dev", "lo"]).await;
        sh(
            "ip",
            &[
                "-n",
                ns,
                "route",
                "add",
                "127.0.0.1/32",
                "via",
                &gw,
                "dev",
                "eth0",
            ],
        )
        .await;
        let route = sh("ip", &["-n", ns, "route", "get", "127.0.0.1"]).await;
        assert!(
            route.contains("eth0"),
            "the bypass route is not in effect: {route}"
        );

        for who in [As::Nobody, As::Root] {
            assert!(
                connects(ns, who, &inet.addr().to_string(), p_inet).await,
                "control: stand-in unreachable as {who:?}"
            );
            assert!(
                !connects(ns, who, "127.0.0.1", host.port).await,
                "host loopback reached as {who:?}"
            );
        }
        assert_eq!(host.accepted(), 0);
        drop(dir);
    })
    .await;
}

/// `create` makes the namespace, the veth, passt and its socket, with nothing listening in the
/// namespace but passt's unix socket; `destroy` removes all of it, and a second `destroy` is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_destroy_leaves_nothing() {
    const D: u32 = 16304;
    with_cleanup(&[D], async {
        let dir = support::runtime_dir();
        let net = create(D, &dir).await;
        let record = net.record();
        let pid = net.passt_pid();
        assert_eq!(net.netns(), "mayfly-vm-16304");
        assert_eq!(net.host_veth(), "mfv16304");
        assert!(netns_exists(net.netns()) && link_exists(net.host_veth()));
        assert!(process_alive(pid), "passt {pid} is not running");
        assert!(net.socket_path().exists());
        let args = net.qemu_args().join(" ");
        assert!(
            args.contains(&format!("addr.path={}", net.socket_path().display())),
            "{args}"
        );

        let inet_listeners = sh("ip", &["netns", "exec", net.netns(), "ss", "-Htuln"]).await;
        assert!(
            inet_listeners.trim().is_empty(),
            "something listens in the namespace: {inet_listeners}"
        );
        let unix = sh("ip", &["netns", "exec", net.netns(), "ss", "-Hxl"]).await;
        let unix: Vec<&str> = unix.lines().collect();
        assert_eq!(unix.len(), 1, "only passt's socket may listen: {unix:?}");
        assert!(
            unix[0].contains(&*net.socket_path().to_string_lossy()),
            "{unix:?}"
        );

        // The same index again is refused, and the refusal leaves the live network alone.
        let again = VmNetwork::create(&NetworkSpec {
            index: D,
            runtime_dir: support::runtime_dir().path().to_owned(),
        })
        .await;
        assert!(
            matches!(again, Err(NetworkError::InUse { .. })),
            "{again:?}"
        );
        assert!(process_alive(pid) && netns_exists(net.netns()) && link_exists(net.host_veth()));

        // The record survives a round trip through the caller's state file.
        let json = serde_json::to_string(&record).unwrap();
        let record: NetworkRecord = serde_json::from_str(&json).unwrap();

        let steps = VmNetwork::destroy(&record).await;
        assert!(steps.iter().all(|s| s.ok), "{steps:?}");
        assert!(!netns_exists("mayfly-vm-16304"), "netns left behind");
        assert!(!link_exists("mfv16304"), "veth left behind");
        assert!(!process_alive(pid), "passt {pid} left running");
        assert!(
            !dir.path().join("passt").exists(),
            "passt's directory left behind"
        );
        let steps = VmNetwork::destroy(&record).await;
        assert!(steps.iter().all(|s| s.ok), "second destroy: {steps:?}");
    })
    .await;
}

/// A network whose owner dropped it without destroying it (a crash) is found by `leftovers()`,
/// and destroying what it returns stops passt too, though the record knows no pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_finds_a_forgotten_network_and_destroy_cleans_it() {
    const E: u32 = 16305;
    with_cleanup(&[E], async {
        let dir = support::runtime_dir();
        let pid = create(E, &dir).await.passt_pid();
        let found = VmNetwork::leftovers().await.unwrap();
        let record = found
            .into_iter()
            .find(|r| r.index == E)
            .expect("leftovers() missed the forgotten network");
        assert_eq!(record.netns, "mayfly-vm-16305");
        assert_eq!(record.passt_pid, None);
        let steps = VmNetwork::destroy(&record).await;
        assert!(steps.iter().all(|s| s.ok), "{steps:?}");
        assert!(!process_alive(pid), "passt {pid} survived the reaper");
        assert!(!netns_exists("mayfly-vm-16305") && !link_exists("mfv16305"));
        assert!(!VmNetwork::leftovers()
            .await
            .unwrap()
            .iter()
            .any(|r| r.index == E));
    })
    .await;
}

/// A create that fails halfway undoes what it made, and its error names the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_leaves_nothing_and_says_why() {
    const F: u32 = 16306;
    with_cleanup(&[F], async {
        // passt (as nobody) could not reach a socket under a 0700 directory.
        let closed = tempfile::Builder::new()
            .prefix("mayfly-nettest-closed-")
            .tempdir_in("/run")
            .unwrap();
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o700);
        std::fs::set_permissions(closed.path(), mode).unwrap();
        let spec = NetworkSpec {
            index: F,
            runtime_dir: closed.path().join("vm"),
        };
        let err = VmNetwork::create(&spec)
            .await
            .expect_err("create under a 0700 dir must fail");
        assert!(
            err.to_string().contains("chmod o+x"),
            "the error does not name the fix: {err}"
        );
        assert!(
            !netns_exists("mayfly-vm-16306") && !link_exists("mfv16306"),
            "half-made network left"
        );

        // The runtime dir cannot even be made (its parent is a file).
        let file = tempfile::NamedTempFile::new_in("/run").unwrap();
        let spec = NetworkSpec {
            index: F,
            runtime_dir: file.path().join("vm"),
        };
        assert!(VmNetwork::create(&spec).await.is_err());
        assert!(
            !netns_exists("mayfly-vm-16306") && !link_exists("mfv16306"),
            "half-made network left"
        );

        let spec = NetworkSpec {
            index: 0,
            runtime_dir: support::runtime_dir().path().to_owned(),
        };
        assert!(matches!(
            VmNetwork::create(&spec).await,
            Err(NetworkError::InvalidIndex { index: 0 })
        ));
    })
    .await;
}

/// QEMU started the way the driver will start it (`ip netns exec <netns>` + `qemu_args()`)
/// connects to passt's socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_connects_to_passt_with_qemu_args() {
    const G: u32 = 16307;
    with_cleanup(&[G], async {
        let dir = support::runtime_dir();
        let net = create(G, &dir).await;
        let mut qemu = net.command("qemu-system-x86_64");
        qemu.args([
            "-M",
            "q35",
            "-accel",
            "tcg",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-m",
            "64",
        ])
        .args(net.qemu_args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
        let mut child = qemu.spawn().expect("qemu-system-x86_64 is not installed");
        let socket = net.socket_path().to_string_lossy().into_owned();
        let mut connected = false;
        for _ in 0..100 {
            if let Some(status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().await.unwrap();
                panic!(
                    "qemu exited ({status}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let estab = sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    net.netns(),
                    "ss",
                    "-Hx",
                    "state",
                    "connected",
                ],
            )
            .await;
            if estab.contains(&socket) {
                connected = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(connected, "QEMU never connected to {socket}");
        child.kill().await.unwrap();
        let steps = VmNetwork::destroy(&net.record()).await;
        assert!(steps.iter().all(|s| s.ok), "{steps:?}");
    })
    .await;
}
