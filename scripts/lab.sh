#!/usr/bin/env bash
# The live tests' lab: real third-party SMTP and DNS software on loopback.
#
#   scripts/lab.sh install     install what the live tests need, when missing:
#                              Debian's postfix (preseeded "No configuration": the system
#                              instance on port 25 is never configured or started), postgrey,
#                              swaks (+ libnet-ssleay-perl for its STARTTLS), dnsmasq,
#                              python3-venv, redis-server (shared throttles; each test starts
#                              its own on loopback); and aiosmtpd from PyPI in a private venv.
#   scripts/lab.sh venv        print the venv's python (installing it when missing)
#   scripts/lab.sh postfix-start DIR PORT [--relay-to HOST:PORT | --discard]
#                  [--policy HOST:PORT] [--tls CERT KEY]
#                              a private Postfix instance (postfix -c DIR/etc) on
#                              127.0.0.1:PORT, state and log under DIR: relays everything to
#                              HOST:PORT (no DNS) or discards it; --policy asks a policy
#                              server such as postgrey at RCPT; --tls offers STARTTLS.
#                              The system Postfix (/etc/postfix, port 25) is never touched.
#   scripts/lab.sh postfix-stop DIR
#
# The tests start their own instances (ports chosen by the test, state in a temporary
# directory) and stop them by PID. Root is needed for apt-get and for a private Postfix
# (its master binds, then drops to user postfix); CI runs as root, elsewhere sudo is used.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(postfix postgrey swaks libnet-ssleay-perl dnsmasq python3 python3-venv redis-server)
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

postfix_start() {
    local dir="$1" port="$2"; shift 2
    local relay="" discard=0 policy="" cert="" key=""
    while [ $# -gt 0 ]; do
        case "$1" in
            --relay-to) relay="$2"; shift 2 ;;
            --discard) discard=1; shift ;;
            --policy) policy="$2"; shift 2 ;;
            --tls) cert="$2"; key="$3"; shift 3 ;;
            *) echo "lab: unknown option $1" >&2; exit 2 ;;
        esac
    done
    case "$port" in ''|*[!0-9]*) echo "lab: bad port '$port'" >&2; exit 2 ;; esac
    mkdir -p "$dir/etc" "$dir/spool" "$dir/data"
    dir="$(cd "$dir" && pwd)"
    chown postfix "$dir/data"
    cp /usr/share/postfix/master.cf.dist "$dir/etc/master.cf"
    {
        echo "# private lab instance: loopback only, made by scripts/lab.sh"
        echo "compatibility_level = 3.6"
        echo "queue_directory = $dir/spool"
        echo "data_directory = $dir/data"
        echo "maillog_file = $dir/maillog"
        echo "maillog_file_prefixes = $dir"
        echo "myhostname = postfix.lab.test"
        echo "mydestination ="
        echo "relay_domains ="
        echo "local_recipient_maps ="
        echo "local_transport = error:5.1.1 local delivery is off in the lab"
        echo "alias_maps ="
        echo "alias_database ="
        echo "inet_interfaces = 127.0.0.1"
        echo "inet_protocols = ipv4"
        echo "mynetworks = 127.0.0.0/8"
        echo "smtpd_relay_restrictions = permit_mynetworks, reject"
        # Mail comes in as fast as it is offered (no injection throttle in tests).
        echo "in_flow_delay = 0"
        if [ -n "$policy" ]; then
            echo "smtpd_recipient_restrictions = check_policy_service inet:$policy, permit"
        fi
        if [ -n "$cert" ]; then
            echo "smtpd_tls_cert_file = $cert"
            echo "smtpd_tls_key_file = $key"
            echo "smtpd_tls_security_level = may"
        fi
        if [ "$discard" = 1 ]; then
            echo "default_transport = discard:the lab discards all mail"
        elif [ -n "$relay" ]; then
            echo "relayhost = [${relay%:*}]:${relay##*:}"
        fi
    } > "$dir/etc/main.cf"
    postconf -c "$dir/etc" -M# smtp/inet >/dev/null 2>&1 || true
    postconf -c "$dir/etc" -Me "127.0.0.1:$port/inet = 127.0.0.1:$port inet n - n - - smtpd"
    postconf -c "$dir/etc" -F '*/*/chroot = n'
    postfix -c "$dir/etc" check >/dev/null 2>&1 || true
    postfix -c "$dir/etc" start >/dev/null 2>&1 || { tail -5 "$dir/maillog" >&2 || true; exit 1; }
    local i
    for i in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            tr -dc 0-9 < "$dir/spool/pid/master.pid"; echo
            return 0
        fi
        sleep 0.1
    done
    echo "lab: postfix did not listen on 127.0.0.1:$port" >&2
    tail -5 "$dir/maillog" >&2 || true
    exit 1
}

postfix_stop() {
    local dir="$1" pid
    [ -f "$dir/etc/main.cf" ] || return 0
    pid="$(tr -dc 0-9 < "$dir/spool/pid/master.pid" 2>/dev/null || true)"
    postfix -c "$dir/etc" stop >/dev/null 2>&1 || true
    # Make sure of it, by PID (only if that PID is still a Postfix master).
    if [ -n "$pid" ] && grep -q master "/proc/$pid/cmdline" 2>/dev/null; then
        sleep 0.5
        grep -q master "/proc/$pid/cmdline" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
}

case "${1:-}" in
    install) install_debs; install_venv ;;
    venv) install_venv; echo "$VENV/bin/python" ;;
    postfix-start) shift; [ $# -ge 2 ] || exit 2; postfix_start "$@" ;;
    postfix-stop) shift; [ $# -eq 1 ] || exit 2; postfix_stop "$1" ;;
    *) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
