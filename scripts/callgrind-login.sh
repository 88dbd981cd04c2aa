#!/usr/bin/env bash
# Instructions per login, counted by callgrind (repeatable where times are not), on both sides:
# twofoldd (preflight + verify of an accepted code, committed) and the PAM application with
# pam_twofold.so against pam_permit alone (the module's load, its requests, its conversation).
# Each side runs 100 and then 400 logins (release builds, an SQLite store of 1,000 users, one
# login at a time); the difference over 300 is the per-login count, start-up left out.
#
#   sudo scripts/callgrind-login.sh        (needs valgrind and libpam-wrapper)
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "callgrind-login.sh: run as root" >&2; exit 2; }
command -v valgrind > /dev/null || { echo "callgrind-login.sh: apt-get install valgrind" >&2; exit 1; }
repo=$(cd "$(dirname "$0")/.." && pwd)
(cd "$repo" && cargo build --release --quiet -p twofold-daemon -p pam_twofold -p twofold-bench)
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
wrapper=$(dpkg -L libpam-wrapper | grep '/libpam_wrapper\.so$' | head -1)
umask 077
work=$(mktemp -d /tmp/twofold-callgrind.XXXXXX)
daemon=""
cleanup() {
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
mkdir "$work/pam.d"
printf 'socket = "%s/s"\ndatabase = "%s/twofold.db"\n' "$work" "$work" > "$work/t.toml"
echo "auth required pam_deny.so" > "$work/pam.d/other"
echo "auth required pam_permit.so" > "$work/pam.d/permit"
echo "auth required $bin/libpam_twofold.so socket=$work/s timeout=30" > "$work/pam.d/twofold"

# SIDE (daemon|client) SERVICE LOGINS: the instructions counted on that side.
count() {
  rm -f "$work"/twofold.db* "$work/s"
  "$bin/twofold-bench" seed "$work/twofold.db" 1000 "$work/users.txt" > /dev/null
  head -n "$3" "$work/users.txt" > "$work/these.txt"
  local out="$work/$1-$2-$3.out" grind=(valgrind --tool=callgrind --callgrind-out-file="$work/$1-$2-$3.out")
  local server=("$bin/twofoldd" --config "$work/t.toml") client=("$bin/twofold-bench" pam "$2" "$work/these.txt" 1 "$3")
  if [ "$1" = daemon ]; then server=("${grind[@]}" "${server[@]}"); else client=("${grind[@]}" "${client[@]}"); fi
  "${server[@]}" 2> "$work/twofoldd.log" &
  daemon=$!
  for _ in $(seq 600); do [ -S "$work/s" ] && break; sleep 0.1; done
  local r
  r=$(LD_PRELOAD="$wrapper" PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$work/pam.d" "${client[@]}" 2> /dev/null)
  kill -TERM "$daemon"; wait "$daemon" 2>/dev/null || true; daemon=""
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if r["succeeded"] == r["logins"] else 1)' "$r" \
    || { echo "callgrind-login.sh: not every login succeeded: $r" >&2; exit 1; }
  awk '/^summary:/ {print $2}' "$out"
}
slope() { echo $(( ($(count "$@" 400) - $(count "$@" 100)) / 300 )); }
d=$(slope daemon twofold)
t=$(slope client twofold)
p=$(slope client permit)
echo "instructions per login: twofoldd $d; PAM application with pam_twofold.so $t, with pam_permit $p: the module $((t - p))"
