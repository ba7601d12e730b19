# Sourced by packaging/check-clean-install, packaging/vmtest and docker/lab (bash).

# deb_depends DEB: the package's Depends as a comma-separated list for mmdebstrap --include
# (versions and alternatives dropped: Debian 12 satisfies the first of each).
deb_depends() {
  dpkg-deb -f "$1" Depends | sed -e 's/([^)]*)//g' -e 's/|[^,]*//g' -e 's/ //g'
}

# bookworm_tree TARGET [MMDEBSTRAP OPTIONS...]: a Debian 12 tree (a directory, or a tarball
# when TARGET ends in .tar, or - for stdout) from Debian's own mirrors, apt variant.
bookworm_tree() {
  local target=$1; shift
  mmdebstrap --quiet --variant=apt "$@" bookworm "$target" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
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
