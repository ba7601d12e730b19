# Sourced by packaging/check-clean-install, packaging/vmtest and docker/lab (bash).

# deb_depends DEB: the package's Depends as a comma-separated list for mmdebstrap --include
# (versions and alternatives dropped: Debian 12 satisfies the first of each).
deb_depends() {
  dpkg-deb -f "$1" Depends | sed -e 's/([^)]*)//g' -e 's/|[^,]*//g' -e 's/ //g'
}

# apt_sources: this machine's own apt sources files that name a Debian 12 suite (bookworm,
# bookworm-updates, bookworm-security...), one path a line; or $DVPN_APT_SOURCES (a sources
# file, one-line or deb822) where the machine's apt is not a Debian 12 one.
apt_sources() {
  if [ -n "${DVPN_APT_SOURCES:-}" ]; then
    [ -s "$DVPN_APT_SOURCES" ] || { echo "DVPN_APT_SOURCES=$DVPN_APT_SOURCES: no such file, or empty" >&2; return 1; }
    printf '%s\n' "$DVPN_APT_SOURCES"; return 0
  fi
  local f found=0
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -s "$f" ] || continue
    if grep -v '^[[:space:]]*#' "$f" | grep -qE '(^|[[:space:]])bookworm(-[a-z]+)?([[:space:]]|$)'; then
      printf '%s\n' "$f"; found=1
    fi
  done
  [ "$found" = 1 ] || { echo "no apt source on this machine names bookworm (/etc/apt/sources.list{,.d}): set DVPN_APT_SOURCES to a Debian 12 sources file" >&2; return 1; }
}

# bookworm_tree TARGET [MMDEBSTRAP OPTIONS...]: a Debian 12 tree (a directory, or a tarball
# when TARGET ends in .tar, or - for stdout), apt variant, from the mirrors this machine's own
# apt uses (mmdebstrap pastes each sources file given as a mirror into the tree's sources).
bookworm_tree() {
  local target=$1; shift
  local sources
  sources=$(apt_sources) || return 1
  local -a mirrors
  mapfile -t mirrors <<<"$sources"
  mmdebstrap --quiet --variant=apt "$@" bookworm "$target" "${mirrors[@]}"
}

# apt_need PACKAGE...: install those missing, refreshing the package lists first (a fresh
# machine may have none). No service is started: a temporary policy-rc.d refuses it (docker.io
# would otherwise start dockerd in this machine's own network namespace under systemd).
apt_need() {
  local p missing=() made=0
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "installing: ${missing[*]}"
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made=1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$made" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}

# --- the VMs (packaging/vmtest, packaging/vmbench): Debian 12 with its kernel and systemd ---
# Callers set `work` (a scratch directory they remove) and `say`, and kill "$qemu_pid" on exit.
# DVPN_VM_CACHE holds the base image (default /var/cache/dvpn-vmtest); DVPN_VM_ACCEL=kvm tries
# KVM (the default is TCG: KVM hung on these machines).

# vm_base DEB: the path of the cached base image (a tarball): Debian 12, its kernel, systemd and
# DEB's dependencies from Debian's packages, built with mmdebstrap the first time. postgresql-15
# and pgbackrest: the VM test's spoke-a database; systemd-resolved (and the bus it is driven
# over): its names' step.
vm_base() {
  local pkgs cache=${DVPN_VM_CACHE:-/var/cache/dvpn-vmtest} base
  pkgs="systemd-sysv,udev,kmod,linux-image-amd64,initramfs-tools,iproute2,iputils-ping,curl,procps,postgresql-15,pgbackrest,dbus,systemd-resolved,$(deb_depends "$1")"
  base="$cache/base-$(echo "$pkgs vm1" | sha256sum | cut -c1-16).tar"
  mkdir -p "$cache"
  if [ ! -e "$base" ]; then
    say "building the base image with mmdebstrap (cached in $base)" >&2
    rm -f "$cache"/base-*.tar
    bookworm_tree "$base.tmp.tar" --include="$pkgs" >&2 || return 1
    mv "$base.tmp.tar" "$base" || return 1
  fi
  echo "$base"
}

# vm_root DEB: $work/root, the base image with DEB installed with apt (it resolves nothing new:
# the base has the dependencies), chrooted in a private mount namespace so nothing is left
# mounted whatever happens.
vm_root() {
  local base; base=$(vm_base "$1") || return 1
  say "base image $(basename "$base") ($(du -h "$base" | cut -f1))"
  mkdir "$work/root"
  tar -C "$work/root" --numeric-owner -xpf "$base"
  mkdir -p "$work/root/root/debs"
  cp "$1" "$work/root/root/debs/"
  unshare --mount --propagation private --fork sh -ec '
    mount --bind /dev "$1/dev"; mount -t proc proc "$1/proc"
    chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "/root/debs/$2" >/dev/null
  ' sh "$work/root" "$(basename "$1")"
  mkdir -p "$work/root/var/log/journal"
  echo dvpn-vm >"$work/root/etc/hostname"
  echo "LABEL=dvpnroot / ext4 rw,errors=remount-ro 0 1" >"$work/root/etc/fstab"
}

# vm_disk: $work/root becomes $work/disk.raw (3 GB, ext4), with the kernel and initrd beside it.
vm_disk() {
  local kernel initrd
  kernel=$(ls "$work"/root/boot/vmlinuz-* | tail -1)
  initrd=$(ls "$work"/root/boot/initrd.img-* | tail -1)
  cp "$kernel" "$work/vmlinuz"; cp "$initrd" "$work/initrd"
  mkfs.ext4 -q -F -L dvpnroot -d "$work/root" "$work/disk.raw" 3G
  rm -rf "$work/root"
  say "image ready: $(du -h --apparent-size "$work/disk.raw" | cut -f1) disk, kernel $(basename "$kernel")"
}

# vm_boot TIMEOUT: boot $work's image (no network card: the guest's own namespaces are its
# network), print what the guest writes to its second serial port ($work/results.log) as it
# comes, and return when qemu exits (the guest powered off) or after TIMEOUT seconds.
vm_boot() {
  local accel=${DVPN_VM_ACCEL:-tcg} cpu=max t0=$SECONDS shown=0 n
  [ "$accel" = kvm ] && cpu=host
  : >"$work/results.log"
  qemu-system-x86_64 -accel "$accel" -cpu "$cpu" -smp 2 -m 2048 \
    -kernel "$work/vmlinuz" -initrd "$work/initrd" \
    -append "root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=auto" \
    -drive "file=$work/disk.raw,format=raw,if=virtio" \
    -nic none -display none -monitor none \
    -serial "file:$work/console.log" -serial "file:$work/results.log" &
  qemu_pid=$!
  say "qemu started (pid $qemu_pid, $accel); the guest's log follows"
  while kill -0 "$qemu_pid" 2>/dev/null; do
    n=$(wc -l <"$work/results.log")
    if [ "$n" -gt "$shown" ]; then sed -n "$((shown + 1)),${n}p" "$work/results.log"; shown=$n; fi
    if [ $((SECONDS - t0)) -gt "$1" ]; then say "timeout after $1 s"; break; fi
    sleep 1
  done
  sed -n "$((shown + 1)),\$p" "$work/results.log"
}
