#!/usr/bin/env bash
# Builds the base image every image of ours starts FROM, when no registry can give it:
# `debootstrap --variant=minbase` into a folder, then `docker import` (how Debian's own images are made).
# usage: make-base-image.sh IMAGE_TAG [SUITE]     needs root, debootstrap and a Docker engine
set -euo pipefail
tag="${1:?usage: make-base-image.sh IMAGE_TAG [SUITE]}"
suite="${2:-bookworm}"

# The mirror apt already uses on this host, so the image reaches the same one (deb822 or one-line sources).
mirror="$(grep -rhoE '^(URIs:[[:space:]]*|deb[[:space:]]+(\[[^]]*\][[:space:]]+)?)https?://[^[:space:]]+/debian/?' \
  /etc/apt/sources.list /etc/apt/sources.list.d 2>/dev/null | grep -oE 'https?://[^[:space:]]+' | grep -v -- '-security' | head -n1 || true)"
mirror="${mirror:-http://deb.debian.org/debian}"

rootfs="$(mktemp -d "${TMPDIR:-/tmp}/rootfs.XXXXXX")"
trap 'rm -rf "$rootfs"' EXIT
echo "==> debootstrap $suite from $mirror"
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >/dev/null
# As in Debian's slim images: no documentation or locales, a clean apt cache.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
echo "==> docker import $tag"
tar -C "$rootfs" -c . | docker import --change 'CMD ["bash"]' - "$tag" >/dev/null
