#!/usr/bin/env bash
# Builds Brindle's image without pulling anything: a Debian base made with debootstrap and
# imported into the local image store, the binaries built on this host (`BINARIES=prebuilt`
# in the Containerfile), the image built with buildah, then checked by running
# `brindle-node --version` and `brindlectl version` in it with podman.
#
#   manifests/image/build.sh [TAG]        (default TAG: brindle:<workspace version>)
#
# Needs root, and Debian's buildah, podman and debootstrap (installed here if missing).
# On a machine that can pull images, `buildah build -f manifests/image/Containerfile .`
# builds from source in Rust's image instead (BINARIES=build).
set -euo pipefail
cd "$(dirname "$0")/../.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | sed -n 1p)
tag=${1:-brindle:$version}
base=localhost/brindle-base:bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

need=()
for t in buildah podman debootstrap; do command -v "$t" >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! podman image exists "$base"; then
  root=$(mktemp -d /var/tmp/brindle-base.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "debootstrap: Debian bookworm (minbase + iptables, nftables, iproute2, ipset) from $mirror"
  debootstrap --variant=minbase --include=iptables,nftables,iproute2,ipset,ca-certificates \
    bookworm "$root" "$mirror" >/dev/null
  # Smaller: no apt lists, docs or caches in the image.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/*
  tar -C "$root" -c . | podman import - "$base" >/dev/null
  echo "made $base"
fi

echo "building the binaries (release)"
cargo build --release --locked -p brindle-node -p brindle-controller -p brindle-ctl \
  -p brindle-bgp --bins
echo "building brindle-cni and brindle-cni-install, statically linked"
crates/cni/static.sh --locked >/dev/null

echo "building $tag"
# chroot isolation: RUN steps need no OCI runtime or cgroups (these machines mix cgroup v1
# and v2, which crun refuses).
buildah build --quiet --layers=false --isolation chroot -f manifests/image/Containerfile \
  --build-arg BASE="$base" --build-arg BINARIES=prebuilt -t "$tag" . >/dev/null

echo "checking $tag"
# In a private mount namespace without the cgroup v1/v2 hybrid mount crun refuses (a no-op
# where cgroups are pure v2); no cgroups are needed for a check.
# Its own containers.conf: no cgroups, and no default ulimits (raising RLIMIT_NOFILE is not
# permitted in every sandbox this may run in).
conf=$(mktemp /var/tmp/brindle-containers.XXXXXX.conf)
printf '[containers]\ncgroups = "disabled"\ndefault_ulimits = []\n[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "none"\n' > "$conf"
in_image() {
  CONTAINERS_CONF=$conf unshare --mount --propagation slave sh -c \
    'umount /sys/fs/cgroup/unified 2>/dev/null || true; exec podman run --rm --network none "$@"' \
    sh "$tag" "$@"
}
in_image brindle-node --version
in_image brindlectl version --client
in_image sh -c 'iptables --version && nft --version && ip -V && brindle-cni-install --version && echo {} | CNI_COMMAND=VERSION brindle-cni'
rm -f "$conf"
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' "$tag"
