#!/usr/bin/env bash
# OpenSSH: sshd -D (a listener that re-executes itself for each connection,
# with a privilege-separated pre-auth child) and the ssh client, with a fresh
# host key and a fresh client key (public key login as root). A command's
# output (echo hello), then 16 MiB of random data piped through the
# connection into sha256sum on the far side, compared with the local
# sha256. Both under smc_run in a fresh network namespace.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
. "$here/lib.sh"
need ssh ssh-keygen sha256sum
SSHD=${SSHD:-/usr/sbin/sshd}  # sshd re-executes itself: an absolute path
if [ ! -x "$SSHD" ]; then
  echo "FAIL sshd: $SSHD not installed (run scripts/setup.sh)"
  exit 1
fi

app_begin sshd
PORT=2222
BYTES=$((16 * 1024 * 1024))
mkdir -p /run/sshd  # the privilege separation directory (chroot of the pre-auth child)
chmod 755 /run/sshd
ssh-keygen -q -t ed25519 -N '' -C smc-test-host -f "$DIR/host_ed25519" || exit 1
ssh-keygen -q -t ed25519 -N '' -C smc-test-client -f "$DIR/client_ed25519" || exit 1
cp "$DIR/client_ed25519.pub" "$DIR/authorized_keys"
chmod 600 "$DIR/authorized_keys"
cat >"$DIR/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $PORT
HostKey $DIR/host_ed25519
PidFile $DIR/sshd.pid
AuthorizedKeysFile $DIR/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
LogLevel VERBOSE
EOF
if ! "$SSHD" -t -f "$DIR/sshd_config" 2>"$DIR/sshd-t.err"; then
  note "sshd -t: $(tail -n 1 "$DIR/sshd-t.err")"
fi
app_launch sshd server "$SSHD" -D -e -f "$DIR/sshd_config"
SPID=$PID
SSH=(ssh -F /dev/null -i "$DIR/client_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null
  -o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=5 -o ServerAliveCountMax=3
  -p "$PORT" root@127.0.0.1)
if wait_listen "$PORT" "$SPID"; then
  # Key login, a command, its output.
  hello=failed
  if app_check hello client "${SSH[@]}" 'echo hello' </dev/null; then
    if [ "$(cat "$DIR/hello.out")" = hello ]; then
      hello=ok
    else
      note "echo hello printed '$(head -c 200 "$DIR/hello.out")'"
    fi
  fi
  payload 6
  # 16 MiB through the connection (client -> server), its sha256 back.
  head -c "$BYTES" /dev/urandom >"$DIR/data.bin"
  want=$(sha256sum <"$DIR/data.bin" | cut -d' ' -f1)
  pipe=failed
  if app_check pipe client "${SSH[@]}" 'sha256sum' <"$DIR/data.bin"; then
    got=$(cut -d' ' -f1 "$DIR/pipe.out")
    if [ "$got" = "$want" ]; then
      pipe="sha256 matches"
    else
      pipe="sha256 differs"
      note "the far side's sha256 of the 16 MiB is '${got:0:64}', not $want"
    fi
  fi
  payload "$BYTES"
  APP_RESULT="key login, echo hello: $hello; 16 MiB piped to sha256sum on the far side: $pipe"
else
  note "sshd did not listen ($(tail -n 1 "$DIR/sshd.err" 2>/dev/null))"
fi
stop_app "$SPID" TERM  # sshd exits normally on SIGTERM
if grep -q 'fatal\|error:\|Connection reset\|Bad packet\|Corrupted' "$DIR/sshd.err" 2>/dev/null; then
  note "sshd: $(grep -m1 'fatal\|error:\|Connection reset\|Bad packet\|Corrupted' "$DIR/sshd.err" | cut -c1-200)"
fi
# Two connections (hello, pipe), each SMC on the client's side (ssh exits
# normally and writes its stats). sshd's per-connection processes (the
# re-executed sshd, its sandboxed pre-auth child, the session process) leave
# through _exit(), which writes no stats file; that the server's side was
# SMC too shows in the loopback check (app_finish): the 16 MiB did not cross
# TCP, and a client's SMC connection has an SMC server at its other end.
expect_smc client 2
app_finish
