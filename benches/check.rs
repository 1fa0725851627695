//! How long `pmta-sim check` takes on a 10,000-line configuration.
//!
//! Run: `cargo bench --bench check`. The configuration is generated: 200 virtual MTAs in 20
//! pools, 600 `<domain>` blocks (some nested, some macro-expanded), a 300-rule smtp pattern
//! list and a 100-rule bounce-category list, spread over an include glob of 10 files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use pmta_sim::config::{self, MemFs, Options, RealFs};

const LINES_TARGET: usize = 10_000;

/// Returns `(root text, [(file name, text)])` of about `LINES_TARGET` lines in all.
fn generate() -> (String, Vec<(String, String)>) {
    let mut root = String::new();
    root.push_str("postmaster postmaster@example.com\nhost-name mta.example.com\n");
    root.push_str("domain-macro big gmail.com, yahoo.com, hotmail.com, aol.com\n");
    root.push_str("<acct-file /var/log/pmta/acct.csv>\n    records d,b,t,tq\n</acct-file>\n");
    root.push_str("include conf.d/*.conf\n");
    let mut files = Vec::new();
    let mut lines = root.lines().count();
    let mut patterns = String::from("<smtp-pattern-list errors>\n");
    for i in 0..300 {
        let _ = writeln!(
            patterns,
            "    reply /421 .* error {i} try again/ mode=backoff"
        );
    }
    patterns.push_str("</smtp-pattern-list>\n<bounce-category-patterns>\n");
    for i in 0..100 {
        let _ = writeln!(
            patterns,
            "    /^5\\.{i}\\.\\d+ .*(rejected|denied)/ policy-related"
        );
    }
    patterns.push_str("</bounce-category-patterns>\n");
    lines += patterns.lines().count();
    files.push(("00-patterns.conf".to_string(), patterns));
    let mut file_index = 1;
    while lines < LINES_TARGET {
        let mut text = String::new();
        for v in 0..20 {
            let id = file_index * 20 + v;
            let _ = writeln!(
                text,
                "<virtual-mta v{id}>\n    smtp-source-host 10.{}.{}.{} mta{id}.example.com\n    <domain gmail.com>\n        max-smtp-out 4\n        max-msg-rate 100/15m\n    </domain>\n</virtual-mta>",
                id / 65536 % 256,
                id / 256 % 256,
                id % 256
            );
        }
        let _ = writeln!(text, "<virtual-mta-pool pool{file_index}>");
        for v in 0..20 {
            let _ = writeln!(text, "    virtual-mta v{}", file_index * 20 + v);
        }
        text.push_str("</virtual-mta-pool>\n");
        for d in 0..60 {
            let _ = writeln!(
                text,
                "# domain group {d}\n<domain [*.]d{file_index}-{d}.example>\n    max-smtp-out 10\n    max-msg-rate 500/h\n    retry-after 10m,20m,1h,4h\n    backoff-max-msg-rate 50/h\n    backoff-retry-after 30m\n    bounce-after 2d\n    smtp-pattern-list errors\n    source-ip-max-smtp-out 10.0.0.0/8 2\n</domain>"
            );
        }
        lines += text.lines().count();
        files.push((format!("{file_index:02}-generated.conf"), text));
        file_index += 1;
    }
    (root, files)
}

fn total_lines(root: &str, files: &[(String, String)]) -> usize {
    root.lines().count() + files.iter().map(|(_, t)| t.lines().count()).sum::<usize>()
}

fn main() {
    let (root, files) = generate();
    println!(
        "generated config: {} lines in {} files",
        total_lines(&root, &files),
        files.len() + 1
    );
    divan::main();
}

#[divan::bench]
fn check_10k_lines_in_memory(bencher: divan::Bencher) {
    let (root, files) = generate();
    let mut fs = MemFs::new().with("/etc/pmta/config", root);
    for (name, text) in files {
        fs = fs.with(format!("/etc/pmta/conf.d/{name}"), text);
    }
    bencher.bench(|| {
        let checked = config::load(Path::new("/etc/pmta/config"), &fs, Options::default())
            .expect("root exists");
        assert_eq!(checked.error_count(), 0);
        checked
    });
}

#[divan::bench]
fn check_10k_lines_from_disk(bencher: divan::Bencher) {
    let (root, files) = generate();
    let dir: PathBuf = std::env::temp_dir().join(format!("pmta-sim-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("conf.d")).expect("temp dir");
    std::fs::write(dir.join("config"), root).expect("write");
    for (name, text) in files {
        std::fs::write(dir.join("conf.d").join(name), text).expect("write");
    }
    let path = dir.join("config");
    bencher.bench(|| {
        let checked = config::load(&path, &RealFs, Options::default()).expect("readable");
        assert_eq!(checked.error_count(), 0);
        checked
    });
    let _ = std::fs::remove_dir_all(&dir);
}
