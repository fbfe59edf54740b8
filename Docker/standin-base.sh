#!/usr/bin/env bash
# A stand-in for the base image `python:3.11-slim-bookworm`, built from Debian's own packages,
# for machines that cannot pull it (no Docker Hub). It does nothing when the image is present
# or can be pulled: the real one always wins. Everything after FROM in Docker/Dockerfile stays
# the real Dockerfile.
#
#   debootstrap --variant=minbase bookworm -> docker import  (cached: the image and a tarball)
#   + Debian's python3.11, python3.11-venv, libpython3.11 (Triton's Python stub links
#     libpython, as it links the official image's /usr/local/lib/libpython3.11.so)
#   + `python3.11 -m venv /usr/local`: `python` and `pip` on PATH, as in the official image
#   + this machine's CA bundle over the image's (pip may reach PyPI through a TLS proxy)
#
# Usage: Docker/standin-base.sh [--force]   (--force: rebuild the stand-in even if present)
# Environment: BASE_IMAGE (python:3.11-slim-bookworm), DEBIAN_MIRROR (http://deb.debian.org/debian),
#   STANDIN_CACHE (~/.cache/fr-triton: the debootstrap tarball), CA_BUNDLE
#   (/etc/ssl/certs/ca-certificates.crt), PULL_TIMEOUT_S (60).
set -euo pipefail

TAG=${BASE_IMAGE:-python:3.11-slim-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${STANDIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fr-triton}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
ROOTFS_TAG=fr-triton/bookworm-minbase:latest
TARBALL=$CACHE/bookworm-minbase.tar
force=0
[ "${1:-}" = --force ] && force=1

log() { echo "[standin-base ${SECONDS}s] $*" >&2; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

if [ "$force" = 0 ]; then
  if have_image "$TAG"; then
    log "$TAG is present; nothing to do"
    exit 0
  fi
  if timeout "${PULL_TIMEOUT_S:-60}" docker pull -q "$TAG" >/dev/null 2>&1; then
    log "pulled the real $TAG"
    exit 0
  fi
  log "cannot pull $TAG: building a stand-in from Debian bookworm packages"
fi

# 1. The minimal Debian tree, imported as an image (the tarball survives `docker image prune`).
if [ "$force" = 1 ] || ! have_image "$ROOTFS_TAG"; then
  if [ "$force" = 1 ] || [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null || { log "error: debootstrap not installed (apt-get install debootstrap)"; exit 1; }
    mkdir -p "$CACHE"
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap --variant=minbase bookworm (from $MIRROR)"
    debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
      || { log "error: debootstrap failed; see $CACHE/debootstrap.log"; exit 1; }
    # Security and point-release updates, as the official image's sources have.
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
EOF
    # Slim as Debian's official images are (debuerreotype): no docs, man pages or locales,
    # neither now nor from packages installed later.
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
      'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
      'path-exclude /usr/share/locale/*' 'path-exclude /usr/share/lintian/*' \
      >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim"
    (
      cd "$rootfs" || exit 1
      find ./usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
      rm -rf ./usr/share/man/* ./usr/share/info/* ./usr/share/locale/* ./usr/share/lintian/* \
        ./var/cache/apt/*.bin ./var/cache/apt/archives/*.deb ./var/lib/apt/lists/*
    )
    tar -C "$rootfs" -c . >"$TARBALL.tmp"
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$rootfs"
    trap - EXIT
  fi
  log "docker import $TARBALL -> $ROOTFS_TAG"
  docker import - "$ROOTFS_TAG" <"$TARBALL" >/dev/null
fi

# 2. Python 3.11 as the official image lays it out (python, pip in /usr/local/bin).
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$CA_BUNDLE" "$context/ca-certificates.crt"
cat >"$context/Dockerfile" <<EOF
FROM $ROOTFS_TAG
ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \\
    LANG=C.UTF-8
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
      python3.11 python3.11-venv libpython3.11 ca-certificates netbase tzdata \\
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/cache/apt/*.bin \\
 && python3.11 -m venv /usr/local \\
 && find /usr/local /usr/lib/python3.11 -name __pycache__ -prune -exec rm -rf {} +
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
LABEL org.opencontainers.image.description="stand-in for $TAG built by Docker/standin-base.sh"
CMD ["python3"]
EOF
log "docker build -> $TAG"
docker build --network host -q -t "$TAG" "$context" >/dev/null
log "built the stand-in $TAG"
