#!/usr/bin/env bash
# Create the appliance's SoftHSM2 token the way production runs it: a system
# user for the service, a SoftHSM2 config and token directory of its own
# (not the system-wide /etc/softhsm and /var/lib/softhsm), random SO and user
# PINs in 0600 files, and a deny-all policy file to start from. Refuses to
# overwrite anything; prints the next steps.
#
#   deploy/softhsm-token-setup.sh [--label L] [--user U] [--root DIR]
#                                 [--conf-dir DIR] [--state-dir DIR] [--module PATH]
#
#   --label      token label (default vbus-kms; env KMS_TOKEN_LABEL)
#   --user       service user (default vbus-kms; env KMS_USER); created as a
#                system user when missing (as root)
#   --root       prefix for the two directories below (default empty: the real
#                /etc and /var/lib; env KMS_ROOT) - for trying it out or testing
#   --conf-dir   config directory (default ROOT/etc/vbus-kms; env KMS_CONF_DIR)
#   --state-dir  state directory (default ROOT/var/lib/vbus-kms; env KMS_STATE_DIR)
#   --module     SoftHSM2 PKCS#11 module (default /usr/lib/softhsm/libsofthsm2.so)
#
# What it makes (modes and owners as the systemd unit expects):
#   CONF/                 0750 root:USER
#   CONF/softhsm2.conf    0640 root:USER   tokendir = STATE/tokens, objectstore file
#   CONF/pin              0600 USER        the user PIN (kmsd's token.pin_file)
#   CONF/so-pin           0600 root        the SO PIN (keep it offline afterwards)
#   STATE/                0700 USER        kmsd's state directory
#   STATE/tokens/         0700 USER        the SoftHSM2 token (files 0600 USER)
#   STATE/policy.toml     0600 USER        `version = 1`: nobody may do anything yet
# The PINs are 128-bit random hex; they are handed to softhsm2-util on its
# terminal, never on a command line (which any local user could read).
# As a non-root user it works only for that same user (no chown, no runuser).
set -euo pipefail

die() { echo "softhsm-token-setup: $*" >&2; exit 1; }

label="${KMS_TOKEN_LABEL:-vbus-kms}"
user="${KMS_USER:-vbus-kms}"
root="${KMS_ROOT:-}"
conf="${KMS_CONF_DIR:-}"
state="${KMS_STATE_DIR:-}"
module="${KMS_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
while (($#)); do
  case "$1" in
    --label) label="${2:?}"; shift 2 ;;
    --user) user="${2:?}"; shift 2 ;;
    --root) root="${2:?}"; shift 2 ;;
    --conf-dir) conf="${2:?}"; shift 2 ;;
    --state-dir) state="${2:?}"; shift 2 ;;
    --module) module="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
