#!/usr/bin/env bash
# One release's part of scripts/vm-test.sh (which builds the packages and images and runs this
# once per release): boot, install, upgrade and restart under load, SSH and sudo logins,
# journal, reboot, purge. Not meant to be run alone.
#
#   scripts/vm-release.sh RELEASE BASE     BASE holds new.deb, prev.deb, twofold-bench
set -euo pipefail
rel=$1
base=$2
work="$base/$rel"
repo=$(cd "$(dirname "$0")/.." && pwd)
prev=$TWOFOLD_VM_PREV
new=$TWOFOLD_VM_NEW
next=$TWOFOLD_VM_NEXT
t0=$(date +%s)

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $* ($(( $(date +%s) - t0 )) s)"; }
ok() { echo "   ok: $*"; }
result() { echo "== result: $*" | tee -a "$work/summary"; }

# shellcheck source-path=SCRIPTDIR source=vm-lib.sh
. "$repo/scripts/vm-lib.sh"
# shellcheck source-path=SCRIPTDIR source=sshd-lib.sh
. "$repo/scripts/sshd-lib.sh"
# shellcheck source-path=SCRIPTDIR source=vm-ldap.sh
. "$repo/scripts/vm-ldap.sh"
cleanup() {
  local rc=$?
  set +e
  [ "$rc" -ne 0 ] && [ -n "$vm_pid" ] && vm_ssh 'journalctl -b --no-pager -u twofoldd -u ssh | tail -40' < /dev/null 2>/dev/null | sed 's/^/   journal: /' >&2
  vm_stop
}
trap cleanup EXIT
trap 'exit 130' INT TERM

vm_image "$rel" > /dev/null
step "Booting Debian $rel"
vm_boot "$work" vm
vm_ssh 'printf "   %s, %s, %s\n" "$(. /etc/os-release; echo "$PRETTY_NAME")" "$(uname -r)" "$(ssh -V 2>&1 | cut -d, -f1)"' < /dev/null
skew=$(( $(vm_ssh 'date +%s' < /dev/null) - $(date +%s) ))
[ "${skew#-}" -le 5 ] || fail "the VM's clock is ${skew} s off the host's"
ok "clock within ${skew#-} s of the host's"
vm_scp "$base/prev.deb" "$base/new.deb" "$base/next.deb" "$base/twofold-bench" /root/
# Logins a second for the load runs: 20 on real (KVM) CPUs; one emulated CPU spends some 20 ms
# of its time on a login, so 20 a second would take most of it and starve apt for minutes.
rate=${TWOFOLD_VM_RATE:-$([ "$vm_accel" = kvm ] && echo 20 || echo 5)}

# Codes are computed here with oathtool from a key in a private file, never from argv. Each
# login needs a step no login of that key has used (the last one is kept beside the key):
# the previous step while it has time left, else the current one, else the next; waits when
# even the next is taken.
code_for() { # KEY_FILE
  local now left target last
  last=$(cat "$1.step" 2>/dev/null || echo 0)
  now=$(( $(date +%s) / 30 ))
  left=$(( 30 - $(date +%s) % 30 ))
  target=$(( left < 8 ? now : now - 1 ))
  [ "$target" -gt "$last" ] || target=$(( last + 1 ))
  while [ "$target" -gt $(( $(date +%s) / 30 + 1 )) ]; do sleep 1; done
  echo "$target" > "$1.step"
  oathtool --totp -b -N "@$(( target * 30 + 1 ))" - < "$1"
}

step "Installing twofold $prev (the previous release) with apt"
vm_ssh "DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/prev.deb > /root/install-prev.log 2>&1 || { cat /root/install-prev.log; exit 1; }" < /dev/null \
  || fail "apt-get install of $prev"
[ "$(vm_ssh 'systemctl is-active twofoldd' < /dev/null)" = active ] || fail "twofoldd is not active after the install"
ok "twofoldd active ($(vm_ssh "dpkg-query -W -f='\${Version}' twofold" < /dev/null))"

