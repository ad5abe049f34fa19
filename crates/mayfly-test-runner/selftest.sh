#!/bin/sh
# The boot test's stand-in runner (crates/mayfly-vm/tests/guest_boot.rs): started by mayfly-guest
# as `selftest.sh --jitconfig <config>` and as the runner user, it reports on the console (the
# VM's serial log) what the test asserts. It never prints the config itself.
say() { echo "SELFTEST $*"; }

say "kernel=$(uname -r)"
say "uid=$(id -u) gid=$(id -g) home=$HOME pwd=$(pwd)"
if [ "$1" = "--jitconfig" ] && [ -n "$2" ]; then
    say "jitconfig-bytes=${#2}"
fi

marker="mayfly-selftest-marker-$(cat /proc/sys/kernel/random/uuid)"
echo "$marker" > /home/runner/marker && say "marker-written=$(cat /home/runner/marker)"
say "sudo-uid=$(sudo id -u)"

# The config port, found as the guest finds it; reading it again must yield nothing.
port=""
for d in /sys/class/virtio-ports/*; do
    [ "$(cat "$d/name" 2>/dev/null)" = org.mayfly.config ] && port="/dev/${d##*/}"
done
say "port=$port"
bytes=$(sudo timeout 3 cat "$port" 2>/tmp/second-read.err | wc -c)
say "second-read-bytes=$bytes ($(tr '\n' ' ' < /tmp/second-read.err))"

# The base disk is read-only, even for root; scratch space is RAM.
if sudo touch /opt/runner/selftest-write 2>/dev/null; then
    say "opt-writable=yes"
else
    say "opt-writable=no"
fi
say "home-fs=$(awk '$2 == "/home" { print $3 }' /proc/mounts)"
say "work-fs=$(awk '$2 == "/opt/runner/_work" { print $3 }' /proc/mounts)"
# The network, when the VM has one (the boot test runs without).
if [ -e /sys/class/net/eth0 ]; then
    say "eth0=$(ip -4 -o addr show dev eth0 | awk '{ print $4 }') route=$(ip route show default | head -n1 | awk '{ print $3 }') dns=$(awk '/^nameserver/ { print $2 }' /etc/resolv.conf | tr '\n' ' ')"
else
    say "eth0=none"
fi
say "done"
