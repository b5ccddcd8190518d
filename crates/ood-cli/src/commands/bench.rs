//! `ood bench`: the throughput benchmark of `ood-bench`, run from the command line.

pub use ood_bench::BenchArgs;

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    Ok(ood_bench::run(args)?)
}