step "Enrolling alice, and 300 accounts for the load"
ssh-keygen -q -t ed25519 -N '' -C "alice@vm-test" -f "$work/id_alice"
alice_pw=$(head -c 12 /dev/urandom | base64 | tr -d '/+=')
printf '%s\n' "$alice_pw" > "$work/alice.pw"
vm_ssh "useradd -m -s /bin/bash alice && install -d -m 700 -o alice -g alice ~alice/.ssh && cat > ~alice/.ssh/authorized_keys && chown alice: ~alice/.ssh/authorized_keys && echo 'alice ALL=(ALL) ALL' > /etc/sudoers.d/alice" < "$work/id_alice.pub"
printf 'alice:%s\n' "$alice_pw" | vm_ssh 'chpasswd 2> /dev/null' 
# alice brings the key of her existing app (an otpauth URI on standard input, as an
# administrator migrating from another tool would): the previous release's CLI gives up after
# 30 s, less than hashing a dozen backup codes takes under emulation. Backup codes come after
# the upgrade; dora (below) enrolls the usual way, QR code and first code.
python3 -c 'import base64, os; print(base64.b32encode(os.urandom(20)).decode())' > "$work/alice.key"
printf 'otpauth://totp/vm-test:alice?secret=%s&issuer=vm-test\n' "$(cat "$work/alice.key")" \
  | vm_ssh 'twofold import otpauth --user alice -' > /dev/null || fail "importing alice's key"
# The load's accounts, each with a counter-based token (HOTP: a login's code stays valid
# however long the commands under load take) imported from a vendor-style seed file.
python3 - "$work" <<'PY'
import base64, os, sys
work = sys.argv[1]
with open(f"{work}/seeds.csv", "w") as seeds, open(f"{work}/load", "w") as load, open(f"{work}/passwd", "w") as pw:
    seeds.write("user,secret_base32,type,counter\n")
    for i in range(300):
        key = base64.b32encode(os.urandom(20)).decode()
        seeds.write(f"load{i:03d},{key},hotp,0\n")
        load.write(f"load{i:03d} {key}\n")
        pw.write(f"load{i:03d}:x:{20000 + i}:20000:load {i}:/nonexistent:/usr/sbin/nologin\n")
PY
vm_scp "$work/seeds.csv" "$work/load" "$work/passwd" /root/
# Accounts made in one go (useradd takes a second each under emulation): passwd, shadow, group.
vm_ssh 'groupadd -g 20000 load && cat /root/passwd >> /etc/passwd && cut -d: -f1 /root/passwd | sed "s/$/:!:20000::::::/" >> /etc/shadow && pwck -r -q > /dev/null; getent passwd load299 > /dev/null' < /dev/null \
  || fail "creating the load accounts"
vm_ssh 'twofold import seeds --file /root/seeds.csv --json > /root/seeds.out' < /dev/null || fail "import seeds"
# A login may wait for the daemon up to 30 s here: an emulated machine running apt is tens of
# times slower than a real one. Refused means refused, not slow.
printf 'auth required pam_twofold.so timeout=30\naccount required pam_permit.so\n' | vm_ssh 'cat > /etc/pam.d/twofold-load'
ok "alice enrolled (her app's key imported); 300 load accounts with HOTP tokens imported"

# LABEL [AT COMMAND]...: $rate logins a second through libpam, for 10 s and until 3 s after
# the last command has finished; the commands run meanwhile.
under_load() {
  local label=$1
  shift
  vm_ssh "/root/twofold-bench pam-rate twofold-load /root/load $rate 10 $(printf '%q ' "$@") 2> /root/$label.err" < /dev/null > "$work/$label.json" \
    || fail "the load run ($label) did not finish: $(vm_ssh "tail -3 /root/$label.err" < /dev/null)"
  python3 - "$work/$label.json" "$label" <<'PY' | tee -a "$work/summary"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"== result: {sys.argv[2]} under load: {r['logins']} logins, {r['refused']} refused "
      f"({r['rate_per_s']:g}/s over {r['load_s']:.0f} s; slowest {r['slowest_login_s']:.2f} s)")
