#!/usr/bin/env bash
# Installs the Debian packages the real-part tests use (Redis, Chromium, FUSE, iproute2) when they are
# missing, where it can: as root with apt-get. `make test` runs it best-effort (tests whose part is still
# missing skip with a one-line reason); `.ci/run` runs it with --strict, so CI runs every test.
set -uo pipefail
strict=0
[ "${1:-}" = "--strict" ] && strict=1
# command that proves the package is there -> Debian package
declare -A wanted=(
  [redis-server]=redis-server
  [chromium]=chromium
  [chromedriver]=chromium-driver
  [fusermount3]=fuse3
  [ip]=iproute2
  [pkg-config]=pkg-config
)
# file that proves the package is there -> Debian package (libraries and headers: no command to look for)
declare -A wanted_files=(
  [/usr/include/fuse3/fuse_lowlevel.h]=libfuse3-dev   # pyfuse3 (p2pfs mount) builds against it
)
missing=()
for cmd in "${!wanted[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/usr/bin/$cmd" ] || missing+=("${wanted[$cmd]}")
done
for file in "${!wanted_files[@]}"; do
  [ -e "$file" ] || missing+=("${wanted_files[$file]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
fail() {
  echo "sysdeps: $1; tests that need ${missing[*]} will be skipped" >&2
  [ $strict -eq 1 ] && exit 1
  exit 0
}
[ "$(id -u)" -eq 0 ] || fail "not root, cannot install ${missing[*]}"
command -v apt-get >/dev/null 2>&1 || fail "no apt-get, cannot install ${missing[*]}"
echo "sysdeps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
{ apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/tmp/p2pfs-sysdeps.log 2>&1 \
  || fail "apt-get failed (see /tmp/p2pfs-sysdeps.log)"
exit 0
