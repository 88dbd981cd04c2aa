#!/usr/bin/env bash
# Fuzzes the parsers that read hostile input (issue 7): the frame decoder, the request parser,
# what a user types at the prompt (TOTP, backup and mailed codes), otpauth:// URIs, and the
# PAM module's hand codec against serde's (login).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 30; CI runs 20)
#
# libFuzzer through cargo-fuzz (installed from crates.io if missing), on the stable toolchain
# without a sanitizer (`-s none`: Rust's own checks catch out-of-bounds access; the crates
# fuzzed hold no unsafe code). Seeds come from fuzz/corpus/TARGET and are copied, so the run
# never changes the repository. Fails on any crash, panic, timeout or out-of-memory, and prints
# each target's executions and coverage.
set -euo pipefail
secs=${1:-30}
repo=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz" >&2
  cargo install --locked --quiet cargo-fuzz
fi
# cargo-fuzz passes a few unstable flags even without a sanitizer; the stable compiler takes
# them with RUSTC_BOOTSTRAP (no nightly toolchain is needed, or fetched).
export RUSTC_BOOTSTRAP=1
cd "$repo/fuzz"
cargo fuzz build -s none --release >&2
work=$(mktemp -d /tmp/twofold-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
status=0
printf '%-10s %12s %10s %10s %8s\n' target executions exec/s coverage result
for target in frame request login code otpauth; do
  mkdir -p "$work/$target" "$work/artifacts-$target"
  cp corpus/"$target"/* "$work/$target/"
  log="$work/$target.log"
  if cargo fuzz run -s none --release "$target" "$work/$target" -- \
      -max_total_time="$secs" -max_len=70000 -rss_limit_mb=1024 -timeout=10 \
      -print_final_stats=1 -artifact_prefix="$work/artifacts-$target/" > "$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1 || true)
  cov=$( (grep -o 'cov: [0-9]*' "$log" || true) | tail -1 | cut -d' ' -f2)
  printf '%-10s %12s %10s %10s %8s\n' "$target" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$result"
  if [ "$result" = FAILED ]; then
    tail -40 "$log" >&2
    for a in "$work/artifacts-$target"/*; do
      [ -e "$a" ] && { echo "crashing input ($a), base64:" >&2; base64 "$a" >&2; }
    done
  fi
done
exit $status
