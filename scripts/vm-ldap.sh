# shellcheck shell=bash
# Directory users for scripts/vm-release.sh (sourced; uses its vm_ssh, ssh key helpers, fail,
# ok, code_for): a real OpenLDAP (slapd) in the VM with sssd in front of it, as a site with
# LDAP accounts has them. An LDAP user enrolls and logs in by SSH with key + code; a case
# variant of the name and a second name for the same uid meet the same enrollment; with slapd
# stopped, sssd's cached user is still asked for the code and let in; doctor names sss.

ldap_test() {
  local work=$1
  ssh-keygen -q -t ed25519 -N '' -C "dora@vm-test" -f "$work/id_dora"
  vm_ssh 'set -e
export DEBIAN_FRONTEND=noninteractive
pw=$(head -c 12 /dev/urandom | base64 | tr -d "/+=")
debconf-set-selections <<EOF
slapd slapd/no_configuration boolean false
slapd slapd/domain string twofold.test
slapd shared/organization string twofold
slapd slapd/password1 password $pw
slapd slapd/password2 password $pw
slapd slapd/purge_database boolean true
slapd slapd/move_old_database boolean true
EOF
dpkg-reconfigure -f noninteractive slapd > /root/slapd-reconfigure.log 2>&1
ldapadd -x -H ldap://127.0.0.1 -D cn=admin,dc=twofold,dc=test -w "$pw" > /dev/null <<EOF
dn: ou=people,dc=twofold,dc=test
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=twofold,dc=test
objectClass: organizationalUnit
ou: groups

dn: cn=staff5001,ou=groups,dc=twofold,dc=test
objectClass: posixGroup
cn: staff5001
gidNumber: 5001

dn: uid=dora,ou=people,dc=twofold,dc=test
objectClass: inetOrgPerson
objectClass: posixAccount
cn: Dora Directory
sn: Directory
uid: dora
uidNumber: 5001
gidNumber: 5001
homeDirectory: /home/dora
loginShell: /bin/bash

dn: uid=dora-alias,ou=people,dc=twofold,dc=test
objectClass: inetOrgPerson
objectClass: posixAccount
cn: Dora again
sn: Directory
uid: dora-alias
uidNumber: 5001
gidNumber: 5001
homeDirectory: /home/dora
loginShell: /bin/bash
EOF
cat > /etc/sssd/sssd.conf <<EOF
[sssd]
services = nss, pam
domains = twofold

[domain/twofold]
id_provider = ldap
auth_provider = ldap
ldap_uri = ldap://127.0.0.1
ldap_search_base = dc=twofold,dc=test
ldap_auth_disable_tls_never_use_in_production = true
# This slapd has no certificate; sssd 2.10 (Debian 13) would insist on StartTLS for lookups.
ldap_id_use_start_tls = false
cache_credentials = true
case_sensitive = false
entry_cache_timeout = 5
EOF
chmod 600 /etc/sssd/sssd.conf
grep -q "^passwd:.*sss" /etc/nsswitch.conf || sed -i "s/^\(passwd\|group\):.*/& sss/" /etc/nsswitch.conf
systemctl restart sssd
for i in $(seq 30); do getent passwd dora > /dev/null && break; sleep 1; done
getent passwd dora || { echo "sssd does not resolve dora:"; journalctl -b -u sssd --no-pager | tail -10; exit 1; }
install -d -m 700 -o 5001 -g 5001 /home/dora /home/dora/.ssh
cat > /home/dora/.ssh/authorized_keys
chown 5001:5001 /home/dora/.ssh/authorized_keys' < "$work/id_dora.pub" | sed 's/^/   getent: /' \
    || fail "setting up slapd and sssd"
  [ "$(vm_ssh 'grep -c "^dora:" /etc/passwd' < /dev/null || true)" = 0 ] || fail "dora is in /etc/passwd: not a directory user"
  [ "$(vm_ssh 'getent passwd DORA | cut -d: -f1,3' < /dev/null)" = "dora:5001" ] || fail "sssd does not answer for DORA with dora:5001"
  ok "slapd with dora and dora-alias (uid 5001) under dc=twofold,dc=test; sssd in nsswitch"

  vm_ssh 'twofold enroll --user dora --json' < /dev/null > "$work/dora.json" || fail "enrolling the LDAP user"
  python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])' < "$work/dora.json" > "$work/dora.key"
  code_for "$work/dora.key" | vm_ssh 'twofold confirm - --user dora --json' > "$work/dora-backup.json" \
    || fail "confirming dora's enrollment"
  python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)["backup_codes"]))' < "$work/dora-backup.json" > "$work/dora-backup.txt"
  local code b1 b2
  # Which name the uid's entry has is sssd's choice (dora or dora-alias): compare uids.
  login_as() { sshd_login "$work" "$vm_port" "$1" "$work/id_dora" "$2" 'id -u'; }
  code=$(code_for "$work/dora.key")
  [ "$(login_as dora "$code")" = 5001 ] || fail "the LDAP user's SSH login with key + code was refused"
  login_as DORA "$code" > /dev/null 2>&1 && fail "the same code, replayed under the name DORA, logged in"
  b1=$(sed -n 1p "$work/dora-backup.txt")
  b2=$(sed -n 2p "$work/dora-backup.txt")
  [ "$(login_as DORA "$b1")" = 5001 ] || fail "DORA (case variant) was refused with dora's backup code"
  login_as dora "$b1" > /dev/null 2>&1 && fail "a backup code spent as DORA logged in as dora"
  [ "$(login_as dora-alias "$b2")" = 5001 ] || fail "dora-alias (same uid) was refused with dora's backup code"
  login_as dora "$b2" > /dev/null 2>&1 && fail "a backup code spent as dora-alias logged in as dora"
  ok "dora enrolled; SSH with key + code in; DORA and dora-alias meet the same enrollment (codes spent under one name are spent for all)"

  vm_ssh 'systemctl stop slapd' < /dev/null
  vm_ssh 'ldapsearch -x -H ldap://127.0.0.1 -b dc=twofold,dc=test uid=dora > /dev/null 2>&1' < /dev/null && fail "slapd still answers"
  [ "$(login_as dora "$(code_for "$work/dora.key")")" = 5001 ] || fail "with slapd stopped, sssd's cached dora was refused"
  local wrong
  wrong=$(printf '%06d' $(( (10#$(oathtool --totp -b - < "$work/dora.key") + 500000) % 1000000 )))
  login_as dora "$wrong" > /dev/null 2>&1 && fail "with slapd stopped, a wrong code logged dora in"
  ok "slapd stopped: sssd's cached dora is still asked for the code, right code in, wrong code out"
  # doctor exits non-zero for any warning (the VM's clock is not synchronised): read its JSON.
  vm_ssh 'twofold doctor --json' < /dev/null > "$work/doctor-ldap.json" || true
  python3 -c '
import json, sys
f = [x for x in json.load(open(sys.argv[1]))["findings"] if x["check"] == "nss"]
print("   doctor: " + (f[0]["message"] if f else "no nss finding"))
sys.exit(0 if f and "sss" in f[0]["message"] else 1)' "$work/doctor-ldap.json" || fail "twofold doctor does not report sss among the NSS sources"
  vm_ssh 'systemctl start slapd' < /dev/null
}
