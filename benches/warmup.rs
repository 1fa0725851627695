//! How long `pmta-sim warmup plan` takes for the case: 8 new IPs to 1,000,000
//! messages a day across the five big providers (`examples/warmup/eight-ips-1m.toml`).
//!
//! Run: `cargo bench --bench warmup`. Each iteration does what the command does after
//! reading its files: parse the input and the five provider models, search the schedule
//! against the models, and write `schedule.csv`, the replay scenario and the PowerMTA
//! snippet to memory. The target is under 60 s.

use std::path::Path;

use pmta_sim::scenario::{IspSpec, is_safe_name, parse_model};
use pmta_sim::warmup::{self, Input};

const INPUT: &str = "examples/warmup/eight-ips-1m.toml";
const MODELS: &str = "isp-models";

fn main() {
    divan::main();
}

#[divan::bench(sample_count = 10)]
fn plan_eight_ips_to_1m(bencher: divan::Bencher) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let input_text = std::fs::read_to_string(root.join(INPUT)).unwrap();
    let models = root.join(MODELS);
    let model_texts: Vec<(String, String)> = ["gmail", "yahoo", "outlook", "icloud", "comcast"]
        .iter()
        .map(|name| {
            let file = models.join(format!("{name}.toml"));
            (name.to_string(), std::fs::read_to_string(file).unwrap())
        })
        .collect();
    bencher.bench(|| {
        let known = |name: &str| is_safe_name(name) && model_texts.iter().any(|(n, _)| n == name);
        let input = Input::parse(INPUT, &input_text, &known).unwrap();
        let specs: Vec<IspSpec> = input
            .providers
            .iter()
            .map(|(name, _)| {
                let (_, text) = model_texts.iter().find(|(n, _)| n == name).unwrap();
                let mut spec = parse_model(&models.join(format!("{name}.toml")), text).unwrap();
                spec.name = name.clone();
                spec
            })
            .collect();
        let plan = warmup::plan(&input, &specs);
        let days = plan.schedule.days();
        assert_eq!(
            plan.warm_day.len(),
            5,
            "a warm day projected for each provider"
        );
        (
            plan.schedule.to_csv(),
            warmup::replay_scenario(&input, &plan.schedule, &specs, days, 1),
            warmup::pmta_snippet(&input, &plan.schedule, &specs),
        )
    });
}
