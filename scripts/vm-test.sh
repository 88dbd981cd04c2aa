#!/usr/bin/env bash
# The Debian package on real Debian hosts under systemd: for each release, a minimal image
# built with debootstrap (cached in /var/cache/twofold-vm), booted with QEMU, reached over SSH
# forwarded to 127.0.0.1 only. Inside each VM, as an administrator would:
#   - the previous release's package (built from its git tag) installed with apt and used;
#   - the upgrade to this tree's package, every enrollment kept (with a request in flight
#     through the old daemon's stop: the previous release then shut the socket down, and the
#     new package's postinst must make it anew);
#   - an upgrade from this tree's package to a newer one, and `systemctl restart twofoldd`
#     twice, while logins arrive at a steady rate: none refused (20 a second with KVM; under
#     software emulation, where one login costs the emulated CPU some 20 ms, 5 a second);
#   - the packaged, hardened unit active; `twofold doctor` as root;
#   - `pam-auth-update --enable twofold`; sshd set up as the README says; a real SSH login
#     from the host with key + code through the VM's own ssh.service (wrong and replayed
#     codes refused); sudo with password + code; the journal holds the events, no secret;
#   - reboot: the state kept, a login works;
#   - purge: nothing left, common-auth as before.
#
#   sudo scripts/vm-test.sh [bookworm|trixie|all]     (default: all, the releases side by side)
#
# KVM is used when it runs a guest here, software emulation otherwise (printed).
# TWOFOLD_VM_CACHE moves the image cache; TWOFOLD_VM_ACCEL=tcg forces emulation;
# TWOFOLD_VM_RATE sets the logins per second of the load.
set -euo pipefail

prog=vm-test.sh
[ "$(id -u)" -eq 0 ] || { echo "$prog: run as root (debootstrap, mkfs)" >&2; exit 2; }
# `deps` installs what the test needs and stops; `images` also builds (or finds cached) both
# images and stops: .ci/run builds them in the background from its start, beside the tests.
mode=test
case "${1:-all}" in
  all) releases=(bookworm trixie) ;;
  bookworm|trixie) releases=("$1") ;;
  deps|images) mode=$1; releases=(bookworm trixie) ;;
  *) echo "usage: $prog [bookworm|trixie|all|deps|images]" >&2; exit 2 ;;
esac
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive

"$repo/scripts/deps.sh"
vm_deps=(debootstrap qemu-system-x86 qemu-utils)
missing=()
for p in "${vm_deps[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null

[ "$mode" = deps ] && exit 0

# shellcheck source-path=SCRIPTDIR source=vm-lib.sh
. "$repo/scripts/vm-lib.sh"

if [ "$mode" = images ]; then
  children=()
  for rel in "${releases[@]}"; do vm_image "$rel" & children+=($!); done
  for p in "${children[@]}"; do wait "$p"; done
  echo "$prog: images ready in $(( $(date +%s) - start )) s"
  exit 0
fi

