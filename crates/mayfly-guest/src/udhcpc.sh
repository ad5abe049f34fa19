#!/bin/sh
# udhcpc event script of mayfly-guest: sets eth0's address, the default route and the resolver
# from the lease that passt hands out.
bb=/bin/busybox
case "$1" in
    deconfig)
        $bb ip -4 addr flush dev "$interface"
        $bb ip link set "$interface" up
        ;;
    bound|renew)
        $bb ip -4 addr flush dev "$interface"
        $bb ip addr add "$ip/${mask:-24}" ${broadcast:+broadcast "$broadcast"} dev "$interface"
        for r in $router; do
            $bb ip route replace default via "$r" dev "$interface"
            break
        done
        conf=${RESOLV_CONF:-/etc/resolv.conf}
        : > "$conf"
        [ -n "$domain" ] && echo "search $domain" >> "$conf"
        for d in $dns; do
            echo "nameserver $d" >> "$conf"
        done
        ;;
esac
exit 0
