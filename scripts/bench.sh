#!/usr/bin/env bash
# Side-by-side measurements of twofold, google-authenticator-libpam and pam_oath (issue 6).
#
#   sudo scripts/bench.sh [--quick] [--json FILE] [--plot DIR]
#   scripts/bench.sh --plot DIR --from FILE     (draw a saved JSON only)
#
# Per-login cost through libpam, in-process (pam_start / pam_authenticate / pam_end with a
# conversation answering a currently valid, unused code; every login a different user) under
# pam_wrapper with private service files, for pam_permit (libpam's own cost), pam_twofold,
# pam_google_authenticator (per-user files, DISALLOW_REUSE) and pam_oath (one users file), at
# 1 and 8 concurrent logins and N enrolled users; twofoldd's capacity at the socket level (32
# clients, every acceptance durable); the p99 of other users' logins while one user receives
# 1,000 wrong codes per second; twofoldd's memory and the module's size. Ratios come from the
# same run: these machines are shared and noisy, absolute times are not stable.
# --quick (CI): small N, finishes within about two minutes after the build; asserts nothing.
# --plot DIR: per-login cost against users and against concurrency, as SVG charts in DIR.
set -euo pipefail

quick=false
json=""
plot=""
from=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=true ;;
    --json) json=${2:?--json needs a file}; shift ;;
    --plot) plot=${2:?--plot needs a directory}; shift ;;
    --from) from=${2:?--from needs a file}; shift ;;
    *) echo "usage: $0 [--quick] [--json FILE] [--plot DIR] | --plot DIR --from FILE" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$from" ]; then
  [ -n "$plot" ] || { echo "bench.sh: --from needs --plot DIR" >&2; exit 2; }
  exec python3 "$(dirname "$0")/plot-bench.py" "$from" "$plot"
fi
[ "$(id -u)" -eq 0 ] || { echo "bench.sh: run as root (pam_google_authenticator reads its files as user=root)" >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/scripts/deps.sh"
(cd "$repo" && cargo build --release --quiet -p twofold-daemon -p pam_twofold -p twofold-bench)
target="${CARGO_TARGET_DIR:-$repo/target}/release"
bench="$target/twofold-bench"
module="$target/libpam_twofold.so"
wrapper=$(dpkg -L libpam-wrapper | grep '/libpam_wrapper\.so$' | head -1)
[ -n "$wrapper" ] || { echo "bench.sh: libpam_wrapper.so not found" >&2; exit 1; }

if $quick; then sizes=(100 1000); per_run=300; secs=3; cap_users=20000; else sizes=(100 10000 100000); per_run=3000; secs=10; cap_users=100000; fi

umask 077
work=$(mktemp -d /tmp/twofold-bench.XXXXXX)
daemon_pid=""
daemon2_pid=""
pg_pid=""
pg2_pid=""
pgwork=""
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  [ -n "$daemon2_pid" ] && kill "$daemon2_pid" 2>/dev/null && wait "$daemon2_pid" 2>/dev/null
  [ -n "$pg_pid" ] && kill -INT "$pg_pid" 2>/dev/null && wait "$pg_pid" 2>/dev/null
  [ -n "$pg2_pid" ] && kill -INT "$pg2_pid" 2>/dev/null && wait "$pg2_pid" 2>/dev/null
  rm -rf "$work"
  [ -n "$pgwork" ] && rm -rf "$pgwork"
}
trap cleanup EXIT
results="$work/results.jsonl"
: > "$results"

record() { # KIND N THREADS JSON
  printf '{"kind":"%s","n":%s,"threads":%s,"r":%s}\n' "$1" "$2" "$3" "$4" >> "$results"
}

run_pam() { # SERVICE USERS_FILE THREADS LOGINS [FLOOD...]
  LD_PRELOAD="$wrapper" PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$work/pam.d" \
    "$bench" pam "$@" 2>> "$work/pam-stderr.log"
}

