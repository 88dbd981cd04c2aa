#!/usr/bin/env bash
# The Debian package, end to end (as root, on Debian 12; CI runs it after scripts/test.sh):
# build it with dpkg-buildpackage, lintian (no errors), systemd-analyze, install it with dpkg,
# run the INSTALLED twofoldd with the packaged configuration the way its unit would, enroll a
# user with the installed twofold, log in through a real sshd whose PAM service names the
# installed module by its bare name (right code in, wrong and replayed codes out), check that
# installing enabled nothing and that the pam-auth-update profile works, then purge and check
# that nothing is left behind.
#
#   sudo scripts/package-test.sh
#
# Refuses to run when twofold is already installed (the purge would remove the host's own).
# The build's ../twofold_* files are moved into a temporary directory and deleted at the end.
set -euo pipefail

prog=package-test.sh
fail() { echo "$prog: FAIL: $*" >&2; exit 1; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ok() { echo "   ok: $*"; }

[ "$(id -u)" -eq 0 ] || { echo "$prog: run as root (it installs a package, starts sshd, creates a user)" >&2; exit 2; }
export DEBIAN_FRONTEND=noninteractive
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
start=$(date +%s)

if dpkg-query -W -f='${Status}' twofold 2>/dev/null | grep -qv 'not-installed'; then
  echo "$prog: the package twofold is installed on this host; this test would purge it. Remove it first." >&2
  exit 2
fi
if [ -e /run/twofold/twofold.sock ] || [ -e /var/lib/twofold ] || [ -e /etc/twofold ]; then
  echo "$prog: /run/twofold, /var/lib/twofold or /etc/twofold exists: a twofold is in use here; not touching it" >&2
  exit 2
fi

"$repo/scripts/deps.sh"

work=$(mktemp -d /tmp/twofold-pkgtest.XXXXXX)
chmod 700 "$work"  # the key and codes of the test user live here
user=twofold-pkgtest
service="twofold-pkgtest-$$"
daemon_pid=""
profile_enabled=false
# shellcheck source-path=SCRIPTDIR source=sshd-lib.sh
. "$repo/scripts/sshd-lib.sh"

cleanup() {
  local rc=$?
  set +e
  sshd_stop
  if dpkg-query -W -f='${Status}' twofold 2>/dev/null | grep -qv 'not-installed'; then
    # Take the module out of common-auth before the daemon goes: no login may be left
    # asking a daemon that is gone.
    $profile_enabled && pam-auth-update --package --remove twofold
    dpkg --purge twofold > "$work/purge-cleanup.log" 2>&1 || cat "$work/purge-cleanup.log" >&2
  fi
  if [ -n "$daemon_pid" ]; then
    kill "$daemon_pid" 2>/dev/null
    wait "$daemon_pid" 2>/dev/null
  fi
  pkill -KILL -u "$user" 2>/dev/null
  id "$user" >/dev/null 2>&1 && userdel -r "$user" 2>/dev/null
  rm -rf /run/twofold /var/lib/twofold
  (cd "$repo" && debian/rules clean > /dev/null 2>&1)
  rm -rf "$work"
  if [ "$rc" -eq 0 ]; then
    echo "$prog: PASS in $(( $(date +%s) - start )) s (cleaned up)"
  else
    echo "$prog: failed (exit $rc) after $(( $(date +%s) - start )) s; cleaned up" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

version=$(dpkg-parsechangelog -S Version)
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
deb="$work/twofold_${version}_${arch}.deb"

step "Building the package (dpkg-buildpackage -us -uc -b)"
if ! dpkg-buildpackage -us -uc -b > "$work/build.log" 2>&1; then
  tail -40 "$work/build.log" >&2
  fail "dpkg-buildpackage failed"
fi
for f in "twofold_${version}_${arch}.deb" "twofold_${version}_${arch}.buildinfo" "twofold_${version}_${arch}.changes"; do
  [ -f "../$f" ] || fail "dpkg-buildpackage did not produce ../$f"
  mv "../$f" "$work/"
done
ok "$(basename "$deb"), $(du -h "$deb" | cut -f1)"
dpkg-deb -c "$deb" | awk '{print "   " $1, $6}'

step "lintian (errors fail the test; every tag is printed)"
lintian --pedantic -I --fail-on error --tag-display-limit 0 \
  "$work/twofold_${version}_${arch}.changes" > "$work/lintian.txt" 2>&1 || lintian_rc=$?
grep -v 'running with root privileges' "$work/lintian.txt" | sed 's/^/   /' || true
[ "${lintian_rc:-0}" -eq 0 ] || fail "lintian reports errors (exit ${lintian_rc})"
ok "no lintian errors ($(grep -c '^W:' "$work/lintian.txt" || true) warnings)"

step "Manual pages render without warnings"
mkdir "$work/root"
dpkg-deb -x "$deb" "$work/root"
for page in "$work"/root/usr/share/man/man*/*; do
  warnings=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$page" 2>&1 >/dev/null) \
    || fail "man cannot render $page"
  [ -z "$warnings" ] || fail "$(basename "$page"): $warnings"
  ok "$(basename "$page")"
done

step "Installing does not switch anything on"
common_auth_before=$(sha256sum /etc/pam.d/common-auth)
grep -rl twofold /etc/pam.d && fail "/etc/pam.d mentions twofold before the install"
dpkg -i "$deb" > "$work/install.log" 2>&1 || { cat "$work/install.log" >&2; fail "dpkg -i failed"; }
dpkg -L twofold | sort > "$work/dpkg-L.txt"
# Files (not directories) the package installed: each must be gone after the purge.
while read -r p; do
  if [ ! -d "$p" ]; then echo "$p"; fi
done < "$work/dpkg-L.txt" > "$work/files.txt"
for f in /usr/sbin/twofoldd /usr/bin/twofold "/usr/lib/$multiarch/security/pam_twofold.so" \
         /etc/twofold/twofold.toml /usr/share/pam-configs/twofold /lib/systemd/system/twofoldd.service \
         /lib/systemd/system/twofoldd.socket; do
  grep -qx "$f" "$work/files.txt" || fail "the package does not install $f"
done
grep -qx /etc/twofold/twofold.toml /var/lib/dpkg/info/twofold.conffiles \
  || fail "/etc/twofold/twofold.toml is not a conffile"
[ "$(sha256sum /etc/pam.d/common-auth)" = "$common_auth_before" ] \
  || fail "installing changed /etc/pam.d/common-auth (the profile must be Default: no)"
grep -rl twofold /etc/pam.d && fail "installing put twofold into /etc/pam.d"
grep -qx twofold /var/lib/pam/seen || fail "postinst did not register the profile with pam-auth-update"
ok "$(wc -l < "$work/files.txt") files; common-auth unchanged; profile registered but off"

step "systemd-analyze on the installed unit"
unit=/lib/systemd/system/twofoldd.service
# The manual pages are checked above; minimal images do not install /usr/share/man.
systemd-analyze verify --man=no "$unit" /lib/systemd/system/twofoldd.socket \
  || fail "systemd-analyze verify $unit twofoldd.socket"
grep -qx 'ListenStream=/run/twofold/twofold.sock' /lib/systemd/system/twofoldd.socket \
  || fail "twofoldd.socket does not listen where the module connects"
ok "verify (service and socket)"
exposure=$(systemd-analyze security --offline=true "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for twofoldd.service: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "systemd-analyze security printed no exposure level"
awk -v e="$exposure" 'BEGIN { exit !(e <= 1.0) }' || fail "exposure $exposure is above 1.0: the unit's sandbox was weakened"
ok "security --offline=true: exposure $exposure"

step "Starting the installed twofoldd with the packaged configuration, as its unit would"
# RuntimeDirectory=twofold (0755), StateDirectory=twofold (0700), UMask=0077.
install -d -m 0755 /run/twofold
install -d -m 0700 /var/lib/twofold
(umask 077; exec /usr/sbin/twofoldd --config /etc/twofold/twofold.toml) 2> "$work/twofoldd.log" &
daemon_pid=$!
for _ in $(seq 100); do [ -S /run/twofold/twofold.sock ] && break; kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
[ -S /run/twofold/twofold.sock ] || { cat "$work/twofoldd.log" >&2; fail "the installed twofoldd did not start with /etc/twofold/twofold.toml"; }
[ "$(stat -c %a /run/twofold/twofold.sock)" = 666 ] || fail "socket mode is $(stat -c %a /run/twofold/twofold.sock), not 666"
ok "serving /run/twofold/twofold.sock"
# The shipped file lists every key with its default: uncommented, it must parse too.
sed -n 's/^#\([a-z_]* = \|\[throttle\]\|\[email\]\)/\1/p' /etc/twofold/twofold.toml > "$work/uncommented.toml"
# (With a seal key of its own: the installed twofold makes it.)
sed -i "s#^seal_key_file = .*#seal_key_file = \"$work/seal.key\"#" "$work/uncommented.toml"
/usr/bin/twofold seal init --config "$work/uncommented.toml" > /dev/null || fail "twofold seal init failed"
/usr/sbin/twofoldd --config "$work/uncommented.toml" --socket "$work/u.sock" --database "$work/u.db" 2> "$work/u.log" &
u_pid=$!
for _ in $(seq 100); do [ -S "$work/u.sock" ] && break; kill -0 "$u_pid" 2>/dev/null || break; sleep 0.1; done
u_served=false
[ -S "$work/u.sock" ] && u_served=true
kill "$u_pid" 2>/dev/null || true
wait "$u_pid" 2>/dev/null || true
# SIGTERM removes the socket of its own: it must have been there before.
$u_served || { cat "$work/uncommented.toml" "$work/u.log" >&2; fail "the shipped configuration, uncommented, is refused"; }
ok "the shipped configuration parses commented ($(grep -c '^#[a-z_]* = ' /etc/twofold/twofold.toml) keys) and uncommented"
# ... and lists every key the daemon knows (the fields of Config and ThrottleConfig).
while read -r key; do
  grep -Eq "^#($key = |\[$key\]$)" /etc/twofold/twofold.toml \
    || fail "key '$key' of daemon/src/config.rs is missing from debian/twofold.toml (and twofold.toml(5)?)"
  grep -q "^\.BR $key " "$repo/debian/man/twofold.toml.5" || [ "$key" = throttle ] || [ "$key" = email ] \
    || fail "key '$key' of daemon/src/config.rs is missing from debian/man/twofold.toml.5"
done < <(sed -n '/^pub struct \(Config\|ThrottleConfig\) {/,/^}/s/^    pub \([a-z_]*\):.*/\1/p' \
           "$repo/daemon/src/config.rs" "$repo/daemon/src/throttle.rs")
# twofold(1) describes every command the installed twofold has.
man1=$(sed 's/\\-/-/g' "$repo/debian/man/twofold.1")
while read -r cmd; do
  grep -q "^\.B $cmd\b" <<< "$man1" || fail "'twofold $cmd' is missing from debian/man/twofold.1"
done < <(/usr/bin/twofold --help | sed -n '/^Commands:/,/^$/s/^  \([a-z-]*\) .*/\1/p' | grep -vx help)
# pam_twofold(8) describes every module argument of pam_module/src/args.rs.
while read -r arg; do
  grep -Eq "^\.BI? \[?$arg(=| |$)" "$repo/debian/man/pam_twofold.8" \
    || fail "module argument '$arg' is missing from debian/man/pam_twofold.8"
done < <(grep -P '^\s*\("[a-z_]+"(, | \|).*=>' "$repo/pam_module/src/args.rs" | grep -oP '^\s*\("\K[a-z_]+' | sort -u)

step "Enrolling $user with the installed twofold"
id "$user" >/dev/null 2>&1 && { pkill -KILL -u "$user" 2>/dev/null || true; userdel -r "$user" 2>/dev/null || true; }
useradd -m -s /bin/bash "$user"
ssh-keygen -q -t ed25519 -N '' -C "$user@twofold-pkgtest" -f "$work/id_user"
install -d -m 700 -o "$user" -g "$user" "/home/$user/.ssh"
install -m 600 -o "$user" -g "$user" "$work/id_user.pub" "/home/$user/.ssh/authorized_keys"
/usr/bin/twofold enroll --user "$user" --json > "$work/enroll.json"
secret=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])' < "$work/enroll.json")
# The key goes to oathtool on a pipe, never in argv (other users can read /proc/*/cmdline).
totp() { printf '%s\n' "$secret" | oathtool --totp -b "$@" -; }
totp | /usr/bin/twofold confirm - --user "$user" > /dev/null \
  || fail "twofold confirm refused the current code"
