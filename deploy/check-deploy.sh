#!/usr/bin/env bash
# Cheap checks of deploy/ (run by deploy/test.sh; a few seconds):
#  1. the systemd unit's exposure score (`systemd-analyze security --offline`)
#     is at most the recorded one;
#  2. softhsm-token-setup.sh in a throwaway root: modes and owners, a token
#     the user PIN opens, a second run refused without changing anything;
#  3. with the binaries built (target/debug, or KMS_BIN_DIR): that token with
#     deploy/kmsd.example.toml (paths moved into the throwaway root) takes
#     `kmsctl init` as the service user, kmsd starts on it and answers
#     /healthz, and kmsctl reaches it over the admin socket.
# A check that cannot run here says SKIP and why; it never passes silently.
set -euo pipefail
cd "$(dirname "$0")/.."

# The score recorded in the README ("Deployment"); lower it when the unit
# gets tighter, never raise it without saying why there.
MAX_EXPOSURE=1.0
UNIT=deploy/vbus-kmsd.service

fail() { echo "check-deploy: FAIL: $*" >&2; exit 1; }
skip() { echo "check-deploy: SKIP: $*"; }
ok() { echo "check-deploy: ok: $*"; }

# --- 1. systemd unit ------------------------------------------------------------------
if ! command -v systemd-analyze >/dev/null 2>&1; then
  skip "unit exposure score: systemd-analyze is not installed"
elif ! out="$(systemd-analyze security --offline=yes "$UNIT" 2>&1)"; then
  if grep -q -- "--offline" <<<"$out"; then
    skip "unit exposure score: this systemd-analyze has no --offline (systemd < 250)"
  else
    echo "$out" >&2
    fail "systemd-analyze security --offline=yes $UNIT failed"
  fi
else
  score="$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")"
  [ -n "$score" ] || { echo "$out" >&2; fail "no exposure score in systemd-analyze's output"; }
  if awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s > m) }'; then
    grep '✗' <<<"$out" >&2 || true
    fail "$UNIT exposure score $score is above the recorded $MAX_EXPOSURE"
  fi
  ok "$UNIT exposure score $score (recorded maximum $MAX_EXPOSURE)"
fi

