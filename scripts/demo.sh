#!/usr/bin/env bash
# twofold's main job, on this machine, in one command (as root, on Debian):
# a throwaway twofoldd and an sshd on 127.0.0.1:2222 whose logins need a TOTP code from
# pam_twofold.so, a demo user with a throwaway SSH key, enrolled; one real SSH login proved
# with a computed code; then it waits for you to log in with the code from your own phone.
#
#   sudo scripts/demo.sh          # runs until Ctrl-C, then removes everything it made
#   sudo scripts/demo.sh --once   # stops after the proven login (exit 0)
#
# Nothing of the host's own configuration is touched: sshd runs under a renamed binary so its
# PAM service is a new /etc/pam.d/twofold-demo-PID file (removed at the end), not /etc/pam.d/sshd.
set -euo pipefail

once=false
case "${1:-}" in
  --once) once=true ;;
  "") ;;
  *) echo "usage: $0 [--once]" >&2; exit 2 ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "demo.sh: run as root (it starts sshd and creates a user)" >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
port=${TWOFOLD_DEMO_PORT:-2222}
user=twofold-demo
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Installing the packages the demo needs"
"$repo/scripts/deps.sh"

say "Building twofoldd, twofold and pam_twofold.so (release)"
# A first build compiles about 200 crates: a few minutes on two cores. Cargo shows its progress
# bar on a terminal; elsewhere (CI, a pipe) one line per crate, counted here.
if [ -t 2 ]; then
  (cd "$repo" && cargo build --release -p twofold-daemon -p pam_twofold)
else
  if ! (cd "$repo" && cargo build --release -p twofold-daemon -p pam_twofold 2>&1) \
    | awk '/^ *Compiling /{ n++; printf "   [%d] %s\n", n, $0; fflush(); next } { print; fflush() }'; then
    echo "demo.sh: the build failed" >&2
    exit 1
  fi
fi
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
module="$bin/libpam_twofold.so"
[ -f "$module" ] || { echo "demo.sh: $module was not built" >&2; exit 1; }

# From here on, everything the demo writes (key, QR code, backup codes) is root's alone.
umask 077
work=$(mktemp -d /tmp/twofold-demo.XXXXXX)
service="twofold-demo-$$"
daemon_pid=""
# shellcheck source-path=SCRIPTDIR source=sshd-lib.sh
. "$repo/scripts/sshd-lib.sh"

cleanup() {
  set +e
  sshd_stop
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  pkill -KILL -u "$user" 2>/dev/null
  id "$user" >/dev/null 2>&1 && userdel -r "$user" 2>/dev/null
  rm -rf "$work"
  echo "demo.sh: cleaned up (daemon, sshd, user $user, /etc/pam.d/$service, $work)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "Starting a throwaway twofoldd (database in $work)"
cat > "$work/twofold.toml" <<CONF
socket = "$work/twofold.sock"
database = "$work/twofold.db"
issuer = "twofold-demo"
unenrolled = "deny"
CONF
"$bin/twofoldd" --config "$work/twofold.toml" 2> "$work/twofoldd.log" &
daemon_pid=$!
for _ in $(seq 100); do [ -S "$work/twofold.sock" ] && break; sleep 0.1; done
[ -S "$work/twofold.sock" ] || { cat "$work/twofoldd.log" >&2; exit 1; }
tf() { "$bin/twofold" --socket "$work/twofold.sock" "$@"; }

say "Creating the demo user '$user' with a throwaway SSH key"
id "$user" >/dev/null 2>&1 && { pkill -KILL -u "$user" 2>/dev/null || true; userdel -r "$user" 2>/dev/null || true; }
useradd -m -s /bin/bash "$user"
ssh-keygen -q -t ed25519 -N '' -C "$user@twofold-demo" -f "$work/id_demo"
install -d -m 700 -o "$user" -g "$user" "/home/$user/.ssh"
install -m 600 -o "$user" -g "$user" "$work/id_demo.pub" "/home/$user/.ssh/authorized_keys"

say "Starting sshd on 127.0.0.1:$port: public key AND a verification code"
sshd_start "$work" "$port" "$service" "$user" "auth     required  $module socket=$work/twofold.sock"

say "Enrolling $user (this is what your phone would scan)"
# Under script(1) the CLI sees a terminal and draws the QR code black on white; its code
# prompt meets end-of-file, so the enrollment stays pending for the confirm below.
set +e
script -qec "$bin/twofold --socket $work/twofold.sock enroll --user $user" "$work/enroll.txt" < /dev/null
set -e
secret=$(sed -n 's/^Key: *//p' "$work/enroll.txt" | tr -d ' \r')
[ -n "$secret" ] || { echo "demo.sh: enrollment showed no key" >&2; exit 1; }
# Key and codes travel through pipes, never argv: other users can read /proc/*/cmdline.
totp() { printf '%s\n' "$secret" | oathtool --totp -b "$@" -; }
totp | tf confirm - --user "$user" > "$work/backup.txt"
echo "Confirmed with the current code. Backup codes (single use):"
sed -n 's/^    /    /p' "$work/backup.txt"

say "Proving a real SSH login with a computed code (oathtool, next time step)"
code=$(totp -N "now + 30 seconds")
# shellcheck disable=SC2016 # the remote shell expands it
out=$(sshd_login "$work" "$port" "$user" "$work/id_demo" "$code" \
      'echo "logged in as $(id -un) on $(hostname) with two factors"')
echo "$out"
[[ "$out" == "logged in as $user"* ]] || { echo "demo.sh: the SSH login failed" >&2; tail -20 "$work/sshd.log" >&2; exit 1; }
echo "The same code again is refused (each code works once):"
if sshd_login "$work" "$port" "$user" "$work/id_demo" "$code" true 2>/dev/null; then
  echo "demo.sh: a replayed code was accepted" >&2; exit 1
fi
echo "    refused, as it should be."

if $once; then
  say "Done: one real SSH login needed a key and a code (--once)"
  exit 0
fi

say "Your turn"
cat <<TXT
Scan the QR code above with your authenticator app (or type the key), then log in:

    ssh -i $work/id_demo -p $port $user@127.0.0.1

and type the 6-digit code from the app at "Verification code:". Try a wrong one too.
Watch the decisions:  tail -f $work/twofoldd.log
Press Ctrl-C here to stop; everything the demo made is removed.
TXT
wait "$sshd_pid"
