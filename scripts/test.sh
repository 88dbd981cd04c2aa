#!/usr/bin/env bash
# The README's test command: every test, unit to end-to-end.
# Tests that need root (real users, sshd, sudo) run when root and say why they skip otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then scripts/deps.sh; fi
# End-to-end tests drive the built binaries and pam_twofold.so: build them first.
cargo build --workspace --all-targets
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --all-targets 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log" \
  | tee "${TWOFOLD_TEST_SUMMARY:-/dev/null}"
exit "$status"