# --- 2. token set-up script -----------------------------------------------------------
missing=()
for c in softhsm2-util script pkcs11-tool; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
if ((${#missing[@]})); then
  skip "token set-up script: ${missing[*]} not installed (deploy/install-deps.sh)"
  exit 0
fi
module=/usr/lib/softhsm/libsofthsm2.so
if [ "$(id -u)" -eq 0 ]; then
  user=nobody # an existing unprivileged user: the real vbus-kms is not created here
else
  user="$(id -un)"
fi
group="$(id -gn "$user")"
t="$(mktemp -d)"
kmsd_pid=
cleanup() {
  [ -z "$kmsd_pid" ] || { kill "$kmsd_pid" 2>/dev/null || true; wait "$kmsd_pid" 2>/dev/null || true; }
  rm -rf -- "$t"
}
trap cleanup EXIT
chmod 0755 "$t"
conf="$t/etc/vbus-kms"
state="$t/var/lib/vbus-kms"
label=vbus-check

deploy/softhsm-token-setup.sh --root "$t" --user "$user" --label "$label" >"$t/setup.out" 2>&1 ||
  { cat "$t/setup.out" >&2; fail "softhsm-token-setup.sh failed"; }
grep -q "Next steps:" "$t/setup.out" || fail "softhsm-token-setup.sh printed no next steps"
expect() { # PATH MODE OWNER GROUP
  local got
  got="$(stat -c '%a %U %G' "$1")"
  [ "$got" = "$2 $3 $4" ] || fail "$1 is '$got', expected '$2 $3 $4'"
}
root_group="$(id -gn 0)"
if [ "$(id -u)" -eq 0 ]; then
  expect "$conf" 750 root "$group"
  expect "$conf/softhsm2.conf" 640 root "$group"
  expect "$conf/so-pin" 600 root "$root_group"
else
  expect "$conf" 750 "$user" "$group"
  expect "$conf/softhsm2.conf" 640 "$user" "$group"
  expect "$conf/so-pin" 600 "$user" "$group"
fi
expect "$conf/pin" 600 "$user" "$group"
expect "$state" 700 "$user" "$group"
expect "$state/tokens" 700 "$user" "$group"
expect "$state/policy.toml" 600 "$user" "$group"
grep -qx "directories.tokendir = $state/tokens" "$conf/softhsm2.conf" || fail "softhsm2.conf: wrong tokendir"
grep -qx "objectstore.backend = file" "$conf/softhsm2.conf" || fail "softhsm2.conf: backend is not file"
[[ "$(cat "$conf/pin")" =~ ^[0-9a-f]{32}$ ]] || fail "the user PIN is not 32 hex digits"
[ "$(cat "$conf/pin")" != "$(cat "$conf/so-pin")" ] || fail "the SO and user PINs are equal"
if [ -n "$(find "$state/tokens" -mindepth 1 \( -type f ! -perm 0600 -o ! -user "$user" \))" ]; then
  fail "token files not all 0600 and owned by $user"
fi
# setpriv execs the command itself (runuser would stay its parent and turn
# kmsd's clean exit at SIGTERM into its own death by the signal).
if [ "$(id -u)" -eq 0 ]; then
  as_user=(setpriv --reuid="$user" --regid="$group" --init-groups --)
else
  as_user=()
fi
SOFTHSM2_CONF="$conf/softhsm2.conf" "${as_user[@]}" pkcs11-tool --module "$module" \
  --token-label "$label" --login --pin "$(cat "$conf/pin")" --list-objects >/dev/null 2>&1 ||
  fail "the user PIN does not open the new token"
before="$(cd "$t" && find . -mindepth 1 -path ./setup.out -prune -o -print0 | sort -z | xargs -0 ls -ld --time-style=+%s.%N | md5sum)"
if deploy/softhsm-token-setup.sh --root "$t" --user "$user" --label "$label" >"$t/again.out" 2>&1; then
  fail "a second softhsm-token-setup.sh run did not refuse"
fi
grep -q "refusing to overwrite" "$t/again.out" || { cat "$t/again.out" >&2; fail "second run: no refusal message"; }
after="$(cd "$t" && find . -mindepth 1 -path ./setup.out -prune -o -path ./again.out -prune -o -print0 | sort -z | xargs -0 ls -ld --time-style=+%s.%N | md5sum)"
[ "$before" = "$after" ] || fail "the refused second run changed files"
ok "softhsm-token-setup.sh: modes, owners, PIN login, refusal to overwrite"

# --- 3. the example config on that token with the built binaries --------------------
bin="${KMS_BIN_DIR:-target/debug}"
if [ ! -x "$bin/kmsctl" ] || [ ! -x "$bin/kmsd" ]; then
  skip "example config end to end: no kmsctl/kmsd in $bin (cargo build --bins first)"
  exit 0
fi
bin="$(cd "$bin" && pwd)"
if ! "${as_user[@]}" test -x "$bin/kmsd" || ! "${as_user[@]}" test -x "$bin/kmsctl"; then
  # A checkout under a private directory (/root/...): run copies.
  install -d -m 0755 "$t/bin"
  cp "$bin/kmsd" "$bin/kmsctl" "$t/bin/"
  bin="$t/bin"
fi
if ! command -v curl >/dev/null 2>&1; then
  skip "example config end to end: curl not installed"
  exit 0
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api_port="$(free_port)"
pub_port="$(free_port)"
run="$t/run/vbus-kms"
install -d -m 0755 "$t/run"
install -d -m 0700 -o "$user" -g "$group" "$run" "$state/ceremony"
sed -e "s|/etc/vbus-kms|$conf|g; s|/var/lib/vbus-kms|$state|g; s|/run/vbus-kms|$run|g" \
  -e "s|^label = \"vbus-kms\"|label = \"$label\"|" \
  -e "s|^api_listen = .*|api_listen = \"127.0.0.1:$api_port\"|" \
  -e "s|^publication_listen = .*|publication_listen = \"127.0.0.1:$pub_port\"|" \
  deploy/kmsd.example.toml >"$conf/kmsd.toml"
chmod 0640 "$conf/kmsd.toml"
[ "$(id -u)" -ne 0 ] || chown "root:$group" "$conf/kmsd.toml"
"${as_user[@]}" "$bin/kmsctl" --config "$conf/kmsd.toml" init --officer officer-01 \
  --officer-dir "$state/ceremony/officer-01" >"$t/init.out" 2>&1 ||
  { cat "$t/init.out" >&2; fail "kmsctl init on the example config failed"; }
# As the unit starts it: the service user, umask 0077, the config read-only to it.
( umask 077; exec "${as_user[@]}" "$bin/kmsd" --config "$conf/kmsd.toml" ) >"$t/kmsd.out" 2>&1 &
kmsd_pid=$!
health=
for _ in $(seq 1 100); do
  health="$(curl -sf "http://127.0.0.1:$pub_port/healthz" 2>/dev/null)" && break
  kill -0 "$kmsd_pid" 2>/dev/null || { cat "$t/kmsd.out" >&2; fail "kmsd on the example config exited"; }
  sleep 0.1
done
[[ "$health" == *'"status":"ok"'* ]] || { cat "$t/kmsd.out" >&2; fail "no healthy /healthz: '$health'"; }
# kmsctl as root (or the user) reaches the running kmsd over the admin socket.
"$bin/kmsctl" --config "$conf/kmsd.toml" policy show >"$t/policy.out" 2>&1 ||
  { cat "$t/policy.out" "$t/kmsd.out" >&2; fail "kmsctl policy show over the admin socket failed"; }
[ "$(stat -c '%a' "$run/admin.sock")" = 600 ] || fail "the admin socket is not 0600"
kill -TERM "$kmsd_pid"
wait "$kmsd_pid" || { cat "$t/kmsd.out" >&2; fail "kmsd did not stop cleanly on SIGTERM"; }
kmsd_pid=
ok "example config: kmsctl init as $user, kmsd healthy, admin socket, clean SIGTERM"
