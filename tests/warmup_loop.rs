//! `pmta-sim warmup check --adaptive`: a schedule replayed in closed loop, each IP ×
//! provider's next day decided from what its day really did (advance, hold, step back,
//! overflow to the other new IPs and the warm IPs), and `warm_ips` in the planner's input.

mod common;

use common::cli::{pmta_sim, scratch};
use common::runs::{load_edited, run_in};
use pmta_sim::engine::accounting::RecordType;
use pmta_sim::scenario::Mode;

const EIGHT_IPS: &str = "examples/warmup/eight-ips-1m.toml";

fn summary(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// The eight-IP plan's first four days in closed loop stay under the deferral bound at every
/// provider every day (open loop, Comcast and Yahoo go over it from day 2: one complaint
/// drawn on day 1 at one IP cuts its capacity to ~0.72× while the schedule keeps sending the
/// planned volume there). Every IP whose capacity a provider cut after a day is stepped back
/// the next day, and what it does not take is sent by the provider's other new IPs or
/// carried, never lost.
#[test]
fn the_plan_in_closed_loop_stays_under_the_bound_every_day() {
    let out = scratch("warmup-loop");
    let plan = out.join("plan");
    let run = pmta_sim(&["warmup", "plan", EIGHT_IPS, "--out", plan.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&run.stdout).contains("steps back to the largest earlier stage"),
        "the closed loop's rules are printed with the plan"
    );
    let report = out.join("check");
    let run = pmta_sim(&[
        "warmup",
        "check",
        plan.join("schedule.csv").to_str().unwrap(),
        "--input",
        EIGHT_IPS,
        "--days",
        "4",
        "--adaptive",
        "--out",
        report.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "no risk day: {stdout}");
    let s = summary(&report);
    assert_eq!(s["adaptive"], true);
    let bound = s["deferral_bound"].as_f64().unwrap();
    let days = s["days"].as_array().unwrap();
    assert_eq!(days.len(), 4 * 5, "{stdout}");
    for d in days {
        assert!(
            d["deferral_rate"].as_f64().unwrap() <= bound
                && d["risks"].as_array().unwrap().is_empty(),
            "day {} at {}: {stdout}",
            d["day"],
            d["provider"]
        );
        assert!(
            d["delivered"].as_u64().unwrap() * 100 >= d["planned"].as_u64().unwrap() * 98,
            "{stdout}"
        );
    }
    // Each cut in an IP's capacity between two days' standings is a step back the next day.
    let standings = s["standings"].as_array().unwrap();
    let decisions = s["decisions"].as_array().unwrap();
    let capacity = |day: u64, provider: &str, ip: &str| {
        standings
            .iter()
            .find(|x| x["day"] == day && x["provider"] == provider && x["ip"] == ip)
            .and_then(|x| x["capacity_per_hour"].as_u64())
    };
    let mut cuts = 0;
    for x in standings {
        let (day, provider, ip) = (
            x["day"].as_u64().unwrap(),
            x["provider"].as_str().unwrap(),
            x["ip"].as_str().unwrap(),
        );
        let Some(before) = day.checked_sub(1).and_then(|d| capacity(d, provider, ip)) else {
            continue;
        };
        if x["capacity_per_hour"].as_u64().unwrap() < before {
            cuts += 1;
            let step = decisions
                .iter()
                .find(|d| d["day"] == day && d["provider"] == provider && d["ip"] == ip)
                .unwrap_or_else(|| panic!("{provider} {ip} cut on day {day}: {stdout}"));
            assert_eq!(step["action"], "stepped_back", "{step}");
            assert!(
                step["sent"].as_u64().unwrap() < step["scheduled"].as_u64().unwrap()
                    || step["scheduled"].as_u64().unwrap() <= 150,
                "{step}"
            );
            assert!(step["reason"].as_str().unwrap().contains("cut"), "{step}");
        }
    }
    assert!(
        cuts >= 2,
        "complaints drawn in four days cut some IP: {stdout}"
    );
    // Day 2's step backs at Yahoo and Comcast (the open loop's throttled days) are there.
    for provider in ["yahoo", "comcast"] {
        assert!(
            decisions.iter().any(|d| d["day"] == 2
                && d["provider"] == provider
                && d["action"] == "stepped_back"),
            "{provider}: {stdout}"
        );
    }
    // What the held pairs did not take went to advanced IPs (overflow) or is carried.
    assert!(
        decisions
            .iter()
            .any(|d| d["overflow"].as_u64().unwrap() > 0),
        "{stdout}"
    );
    assert!(stdout.contains("closed loop ("), "{stdout}");
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("id=\"warmup-loop\"") && html.contains("class=\"stepped_back\""));
    let _ = std::fs::remove_dir_all(&out);
}

/// With two warm IPs beside two new ones, day 1 already sends each provider's whole share
/// (the warm IPs take what the new IPs cannot yet), the replay delivers it within the bound,
/// the schedule's rows name the warm IPs, and the PowerMTA snippet makes each new IP the
/// cold-virtual-mta twin of a virtual MTA on a warm IP. The closed loop replays it the same
/// way twice, byte for byte.
#[test]
fn warm_ips_carry_the_target_from_day_one() {
    let out = scratch("warmup-warm-ips");
    let input = out.join("input.toml");
    std::fs::write(
        &input,
        "target_per_day = 4000\nnew_ips = [\"192.0.2.11\", \"192.0.2.12\"]\nwarm_ips = [\"203.0.113.5\", \"203.0.113.6\"]\nmail_from = \"news@sender.example\"\nengagement = 0.3\n\n[providers]\ngmail = 0.5\nyahoo = 0.5\n",
    )
    .unwrap();
    let plan = out.join("plan");
    let run = pmta_sim(&[
        "warmup",
        "plan",
        input.to_str().unwrap(),
        "--out",
        plan.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let csv = std::fs::read_to_string(plan.join("schedule.csv")).unwrap();
    for provider in ["gmail", "yahoo"] {
        let (mut new, mut warm) = (0u64, 0u64);
        for line in csv
            .lines()
            .filter(|l| l.starts_with(&format!("1,{provider},")))
        {
            let f: Vec<&str> = line.split(',').collect();
            let n: u64 = f[3].parse().unwrap();
            if f[2].starts_with("203.0.113.") {
                warm += n;
            } else {
                new += n;
            }
        }
        assert_eq!(new + warm, 2000, "{provider} day 1: {csv}");
        assert!(
            new > 0 && new < 1000 && warm > 1000,
            "{provider}: {new} new, {warm} warm"
        );
    }
    let snippet = std::fs::read_to_string(plan.join("pmta-warmup.conf")).unwrap();
    assert!(
        snippet.contains("<virtual-mta warm1>\n    smtp-source-host 203.0.113.5 warm1.sender.example\n    cold-virtual-mta cold1\n"),
        "{snippet}"
    );
    assert!(snippet.contains("smtp-source-host 192.0.2.12 mta2.sender.example"));
    assert!(
        !snippet.contains("<virtual-mta cold3>"),
        "warm IPs are no cold twins: {snippet}"
    );
    // The snippet replayed as PowerMTA would run it: mail injected to the pool `warm` goes
    // through the new IPs up to the day's max-cold-virtual-mta-msg, the rest through the warm
    // IPs — day 1's schedule, IP for IP. Half of it to googlemail.com: the count is Gmail's,
    // not one domain's (googlemail.com queues to gmail.com), or a new IP would take double.
    let scenario = format!(
        "name = \"snippet\"\nseed = 4\nduration = \"1d\"\nmode = \"fast\"\nstart_time = \"2026-10-05T00:00:00Z\"\ntick_ms = 100\nconfig_inline = \"\"\"\ndomain-key s1,sender.example,/etc/pmta/dkim/s.pem\n{snippet}<domain *>\n    dkim-sign yes\n    max-smtp-out 4\n</domain>\n\"\"\"\n\n[isps.gmail]\nmodel = \"gmail\"\nhistory = \"warm\"\n\n[[workload]]\nvmta = \"warm\"\nmail_from = \"news@sender.example\"\ndaily = [2000]\nwindow = \"08:00-20:00\"\ndomains = {{ \"gmail.com\" = 0.5, \"googlemail.com\" = 0.5 }}\nengagement = 0.3\n"
    );
    let replayed = run_in(&load_edited("warm-snippet", &scenario), Mode::Fast);
    let mut per_ip = std::collections::BTreeMap::<String, u64>::new();
    for r in replayed
        .records
        .iter()
        .filter(|r| r.record_type == RecordType::Delivered)
    {
        *per_ip.entry(r.dlv_source_ip.clone()).or_default() += 1;
    }
    let day1 = |ip: &str| -> u64 {
        csv.lines()
            .find(|l| l.starts_with(&format!("1,gmail,{ip},")))
            .map_or(0, |l| l.rsplit(',').next().unwrap().parse().unwrap())
    };
    assert_eq!(per_ip["192.0.2.11"], day1("192.0.2.11"), "{per_ip:?}");
    assert_eq!(per_ip["192.0.2.12"], day1("192.0.2.12"), "{per_ip:?}");
    assert_eq!(per_ip.values().sum::<u64>(), 2000, "{per_ip:?}");
    let mut summaries = Vec::new();
    for name in ["a", "b"] {
        let report = out.join(name);
        let run = pmta_sim(&[
            "warmup",
            "check",
            plan.join("schedule.csv").to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--days",
            "2",
            "--adaptive",
            "--out",
            report.to_str().unwrap(),
        ]);
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert_eq!(run.status.code(), Some(0), "{stdout}");
        let s = summary(&report);
        for d in s["days"].as_array().unwrap() {
            assert_eq!(d["planned"], 2000, "{stdout}");
            assert!(d["delivered"].as_u64().unwrap() >= 1960, "{stdout}");
            assert!(d["deferral_rate"].as_f64().unwrap() <= 0.05, "{stdout}");
        }
        summaries.push(std::fs::read(report.join("summary.json")).unwrap());
    }
    assert!(
        summaries[0] == summaries[1],
        "the closed loop is deterministic"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// A bad `warm_ips` entry is bad input: exit 2 with its line.
#[test]
fn bad_warm_ips_are_an_error_with_their_line() {
    let out = scratch("warmup-bad-warm");
    for (list, want) in [
        (
            "[\"192.0.2.300\"]",
            ":3: error: warm_ips: `192.0.2.300` is not an IPv4 address",
        ),
        (
            "[\"203.0.113.5\",\n  \"192.0.2.11\"]",
            ":4: error: warm_ips: 192.0.2.11 is listed twice",
        ),
    ] {
        let input = out.join("input.toml");
        std::fs::write(
            &input,
            format!("target_per_day = 1000\nnew_ips = [\"192.0.2.11\"]\nwarm_ips = {list}\nmail_from = \"a@b.example\"\n\n[providers]\ngmail = 1.0\n"),
        )
        .unwrap();
        let run = pmta_sim(&[
            "warmup",
            "plan",
            input.to_str().unwrap(),
            "--out",
            out.join("p").to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
