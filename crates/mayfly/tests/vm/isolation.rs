//! Two VMs at once, each job with root: neither reaches the other, the host's loopback (also
//! after the route_localnet bypass of DESIGN §5), the host's other addresses or
//! 169.254.169.254 — while the internet stand-in stays reachable (the positive control). The
//! config cannot be read a second time inside the guest.

use std::net::Ipv4Addr;
use std::time::Duration;

use mayfly_vm::{GuestConfig, GuestExit, NetworkMode, VmDriver, VmSpec};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::support::{driver, state_root, test_image, SimProcess};

const LABELS: [&str; 2] = ["self-hosted", "mayfly-linux-2cpu"];

/// A host listener that greets whoever connects with `banner`.
async fn greeter(addr: &str, banner: &'static str) -> u16 {
    let listener = TcpListener::bind(addr).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(banner.as_bytes()).await;
        }
    });
    port
}

fn host_main_addr() -> Ipv4Addr {
    let out = std::process::Command::new("ip")
        .args(["-4", "route", "get", "1.1.1.1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let src = text
        .split_whitespace()
        .skip_while(|w| *w != "src")
        .nth(1)
        .expect("a source address");
    src.parse().unwrap()
}

fn script(loop_port: u16, any_port: u16, host: Ipv4Addr, other: Ipv4Addr, inet: &str) -> String {
    let (inet_host, inet_port) = inet.rsplit_once(':').unwrap();
    format!(
        r#"# Probes are expected to fail: GitHub's `bash -eo pipefail` would end the script at the first.
set +eo pipefail
# netcat from the busybox mayfly's init leaves in the guest (Debian's image has none).
BB=/run/mayfly/busybox
GW=$(ip route | awk '/default/ {{print $3; exit}}')
echo "gateway $GW"
# In the background with its output elsewhere: the runner waits for the job's output to end.
(while true; do sudo $BB nc -l -p 7777 -e echo OTHER-VM-REACHED; done </dev/null >/dev/null 2>&1 &) ; sleep 1
# stdin stays open a while: busybox nc may stop reading the socket once its stdin ends.
probe() {{ out=$( (printf 'GET / HTTP/1.0\r\n\r\n'; sleep 3) | timeout 5 $BB nc $1 $2 2>/dev/null | head -c 200); echo "PROBE $1:$2 -> [$out]"; }}
probe {inet_host} {inet_port}
echo "SELF [$(timeout 5 $BB nc 127.0.0.1 7777 </dev/null 2>/dev/null)]"
probe 127.0.0.1 {loop_port}
probe {host} {any_port}
probe $GW {any_port}
probe {other} 7777
probe 169.254.169.254 80
# The bypass of DESIGN §5, as root: route 127.0.0.1 out of eth0.
sudo sh -c "echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet; echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet; ip link set lo down; ip route add 127.0.0.1/32 via $GW dev eth0 onlink" 2>&1
probe 127.0.0.1 {loop_port}
probe $GW {loop_port}
echo "SECOND-READ [$(for p in /dev/vport*; do sudo timeout 3 cat $p; done 2>/dev/null | head -c 300)]"
exit 0
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_root_guests_reach_the_internet_but_not_each_other_nor_the_host() {
    tokio::time::timeout(Duration::from_secs(400), async {
        let sim = SimProcess::start().await;
        let loop_port = greeter("127.0.0.1:0", "HOST-LOOPBACK-REACHED\n").await;
        let any_port = greeter("0.0.0.0:0", "HOST-ADDRESS-REACHED\n").await;
        let host = host_main_addr();
        let inet = sim
            .base
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();

        let root = state_root();
        let driver = driver(root.path(), NetworkMode::Isolated);
        let (_, image) = test_image();
        let spec = VmSpec {
            image,
            vcpus: 1,
            memory_mib: 512,
            disk_gib: 4,
        };
        let a = driver.create(&spec).await.unwrap();
        let b = driver.create(&spec).await.unwrap();
        let addr_a = driver.guest_addr(&a).await.unwrap();
        let addr_b = driver.guest_addr(&b).await.unwrap();
        assert_ne!(addr_a, addr_b);
        assert_ne!(mayfly_vm::vm_uid(&a), mayfly_vm::vm_uid(&b));

        // One organisation per VM: repository-scoped JIT configs bind each runner to its job.
        let (inst_a, repo_a) = sim.tenant("org-iso-a").await;
        let (inst_b, repo_b) = sim.tenant("org-iso-b").await;
        let job_a = sim
            .job(
                &repo_a,
                &LABELS,
                &script(loop_port, any_port, host, addr_b, &inet),
            )
            .await;
        let job_b = sim
            .job(
                &repo_b,
                &LABELS,
                &script(loop_port, any_port, host, addr_a, &inet),
            )
            .await;
        let jit_a = sim.jit(inst_a, &repo_a, "iso-a", &LABELS).await;
        let jit_b = sim.jit(inst_b, &repo_b, "iso-b", &LABELS).await;

        let run = |vm: mayfly_core::VmId, jit| {
            let driver = driver.clone();
            async move {
                driver.start(&vm).await.unwrap();
                driver
                    .wait_ready(&vm, Duration::from_secs(180))
                    .await
                    .unwrap();
                // Once the guest runs, QEMU is the VM's own uid, with no capabilities, not root.
                let pids = super::support::processes_mentioning(vm.as_str());
                let qemu = pids
                    .iter()
                    .find(|pid| {
                        std::fs::read_link(format!("/proc/{pid}/exe"))
                            .is_ok_and(|exe| exe.to_string_lossy().contains("qemu-system"))
                    })
                    .unwrap_or_else(|| panic!("no QEMU process for {vm}"));
                let status = std::fs::read_to_string(format!("/proc/{qemu}/status")).unwrap();
                let uid = mayfly_vm::vm_uid(&vm);
                let field = |name: &str| {
                    status
                        .lines()
                        .find(|l| l.starts_with(name))
                        .unwrap()
                        .split_whitespace()
                        .skip(1)
                        .collect::<Vec<_>>()
                };
                assert!(
                    field("Uid:").iter().all(|u| *u == uid.to_string()),
                    "{status}"
                );
                assert!(
                    field("Gid:").iter().all(|g| *g == uid.to_string()),
                    "{status}"
                );
                assert_eq!(field("CapEff:"), ["0000000000000000"], "{status}");
                assert_eq!(field("Seccomp:"), ["2"], "{status}");
                driver
                    .hand_over(
                        &vm,
                        GuestConfig {
                            jitconfig: jit,
                            run: "/home/runner/actions-runner/run.sh".into(),
                        },
                    )
                    .await
                    .unwrap();
                let exit = driver
                    .wait_exit(&vm, Duration::from_secs(240))
                    .await
                    .unwrap();
                let record = driver.destroy(&vm, "job finished").await;
                assert!(record.complete(), "{record:#?}");
                exit
            }
        };
        let (exit_a, exit_b) = tokio::join!(run(a, jit_a), run(b, jit_b));
        assert_eq!(exit_a, GuestExit::Exited { code: 0 });
        assert_eq!(exit_b, GuestExit::Exited { code: 0 });

        for job in [job_a, job_b] {
            let done = sim.job_state(job.id).await;
            let output = done.output.unwrap_or_default();
            assert!(
                output.contains(&format!("PROBE {inet} -> [HTTP/1")),
                "positive control failed:\n{output}"
            );
            let probes: Vec<&str> = output.lines().filter(|l| l.starts_with("PROBE")).collect();
            assert_eq!(probes.len(), 8, "every probe ran:\n{output}");
            for forbidden in [
                "HOST-LOOPBACK-REACHED",
                "HOST-ADDRESS-REACHED",
                "OTHER-VM-REACHED",
            ] {
                assert!(
                    !probes.iter().any(|p| p.contains(forbidden)),
                    "{forbidden}:\n{output}"
                );
            }
            assert!(
                output.contains("PROBE 169.254.169.254:80 -> []"),
                "{output}"
            );
            let second = output.split("SECOND-READ [").nth(1).unwrap_or_default();
            assert!(
                !second.contains("jitconfig"),
                "the config was readable twice:\n{output}"
            );
        }
        sim.stop().await;
    })
    .await
    .expect("test timed out");
}