for e in r["events"]:
    print(f"   at {e['at_s']:.1f} s: {e['command']} (exit {e['exit']}, {e['took_s']:.1f} s)")
for x in r["refusals"][:10]:
    print(f"   refused: {x['user']} result {x['result']} at {x['ended_at_s']:.2f} s")
PY
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); sys.exit(0 if r["refused"] == 0 and all(e["exit"] == 0 for e in r["events"]) else 1)' "$work/$label.json"
}
main_pid() { vm_ssh 'systemctl show -P MainPID twofoldd' < /dev/null; }

step "Upgrading to $new with apt, a request in flight through the old daemon's stop"
pid_before=$(main_pid)
# A client that sent half a request keeps one of the daemon's workers for its request_timeout
# (5 s); one more every second, so that some are in flight whenever apt restarts the daemon.
# $prev's stop then shut the socket down after 2 s, which no later daemon can accept on; the
# new postinst must see that and make the socket anew.
vm_ssh 'setsid perl -MIO::Socket::UNIX -e '\''for (1..300) { my $s = IO::Socket::UNIX->new(Peer => "/run/twofold/twofold.sock"); if ($s) { syswrite $s, "\0\0"; push @held, $s } sleep 1 }'\'' > /dev/null 2>&1 < /dev/null & echo $! > /root/slow.pid' < /dev/null
vm_ssh 'DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/new.deb > /root/install-new.log 2>&1' < /dev/null \
  || fail "apt-get install of $new: $(vm_ssh 'tail -5 /root/install-new.log' < /dev/null)"
vm_ssh 'kill $(cat /root/slow.pid)' < /dev/null
[ "$(vm_ssh "dpkg-query -W -f='\${Version}' twofold" < /dev/null)" = "$new" ] || fail "the package is not at $new after the upgrade"
pid_after=$(main_pid)
[ "$pid_after" != "$pid_before" ] && [ "$pid_after" != 0 ] || fail "twofoldd was not restarted by the upgrade (MainPID $pid_before → $pid_after)"
[ "$(vm_ssh 'systemctl is-active twofoldd.service twofoldd.socket' < /dev/null | sort -u)" = active ] || fail "twofoldd or its socket is not active after the upgrade"
remade=$(vm_ssh 'grep -c "making it anew" /root/install-new.log' < /dev/null || true)
if dpkg --compare-versions "$prev" lt 0.2.0; then
  [ "${remade:-0}" -ge 1 ] || fail "$prev's stop did not shut the socket down, or the postinst did not say it made it anew"
fi
vm_ssh 'twofold status --user alice --json' < /dev/null | grep -q '"enrolled": *true' || fail "alice's enrollment was lost in the upgrade (or the socket does not answer)"
vm_ssh 'twofold backup-codes --user alice --json' < /dev/null > "$work/backup.json" || fail "backup codes for alice"
python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)["backup_codes"]))' < "$work/backup.json" > "$work/backup.txt"
[ "$(wc -l < "$work/backup.txt")" -ge 5 ] || fail "no backup codes for alice"
[ "$(vm_ssh 'twofold status --user load299 --json' < /dev/null | grep -c '"enrolled": *true')" = 1 ] || fail "the load accounts' tokens were lost in the upgrade"
ok "at $new; twofoldd restarted (PID $pid_before → $pid_after); $( [ "${remade:-0}" -ge 1 ] && echo "the socket $prev shut down was made anew by the postinst" || echo "the socket was left working" ); alice and the load accounts still enrolled; $(wc -l < "$work/backup.txt") backup codes made"

step "Upgrading to $next with apt while logins arrive"
pid_before=$(main_pid)
under_load upgrade 5 'DEBIAN_FRONTEND=noninteractive apt-get install -y -q /root/next.deb > /root/install-next.log 2>&1' \
  || fail "logins were refused during the upgrade (or apt failed: $(vm_ssh 'tail -5 /root/install-next.log' < /dev/null))"