for n in "${sizes[@]}"; do
  echo "== N = $n enrolled users" >&2
  dir="$work/n$n"
  mkdir -p "$dir/ga" "$work/pam.d"
  rm -f "$dir/twofold.db"*
  "$bench" seed "$dir/twofold.db" "$n" "$dir/users.txt" > /dev/null
  # The same users and secrets for every tool: google-authenticator's per-user files (safe
  # configuration: DISALLOW_REUSE) and pam_oath's one users file.
  python3 - "$dir" <<'PY'
import base64, os, sys
d = sys.argv[1]
oath = []
for line in open(os.path.join(d, "users.txt")):
    name, b32 = line.split()
    with open(os.path.join(d, "ga", name), "w") as f:
        f.write(f'{b32}\n" WINDOW_SIZE 3\n" DISALLOW_REUSE\n" TOTP_AUTH\n')
    raw = base64.b32decode(b32 + "=" * ((8 - len(b32) % 8) % 8))
    oath.append(f"HOTP/T30/6 {name} - {raw.hex()}\n")
with open(os.path.join(d, "oath.users"), "w") as f:
    f.writelines(oath)
PY
  # Disjoint slices of users for the two concurrency levels (codes are single-use), and the
  # last user for the flood.
  half=$(( (n - 1) / 2 ))
  head -n "$half" "$dir/users.txt" > "$dir/c1.txt"
  sed -n "$((half + 1)),$((2 * half))p" "$dir/users.txt" > "$dir/c8.txt"
  flood_user=$(tail -n 1 "$dir/users.txt" | cut -d' ' -f1)
  printf 'socket = "%s/s"\ndatabase = "%s/twofold.db"\nmax_connections = 1024\n' "$dir" "$dir" > "$dir/twofold.toml"
  "$target/twofoldd" --config "$dir/twofold.toml" 2> "$dir/twofoldd.log" &
  daemon_pid=$!
  for _ in $(seq 200); do [ -S "$dir/s" ] && break; sleep 0.05; done
  echo "auth required pam_deny.so" > "$work/pam.d/other"
  echo "auth required pam_permit.so" > "$work/pam.d/permit"
  echo "auth required $module socket=$dir/s" > "$work/pam.d/twofold"
  echo "auth required pam_google_authenticator.so secret=$dir/ga/\${USER} user=root" > "$work/pam.d/ga"
  echo "auth required pam_oath.so usersfile=$dir/oath.users window=1" > "$work/pam.d/oath"
  logins=$(( per_run < 3 * half ? per_run : 3 * half ))
  for threads in 1 8; do
    slice="$dir/c1.txt"; [ "$threads" = 8 ] && slice="$dir/c8.txt"
    for tool in permit twofold ga oath; do
      count=$logins
      if [ "$tool" = oath ] && [ "$n" -gt 10000 ]; then
        # pam_oath scans and rewrites its whole file per login: one probe login first.
        probe=$(run_pam oath "$slice" 1 1)
        p=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["p50_ms"])' "$probe")
        if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 1000 else 1)' "$p"; then
          echo "   pam_oath: one login takes $p ms at N=$n: stopped here" >&2
          record "$tool" "$n" "$threads" "$probe"
          continue
        fi
        count=$(( logins < 300 ? logins : 300 ))
      fi
      r=$(run_pam "$tool" "$slice" "$threads" "$count")
      echo "   $tool threads=$threads: $r" >&2
      record "$tool" "$n" "$threads" "$r"
    done
  done
  # Other users' logins while one user receives 1,000 wrong codes per second. Fresh users:
  # the second quarter of the c8 slice was not used above if logins < 3 * half.
  quiet=$(run_pam twofold "$dir/c1.txt" 1 "$(( logins / 3 ))")
  loud=$(run_pam twofold "$dir/c8.txt" 1 "$(( logins / 3 ))" "$dir/s" "$flood_user" 1000)
  record flood_off "$n" 1 "$quiet"
  record flood_on "$n" 1 "$loud"
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$daemon_pid/status")
  record rss "$n" 0 "{\"kib\": $rss}"
  if [ "$n" = "${sizes[0]}" ]; then
    # The floor under one login, in this run: a durable write on the database's file system,
    # a raw round trip to twofoldd (a login makes two), and libpam loading and unloading the
    # module (a stack whose pam_twofold line is never reached, against pam_permit alone).
    record floor_fsync "$n" 1 "$("$bench" fsync "$dir" 500)"
    record floor_round_trip "$n" 1 "$("$bench" round-trip "$dir/s" 500)"
    printf 'auth sufficient pam_permit.so\nauth required %s socket=%s/s\n' "$module" "$dir" > "$work/pam.d/twofold-load"
    r=$(LD_PRELOAD="$wrapper" PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$work/pam.d" \
      "$bench" pam-side-by-side "$dir/c1.txt" "$per_run" permit twofold-load 2>> "$work/pam-stderr.log")
    echo "   floor: module load and unload, side by side with pam_permit: $r" >&2
    record floor_load "$n" 1 "$r"
  fi
  kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=""
  if [ "$n" = "${sizes[0]}" ]; then
    # What several authenticators add to a login: the same users on two fresh stores, one
    # authenticator each and five each (the code comes from the first; every login checks all
    # five), measured side by side with pam_permit, login by login, so that noise falls on all
    # three alike.
    for k in 1 5; do
      "$bench" seed "$dir/a$k.db" "$n" "$dir/a$k-users.txt" "$k" > /dev/null
      printf 'socket = "%s/a%s.s"\ndatabase = "%s/a%s.db"\n' "$dir" "$k" "$dir" "$k" > "$dir/a$k.toml"
      "$target/twofoldd" --config "$dir/a$k.toml" 2> "$dir/twofoldd-a$k.log" &
      if [ "$k" = 1 ]; then daemon_pid=$!; else daemon2_pid=$!; fi
      for _ in $(seq 200); do [ -S "$dir/a$k.s" ] && break; sleep 0.05; done
      echo "auth required $module socket=$dir/a$k.s" > "$work/pam.d/twofold-a$k"
    done
    r=$(LD_PRELOAD="$wrapper" PAM_WRAPPER=1 PAM_WRAPPER_SERVICE_DIR="$work/pam.d" \
      "$bench" pam-side-by-side "$dir/a1-users.txt" "$per_run" permit twofold-a1 twofold-a5 2>> "$work/pam-stderr.log")
    echo "   1 and 5 authenticators, side by side: $r" >&2
    record authenticators "$n" 1 "$r"
    kill "$daemon_pid" "$daemon2_pid"; wait "$daemon_pid" "$daemon2_pid" 2>/dev/null || true
    daemon_pid=""; daemon2_pid=""
  fi
done

# The PostgreSQL store beside SQLite (store = "postgres"): a real server on 127.0.0.1, run as
# the postgres account from a directory of its own, stopped by its pid at the end. Reached as
# a fleet reaches it: over TCP with TLS (sslmode=verify-full against its self-signed
# certificate; twofoldd refuses plain TCP).
echo "== PostgreSQL store: N = 100 logins, then capacity over two daemons" >&2
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pgwork=$(mktemp -d /tmp/twofold-bench-pg.XXXXXX)
chmod 755 "$pgwork"
install -d -m 700 -o postgres -g postgres "$pgwork/data"
as_postgres() { setpriv --reuid postgres --regid postgres --init-groups -- "$@"; }
as_postgres "$pgbin/initdb" -A trust -U twofold -E UTF8 --no-sync -D "$pgwork/data" > /dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -addext basicConstraints=critical,CA:FALSE \
  -keyout "$pgwork/data/server.key" -out "$pgwork/data/server.crt" 2> /dev/null
chown postgres:postgres "$pgwork/data/server.key" "$pgwork/data/server.crt"
chmod 600 "$pgwork/data/server.key"
install -m 644 "$pgwork/data/server.crt" "$pgwork/ca.pem"
printf "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n" >> "$pgwork/data/postgresql.conf"
pgport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# A simple command in the background, so that $! is the server itself (setpriv execs it).
setpriv --reuid postgres --regid postgres --init-groups -- "$pgbin/postgres" -D "$pgwork/data" \
  -p "$pgport" -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections=100 \
  2> "$pgwork/postgres.log" &
pg_pid=$!
for _ in $(seq 300); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$pgport" -U twofold && break; sleep 0.1; done
"$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U twofold logins
"$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U twofold capacity
pgurl="host=127.0.0.1 port=$pgport user=twofold sslmode=verify-full sslrootcert=$pgwork/ca.pem"
pgdir="$work/pg"
mkdir -p "$pgdir"
"$bench" seed "postgres:$pgurl dbname=logins" 100 "$pgdir/users.txt" > /dev/null
head -n 49 "$pgdir/users.txt" > "$pgdir/c1.txt"
sed -n '50,98p' "$pgdir/users.txt" > "$pgdir/c8.txt"
printf 'socket = "%s/s"\ndatabase = "%s/unused.db"\nmax_connections = 1024\nstore = "postgres"\npostgres_url = "%s dbname=logins"\n' \
  "$pgdir" "$pgdir" "$pgurl" > "$pgdir/twofold.toml"
"$target/twofoldd" --config "$pgdir/twofold.toml" 2> "$pgdir/twofoldd.log" &
daemon_pid=$!
for _ in $(seq 200); do [ -S "$pgdir/s" ] && break; sleep 0.05; done
echo "auth required $module socket=$pgdir/s" > "$work/pam.d/twofold-pg"
for threads in 1 8; do
  slice="$pgdir/c1.txt"; [ "$threads" = 8 ] && slice="$pgdir/c8.txt"
  r=$(run_pam twofold-pg "$slice" "$threads" 147)
  echo "   twofold (postgres) threads=$threads: $r" >&2
  record pg 100 "$threads" "$r"
done
kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=""
if $quick; then pg_cap_users=5000; else pg_cap_users=20000; fi
cap_pg=$("$bench" capacity "$target/twofoldd" "$pg_cap_users" 32 "$secs" "$pgurl dbname=capacity")
record capacity_pg 0 32 "$cap_pg"

# The same with a synchronous standby (what a failover without replay costs): a streaming
# replica of the server (pg_basebackup -R) on another port, named in
# synchronous_standby_names, so that every commit waits until the standby has it.
echo "== PostgreSQL store with a synchronous standby: N = 100 logins, then capacity" >&2
install -d -m 700 -o postgres -g postgres "$pgwork/standby"
as_postgres "$pgbin/pg_basebackup" -d "host=127.0.0.1 port=$pgport user=twofold application_name=bench_standby" \
  -R -X stream -c fast --no-sync -D "$pgwork/standby"
pgport2=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
setpriv --reuid postgres --regid postgres --init-groups -- "$pgbin/postgres" -D "$pgwork/standby" \
  -p "$pgport2" -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections=100 \
  2> "$pgwork/standby.log" &
pg2_pid=$!
for _ in $(seq 300); do "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$pgport2" -U twofold && break; sleep 0.1; done
pgsql() { "$pgbin/psql" -h 127.0.0.1 -p "$pgport" -U twofold -d postgres -qAtc "$1"; }
pgsql "ALTER SYSTEM SET synchronous_standby_names = 'bench_standby'" > /dev/null
pgsql "SELECT pg_reload_conf()" > /dev/null
for _ in $(seq 300); do
  [ "$(pgsql "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'bench_standby'")" = sync ] && break
  sleep 0.1
done
[ "$(pgsql "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'bench_standby'")" = sync ] \
  || { echo "bench.sh: the standby did not become synchronous" >&2; exit 1; }
"$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U twofold logins_sync
"$pgbin/createdb" -h 127.0.0.1 -p "$pgport" -U twofold capacity_sync
"$bench" seed "postgres:$pgurl dbname=logins_sync" 100 "$pgdir/users-sync.txt" > /dev/null
head -n 49 "$pgdir/users-sync.txt" > "$pgdir/s1.txt"
sed -n '50,98p' "$pgdir/users-sync.txt" > "$pgdir/s8.txt"
sed "s/dbname=logins\"/dbname=logins_sync\"/; s|$pgdir/s\"|$pgdir/sync.s\"|" "$pgdir/twofold.toml" > "$pgdir/sync.toml"
"$target/twofoldd" --config "$pgdir/sync.toml" 2> "$pgdir/twofoldd-sync.log" &
daemon_pid=$!
for _ in $(seq 200); do [ -S "$pgdir/sync.s" ] && break; sleep 0.05; done
echo "auth required $module socket=$pgdir/sync.s" > "$work/pam.d/twofold-pg-sync"
for threads in 1 8; do
  slice="$pgdir/s1.txt"; [ "$threads" = 8 ] && slice="$pgdir/s8.txt"
  r=$(run_pam twofold-pg-sync "$slice" "$threads" 147)
  echo "   twofold (postgres, synchronous standby) threads=$threads: $r" >&2
  record pg_sync 100 "$threads" "$r"
done
kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=""
cap_sync=$("$bench" capacity "$target/twofoldd" "$pg_cap_users" 32 "$secs" "$pgurl dbname=capacity_sync")
record capacity_pg_sync 0 32 "$cap_sync"
kill -INT "$pg_pid"; wait "$pg_pid" 2>/dev/null || true; pg_pid=""
kill -INT "$pg2_pid"; wait "$pg2_pid" 2>/dev/null || true; pg2_pid=""

echo "== capacity: 32 clients, durable acceptances" >&2
cap=$("$bench" capacity "$target/twofoldd" "$cap_users" 32 "$secs")
record capacity 0 32 "$cap"
record so_size 0 0 "{\"bytes\": $(stat -c %s "$module")}"

[ -z "$json" ] && [ -n "$plot" ] && json="$work/results.json"
python3 - "$results" "$json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def get(kind, n, threads):
    for r in rows:
        if r["kind"] == kind and r["n"] == n and r["threads"] == threads:
            return r["r"]
sizes = sorted({r["n"] for r in rows if r["kind"] == "permit"})
tools = {"twofold": "pam_twofold", "ga": "pam_google_authenticator", "oath": "pam_oath"}
out = {"overhead_ms": {}, "p99_ms": {}, "succeeded": {}}
print(f"{'tool':<26}{'N':>8}{'conc':>6}{'p50 ms':>10}{'p99 ms':>10}{'overhead':>10}{'ok':>12}")
for n in sizes:
    for threads in (1, 8):
        base = get("permit", n, threads)
        print(f"{'pam_permit (baseline)':<26}{n:>8}{threads:>6}{base['p50_ms']:>10.3f}{base['p99_ms']:>10.3f}{'':>10}{base['succeeded']:>6}/{base['logins']:<5}")
        for key, name in tools.items():
            r = get(key, n, threads)
            if r is None:
                continue
            over = r["p50_ms"] - base["p50_ms"]
            label = f"{name}" + (" (stopped)" if r["logins"] == 1 and key == "oath" else "")
            print(f"{label:<26}{n:>8}{threads:>6}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}{over:>+10.3f}{r['succeeded']:>6}/{r['logins']:<5}")
            k = f"{name}" if threads == 1 else f"{name}@8"
            out["overhead_ms"].setdefault(k, {})[str(n)] = round(over, 4)
            out["p99_ms"].setdefault(k, {})[str(n)] = round(r["p99_ms"], 4)
            out["succeeded"].setdefault(k, {})[str(n)] = f"{r['succeeded']}/{r['logins']}"
small, big = sizes[0], sizes[-1]
ov = out["overhead_ms"]
def ratio(a, b):
    return round(a / b, 3) if b else None
out["ratio_overhead_vs_google_authenticator"] = ratio(ov["pam_twofold"][str(small)], ov["pam_google_authenticator"][str(small)])
out["ratio_overhead_vs_pam_oath"] = ratio(ov["pam_twofold"][str(small)], ov["pam_oath"][str(small)])
out["ratio_overhead_vs_google_authenticator_8"] = ratio(ov["pam_twofold@8"][str(small)], ov["pam_google_authenticator@8"][str(small)])
cap = get("capacity", 0, 32)
out["daemon_durable_verifications_per_s"] = round(cap["durable_verifications_per_s"], 1)
f_off, f_on = get("flood_off", big, 1), get("flood_on", big, 1)
out["flood_p99_ratio"] = ratio(f_on["p99_ms"], f_off["p99_ms"])
out["flood_requests_per_s"] = round(f_on["flood_requests_per_s"], 1)
out["scale_ratio_100k_vs_100"] = ratio(ov["pam_twofold"][str(big)], ov["pam_twofold"][str(small)])
out["scale_sizes"] = [small, big]
out["daemon_rss_mib_100k"] = round(get("rss", big, 0)["kib"] / 1024, 2)
out["rss_at_users"] = big
out["so_size_bytes"] = get("so_size", 0, 0)["bytes"]
pg = {"overhead_ms": {}, "p99_ms": {}, "succeeded": {}}
for threads in (1, 8):
    r, base, sq = get("pg", small, threads), get("permit", small, threads), get("twofold", small, threads)
    if r is None:
        continue
    over = r["p50_ms"] - base["p50_ms"]
    print(f"{'pam_twofold (postgres)':<26}{small:>8}{threads:>6}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}{over:>+10.3f}{r['succeeded']:>6}/{r['logins']:<5}")
    pg["overhead_ms"][str(threads)] = round(over, 4)
    pg["p99_ms"][str(threads)] = round(r["p99_ms"], 4)
    pg["succeeded"][str(threads)] = f"{r['succeeded']}/{r['logins']}"
    pg.setdefault("ratio_overhead_vs_sqlite", {})[str(threads)] = ratio(over, sq["p50_ms"] - base["p50_ms"])
side = get("authenticators", small, 1)
if side:
    by = {r["service"]: r for r in side["interleaved"]}
    one, five = by["twofold-a1"], by["twofold-a5"]
    for label, r in (("pam_twofold (1 auth., s-b-s)", one), ("pam_twofold (5 auth., s-b-s)", five)):
        print(f"{label:<26}{small:>8}{1:>6}{r['p50_ms']:>10.3f}{'':>10}{r['p50_over_baseline_ms']:>+10.3f}{r['succeeded']:>6}/{r['logins']:<5}")
    out["authenticators_5"] = {
        "overhead_ms_1": round(one["p50_over_baseline_ms"], 4),
        "overhead_ms_5": round(five["p50_over_baseline_ms"], 4),
        "succeeded": f"{one['succeeded']}/{one['logins']} and {five['succeeded']}/{five['logins']}",
        "ratio_overhead_vs_1": ratio(five["p50_over_baseline_ms"], one["p50_over_baseline_ms"]),
    }
cap_pg = get("capacity_pg", 0, 32)
if cap_pg:
    pg["daemon_durable_verifications_per_s_two_daemons"] = round(cap_pg["durable_verifications_per_s"], 1)
sync = {"overhead_ms": {}, "p99_ms": {}, "succeeded": {}}
for threads in (1, 8):
    r, base = get("pg_sync", small, threads), get("permit", small, threads)
    if r is None:
        continue
    over = r["p50_ms"] - base["p50_ms"]
    print(f"{'pam_twofold (pg, sync)':<26}{small:>8}{threads:>6}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}{over:>+10.3f}{r['succeeded']:>6}/{r['logins']:<5}")
    sync["overhead_ms"][str(threads)] = round(over, 4)
    sync["p99_ms"][str(threads)] = round(r["p99_ms"], 4)
    sync["succeeded"][str(threads)] = f"{r['succeeded']}/{r['logins']}"
    if str(threads) in pg["overhead_ms"]:
        sync.setdefault("ratio_overhead_vs_no_standby", {})[str(threads)] = ratio(over, pg["overhead_ms"][str(threads)])
cap_sync = get("capacity_pg_sync", 0, 32)
if cap_sync:
    sync["daemon_durable_verifications_per_s_two_daemons"] = round(cap_sync["durable_verifications_per_s"], 1)
pg["synchronous_standby"] = sync
out["postgres"] = pg
print()
print(f"twofold / google-authenticator overhead (N={small}): {out['ratio_overhead_vs_google_authenticator']} at 1 login, {out['ratio_overhead_vs_google_authenticator_8']} at 8")
print(f"twofold / pam_oath overhead (N={small}):              {out['ratio_overhead_vs_pam_oath']}")
print(f"twofold overhead N={big} / N={small}:                  {out['scale_ratio_100k_vs_100']}")
if "authenticators_5" in out:
    print(f"twofold overhead, 5 authenticators / 1 (N={small}):  {out['authenticators_5']['ratio_overhead_vs_1']} (target: at most 1.10)")
print(f"daemon capacity, 32 clients, durable:            {out['daemon_durable_verifications_per_s']} verifications/s")
print(f"p99 under a flood of {out['flood_requests_per_s']} wrong codes/s / without: {out['flood_p99_ratio']} (N={big})")
print(f"postgres store: overhead {pg['overhead_ms']} ms (1 and 8 logins), {pg.get('ratio_overhead_vs_sqlite')} of SQLite's; {pg.get('daemon_durable_verifications_per_s_two_daemons')} verifications/s over two daemons")
print(f"postgres with a synchronous standby: overhead {sync['overhead_ms']} ms, {sync.get('ratio_overhead_vs_no_standby')} of without; {sync.get('daemon_durable_verifications_per_s_two_daemons')} verifications/s over two daemons")
print(f"twofoldd RSS at {big} users: {out['daemon_rss_mib_100k']} MiB; pam_twofold.so: {out['so_size_bytes']} bytes")
fs, rt, ld = get("floor_fsync", small, 1), get("floor_round_trip", small, 1), get("floor_load", small, 1)
if fs and rt and ld:
    load = {r["service"]: r for r in ld["interleaved"]}["twofold-load"]["p50_over_baseline_ms"]
    floor = fs["p50_ms"] + 2 * rt["p50_ms"] + load
    over = ov["pam_twofold"][str(small)]
    out["floor"] = {"fsync_ms": round(fs["p50_ms"], 4), "round_trip_ms": round(rt["p50_ms"], 4), "module_load_ms": round(load, 4)}
    out["floor_ms"] = round(floor, 4)
    out["overhead_over_floor"] = ratio(over, floor)
    print(f"floor (N={small}): fsync {fs['p50_ms']:.3f} + 2 x round trip {rt['p50_ms']:.3f} + module load {load:.3f} = {floor:.3f} ms; twofold's overhead {over:.3f} ms = {out['overhead_over_floor']} x the floor (target: at most 1.3)")
if sys.argv[2]:
    json.dump(out, open(sys.argv[2], "w"), indent=2)
PY
if [ -n "$plot" ]; then
  python3 "$repo/scripts/plot-bench.py" "$json" "$plot"
fi