/usr/bin/twofold status --user "$user"
ok "enrolled"
set +e
/usr/bin/twofold doctor --json > "$work/doctor.json"
doctor_rc=$?
set -e
python3 - "$work/doctor.json" <<'PY' || fail "twofold doctor does not see the installed daemon and configuration as healthy"
import json, sys
findings = json.load(open(sys.argv[1]))["findings"]
for f in findings:
    print(f"   doctor: [{f['level']}] {f['check']}: {f['message']}")
bad = [f for f in findings if f["check"] in ("config", "daemon", "socket", "database") and f["level"] != "ok"]
sys.exit(1 if bad else 0)
PY
ok "doctor: config, daemon, socket and database ok (exit $doctor_rc; PAM and sshd are not set up on this host)"

step "A real sshd on 127.0.0.1 whose PAM service says 'auth required pam_twofold.so'"
port=$(free_port)
sshd_start "$work" "$port" "$service" "$user" "auth     required  pam_twofold.so"
ok "sshd on 127.0.0.1:$port, PAM service /etc/pam.d/$service"
# The confirmation used the current time step: log in with the next one.
code=$(totp -N "now + 30 seconds")
# shellcheck disable=SC2016 # the remote shell expands it
out=$(sshd_login "$work" "$port" "$user" "$work/id_user" "$code" 'echo "in as $(id -un)"') \
  || { tail -20 "$work/sshd.log" >&2; fail "the login with a correct code was refused"; }
