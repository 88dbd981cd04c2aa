#!/usr/bin/env bash
# The supply chain, checked offline (CI has no network):
#   - cargo audit: every crate in Cargo.lock and fuzz/Cargo.lock against a snapshot of the
#     RustSec advisory database. A vulnerability fails; so does any warning (unmaintained,
#     unsound, yanked) not reviewed in .cargo/audit.toml, which says for each why it does not
#     apply.
#   - cargo deny (deny.toml): licenses compatible with the package's GPL-3.0-or-later, crates
#     only from crates.io, one version of each cryptographic crate in the .so and the daemon.
#
#   scripts/audit.sh
#
# The database: $TWOFOLD_ADVISORY_DB, else ../shared/advisory-db beside this repository,
# else the snapshot kept in supply-chain/ (its date is printed: an old snapshot finds nothing
# new). The tools are installed from crates.io, pinned, once (then cached in ~/.cargo/bin).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
audit_version=0.22.2
deny_version=0.20.2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Built unoptimised, without debug info, in one target directory for both: 3.3 min on a fresh
# 2-core machine instead of 11.5 optimised, and they read a 237-crate lock in under 2 s anyway.
install_tool() { # NAME VERSION
  local have
  have=$("$1" --version 2>/dev/null | awk '{print $2}' || true)
  if [ "$have" != "$2" ]; then
    echo "== installing $1 $2 (from crates.io; cached in ~/.cargo/bin afterwards)"
    local t0=$SECONDS
    CARGO_TARGET_DIR="$work/tools" CARGO_PROFILE_DEV_DEBUG=0 \
      cargo install --locked --quiet --debug "$1" --version "$2"
    echo "   $1 $2 installed in $(( SECONDS - t0 )) s"
  fi
}
install_tool cargo-audit "$audit_version"
install_tool cargo-deny "$deny_version"
rm -rf "$work/tools"
db=${TWOFOLD_ADVISORY_DB:-}
if [ -z "$db" ] && [ -d "$repo/../shared/advisory-db/crates" ]; then db=$repo/../shared/advisory-db; fi
if [ -z "$db" ]; then
  tar -xJf supply-chain/advisory-db.tar.xz -C "$work"
  db=$work/advisory-db
fi
[ -d "$db/crates" ] || { echo "audit.sh: no advisory database at $db" >&2; exit 1; }
# cargo audit wants to own the directory it reads (a lock file beside it): a copy of ours.
cp -r "$db" "$work/db"
chmod -R u+w "$work/db"
snapshot=$(grep -o 'commit [0-9a-f]\{12\}[0-9a-f]* of [0-9-]*' "$db/SNAPSHOT.md" 2>/dev/null || echo "snapshot of unknown date")
echo "== advisories: $(find "$db/crates" -name 'RUSTSEC-*.md' | wc -l) crate advisories, $snapshot ($db)"

# The control: a lock holding smallvec 1.6.0 (RUSTSEC-2021-0003) must fail, or the database
# was not read and a pass below would mean nothing.
mkdir -p "$work/control"
cat > "$work/control/Cargo.lock" <<'LOCK'
version = 3

[[package]]
name = "smallvec"
version = "1.6.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
LOCK
if cargo audit --db "$work/db" --no-fetch --stale --file "$work/control/Cargo.lock" >"$work/control/out" 2>&1 \
   || ! grep -q 'RUSTSEC-2021-0003' "$work/control/out"; then
  cat "$work/control/out" >&2
  echo "audit.sh: the control (smallvec 1.6.0, RUSTSEC-2021-0003) was not reported: the database is not being read" >&2
  exit 1
fi
echo "== control: smallvec 1.6.0 is reported (RUSTSEC-2021-0003): the database is read"

status=0
for lock in Cargo.lock fuzz/Cargo.lock; do
  echo "== cargo audit $lock"
  # -D warnings: unmaintained, unsound and yanked fail too, unless .cargo/audit.toml lists them.
  if ! cargo audit --db "$work/db" --no-fetch --stale -D warnings --file "$lock"; then
    status=1
  fi
done

echo "== cargo deny: licenses, bans (duplicate crypto crates), sources"
if ! cargo deny --offline --locked check --hide-inclusion-graph licenses bans sources; then
  status=1
fi

if [ "$status" -ne 0 ]; then
  echo "audit.sh: FAILED (see above)" >&2
  exit 1
fi
echo "audit.sh: PASS"
