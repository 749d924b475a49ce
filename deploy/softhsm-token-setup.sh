#!/usr/bin/env bash
# Create the appliance token on a SoftHSM2 installation for a service user,
# with random SO and user PINs in 0600 files. Usage:
#   deploy/softhsm-token-setup.sh [LABEL] [CONF_DIR]
# Defaults: LABEL=vbus-kms, CONF_DIR=/etc/vbus-kms. Refuses to overwrite.
set -euo pipefail
label="${1:-vbus-kms}"
conf="${2:-/etc/vbus-kms}"
user="${KMS_USER:-vbus-kms}"

id "$user" >/dev/null 2>&1 || useradd --system --home /var/lib/vbus-kms --shell /usr/sbin/nologin "$user"
install -d -m 0750 -o root -g "$user" "$conf"
for f in pin so-pin; do
  [ -e "$conf/$f" ] && { echo "$conf/$f exists; refusing to overwrite" >&2; exit 1; }
done
if softhsm2-util --show-slots | grep -q "Label:.*\b$label\b"; then
  echo "a token labelled $label exists already" >&2; exit 1
fi
umask 077
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$conf/so-pin"
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$conf/pin"
softhsm2-util --init-token --free --label "$label" --so-pin "$(cat "$conf/so-pin")" --pin "$(cat "$conf/pin")"
chown "$user" "$conf/pin"
# SoftHSM2's token directory must be writable by the service user.
chown -R "$user" /var/lib/softhsm/tokens
echo "token $label ready; user PIN in $conf/pin (owner $user, 0600), SO PIN in $conf/so-pin (root, 0600)"