[ "$out" = "in as $user" ] || fail "unexpected output from the login: $out"
failures() { /usr/bin/twofold status --user "$user" --json | python3 -c 'import json, sys; print(json.load(sys.stdin)["failures"])'; }
[ "$(failures)" = 0 ] || fail "the daemon counts failures after a good login"
ok "correct code: logged in"
wrong=$(printf '%06d' $(( (10#$(totp -N "now + 60 seconds") + 500000) % 1000000 )))
if sshd_login "$work" "$port" "$user" "$work/id_user" "$wrong" true 2>/dev/null; then
  fail "a wrong code logged in"
fi
[ "$(failures)" = 1 ] || fail "the wrong code was not refused by twofoldd (failures: $(failures))"
ok "wrong code: refused by twofoldd"
if sshd_login "$work" "$port" "$user" "$work/id_user" "$code" true 2>/dev/null; then
  fail "a replayed code logged in"
fi
[ "$(failures)" = 2 ] || fail "the replayed code was not refused by twofoldd (failures: $(failures))"
ok "replayed code: refused by twofoldd"
sshd_stop

step "The pam-auth-update profile: enabled on request, fail-closed, removed by the purge"
pam-auth-update --enable twofold
profile_enabled=true
line=$(grep -E '^auth[[:space:]].*pam_twofold\.so' /etc/pam.d/common-auth) \
  || fail "pam-auth-update --enable twofold did not add pam_twofold to common-auth (locally modified common-* files?)"
echo "   common-auth: $line"
[[ "$line" =~ ^auth[[:space:]]+required[[:space:]]+pam_twofold\.so ]] || fail "the profile's control is not 'required': $line"
ok "enabled as '$line'"

step "Purging the package"
dpkg --purge twofold > "$work/purge.log" 2>&1 || { cat "$work/purge.log" >&2; fail "dpkg --purge failed"; }
profile_enabled=false
kill "$daemon_pid" 2>/dev/null || true
wait "$daemon_pid" 2>/dev/null || true
daemon_pid=""
left=()
while read -r f; do
  if [ -e "$f" ] || [ -L "$f" ]; then left+=("$f"); fi
done < "$work/files.txt"
for d in /etc/twofold /var/lib/twofold /run/twofold /usr/share/doc/twofold \
         /etc/systemd/system/multi-user.target.wants/twofoldd.service; do
  if [ -e "$d" ] || [ -L "$d" ]; then left+=("$d"); fi
done
[ ${#left[@]} -eq 0 ] || fail "left behind after the purge: ${left[*]}"
grep -rl twofold /etc/pam.d && fail "/etc/pam.d still mentions twofold after the purge"
[ "$(sha256sum /etc/pam.d/common-auth)" = "$common_auth_before" ] \
  || fail "/etc/pam.d/common-auth differs from before the install"
grep -rl twofold /var/lib/pam && fail "pam-auth-update still records the twofold profile"
[ -z "$(find /var/lib/systemd/deb-systemd-helper-enabled -name "*twofold*" 2>/dev/null)" ] || fail "deb-systemd-helper still records twofoldd"
dpkg-query -W -f='${Status}\n' twofold 2>/dev/null | grep -qv 'not-installed' && fail "dpkg still knows the package"
ok "no file, directory, pam.d line or pam-auth-update profile left; common-auth as before"
