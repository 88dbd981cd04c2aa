#!/usr/bin/env bash
# What outage mode costs while the database answers (issue 18): one twofoldd with
# offline = "cached" on a real PostgreSQL holding USERS enrollments (sealed, as a fleet runs),
# its copy refreshed every REFRESH seconds, and LOGINS logins through libpam (under
# pam_wrapper, one at a time, 1,000 or 10,000 of the users) while the refreshes run. Prints how
# long a refresh takes (twofold_offline_copy_refresh_seconds, the first and the last) and the
# logins' p50, p99 and longest: a login that waited for a refresh shows in the longest.
#
#   sudo scripts/bench-outage.sh [USERS [REFRESH [LOGINS]]]     (default 100000 5 30000)
#
# About 4 minutes at 100,000 users (seeding and sealing them is most of it).
set -euo pipefail

users=${1:-100000}
refresh=${2:-5}
logins=${3:-30000}
[ "$(id -u)" -eq 0 ] || { echo "bench-outage.sh: run as root (PostgreSQL runs as postgres)" >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/deps.sh"
(cd "$repo" && cargo build --release --quiet -p twofold-daemon -p pam_twofold -p twofold-bench)
target="${CARGO_TARGET_DIR:-$repo/target}/release"
bench="$target/twofold-bench"
wrapper=$(dpkg -L libpam-wrapper | grep '/libpam_wrapper\.so$' | head -1)
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

umask 077
work=$(mktemp -d /tmp/twofold-bench-outage.XXXXXX)
chmod 755 "$work"
pg_pid=""
daemon_pid=""
stop_pid() { # PID SIGNAL: signals it and waits for that process alone
  kill "-$2" "$1" 2>/dev/null || return 0
  while kill -0 "$1" 2>/dev/null; do sleep 0.1; done
}
cleanup() {
  [ -n "$daemon_pid" ] && stop_pid "$daemon_pid" TERM
  [ -n "$pg_pid" ] && stop_pid "$pg_pid" INT
  rm -rf "$work"
}
trap cleanup EXIT

install -d -m 700 -o postgres -g postgres "$work/data"
install -d -m 755 -o postgres -g postgres "$work/sock"
setpriv --reuid postgres --regid postgres --init-groups -- \
  "$pgbin/initdb" -A trust -U twofold -E UTF8 --no-sync -D "$work/data" > /dev/null
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# Unix socket only; a simple command in the background, so that $! is the server itself.
setpriv --reuid postgres --regid postgres --init-groups -- "$pgbin/postgres" -D "$work/data" \
  -p "$port" -c listen_addresses= -c unix_socket_directories="$work/sock" 2> "$work/postgres.log" &
pg_pid=$!
for _ in $(seq 300); do "$pgbin/pg_isready" -q -h "$work/sock" -p "$port" -U twofold && break; sleep 0.1; done
"$pgbin/createdb" -h "$work/sock" -p "$port" -U twofold fleet
url="host=$work/sock port=$port user=twofold dbname=fleet"
echo "== seeding $users enrollments" >&2
"$bench" seed "postgres:$url" "$users" "$work/users.txt" > /dev/null
some=1000; [ "$users" -ge 10000 ] && some=10000
head -n "$some" "$work/users.txt" > "$work/some.txt"

install -d -m 700 "$work/d"
printf 'socket = "%s/d/s"\ndatabase = "%s/d/unused.db"\nmax_connections = 1024\nstore = "postgres"\npostgres_url = "%s"\nseal_key_file = "%s/d/seal.key"\noffline = "cached"\noffline_refresh = %s\n' \
  "$work" "$work" "$url" "$work" "$refresh" > "$work/twofold.toml"
"$target/twofold" seal init --config "$work/twofold.toml" > /dev/null
# twofoldd seals every secret at its first start, then fills the copy.
"$target/twofoldd" --config "$work/twofold.toml" 2> "$work/twofoldd.log" &
daemon_pid=$!
for _ in $(seq 1200); do [ -S "$work/d/s" ] && break; sleep 0.1; done
[ -S "$work/d/s" ] || { echo "bench-outage.sh: twofoldd did not start:" >&2; tail "$work/twofoldd.log" >&2; exit 1; }
chmod 711 "$work/d"
metric() { "$target/twofold" --socket "$work/d/s" metrics | awk -v m="$1" '$1 == m { print $2 }'; }
for _ in $(seq 1200); do [ -n "$(metric twofold_offline_copy_refresh_seconds)" ] && break; sleep 0.1; done
first=$(metric twofold_offline_copy_refresh_seconds)
[ -n "$first" ] || { echo "bench-outage.sh: the copy was never refreshed:" >&2; tail "$work/twofoldd.log" >&2; exit 1; }
copied=$(metric twofold_offline_copy_users)

mkdir -p "$work/pam.d"
echo "auth required $target/libpam_twofold.so socket=$work/d/s" > "$work/pam.d/twofold"
echo "== $logins logins while the copy is refreshed every $refresh s" >&2
r=$(LD_PRELOAD="$wrapper" PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$work/pam.d" \
  "$bench" pam twofold "$work/some.txt" 1 "$logins" 2> "$work/pam.log")
last=$(metric twofold_offline_copy_refresh_seconds)
python3 - "$users" "$copied" "$refresh" "$first" "$last" "$r" <<'EOF'
import json, sys
users, copied, every, first, last, r = sys.argv[1:]
r = json.loads(r)
print(json.dumps({
    "users": int(users), "copied": int(copied), "refresh_every_s": int(every),
    "refresh_first_s": float(first), "refresh_last_s": float(last),
    "logins": r["logins"], "succeeded": r["succeeded"],
    "p50_ms": round(r["p50_ms"], 3), "p99_ms": round(r["p99_ms"], 3), "max_ms": round(r["max_ms"], 3),
}))
EOF
