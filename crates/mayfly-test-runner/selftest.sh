#!/bin/bash
# The boot test's stand-in runner (crates/mayfly-vm/tests/guest_boot.rs): started by mayfly-guest
# as GitHub's run.sh is — as user runner, the JIT config in ACTIONS_RUNNER_INPUT_JITCONFIG — it
# reports on the console (the VM's serial log) what the test asserts: what the real
# actions/runner needs and what jobs expect. It never prints the config itself.
say() { echo "SELFTEST $*"; }
root=$(cd "$(dirname "$0")" && pwd)

# The VM layer's owner-death tests need a job that runs until the VM is stopped from outside.
if [ "$ACTIONS_RUNNER_INPUT_JITCONFIG" = "selftest-hold" ]; then
    say "holding"
    exec sleep infinity
fi

say "kernel=$(uname -r)"
say "uid=$(id -u) gid=$(id -g) home=$HOME user=$USER pwd=$(pwd)"
say "groups=$(id -nG | tr ' ' ',')"
say "jitconfig-bytes=${#ACTIONS_RUNNER_INPUT_JITCONFIG}"
# The config is in the environment only, never in anyone's argv.
if grep -qa -- "$ACTIONS_RUNNER_INPUT_JITCONFIG" /proc/[0-9]*/cmdline 2>/dev/null; then
    say "jitconfig-in-argv=yes"
else
    say "jitconfig-in-argv=no"
fi
say "bash=${BASH_VERSINFO[0]}.${BASH_VERSINFO[1]}"
say "glibc=$(getconf GNU_LIBC_VERSION | awk '{ print $2 }')"
if python3 -c 'import ctypes; ctypes.CDLL("libicuuc.so.72"); ctypes.CDLL("libssl.so.3"); ctypes.CDLL("libkrb5.so.3"); ctypes.CDLL("libz.so.1")' 2>/dev/null; then
    say "runner-libraries=loadable"
else
    say "runner-libraries=missing"
fi
say "clock=$(date +%s)"
say "ImageOS=$ImageOS tool-cache=$RUNNER_TOOL_CACHE"
for tool in git curl wget tar gzip zstd unzip xz jq sudo ssh python3 docker; do
    command -v "$tool" >/dev/null || say "missing-tool=$tool"
done
say "git=$(git --version | awk '{ print $3 }')"

# The runner root is writable by the runner (it writes .runner, .credentials, _diag there).
if touch "$root/.selftest-probe" && rm "$root/.selftest-probe"; then
    say "runner-root-writable=yes"
else
    say "runner-root-writable=no"
fi
say "root-fs=$(awk '$2 == "/" { print $3 }' /proc/mounts)"
say "free-gib=$(df --output=avail -BG / | tail -n 1 | tr -dc 0-9)"

marker="mayfly-selftest-marker-$(cat /proc/sys/kernel/random/uuid)"
# Written to the scratch disk, and synced: the test then looks for it, in vain, in the host's
# file (the guest encrypts it).
for i in $(seq 1 64); do echo "$marker"; done > "$HOME/marker"
sudo cp "$HOME/marker" /usr/local/marker-by-root && sync
say "marker-written=$(head -n 1 "$HOME/marker")"
say "sudo-uid=$(sudo id -u)"

# The config port, found as the guest finds it; reading it again must yield nothing.
port=""
for d in /sys/class/virtio-ports/*; do
    [ "$(cat "$d/name" 2>/dev/null)" = org.mayfly.config ] && port="/dev/${d##*/}"
done
say "port=$port"
bytes=$(sudo timeout 3 cat "$port" 2>/tmp/second-read.err | wc -c)
say "second-read-bytes=$bytes ($(tr '\n' ' ' < /tmp/second-read.err))"

# The network, when the VM has one (the boot test runs without).
if [ -e /sys/class/net/eth0 ]; then
    say "eth0=$(ip -4 -o addr show dev eth0 | awk '{ print $4 }') route=$(ip route show default | head -n1 | awk '{ print $3 }') dns=$(awk '/^nameserver/ { print $2 }' /etc/resolv.conf | tr '\n' ' ')"
else
    say "eth0=none"
fi
say "done"
