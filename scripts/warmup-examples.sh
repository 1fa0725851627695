#!/usr/bin/env bash
# Rewrites the generated files of examples/warmup/published/ with the pmta-sim built here:
# ses.csv (the SES ramp, see the README there), warmup-plan.csv (the planner's schedule for
# examples/warmup/eight-ips-1m.toml) and NAME.toml for every NAME.csv (its replay for the
# days below, with the [[expect]] tables `warmup check --write-scenario` writes).
# tests/warmup_published.rs fails when a shipped file differs from what this writes.
# Usage: scripts/warmup-examples.sh   (after `cargo build --release`; PMTA_SIM=path to override)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${PMTA_SIM:-target/release/pmta-sim}
dir=examples/warmup/published
input=examples/warmup/eight-ips-1m.toml

# Amazon SES publishes the length of its ramp (45 days) and its end (50,000 a day per IP),
# not its days: a geometric ramp from 200 a day per IP (day 1 of the SparkPost and KumoMTA
# aggressive lists) to 50,000 on day 45, split over the providers by their shares.
# The same formula is in tests/warmup_published.rs.
awk 'BEGIN {
    n = split("192.0.2.11 192.0.2.12 192.0.2.13 192.0.2.14 198.51.100.15 198.51.100.16 198.51.100.17 198.51.100.18", ips, " ")
    split("gmail yahoo outlook icloud comcast", providers, " ")
    split("0.4 0.2 0.2 0.1 0.1", shares, " ")
    print "day,provider,ip,messages"
    for (day = 1; day <= 45; day++) {
        per_ip = int(200 * (50000 / 200) ^ ((day - 1) / 44) + 0.5)
        for (p = 1; p <= 5; p++)
            for (i = 1; i <= n; i++)
                printf "%d,%s,%s,%d\n", day, providers[p], ips[i], int(per_ip * shares[p] + 0.5)
    }
}' > "$dir/ses.csv"

plan=$(mktemp -d)
trap 'rm -rf "$plan"' EXIT
"$bin" warmup plan "$input" --out "$plan" > /dev/null
cp "$plan/schedule.csv" "$dir/warmup-plan.csv"

# The days each replay covers: through the first day over the deferral bound (the README
# there says which), so the shipped scenarios stay small enough for CI's debug build.
days_of() {
    case $1 in
        sparkpost | kumomta-aggressive | warmup-plan) echo 2 ;;
        sendgrid) echo 4 ;;
        kumomta-conservative) echo 4 ;;
        ses) echo 5 ;;
        *) echo "no days for $1" >&2; exit 2 ;;
    esac
}
for csv in "$dir"/*.csv; do
    name=$(basename "$csv" .csv)
    # Exit 1 is a replay with risk days: expected here.
    /usr/bin/time -f "$name %e s" "$bin" warmup check "$csv" --input "$input" --days "$(days_of "$name")" \
        --out "$plan/check-$name" --write-scenario "$dir/$name.toml" > /dev/null || [ $? -eq 1 ]
done
