#!/usr/bin/env bash
# Builds brindle-cni and brindle-cni-install statically linked, as the image ships them, and
# prints the directory that holds them (target/static). Arguments go to cargo (e.g. --locked).
#
# Both run on the host (brindle-cni-install copies the plugin there), so static linking
# frees them from the host's glibc version. And the plugin, started for every pod ADD and
# DEL, starts on less CPU: no loader, no shared libraries, no relocations (a pod's ADD
# costs about 0.4 ms of CPU less; see `cargo bench -p brindle-cni --bench cni`).
#
# crt-static needs an explicit --target, so that build scripts and proc-macros, which run
# here, stay dynamic; the build goes to target/<triple>/ and is copied to target/static/.
set -euo pipefail
cd "$(dirname "$0")/../.."
triple=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
  cargo build --release --target "$triple" -p brindle-cni --bins "$@" >&2
mkdir -p target/static
for b in brindle-cni brindle-cni-install; do
  cp "target/$triple/release/$b" "target/static/$b.tmp"
  mv "target/static/$b.tmp" "target/static/$b"
done
echo "$PWD/target/static"