base=$(mktemp -d /tmp/twofold-vmtest.XXXXXX)
chmod 700 "$base"
children=()
cleanup() {
  local rc=$?
  set +e
  for p in "${children[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${children[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$base"
  (cd "$repo" && debian/rules clean > /dev/null 2>&1)
  if [ "$rc" -eq 0 ]; then echo "$prog: PASS in $(( $(date +%s) - start )) s"
  else echo "$prog: FAILED (exit $rc) after $(( $(date +%s) - start )) s" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== Images (${releases[*]}) and packages"
# The images build (network, disk) while the packages compile (CPU).
for rel in "${releases[@]}"; do
  ( vm_image "$rel" ) > "$base/image-$rel.log" 2>&1 &
  children+=($!)
done

version=$(dpkg-parsechangelog -S Version)
prev=$(dpkg-parsechangelog -o1 -c1 -S Version)
arch=$(dpkg --print-architecture)
[ -n "$prev" ] && [ "$prev" != "$version" ] || { echo "$prog: debian/changelog names no previous version" >&2; exit 1; }

# This tree's package.
if ! dpkg-buildpackage -us -uc -b > "$base/build.log" 2>&1; then
  tail -30 "$base/build.log" >&2; echo "$prog: dpkg-buildpackage failed" >&2; exit 1
fi
mv "../twofold_${version}_${arch}.deb" "$base/new.deb"
rm -f "../twofold_${version}_${arch}.buildinfo" "../twofold_${version}_${arch}.changes"
# A newer version of the same package, for an upgrade from this tree's code (whose stop is
# the one that matters from now on): the same files, the version raised.
next="$version+vmtest1"
dpkg-deb -R "$base/new.deb" "$base/next"
sed -i "s/^Version: .*/Version: $next/" "$base/next/DEBIAN/control"
dpkg-deb -Zxz -b "$base/next" "$base/next.deb" > /dev/null
rm -rf "$base/next"
echo "   ok: twofold $version built (and repacked as $next)"

# The previous version's package, from its tag (or, without tags, the newest commit whose
# changelog names it first), cached by commit.
prev_commit=$(git rev-parse -q --verify "refs/tags/v$prev^{commit}" || true)
if [ -z "$prev_commit" ] && [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  echo "   the clone is shallow: fetching its history for $prev"
  timeout 120 git fetch -q --unshallow --tags 2>/dev/null || true
  prev_commit=$(git rev-parse -q --verify "refs/tags/v$prev^{commit}" || true)
fi
if [ -z "$prev_commit" ]; then
  for c in $(git rev-list HEAD); do
    if git show "$c:debian/changelog" | head -1 | grep -q "($prev)"; then prev_commit=$c; break; fi
  done
fi
[ -n "$prev_commit" ] || { echo "$prog: no tag v$prev and no commit with version $prev in debian/changelog (shallow clone?)" >&2; exit 1; }
prev_deb="$vm_cache/debs/$prev_commit/twofold_${prev}_${arch}.deb"
if [ ! -f "$prev_deb" ]; then
  mkdir -p "$base/prev/src"
  git archive "$prev_commit" | tar -x -C "$base/prev/src"
  if ! (cd "$base/prev/src" && CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}" dpkg-buildpackage -us -uc -b) > "$base/prev-build.log" 2>&1; then
    tail -30 "$base/prev-build.log" >&2; echo "$prog: building $prev from $prev_commit failed" >&2; exit 1
  fi
  mkdir -p "$(dirname "$prev_deb")"
  mv "$base/prev/twofold_${prev}_${arch}.deb" "$prev_deb"
  rm -rf "$base/prev"
  echo "   ok: twofold $prev built from ${prev_commit:0:12}"
else
  echo "   ok: twofold $prev from the cache (${prev_commit:0:12})"
fi
cp "$prev_deb" "$base/prev.deb"

# The load driver (logins through libpam at a steady rate).
# With debian/rules' C flags, so that the bundled SQLite is not rebuilt for it.
CFLAGS="$(dpkg-buildflags --get CFLAGS) $(dpkg-buildflags --get CPPFLAGS)" \
  cargo build --release --quiet -p twofold-bench
cp "${CARGO_TARGET_DIR:-$repo/target}/release/twofold-bench" "$base/twofold-bench"

for p in "${children[@]}"; do
  wait "$p" || { cat "$base"/image-*.log >&2; echo "$prog: building an image failed" >&2; exit 1; }
done
children=()
cat "$base"/image-*.log

for rel in "${releases[@]}"; do
  mkdir -m 700 "$base/$rel"
  TWOFOLD_VM_PREV=$prev TWOFOLD_VM_NEW=$version TWOFOLD_VM_NEXT=$next \
    "$repo/scripts/vm-release.sh" "$rel" "$base" > >(sed -u "s/^/[$rel] /") 2>&1 &
  children+=($!)
done
failed=()
for i in "${!releases[@]}"; do
  wait "${children[$i]}" || failed+=("${releases[$i]}")
done
children=()
echo
for rel in "${releases[@]}"; do
  grep -h '^== result:' "$base/$rel/summary" 2>/dev/null | sed "s/^== result:/$rel:/" || true
done
[ ${#failed[@]} -eq 0 ] || { echo "$prog: failed on ${failed[*]}" >&2; exit 1; }