[ "$(vm_ssh "dpkg-query -W -f='\${Version}' twofold" < /dev/null)" = "$next" ] || fail "the package is not at $next after the upgrade"
pid_after=$(main_pid)
[ "$pid_after" != "$pid_before" ] && [ "$pid_after" != 0 ] || fail "twofoldd was not restarted by the upgrade (MainPID $pid_before → $pid_after)"
ok "at $next; twofoldd restarted (PID $pid_before → $pid_after)"

step "systemctl restart twofoldd, twice, while logins arrive"
under_load restart 4 'systemctl restart twofoldd' 10 'systemctl restart twofoldd' \
  || fail "logins were refused across systemctl restart"
[ "$(vm_ssh 'systemctl show -P NRestarts twofoldd' < /dev/null)" = 0 ] || fail "twofoldd was restarted by systemd after a failure"

step "twofold doctor as root; the packaged unit unchanged"
vm_ssh 'twofold doctor --json' < /dev/null > "$work/doctor.json" || true
python3 - "$work/doctor.json" <<'PY' || fail "twofold doctor does not see the daemon, socket and database as healthy"
import json, sys
findings = json.load(open(sys.argv[1]))["findings"]
for f in findings:
    print(f"   doctor: [{f['level']}] {f['check']}: {f['message']}")
sys.exit(1 if [f for f in findings if f["check"] in ("config", "daemon", "socket", "database") and f["level"] != "ok"] else 0)
PY
vm_ssh 'dpkg --verify twofold' < /dev/null || fail "dpkg --verify: the installed files differ from the package"
ok "doctor: config, daemon, socket, database ok; dpkg --verify clean"

# The directory is made now, after twofoldd started: the unit's sandbox opens it for writing
# only at start, hence a restart (as the README says), not a reload.
step "Metrics for node_exporter's textfile collector, written by the packaged unit"
vm_ssh 'mkdir -p /var/lib/prometheus/node-exporter
echo "metrics_textfile = \"/var/lib/prometheus/node-exporter/twofold.prom\"" >> /etc/twofold/twofold.toml
systemctl restart twofoldd
for i in $(seq 40); do [ -s /var/lib/prometheus/node-exporter/twofold.prom ] && break; sleep 1; done
cat /var/lib/prometheus/node-exporter/twofold.prom' < /dev/null > "$work/twofold.prom" || fail "no metrics textfile within 40 s"
promtool check metrics < "$work/twofold.prom" || fail "promtool check metrics refused the textfile"
enrolled=$(sed -n 's/^twofold_users_enrolled //p' "$work/twofold.prom")
[ "${enrolled:-0}" -ge 301 ] || fail "the metrics count ${enrolled:-no} enrolled users, not alice and the 300 load accounts"
ok "$(wc -l < "$work/twofold.prom") lines; promtool check metrics passes; $enrolled users enrolled"

