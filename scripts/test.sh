#!/usr/bin/env bash
# The README's test command: every test, unit to end-to-end.
# Tests that need root (real users, sshd, sudo) run when root and say why they skip otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] && scripts/deps.sh
# End-to-end tests drive the built binaries and pam_twofold.so: build them first.
cargo build --workspace --all-targets
cargo test --workspace --all-targets
