#!/usr/bin/env bash
# cargo deny on the workspace (policy: deny.toml), run by deploy/test.sh:
#  - bans (duplicate versions, wildcards), licences and sources: always, and
#    they must pass;
#  - advisories (RustSec): only when the advisory database can be fetched
#    (it lives on github.com, which some build machines cannot reach); when it
#    cannot, a SKIP line says so and why. Never a silent pass.
# KMS_DENY_CONFIG picks another config (to try the advisories step against a
# local copy of the database, say).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
config="${KMS_DENY_CONFIG:-deny.toml}"
if ! cargo deny --version >/dev/null 2>&1; then
  echo "check-deny: FAIL: cargo-deny is not installed (deploy/install-deps.sh --test installs it)" >&2
  exit 1
fi

cargo deny --locked --config "$config" check bans licenses sources

if fetch_out="$(timeout 120 cargo deny --config "$config" fetch db 2>&1)"; then
  cargo deny --locked --config "$config" check advisories
else
  reason="$(grep -m1 'fatal:' <<<"$fetch_out" || grep -m1 -iE 'error' <<<"$fetch_out" || true)"
  echo "check-deny: SKIP: advisories not checked: the RustSec advisory database could not be fetched (${reason:-cargo deny fetch db failed}); bans, licenses and sources were checked"
fi
