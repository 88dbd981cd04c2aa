# shellcheck shell=bash
# Minimal Debian virtual machines for scripts/vm-test.sh: an image per release built with
# debootstrap from Debian's archive (cached, keyed by release, package list and this file's
# image recipe), booted with QEMU from a copy-on-write overlay, reached as root over SSH on a
# port forwarded to 127.0.0.1 only. Sourced; needs root (debootstrap, mkfs).
#
#   vm_image RELEASE            build or reuse the image; sets vm_dir (kernel, initrd, disk, key)
#   vm_boot WORK NAME           boot vm_dir's image on WORK/NAME.qcow2; sets vm_pid, vm_port
#   vm_wait_ssh SECONDS         wait until root's SSH answers
#   vm_ssh CMD...               run CMD as root in the VM (stdin passed on)
#   vm_scp FILE... DEST         copy files into the VM
#   vm_reboot                   reboot it and wait for SSH again
#   vm_stop                     power it off (killed if it does not stop)

vm_cache=${TWOFOLD_VM_CACHE:-/var/cache/twofold-vm}
vm_mirror=${TWOFOLD_VM_MIRROR:-http://deb.debian.org/debian}
# What every image holds: a kernel and systemd, the SSH server the logins go through, sudo,
# and an OpenLDAP server with sssd for directory users.
vm_packages=(
  linux-image-amd64 systemd-sysv udev dbus openssh-server sudo procps iproute2
  slapd ldap-utils sssd-ldap libnss-sss libpam-sss
)
vm_pid=""
vm_port=""
vm_dir=""
vm_accel=""
vm_ctl=""

vm_log() { printf '   [vm] %s\n' "$*"; }

# The part of the recipe that goes into the cache key: a change here builds new images.
vm_recipe_version=1

vm_image() {
  local release=$1 key
  key=$(printf '%s\n' "$release" "${vm_packages[*]}" "$vm_mirror" "$vm_recipe_version" | sha256sum | cut -c1-16)
  vm_dir="$vm_cache/$release-$key"
  if [ -f "$vm_dir/ready" ]; then
    vm_log "image $release: cached ($vm_dir)"
    return 0
  fi
  local t0 root
  t0=$(date +%s)
  rm -rf "$vm_dir"
  mkdir -p "$vm_dir"
  root="$vm_dir/root"
  vm_log "image $release: debootstrap from $vm_mirror (${#vm_packages[@]} packages and their dependencies)"
  local pkgs
  pkgs=$(IFS=,; echo "${vm_packages[*]}")
  if ! DEBIAN_FRONTEND=noninteractive debootstrap --variant=minbase --include="$pkgs" \
         "$release" "$root" "$vm_mirror" > "$vm_dir/debootstrap.log" 2>&1; then
    tail -30 "$vm_dir/debootstrap.log" >&2
    echo "vm_image: debootstrap of $release failed (log: $vm_dir/debootstrap.log)" >&2
    return 1
  fi
  echo "twofold-vm-$release" > "$root/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 twofold-vm-%s\n' "$release" > "$root/etc/hosts"
  echo '/dev/vda / ext4 defaults,errors=remount-ro 0 1' > "$root/etc/fstab"
  # The network QEMU's user mode offers (DHCP on 10.0.2.0/24); nothing else to wait for.
  mkdir -p "$root/etc/systemd/network"
  printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n' > "$root/etc/systemd/network/10-vm.network"
  ln -sf /lib/systemd/system/systemd-networkd.service "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
  # No timers reaching for the network in the middle of a test.
  for t in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer man-db.timer; do
    ln -sf /dev/null "$root/etc/systemd/system/$t"
  done
  # Root logs in with a key of this image's own (loopback only); no password anywhere.
  ssh-keygen -q -t ed25519 -N '' -C "twofold-vm-test" -f "$vm_dir/id_root"
  install -d -m 700 "$root/root/.ssh"
  install -m 600 "$vm_dir/id_root.pub" "$root/root/.ssh/authorized_keys"
  # Debian's own defaults otherwise: the test changes sshd_config like an administrator would.
  cp "$root"/boot/vmlinuz-* "$vm_dir/vmlinuz"
  cp "$root"/boot/initrd.img-* "$vm_dir/initrd.img"
  rm -rf "$root/var/cache/apt/archives/"*.deb
  if ! mkfs.ext4 -q -F -L twofold-vm -d "$root" "$vm_dir/disk.img" 3G > "$vm_dir/mkfs.log" 2>&1; then
    cat "$vm_dir/mkfs.log" >&2
    echo "vm_image: mkfs.ext4 -d failed" >&2
    return 1
  fi
  rm -rf "$root"
  touch "$vm_dir/ready"
  vm_log "image $release: built in $(( $(date +%s) - t0 )) s ($(du -sh "$vm_dir/disk.img" | cut -f1) used)"
}

# KVM when it works here, software emulation otherwise: a nested KVM can fail at run time,
# so the first boot tells (vm_accel is kept for the rest of the run).
vm_boot() {
  local work=$1 name=$2
  local overlay="$work/$name.qcow2"
  [ -f "$overlay" ] || qemu-img create -q -f qcow2 -F raw -b "$vm_dir/disk.img" "$overlay"
  vm_ctl="$work/$name.ssh"
  vm_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local accels
  if [ -n "$vm_accel" ]; then accels=$vm_accel
  elif [ -n "${TWOFOLD_VM_ACCEL:-}" ]; then accels=$TWOFOLD_VM_ACCEL
  elif [ -w /dev/kvm ]; then accels="kvm tcg"
  else accels=tcg
  fi
  local a
  for a in $accels; do
    local cpu=max smp=1
    # Software emulation runs one virtual CPU: with two, the kernel's live patching of its
    # own code (int3 breakpoints) races between emulated CPUs and panics at boot.
    [ "$a" = kvm ] && { cpu=host; smp=2; }
    if [ "$a" = kvm ] && ! vm_kvm_works "$work"; then
      vm_log "KVM is there but cannot run a guest here (see $work/kvm-probe.log): software emulation"
      continue
    fi
    qemu-system-x86_64 -accel "$a" -cpu "$cpu" -smp "$smp" -m 1536 \
      -kernel "$vm_dir/vmlinuz" -initrd "$vm_dir/initrd.img" \
      -append "root=/dev/vda rw console=ttyS0 quiet systemd.show_status=0 net.ifnames=0" \
      -drive "file=$overlay,if=virtio,format=qcow2" \
      -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$vm_port-:22" -device virtio-net-pci,netdev=n0 \
      -rtc base=utc -display none -serial "file:$work/$name-console-$a.log" -monitor none \
      -pidfile "$work/$name.pid" -daemonize 2> "$work/$name-qemu.log" || { cat "$work/$name-qemu.log" >&2; continue; }
    vm_pid=$(cat "$work/$name.pid")
    if vm_wait_ssh "$([ "$a" = kvm ] && echo 90 || echo 300)"; then
      vm_accel=$a
      vm_log "booted with $( [ "$a" = kvm ] && echo "KVM" || echo "software emulation (TCG)"), SSH on 127.0.0.1:$vm_port"
      return 0
    fi
    vm_log "no SSH with -accel $a (console: $work/$name-console-$a.log); $( [ "$a" = kvm ] && echo "falling back to software emulation" )"
    tail -5 "$work/$name-console-$a.log" >&2 || true
    kill "$vm_pid" 2>/dev/null || true
    vm_pid=""
  done
  echo "vm_boot: the VM did not come up" >&2
  return 1
}

# A nested KVM may open and then fail on the guest's first instructions ("KVM internal
# error"): boot the kernel for a few seconds and look for its banner.
vm_kvm_works() {
  local work=$1 pid verdict=1 _
  qemu-system-x86_64 -accel kvm -cpu host -smp 1 -m 256 -kernel "$vm_dir/vmlinuz" \
    -append "console=ttyS0 panic=-1" -display none -serial stdio -monitor none -no-reboot \
    > "$work/kvm-probe.log" 2>&1 < /dev/null &
  pid=$!
  for _ in $(seq 40); do
    sleep 0.5
    if grep -q 'Linux version' "$work/kvm-probe.log"; then verdict=0; break; fi
    grep -q 'KVM internal error\|failed to initialize kvm\|Could not access KVM' "$work/kvm-probe.log" && break
    kill -0 "$pid" 2>/dev/null || break
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return "$verdict"
}

# One SSH connection carries every command (a new one costs seconds under emulation).
vm_ssh_opts() {
  echo "-i $vm_dir/id_root -p $vm_port -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes -o ConnectTimeout=20 -o ServerAliveInterval=5 -o ServerAliveCountMax=6 -o ControlMaster=auto -o ControlPath=$vm_ctl -o ControlPersist=900"
}

vm_ssh_close() {
  [ -S "$vm_ctl" ] || return 0
  # shellcheck disable=SC2046
  ssh $(vm_ssh_opts) -O exit root@127.0.0.1 2>/dev/null || true
  rm -f "$vm_ctl"
}

vm_wait_ssh() {
  local deadline=$(( $(date +%s) + $1 ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    kill -0 "$vm_pid" 2>/dev/null || return 1
    # shellcheck disable=SC2046 # the options are words
    ssh $(vm_ssh_opts) root@127.0.0.1 true < /dev/null 2>/dev/null && return 0
    sleep 2
  done
  return 1
}

# sshd re-executes itself on reload and does not listen meanwhile: wait (up to $1 s) until a
# new connection is greeted with its banner again.
vm_sshd_ready() {
  python3 - "$vm_port" "$1" <<'PY'
import socket, sys, time
port, deadline = int(sys.argv[1]), time.time() + int(sys.argv[2])
while time.time() < deadline:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            if s.recv(64).startswith(b"SSH-"):
                sys.exit(0)
    except OSError:
        pass
    time.sleep(1)
sys.exit(1)
PY
}

vm_ssh() {
  # shellcheck disable=SC2046
  ssh $(vm_ssh_opts) root@127.0.0.1 "$@"
}

vm_scp() {
  local n=$#
  local dest=${!n}
  # shellcheck disable=SC2046
  scp -q $(vm_ssh_opts | sed 's/-p /-P /') "${@:1:n-1}" "root@127.0.0.1:$dest"
}

vm_reboot() {
  local before now _
  before=$(vm_ssh cat /proc/sys/kernel/random/boot_id < /dev/null)
  vm_ssh 'systemctl reboot' < /dev/null || true
  vm_ssh_close
  for _ in $(seq 150); do
    sleep 2
    now=$(vm_ssh cat /proc/sys/kernel/random/boot_id < /dev/null 2>/dev/null) || continue
    [ "$now" != "$before" ] && return 0
    vm_ssh_close
  done
  return 1
}

vm_stop() {
  [ -n "$vm_pid" ] || return 0
  vm_ssh 'systemctl poweroff' < /dev/null > /dev/null 2>&1 || true
  vm_ssh_close
  local _
  for _ in $(seq 60); do
    kill -0 "$vm_pid" 2>/dev/null || { vm_pid=""; return 0; }
    sleep 1
  done
  kill -KILL "$vm_pid" 2>/dev/null || true
  vm_pid=""
}
