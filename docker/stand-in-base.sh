#!/usr/bin/env bash
# The stand-in for python:3.11-slim-bookworm, for the project's own image build and test where
# no container registry is reachable (CI, this repository's machines). Users build from the
# official base; the Dockerfiles name it and nothing else.
#
# A minimal Debian bookworm from Debian's packages (debootstrap), with Python 3.11, pip and
# CA certificates, arranged as the official image is where the Dockerfiles rely on it: pip
# installs system-wide, `python` and `pip` exist, PATH and LANG are set. It is committed into
# buildah's local storage under the official name, so that `FROM python:3.11-slim-bookworm`
# resolves to it with --pull=never. Does nothing when that image is already there.
#
#   docker/stand-in-base.sh            (as root; make image runs it)
set -euo pipefail

IMAGE=docker.io/library/python:3.11-slim-bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
buildah=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")

if "${buildah[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1; then
    echo "stand-in base $IMAGE is present"
    exit 0
fi

rootfs=$(mktemp -d)
container=""
cleanup() {
    [ -n "$container" ] && "${buildah[@]}" rm "$container" >/dev/null
    rm -rf "$rootfs"
}
trap cleanup EXIT

echo "debootstrap: Debian bookworm minbase + python3, pip, venv, CA certificates"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" "$MIRROR"
# The official image's Python is not Debian's managed one: pip installs system-wide there.
rm -f "$rootfs"/usr/lib/python3.11/EXTERNALLY-MANAGED
ln -sf python3 "$rootfs/usr/bin/python"
ln -sf pip3 "$rootfs/usr/bin/pip"
# pip inside the build trusts the same certificates as pip on this machine.
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

container=$("${buildah[@]}" from scratch)
"${buildah[@]}" copy "$container" "$rootfs/" / >/dev/null
"${buildah[@]}" config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd python3 \
    "$container"
"${buildah[@]}" commit --quiet "$container" "$IMAGE" >/dev/null
echo "committed the stand-in base as $IMAGE"
