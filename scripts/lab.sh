#!/usr/bin/env bash
# The live tests' lab: real third-party SMTP and DNS software on loopback.
#
#   scripts/lab.sh install     install what the live tests need, when missing:
#                              Debian's postfix (preseeded "No configuration": the system
#                              instance on port 25 is never configured or started), postgrey,
#                              swaks (+ libnet-ssleay-perl for its STARTTLS), dnsmasq,
#                              python3-venv; and aiosmtpd from PyPI in a private venv.
#   scripts/lab.sh venv        print the venv's python (installing it when missing)
#
# The tests start their own private instances (ports chosen by the test, state in a
# temporary directory) and stop them by PID; nothing here starts a daemon.
# Root is needed for apt-get (CI runs as root); elsewhere sudo is used.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(postfix postgrey swaks libnet-ssleay-perl dnsmasq python3 python3-venv)
AIOSMTPD_VERSION=1.4.6
# The venv lives in target/ so that `cargo clean` removes it with the rest of the build.
VENV="${PMTA_SIM_LAB_VENV:-$PWD/target/lab-venv}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_debs() {
    local missing=() p
    for p in "${DEBS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "lab: installing ${missing[*]}" >&2
    # "No configuration": no /etc/postfix/main.cf, nothing listens on port 25.
    echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >&2
}

install_venv() {
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
        return 0
    fi
    echo "lab: creating $VENV with aiosmtpd==$AIOSMTPD_VERSION" >&2
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "aiosmtpd==$AIOSMTPD_VERSION" >&2
}

case "${1:-}" in
    install) install_debs; install_venv ;;
    venv) install_venv; echo "$VENV/bin/python" ;;
    *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
