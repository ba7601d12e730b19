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
