//! `loadgen`: see `weir_loadgen` and `docs/BENCHMARKS.md`.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "loadgen", about = "Load, measure and verify a weir broker")]
struct Cli {
    #[command(flatten)]
    config: weir_loadgen::Config,
}

fn main() -> anyhow::Result<()> {
    let config = Cli::parse().config;
    let json = config.json;
    let report = weir_loadgen::run(config)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    if !report.ok {
        anyhow::bail!(
            "verification FAILED: lost {}, duplicates {}, out of order {}, corrupt {}, produce errors {}",
            report.lost,
            report.duplicates,
            report.out_of_order,
            report.corrupt,
            report.produce_errors
        );
    }
    Ok(())
}
