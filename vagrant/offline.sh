#!/usr/bin/env bash
# The offline classroom's part of a VM's set-up (run as root by the Vagrantfile before
# provision.sh, only when one of these settings is given; README.md, "Offline classroom"):
#
#   offline.sh APT_PROXY PIP_INDEX WHEELHOUSE
#     APT_PROXY   e.g. http://192.168.121.1:3142: apt-get (provision.sh's scripts/setup) fetches
#                 Debian packages through it (the host's apt-cacher-ng) instead of the Internet
#     PIP_INDEX   e.g. http://192.168.121.1:3141/simple/: pip's index instead of PyPI
#     WHEELHOUSE  a folder in the VM with wheels (synced from the host): pip installs only from it,
#                 or from it first when PIP_INDEX is also given
#   Empty arguments remove what an earlier run wrote. KPROXY_ROOT (tests) is a folder standing for /.
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: $0 APT_PROXY PIP_INDEX WHEELHOUSE" >&2
  exit 2
fi
apt_proxy=$1 pip_index=$2 wheelhouse=$3
root=${KPROXY_ROOT:-}
apt_conf=$root/etc/apt/apt.conf.d/01kproxy-proxy
pip_conf=$root/etc/pip.conf            # pip's site-wide file: read by every pip, venvs' too
marker="# written by kproxy's vagrant/offline.sh"

case "$apt_proxy" in
  ""|http://*|https://*) ;;
  *) echo "offline.sh: APT_PROXY must be an http(s):// URL, not $apt_proxy" >&2; exit 2 ;;
esac
case "$pip_index" in
  ""|http://*|https://*) ;;
  *) echo "offline.sh: PIP_INDEX must be an http(s):// URL, not $pip_index" >&2; exit 2 ;;
esac
if [ -n "$wheelhouse" ] && ! compgen -G "$root$wheelhouse/*.whl" >/dev/null; then
  echo "offline.sh: no wheels in $wheelhouse (is the wheelhouse synced? \`vagrant rsync\`)" >&2
  exit 1
fi

mkdir -p "$(dirname "$apt_conf")"
if [ -n "$apt_proxy" ]; then
  printf '%s\nAcquire::http::Proxy "%s";\n' "$marker" "$apt_proxy" > "$apt_conf"
  echo "==> apt through $apt_proxy"
else
  rm -f "$apt_conf"
fi

if [ -n "$pip_index$wheelhouse" ]; then
  [ -f "$pip_conf" ] && ! grep -qxF "$marker" "$pip_conf" && cp "$pip_conf" "$pip_conf.kproxy-orig"
  {
    echo "$marker"
    echo "[global]"
    if [ -n "$wheelhouse" ]; then
      echo "find-links = $wheelhouse"
      [ -n "$pip_index" ] || echo "no-index = true"
    fi
    if [ -n "$pip_index" ]; then
      echo "index-url = $pip_index"
      host=${pip_index#*://}; host=${host%%/*}; host=${host%%:*}
      [ "${pip_index%%://*}" = http ] && echo "trusted-host = $host"
    fi
  } > "$pip_conf"
  echo "==> pip from ${wheelhouse:+the wheelhouse $wheelhouse}${wheelhouse:+${pip_index:+ and }}${pip_index}"
elif [ -f "$pip_conf" ] && grep -qxF "$marker" "$pip_conf"; then
  rm -f "$pip_conf"
  [ -f "$pip_conf.kproxy-orig" ] && mv "$pip_conf.kproxy-orig" "$pip_conf"
fi
exit 0
