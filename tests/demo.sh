#!/usr/bin/env bash
# Brindle's demo, on one machine, as root: installs what it needs (Debian/Ubuntu packages, and
# Rust with rustup if cargo is missing), builds, starts a 3-node cluster with a BIRD
# top-of-rack router in network namespaces (brindle-lab), adds pods and a Service, and shows
# what an operator would look at. Nothing is routed from or to the host's own network:
# the lab lives in namespaces it made, on 198.18.0.0/15 and 10.244.0.0/16.
#
#   tests/demo.sh            run it (again: a lab left from before is removed first)
#   tests/demo.sh --dual     the same cluster dual stack: IPv6 beside IPv4 everywhere
#                            (2001:db8::/32 underlay, fd00:10:244::/64 pods, namespaces only)
#   target/release/brindle-lab down    remove it
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "tests/demo.sh: run as root (it makes network namespaces)" >&2; exit 1; }
family=(); dual=
case "${1:-}" in
  "") ;;
  --dual) family=(--ip-family dual); dual=1 ;;
  *) echo "usage: tests/demo.sh [--dual]" >&2; exit 2 ;;
esac
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Runs a command, shows its output and passes it on. (Not `tee /dev/stderr`: that reopens
# the file behind stderr, and with `demo.sh > demo.log 2>&1` the reopen truncated the log.)
shown() { local out; out=$("$@") || return; printf '%s\n' "$out" >&2; printf '%s\n' "$out"; }

say "installing packages"
export DEBIAN_FRONTEND=noninteractive
packages=(etcd-server etcd-client protobuf-compiler libprotobuf-dev iproute2 iptables ipset
          bird2 python3 util-linux gcc libc6-dev pkg-config curl ca-certificates)
# BIRD must not start as a service on the host: the lab runs its own copies in namespaces.
made_policy=
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
  made_policy=1
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
[ -n "$made_policy" ] && rm -f /usr/sbin/policy-rc.d
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
  export PATH="$HOME/.cargo/bin:$PATH"
fi

say "building (release; the first build takes a few minutes)"
cargo build --release --locked --bins -p brindle-lab -p brindle-node -p brindle-cni \
  -p brindle-controller -p brindle-ctl
lab=target/release/brindle-lab
ctl=target/release/brindlectl
"$lab" down >/dev/null 2>&1 || true

say "brindle-lab up --nodes 3 --tor ${family[*]}"
"$lab" up --nodes 3 --tor "${family[@]}"

say "pods and a Service"
"$lab" pod add web-0 --node node-0 --label app=web
web1_out=$(shown "$lab" pod add web-1 --node node-1 --label app=web)
web1=$(sed -n 's/^pod .*: //p' <<<"$web1_out")
web1_6=$(sed -n 's/^  IPv6: //p' <<<"$web1_out")
"$lab" pod add client --node node-2
svc_out=$(shown "$lab" service add web --selector app=web --port 80:8080)
vip=$(sed -n 's/.*cluster IP //p' <<<"$svc_out")
vip6=$(sed -n 's/^  IPv6: //p' <<<"$svc_out")

status=$("$lab" status)
read -r -a flags <<<"$(sed -n 's/^brindlectl //p' <<<"$status")"
ns0=$(awk '/^ACCESS/{a=1} a && $1=="node-0"{print $2}' <<<"$status")
sock0=$(awk '/^ACCESS/{a=1} a && $1=="node-0"{print $3}' <<<"$status")

say "brindlectl node status (node-0: the other two nodes over BGP, through the rack's BIRD)"
"$ctl" node status --control-socket "$sock0"
say "brindlectl ipam show --show-blocks"
"$ctl" "${flags[@]}" ipam show --show-blocks
say "node-0: ip route show proto bird (the other nodes' /26 blocks, its own as a blackhole)"
ip netns exec "$ns0" ip route show proto bird
if [ -n "$dual" ]; then
  say "node-0: ip -6 route show proto bird (the other nodes' /122 IPv6 blocks, over IPv6 sessions)"
  ip netns exec "$ns0" ip -6 route show proto bird
fi

say "client (node-2) -> web-1 (node-1) $web1:8080, pod to pod"
"$lab" exec client -- python3 -c "import socket; s = socket.create_connection(('$web1', 8080), timeout=5); print(s.recv(128).decode().strip())"
say "client (node-2) -> Service web $vip:80 (DNAT to web-0 or web-1)"
# The agents program a new Service within a second or two of its EndpointSlice: retry briefly.
"$lab" exec client -- python3 -c "
import socket, time
for i in range(30):
    try:
        s = socket.create_connection(('$vip', 80), timeout=2); print(s.recv(128).decode().strip()); break
    except OSError as e:
        if i == 29: raise
        time.sleep(0.5)"
if [ -n "$dual" ]; then
  say "client -> web-1 [$web1_6]:8080 and -> Service web [$vip6]:80, over IPv6"
  "$lab" exec client -- python3 -c "
import socket, time
for addr, port in (('$web1_6', 8080), ('$vip6', 80)):
    for i in range(30):
        try:
            s = socket.create_connection((addr, port), timeout=2); print(s.recv(128).decode().strip()); break
        except OSError as e:
            if i == 29: raise
            time.sleep(0.5)"
fi

cat <<MSG

The lab is running. Explore:
  $lab status                                   nodes, sessions, pods, routes, access
  $lab exec client -- ip route                  any command in a pod's namespace
  ip netns exec $ns0 iptables-save -t nat | grep BRL-    the Service rules on node-0
  $ctl ${flags[*]} get ippools -o wide
  $lab pod add web-2 --node node-2 --label app=web
Tear down:
  $lab down
MSG
