#!/usr/bin/env bash
# Builds a Debian 12 vagrant-libvirt box from Debian packages only (debootstrap from a Debian
# mirror the host reaches), for hosts that cannot download debian/bookworm64 from Vagrant Cloud.
#
#   mkbox.sh OUT.box [MIRROR] [SECURITY_MIRROR]     (root; needs debootstrap, parted, qemu-img)
#
# What a stock box gives Vagrant and this one does too: user vagrant (password vagrant, sudo
# without password, Vagrant's insecure public key, which vagrant replaces at first boot), sshd,
# DHCP on eth0 (systemd-networkd, which vagrant's Debian guest plugin also uses for the private
# network), rsync for the synced folders, grub on a serial console. Host keys and machine-id are
# made at each VM's first boot. No proxy is baked in: the Vagrantfile's apt_proxy sets it.
#
# Containers without udev (like CI machines) need three workarounds, marked "no udev" below.
set -euo pipefail
out=$(realpath -m "$1")
mirror=${2:-$(awk '/^URIs:/ && !/security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
security=${3:-$(awk '/^URIs:/ && /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)}
mirror=${mirror:-http://deb.debian.org/debian}
security=${security:-http://deb.debian.org/debian-security}
tmp=$(mktemp -d "$(dirname "$out")/mkbox.XXXXXX")
root=$tmp/root loop="" uuid=""
cleanup() {   # always: unmount, free the loop device, drop the work folder
  for d in sys proc dev/pts dev ""; do mountpoint -q "$root/$d" 2>/dev/null && umount -l "$root/$d"; done
  [ -n "$uuid" ] && rm -f "/dev/disk/by-uuid/$uuid"
  rmdir /dev/disk/by-uuid /dev/disk 2>/dev/null || true
  [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

echo "==> disk image (8 GiB sparse, one ext4 partition)"
truncate -s 8G "$tmp/disk.raw"
parted -s "$tmp/disk.raw" mklabel msdos mkpart primary ext4 1MiB 100% set 1 boot on
loop=$(losetup -fP --show "$tmp/disk.raw")
for _ in $(seq 10); do   # no udev: the partition node may need asking for
  [ -b "${loop}p1" ] && break
  partx -a "$loop" 2>/dev/null || blockdev --rereadpt "$loop" 2>/dev/null || true
  sleep 0.5
done
[ -b "${loop}p1" ] || { echo "mkbox.sh: no partition device for $loop" >&2; exit 1; }
mkfs.ext4 -q -L kproxy-root "${loop}p1"
mkdir -p "$root"; mount "${loop}p1" "$root"
uuid=$(blkid -s UUID -o value "${loop}p1")

echo "==> debootstrap bookworm from $mirror"
debootstrap --variant=minbase \
  --include=systemd-sysv,udev,kmod,dbus,iproute2,netbase,openssh-server,sudo,rsync,ca-certificates,procps,linux-image-cloud-amd64,grub-pc,initramfs-tools \
  bookworm "$root" "$mirror" >"$tmp/debootstrap.log" 2>&1 || { tail -20 "$tmp/debootstrap.log" >&2; exit 1; }

echo "==> configure"
echo "UUID=$uuid / ext4 errors=remount-ro 0 1" > "$root/etc/fstab"
echo kproxy-box > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 kproxy-box\n' > "$root/etc/hosts"
printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n' > "$root/etc/systemd/network/99-eth0-dhcp.network"
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
  "$mirror" "$mirror" "$security" > "$root/etc/apt/sources.list"
sed -i -e 's/^GRUB_TIMEOUT=.*/GRUB_TIMEOUT=1/' \
  -e 's/^GRUB_CMDLINE_LINUX_DEFAULT=.*/GRUB_CMDLINE_LINUX_DEFAULT=""/' \
  -e 's/^GRUB_CMDLINE_LINUX=.*/GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200 net.ifnames=0 biosdevname=0"/' \
  "$root/etc/default/grub"
for d in dev dev/pts proc sys; do mount --bind "/$d" "$root/$d"; done
mkdir -p /dev/disk/by-uuid   # no udev: grub-probe looks the root up here
ln -sf "../../${loop#/dev/}p1" "/dev/disk/by-uuid/$uuid"
chroot "$root" /bin/bash -euc "
  systemctl enable systemd-networkd ssh
  systemctl mask systemd-networkd-wait-online.service
  useradd -m -s /bin/bash -U vagrant
  echo vagrant:vagrant | chpasswd
  echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/vagrant; chmod 440 /etc/sudoers.d/vagrant
  install -d -m 700 -o vagrant -g vagrant /home/vagrant/.ssh
  echo 'UseDNS no' > /etc/ssh/sshd_config.d/vagrant.conf
  grub-install --target=i386-pc $loop
  update-grub
  apt-get clean
" >"$tmp/chroot.log" 2>&1 || { tail -20 "$tmp/chroot.log" >&2; exit 1; }
grep -q "root=UUID=$uuid" "$root/boot/grub/grub.cfg" || { echo "mkbox.sh: grub.cfg does not boot UUID=$uuid" >&2; exit 1; }
# DNS: libvirt's dnsmasq on the management network's gateway, handed out by DHCP
[ -L "$root/etc/resolv.conf" ] || echo 'nameserver 192.168.121.1' > "$root/etc/resolv.conf"
key=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -1)
[ -n "$key" ] || key=$(ls /usr/lib/ruby/vendor_ruby/vagrant/keys/vagrant.pub /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -1)
[ -n "$key" ] || { echo "mkbox.sh: Vagrant's insecure public key not found (is vagrant installed?)" >&2; exit 1; }
install -m 600 -o 1000 -g 1000 "$key" "$root/home/vagrant/.ssh/authorized_keys"
: > "$root/etc/machine-id"; rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_*
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
mkdir -p "$root/etc/systemd/system/ssh.service.d"   # this VM's own host keys, at its first boot
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
  > "$root/etc/systemd/system/ssh.service.d/hostkeys.conf"
for d in sys proc dev/pts dev; do umount "$root/$d"; done
umount "$root"; losetup -d "$loop"; loop=""

echo "==> qcow2 and box"
qemu-img convert -c -O qcow2 "$tmp/disk.raw" "$tmp/box.img"; rm -f "$tmp/disk.raw"
echo '{"provider": "libvirt", "format": "qcow2", "virtual_size": 8}' > "$tmp/metadata.json"
printf 'Vagrant.configure("2") do |config|\n  config.vm.provider :libvirt do |lv|\n    lv.disk_bus = "virtio"\n  end\nend\n' > "$tmp/Vagrantfile"
tar -C "$tmp" -cf "$out.part" metadata.json Vagrantfile box.img
mv "$out.part" "$out"
echo "==> $out ($(du -h "$out" | cut -f1))"
