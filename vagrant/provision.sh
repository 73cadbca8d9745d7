#!/usr/bin/env bash
# Provisions one node of the Vagrant lab (run as root by the Vagrantfile; safe to run again):
# installs kproxy at /opt/kproxy with the same scripts/setup as the emulated lab and CI, then
# runs it under systemd: etcd + the controller on the first node, an agent on every node.
#
#   provision.sh NODE NODE_IP FIRST_NODE_IP INDEX NODES [PROXY_MODE]
#     e.g. node-2 192.168.56.12 192.168.56.11 2 3 nftables   (PROXY_MODE: iptables, the default, or nftables:
#     the agent's kube-proxy mode, passed to `kproxy units --proxy-mode`, as the emulated lab's agents get it)
#
# KPROXY_DRY_RUN=1 prints the `kproxy units` arguments and exits (the unit tests use it).
set -euo pipefail

if [ $# -ne 5 ] && [ $# -ne 6 ]; then
  echo "usage: $0 NODE NODE_IP FIRST_NODE_IP INDEX NODES [PROXY_MODE]" >&2
  exit 2
fi
node=$1 node_ip=$2 first_ip=$3 index=$4 nodes=$5 proxy_mode=${6:-iptables}
case "$proxy_mode" in
  iptables|nftables) ;;
  *) echo "provision.sh: PROXY_MODE must be iptables or nftables, not $proxy_mode" >&2; exit 2 ;;
esac
src=${KPROXY_SRC:-/vagrant}       # the repository, synced by Vagrant
dest=/opt/kproxy                  # a copy with its own venv: a re-sync never breaks the running lab
state=/var/lib/kproxy
pod_cidr="10.244.${index}.0/24"   # as the emulated lab: node N gets 10.244.N.0/24 of 10.244.0.0/16
if [ "$node_ip" = "$first_ip" ]; then role=--control-plane; else role=--no-control-plane; fi

units_args=(units --node "$node" --node-ip "$node_ip" --first-node-ip "$first_ip" --pod-cidr "$pod_cidr"
            "$role" --state-dir "$state" --manifests "$state/manifests" --kproxy "$dest/.venv/bin/kproxy"
            --proxy-mode "$proxy_mode")
if [ -n "${KPROXY_DRY_RUN:-}" ]; then
  printf '%s\n' "${units_args[@]}"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "provision.sh: run as root" >&2
  exit 1
fi
echo "==> $node ($index of $nodes): $node_ip, pods $pod_cidr, store https://$first_ip:2379, $proxy_mode mode"
# The lab CA, made on the host by the Vagrantfile and synced with the repository
ca_dir="$src/vagrant/.pki"
if [ ! -s "$ca_dir/ca.crt" ] || [ ! -s "$ca_dir/ca.key" ]; then
  echo "provision.sh: no lab CA in $ca_dir (the Vagrantfile makes it at \`vagrant up\`; then \`vagrant rsync\`)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
command -v rsync >/dev/null || { apt-get update -q; apt-get install -y -q rsync; }
mkdir -p "$dest"
# excluded paths are also kept on the receiver, so the venv survives a re-provision
rsync -a --delete --exclude .venv/ --exclude .git/ --exclude .vagrant/ --exclude results/ \
  --exclude __pycache__/ --exclude /vagrant/.pki/ "$src"/ "$dest"/
bash "$dest/scripts/setup"

# Debian's etcd-server starts its own etcd on 127.0.0.1:2379: ours replaces it (on every node,
# so nothing answers on that port but the first node's kproxy-etcd)
systemctl disable --now etcd.service 2>/dev/null || true

# the units, and this node's certificates in $state/pki (0700) from the lab CA
"$dest/.venv/bin/kproxy" "${units_args[@]}" --ca-from "$ca_dir" --write /etc/systemd/system
units=(kproxy-agent.service)
[ "$role" = --control-plane ] && units=(kproxy-etcd.service kproxy-controller.service kproxy-agent.service)
systemctl daemon-reload
systemctl enable "${units[@]}"
systemctl restart "${units[@]}"   # = `enable --now` the first time; a re-provision runs the new code

cat > /etc/profile.d/kproxy.sh <<EOF
export PATH="$dest/.venv/bin:\$PATH"
export KPROXY_STATE_DIR=$state
EOF
# sudo resets PATH (secure_path) and skips profile.d: make `sudo kproxy ...` work too
ln -sf "$dest/.venv/bin/kproxy" /usr/local/bin/kproxy

echo "==> waiting for $node to be Ready (its agent needs the first node's etcd)"
ready='$1 == n && $2 == "Ready" {ok = 1} END {exit !ok}'
for _ in $(seq 300); do
  if "$dest/.venv/bin/kproxy" get nodes 2>/dev/null | awk -v n="$node" "$ready"; then
    "$dest/.venv/bin/kproxy" get nodes
    exit 0
  fi
  sleep 1
done
echo "warning: $node is not Ready after 300 s; see: journalctl -u 'kproxy-*'" >&2
journalctl -u 'kproxy-*' -n 30 --no-pager >&2 || true