root="${root%/}"
conf="${conf:-$root/etc/vbus-kms}"
state="${state:-$root/var/lib/vbus-kms}"
case "$conf$state" in *[[:space:]]*) die "paths with spaces are not supported" ;; esac
[[ "$conf" = /* && "$state" = /* ]] || die "--conf-dir and --state-dir must be absolute"
[[ "$label" =~ ^[A-Za-z0-9._-]{1,32}$ ]] || die "the label must be 1 to 32 of A-Z a-z 0-9 . _ -"
command -v softhsm2-util >/dev/null || die "softhsm2-util not found (apt-get install softhsm2)"
command -v script >/dev/null || die "script(1) not found (util-linux)"
[ -r "$module" ] || die "PKCS#11 module $module not found"
tokens="$state/tokens"

# Nothing is touched before every check has passed.
for f in "$conf/pin" "$conf/so-pin" "$conf/softhsm2.conf" "$state/policy.toml"; do
  [ ! -e "$f" ] || die "$f exists; refusing to overwrite (remove it by hand to start again)"
done
if [ -d "$tokens" ] && [ -n "$(ls -A "$tokens")" ]; then
  die "$tokens is not empty; refusing to overwrite a token"
fi

me="$(id -un)"
if [ "$(id -u)" -eq 0 ]; then
  if ! id "$user" >/dev/null 2>&1; then
    [ -z "$root" ] || die "user $user does not exist (with --root, give an existing --user)"
    useradd --system --user-group --home-dir "$state" --no-create-home \
      --shell /usr/sbin/nologin --comment "vBus KMS" "$user"
    echo "created system user $user"
  fi
  as_user=(runuser -u "$user" --)
else
  [ "$user" = "$me" ] || die "as $me, only --user $me works (run as root for a service user)"
  as_user=()
fi
group="$(id -gn "$user")"

# Remove what this run created if it fails half-way.
created=()
cleanup() {
  local rc=$?
  if ((rc != 0)) && ((${#created[@]})); then
    echo "set-up failed; removing what it created" >&2
    for ((i = ${#created[@]} - 1; i >= 0; i--)); do rm -rf -- "${created[$i]}"; done
  fi
}
trap cleanup EXIT
mkdir_owned() { # DIR MODE OWNER GROUP
  if [ ! -d "$1" ]; then
    (umask 022; mkdir -p -- "$(dirname -- "$1")")
    mkdir -- "$1"
    created+=("$1")
  fi
  chmod "$2" "$1"
  [ "$(id -u)" -ne 0 ] || chown "$3:$4" "$1"
}

umask 077
mkdir_owned "$conf" 0750 root "$group"
mkdir_owned "$state" 0700 "$user" "$group"
mkdir_owned "$tokens" 0700 "$user" "$group"

so_pin="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
user_pin="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
((${#so_pin} == 32 && ${#user_pin} == 32)) || die "could not read /dev/urandom"
# printf is a shell builtin: the PINs never appear in a process's arguments.
created+=("$conf/so-pin"); printf '%s\n' "$so_pin" > "$conf/so-pin"
created+=("$conf/pin"); printf '%s\n' "$user_pin" > "$conf/pin"
[ "$(id -u)" -ne 0 ] || { chown root:root "$conf/so-pin"; chown "$user:$group" "$conf/pin"; }

created+=("$conf/softhsm2.conf")
cat > "$conf/softhsm2.conf" <<EOF
# SoftHSM2 configuration of the vBus KMS token (written by softhsm-token-setup.sh).
# kmsd reads it through token.module_env.SOFTHSM2_CONF in kmsd.toml.
directories.tokendir = $tokens
objectstore.backend = file
log.level = WARNING
slots.removable = false
slots.mechanisms = ALL
library.reset_on_fork = false
EOF
chmod 0640 "$conf/softhsm2.conf"
[ "$(id -u)" -ne 0 ] || chown "root:$group" "$conf/softhsm2.conf"

created+=("$state/policy.toml")
cat > "$state/policy.toml" <<'EOF'
# vBus KMS policy (see README, "Policy"): deny by default. Nobody may do
# anything yet; `kmsctl station add ID --modules ...` and `kmsctl officer add`
# add rules here through the running kmsd.
version = 1
EOF
[ "$(id -u)" -ne 0 ] || chown "$user:$group" "$state/policy.toml"

# The token, made by the service user so that its files are the user's (0600).
# softhsm2-util asks for each PIN twice on its terminal; script(1) gives it one.
printf '%s\n%s\n%s\n%s\n' "$so_pin" "$so_pin" "$user_pin" "$user_pin" |
  SOFTHSM2_CONF="$conf/softhsm2.conf" "${as_user[@]}" \
    script -q -e -E never -c "softhsm2-util --init-token --free --label '$label'" /dev/null \
  > /dev/null || die "softhsm2-util --init-token failed"
SOFTHSM2_CONF="$conf/softhsm2.conf" "${as_user[@]}" softhsm2-util --show-slots |
  awk -v l="$label" '$1 == "Label:" && $2 == l { f = 1 } END { exit !f }' ||
  die "the new token is not listed"
trap - EXIT

cat <<EOF
Token "$label" ready for user $user.
  SoftHSM2 config  $conf/softhsm2.conf (tokens in $tokens)
  user PIN         $conf/pin (0600, $user)
  SO PIN           $conf/so-pin (0600, root)
  policy           $state/policy.toml (deny-all)

Next steps:
  1. The config: $conf/kmsd.toml (the Debian package installs
     deploy/kmsd.example.toml there); check token.label = "$label",
     token.pin_file = "$conf/pin",
     token.module_env.SOFTHSM2_CONF = "$conf/softhsm2.conf",
     server.api_listen and ca.publication_url for the factory network.
  2. The key ceremony, as the service user (so that the token objects and the
     CA files are its own), with kmsd stopped:
       install -d -m 0700 -o $user -g $group $state/ceremony
       runuser -u $user -- kmsctl --config $conf/kmsd.toml init \\
         --officer officer-01 --officer-dir $state/ceremony/officer-01
     then hand officer-01/ to the officer and delete it here.
  3. Move the SO PIN ($conf/so-pin) to offline storage (a safe), and
     delete it from the appliance: only re-initialising the token needs it.
  4. Start the service and check it:
       systemctl enable --now vbus-kmsd
       curl -s http://127.0.0.1:8080/healthz
  5. Back up $state (token, store, audit log) as the README's
     Operations section describes.
EOF
