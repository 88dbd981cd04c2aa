# shellcheck shell=bash
# A throwaway sshd on 127.0.0.1 whose logins need a public key AND a code asked through PAM,
# and an ssh client that answers the code prompt from a private file. Sourced by demo.sh and
# package-test.sh (as root); the host's own sshd, sshd_config and /etc/pam.d/sshd are never
# touched: sshd runs under a renamed link, so its PAM service is /etc/pam.d/<that name>.
#
#   sshd_start WORK PORT SERVICE USER AUTH_LINE   start it; AUTH_LINE is the pam.d auth line
#   sshd_login WORK PORT USER KEY CODE CMD...     one login answering CODE; ssh's exit status
#   sshd_stop                                     stop it and remove its PAM service file
#   free_port                                     a TCP port free on 127.0.0.1

sshd_pid=""
sshd_service=""

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

sshd_start() {
  local work=$1 port=$2 service=$3 user=$4 auth=$5
  ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
  sshd_service=$service
  cat > "/etc/pam.d/$service" <<PAM
# Written by twofold's $(basename "$0") (PID $$); removed when it stops.
$auth
account  include   common-account
session  required  pam_permit.so
PAM
  cat > "$work/sshd_config" <<SSHD
Port $port
ListenAddress 127.0.0.1
HostKey $work/host_key
PidFile $work/sshd.pid
UsePAM yes
PubkeyAuthentication yes
KbdInteractiveAuthentication yes
PasswordAuthentication no
AuthenticationMethods publickey,keyboard-interactive
PermitRootLogin no
AllowUsers $user
SSHD
  mkdir -p /run/sshd
  # sshd names its PAM service after the program: a link called $service gives it ours.
  ln -sf "$(command -v sshd)" "$work/$service"
  "$work/$service" -D -e -f "$work/sshd_config" 2> "$work/sshd.log" &
  sshd_pid=$!
  local _
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$sshd_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "$(basename "$0"): sshd did not start on 127.0.0.1:$port" >&2
  cat "$work/sshd.log" >&2
  return 1
}

# The code reaches ssh through SSH_ASKPASS: a script that reads it from a private file, so no
# code ever appears in argv or the environment. One prompt only: a refused code is not retried.
sshd_login() {
  local work=$1 port=$2 user=$3 key=$4 code=$5
  shift 5
  if [ ! -x "$work/askpass" ]; then
    # shellcheck disable=SC2016 # expanded by the askpass script, not here
    printf '#!/bin/sh\ncat "$(dirname "$0")/code"\n' > "$work/askpass"
    chmod 700 "$work/askpass"
  fi
  (umask 077; printf '%s\n' "$code" > "$work/code")
  local rc=0
  SSH_ASKPASS="$work/askpass" SSH_ASKPASS_REQUIRE=force DISPLAY=none setsid -w \
    ssh -i "$key" -p "$port" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o LogLevel=ERROR -o PreferredAuthentications=publickey,keyboard-interactive \
        -o NumberOfPasswordPrompts=1 "$user@127.0.0.1" "$@" < /dev/null || rc=$?
  rm -f "$work/code"
  return "$rc"
}

sshd_stop() {
  if [ -n "$sshd_pid" ]; then
    kill "$sshd_pid" 2>/dev/null || true
    wait "$sshd_pid" 2>/dev/null || true
    sshd_pid=""
  fi
  if [ -n "$sshd_service" ]; then
    rm -f "/etc/pam.d/$sshd_service"
    sshd_service=""
  fi
  return 0
}