step "pam-auth-update --enable twofold; sshd with key + code, as the README says"
common_auth=$(vm_ssh 'sha256sum < /etc/pam.d/common-auth' < /dev/null)
vm_ssh 'DEBIAN_FRONTEND=noninteractive pam-auth-update --enable twofold && grep -E "^auth.*pam_twofold" /etc/pam.d/common-auth' < /dev/null | sed 's/^/   common-auth: /'
vm_ssh 'cp /etc/pam.d/sshd /root/pam.d-sshd.orig
sed -i "s/^@include common-auth$/auth [success=ok ignore=ignore default=die] pam_twofold.so\nauth required pam_permit.so/" /etc/pam.d/sshd
grep -q "^auth.*pam_twofold" /etc/pam.d/sshd
printf "KbdInteractiveAuthentication yes\nMatch User *,!root\n    AuthenticationMethods publickey,keyboard-interactive\n" > /etc/ssh/sshd_config.d/twofold.conf
sshd -t && systemctl reload ssh' < /dev/null || fail "setting up sshd"
vm_sshd_ready 60 || fail "sshd does not answer after its reload"
ssh_login() { sshd_login "$work" "$vm_port" alice "$work/id_alice" "$1" 'id -un'; }
code=$(code_for "$work/alice.key")
[ "$(ssh_login "$code")" = alice ] || fail "the SSH login with key + right code was refused"
ok "SSH (key + code) through ssh.service: in"
wrong=$(printf '%06d' $(( (10#$code + 500000) % 1000000 )))
ssh_login "$wrong" > /dev/null 2>&1 && fail "a wrong code logged in over SSH"
ssh_login "$code" > /dev/null 2>&1 && fail "a replayed code logged in over SSH"
ok "wrong code and replayed code: refused"

step "sudo with password + code"
sudo_code=$(code_for "$work/alice.key")
out=$(printf '%s\n%s\n' "$alice_pw" "$sudo_code" | vm_ssh "su - alice -c 'sudo -S -k -p \"\" id -un'" 2>&1) \
  || fail "sudo with password + code was refused: $out"
[[ "$out" == *root ]] || fail "sudo printed $out"
printf '%s\n%s\n' "$alice_pw" "$sudo_code" | vm_ssh "su - alice -c 'sudo -S -k -p \"\" true'" > /dev/null 2>&1 \
  && fail "sudo accepted a replayed code"
ok "sudo: in with password + code; replay refused"

step "Directory users: OpenLDAP (slapd) and sssd"
ldap_test "$work"

step "The journal: the events, and no secret"
vm_ssh 'journalctl -b -u twofoldd -o cat --no-pager' < /dev/null > "$work/journal.txt"
grep -q 'alice' "$work/journal.txt" || fail "the journal has no event for alice"
grep -Eq 'accepted|refused|replay' "$work/journal.txt" || fail "the journal has no login decision"
for s in "$(cat "$work/alice.key")" "$code" "$sudo_code" $(cat "$work/backup.txt") $(cut -d' ' -f2 "$work/load" | head -20) "$alice_pw"; do
  grep -qwF -- "$s" "$work/journal.txt" && fail "the journal holds a secret, code or password"
done
ok "$(wc -l < "$work/journal.txt") lines; no key, code, backup code or password in them"

step "Reboot"
vm_reboot || fail "no SSH after the reboot"
[ "$(vm_ssh 'systemctl is-active twofoldd.socket' < /dev/null)" = active ] || fail "twofoldd.socket is not active after the reboot"
[ "$(ssh_login "$(code_for "$work/alice.key")")" = alice ] || fail "the SSH login after the reboot was refused"
[ "$(vm_ssh 'systemctl is-active twofoldd' < /dev/null)" = active ] || fail "twofoldd is not active after the reboot"
ok "booted again; alice logs in with key + code; twofoldd active"

step "Purge"
vm_ssh 'cp /root/pam.d-sshd.orig /etc/pam.d/sshd && rm /etc/ssh/sshd_config.d/twofold.conf /etc/pam.d/twofold-load && systemctl reload ssh
dpkg -L twofold > /root/files.txt
DEBIAN_FRONTEND=noninteractive apt-get purge -y -q twofold > /root/purge.log 2>&1 || { cat /root/purge.log; exit 1; }' < /dev/null || fail "apt-get purge"
left=$(vm_ssh 'while read -r f; do if [ ! -d "$f" ] && { [ -e "$f" ] || [ -L "$f" ]; }; then echo "$f"; fi; done < /root/files.txt
for d in /etc/twofold /var/lib/twofold /run/twofold; do if [ -e "$d" ]; then echo "$d"; fi; done
grep -rl twofold /etc/pam.d /var/lib/pam 2>/dev/null
find /etc/systemd/system -name "*twofold*"
systemctl list-unit-files "twofoldd*" --no-legend | cat' < /dev/null)
[ -z "$left" ] || fail "left behind after the purge: $left"
[ "$(vm_ssh 'sha256sum < /etc/pam.d/common-auth' < /dev/null)" = "$common_auth" ] || fail "common-auth differs from before"
ok "no file, unit or PAM line left; common-auth as before"
result "passed in $(( $(date +%s) - t0 )) s ($vm_accel)"
