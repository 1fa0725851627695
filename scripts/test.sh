#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this script).
# Usage: scripts/test.sh        (from anywhere inside the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."

# The HTML report is tested in a real browser: Debian's Chromium.
if ! command -v chromium >/dev/null; then
    as_root=""
    [ "$(id -u)" -eq 0 ] || as_root=sudo
    $as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq chromium >/dev/null
fi

# The live tests meet real third-party software on loopback: Postfix (smtp-source, a
# private instance), postgrey, swaks, dnsmasq, and aiosmtpd in a venv under target/.
scripts/lab.sh install

# Formatting and lints are part of the suite: a warning fails it.
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
