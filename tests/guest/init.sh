#!/bin/busybox sh
# /init of the attack suite's Linux guest (tests/root/guest_attack_test.cpp). The kernel command
# line chooses the scenario and every address; markers on the serial console ("VLG ...") tell
# the test how far the guest got and what it sent. The test decides what passed: the guest only
# acts and reports.
#
#   vlg.scenario=neighbour|mac|ip   vlg.dev_mac=  vlg.ip=  vlg.ip6=  vlg.ll6=  (the guest's own,
#   declared: MAC, IPv4, IPv6 and the MAC's EUI-64 link-local address)
#   vlg.peer=  vlg.peer6=  vlg.nbr_mac=  vlg.nbr_ip=  vlg.nbr_ip6=
#
#   vlg.scenario=console: no attack; answers every line typed on the serial console with
#   "VLG ECHO <line>" (root/console_test.cpp).
#
#   vlg.scenario=agent: no attack; a stand-in for qemu-guest-agent on the virtio-serial port
#   org.qemu.guest_agent.0 (root/guest_agent_test.cpp).
/bin/busybox mkdir -p /proc /sys /dev /bin /sbin /usr/bin /usr/sbin
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s

say() { echo "VLG $*" >/dev/console; }

for word in $(cat /proc/cmdline); do
  case $word in
    vlg.*=*) key=${word%%=*}; key=${key#vlg.}; eval "vlg_$key=\"${word#*=}\"" ;;
  esac
done

# The package ships no modules.dep: load in dependency order, retrying what failed until a
# round loads nothing new.
pending="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net virtio_console"
for round in 1 2 3 4 5 6 7 8; do
  left=""
  for m in $pending; do
    insmod /modules/$m.ko 2>/dev/null || left="$left $m"
  done
  pending=${left# }
  [ -z "$pending" ] && break
done
[ -n "$pending" ] && say "ERROR modules not loaded: $pending"

i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -e /sys/class/net/eth0 ] || { say "ERROR no eth0"; poweroff -f; }

# IPv6 only where the scenario asks for it: otherwise the kernel's own router solicitations
# and MLD reports would be frames the test did not script.
if [ -n "$vlg_ip6" ]; then
  echo 0 >/proc/sys/net/ipv6/conf/eth0/accept_ra
  # No DAD: the link-local address is usable at once, which keeps the honest pings of the
  # scenario from waiting for it. Reports the kernel still sends from "::" are honest too.
  echo 0 >/proc/sys/net/ipv6/conf/eth0/accept_dad
  # become() takes the link down; its IPv6 addresses must survive that.
  echo 1 >/proc/sys/net/ipv6/conf/eth0/keep_addr_on_down
else
  echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6
  echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6
fi
ip link set lo up
ip link set eth0 up
ip addr add "$vlg_ip/24" dev eth0
[ -n "$vlg_ip6" ] && ip -6 addr add "$vlg_ip6/64" dev eth0

# ping_peer LABEL [ping options]: one line saying whether the peer answered.
ping_peer() {
  label=$1
  shift
  if ping -c 3 -W 10 "$@" "$vlg_peer" >/dev/null 2>&1; then say "PING $label ok"; else say "PING $label fail"; fi
}
ping6_peer() {
  if ping6 -c 3 -W 10 "$vlg_peer6" >/dev/null 2>&1; then say "PING6 $1 ok"; else say "PING6 $1 fail"; fi
}

# become MAC IP: the guest takes another identity, as root in a guest can.
become() {
  ip link set eth0 down
  ip link set eth0 address "$1"
  ip -4 addr flush dev eth0 >/dev/null 2>&1
  ip addr add "$2/24" dev eth0
  ip link set eth0 up
  ip neigh flush dev eth0 >/dev/null 2>&1
}

attack() { say "ATTACK $*"; }
sent() { vlattack eth0 "$@" >/dev/console 2>&1; }

case $vlg_scenario in
  console)
    say READY
    while IFS= read -r line </dev/console; do
      say "ECHO $line"
    done
    ;;
  agent)
    # Answers guest-sync with its id and powers off on guest-shutdown, as qemu-guest-agent
    # does; ignores the rest. The port reads end-of-file while no host client is connected.
    port=
    for p in /sys/class/virtio-ports/*; do
      [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}
    done
    [ -n "$port" ] || { say "ERROR no guest agent port"; poweroff -f; }
    say READY
    exec 3<>"$port"
    while :; do
      while IFS= read -r line <&3; do
        case $line in
          *guest-sync*)
            id=$(echo "$line" | sed -n 's/.*"id": *\([0-9]*\).*/\1/p')
            say "AGENT sync $id"
            printf '{"return": %s}\n' "$id" >&3
            ;;
          *guest-shutdown*)
            say "AGENT shutdown"
            poweroff -f
            ;;
        esac
      done
      sleep 0.2
    done
    ;;
  neighbour)
    # The victim: answers pings; the test watches what reaches its tap.
    say READY
    while :; do sleep 3600; done
    ;;
  mac)
    ping_peer before
    say ATTACK-BEGIN
    attack "changed MAC"
    become 52:54:00:66:66:66 "$vlg_ip"
    ping -c 2 -W 2 "$vlg_peer" >/dev/null 2>&1
    attack "neighbour's MAC and IP"
    become "$vlg_nbr_mac" "$vlg_nbr_ip"
    arping -U -c 2 -I eth0 "$vlg_nbr_ip" >/dev/null 2>&1
    ping -c 2 -W 2 "$vlg_peer" >/dev/null 2>&1
    sleep 3  # the peer keeps pinging the neighbour meanwhile
    become "$vlg_dev_mac" "$vlg_ip"
    attack "forged ARP sender MAC"
    sent arp - 52:54:00:66:66:66 "$vlg_ip" "$vlg_peer" 5
    sent arp - "$vlg_nbr_mac" "$vlg_nbr_ip" "$vlg_peer" 5
    attack "802.1Q"
    sent vlan - 5 5
    sent vlan - 0 5
    attack "random source MACs"
    sent flood 2000
    say ATTACK-END
    ping_peer after
    ;;
  ip)
    ping_peer before
    ping6_peer before
    say ATTACK-BEGIN
    attack "forged IPv4 source"
    sent udp4 - 10.99.0.99 "$vlg_peer" 4444 4444 5
    sent udp4 - "$vlg_nbr_ip" "$vlg_peer" 4444 4444 5
    attack "forged ARP sender IP"
    sent arp - - "$vlg_nbr_ip" "$vlg_peer" 5
    sent arp - - 10.99.0.99 "$vlg_peer" 5
    attack "neighbour's IP with own MAC"
    become "$vlg_dev_mac" "$vlg_nbr_ip"
    arping -U -c 2 -I eth0 "$vlg_nbr_ip" >/dev/null 2>&1
    ping -c 2 -W 2 "$vlg_peer" >/dev/null 2>&1
    become "$vlg_dev_mac" "$vlg_ip"
    attack "DHCP server reply"
    sent udp4 - "$vlg_ip" 255.255.255.255 67 68 5
    attack "forged IPv6 source"
    sent udp6 - fd00::99 "$vlg_peer6" 4444 4444 5
    sent udp6 - "$vlg_nbr_ip6" ff02::1 4444 4444 5
    attack "NA for others' addresses"
    sent na - "$vlg_ll6" "$vlg_nbr_ip6" 5
    sent na - "$vlg_ll6" "$vlg_peer6" 5
    attack "RA"
    sent ra - "$vlg_ll6" 5
    attack "DHCPv6 server reply"
    sent udp6 - "$vlg_ll6" ff02::1 547 546 5
    say ATTACK-END
    ping_peer after
    ping6_peer after
    ;;
  *)
    say "ERROR unknown scenario '$vlg_scenario'"
    ;;
esac
say DONE
poweroff -f
