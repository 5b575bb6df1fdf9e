#!/usr/bin/env bash
# Build a local Python base image from Debian bookworm packages, for machines that reach
# Debian's and Python's package indexes but no container registry (like the project's CI).
# Anyone who can pull python:3.11-slim-bookworm never needs this.
#
#   .ci/make-base-image.sh            # prints the tag, e.g. local/bookworm-python:latest
#   BASE_TAG=... FORCE=1 .ci/make-base-image.sh
#
# The image is debootstrap's minbase with python3, python3-venv and ca-certificates, plus
# this machine's CA bundle and pip settings, so `pip install` inside `docker build` trusts
# and uses the same indexes as pip here. Needs root, debootstrap and a running Docker engine.
# Progress goes to stderr; the only line on stdout is the tag.
set -euo pipefail

TAG=${BASE_TAG:-local/bookworm-python:latest}
SUITE=${DEBIAN_SUITE:-bookworm}
HOST_CA=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

log() { echo "make-base-image: $*" >&2; }

if [ "${FORCE:-0}" != 1 ] && docker image inspect "$TAG" >/dev/null 2>&1; then
  log "$TAG exists already (FORCE=1 rebuilds it)"
  echo "$TAG"
  exit 0
fi
command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
[ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }

# The Debian mirror this machine's apt uses (deb822 or one-line format); debootstrap's own
# default when none is configured. DEBIAN_MIRROR overrides.
host_debian_mirror() {
  local file
  for file in /etc/apt/sources.list.d/*.sources; do
    [ -f "$file" ] || continue
    awk 'tolower($1) == "uris:" && $2 ~ /\/debian\/?$/ { print $2; exit }' "$file"
  done | head -n 1
  if [ -f /etc/apt/sources.list ]; then
    awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\/.*\/debian\/?$/) { print $i; exit } }' /etc/apt/sources.list
  fi
}
MIRROR=${DEBIAN_MIRROR:-$(host_debian_mirror | head -n 1)}

ROOTFS=$(mktemp -d "${TMPDIR:-/var/tmp}/bookworm-rootfs.XXXXXX")
cleanup() { rm -rf --one-file-system "$ROOTFS"; }
trap cleanup EXIT

log "debootstrap $SUITE (minbase) from ${MIRROR:-the default mirror of debootstrap} into $ROOTFS"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$SUITE" "$ROOTFS" ${MIRROR:+"$MIRROR"} >"$ROOTFS.log" 2>&1 || {
  tail -n 30 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"

# This machine's CA bundle (it may hold a CA that the network's TLS proxy signs with).
if [ -s "$HOST_CA" ]; then
  install -m 0644 "$HOST_CA" "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
fi

# pip settings: the CA bundle, plus the index settings of this machine's pip that reach over
# the network (file:// indexes and find-links folders exist only on the host and are dropped).
pip_setting() {  # $1 = PIP_* variable name, $2 = pip config key
  local value=${!1:-}
  if [ -z "$value" ] && command -v python3 >/dev/null; then
    value=$(python3 -m pip config get "global.$2" 2>/dev/null || true)
  fi
  local url kept=()
  for url in $value; do
    case $url in http://* | https://*) kept+=("$url") ;; esac
  done
  echo "${kept[*]:-}"
}
INDEX_URL=$(pip_setting PIP_INDEX_URL index-url)
EXTRA_INDEX_URL=$(pip_setting PIP_EXTRA_INDEX_URL extra-index-url)
TRUSTED_HOST=${PIP_TRUSTED_HOST:-$(python3 -m pip config get global.trusted-host 2>/dev/null || true)}
TIMEOUT=${PIP_DEFAULT_TIMEOUT:-}
{
  echo "# written by .ci/make-base-image.sh from the building machine's settings"
  echo "[global]"
  echo "cert = /etc/ssl/certs/ca-certificates.crt"
  [ -z "$INDEX_URL" ] || echo "index-url = $INDEX_URL"
  [ -z "$EXTRA_INDEX_URL" ] || echo "extra-index-url = $EXTRA_INDEX_URL"
  [ -z "$TRUSTED_HOST" ] || echo "trusted-host = $TRUSTED_HOST"
  [ -z "$TIMEOUT" ] || echo "timeout = $TIMEOUT"
} >"$ROOTFS/etc/pip.conf"
log "pip.conf for the image:"; sed 's/^/  /' "$ROOTFS/etc/pip.conf" >&2

# A smaller image: no apt lists, caches, docs or man pages.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/var/log/*.log

log "importing as $TAG"
tar --numeric-owner --xattrs -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' \
  - "$TAG" >/dev/null
VERSION=$(docker run --rm --network none "$TAG" python3 -c 'import ensurepip, ssl, sys; print(sys.version.split()[0])')
log "$TAG has Python $VERSION"
echo "$TAG"
