#!/usr/bin/env bash
# Installs the Debian packages twofold builds and tests with. Needs root; safe to re-run.
set -euo pipefail
packages=(
  build-essential pkg-config   # cc for the bundled SQLite
  libpam0g-dev                 # libpam for pam_twofold.so
  pamtester libpam-wrapper     # PAM end-to-end tests without touching /etc/pam.d
  openssh-server openssh-client sudo   # real sshd and sudo logins in the tests and the demo
  oathtool                     # independent TOTP implementation the tests check against
  zbar-tools tmux              # a QR code read off a real terminal (tmux) by zbarimg
  faketime                     # the fault tests run twofoldd with its clock set back an hour
  dovecot-imapd                # a real IMAP server asking one question (password and code in one answer)
  postgresql                   # a real PostgreSQL on 127.0.0.1 for the fleet tests (store = "postgres")
  openssl                      # a self-signed certificate for PostgreSQL over TLS (fleet tests, benchmark)
  binutils                     # strings(1), to prove no backup code is stored in clear
  sqlite3                      # a database of the previous schema loaded from its dump (upgrade test)
  python3                      # a stand-in socket server run as nobody in the PAM tests
  libpam-google-authenticator  # its files are imported in the tests; the benchmark measures it
  libpam-oath                  # the benchmark measures it too
  util-linux passwd procps     # setpriv, useradd, pkill for the tests
  debhelper dpkg-dev lintian   # building and checking the Debian package (package-test.sh)
  systemd man-db               # systemd-analyze on its unit; man -l on its manual pages
  prometheus                   # promtool check metrics on twofold metrics (tests/tests/metrics.rs)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/deps.sh: missing packages (${missing[*]}); run as root to install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
