//! The report: the header, the tables of model and op rows, and the rows of the JSON file.

use serde::Serialize;

use crate::op_timings::OpRow;
use crate::plan::Plan;
use crate::workloads::ModelRow;
use crate::BenchArgs;

/// A row of the JSON output, its fields in declaration order.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum JsonRow<'a> {
    Model(&'a ModelRow),
    Op(&'a OpRow),
}

pub(crate) fn print_header(
    args: &BenchArgs,
    plan: &Plan,
    date: &str,
    cpu: &str,
    busy: Option<usize>,
    torch_note: &str,
) {
    println!("# ood bench, {date}");
    println!("# CPU: {cpu}; {} compute threads", plan.threads);
    if !plan.device.is_cpu() {
        println!(
            "# device: {} (candle's ops); train: batch and noised copy through the trunk, as `ood train`",
            args.device
        );
    }
    let fewer = if plan.explicit_steps {
        ""
    } else {
        " (candle above W=16: at most 1 + 3)"
    };
    println!(
        "# {} warm-up + {} timed steps per row{fewer}, median; GFLOP/s = img/s x forward FLOPs x (3 train, 1 infer)",
        plan.warmup, plan.steps
    );
    println!("# PyTorch: {torch_note}");
    if let Some(n) = busy.filter(|&n| n > 0) {
        println!(
            "# warning: {n} other runnable thread(s) at the start: other work competes for the cores, \
             so these figures (PyTorch's above all) are low; rerun on an idle machine"
        );
    }
    if plan.device.is_cpu() {
        println!(
            "# ref-wW: torch_ref.py's model (width W, blocks [2,2,2], 10 classes); presets: 9 classes"
        );
    }
    if args.rounds > 1 {
        println!(
            "# {} rounds, ours then PyTorch's each time: median of each row over the rounds; \
             the ratio is of the two medians, each round's in brackets",
            args.rounds
        );
    }
    println!();
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

pub(crate) fn model_table(rows: &[ModelRow]) -> String {
    let mut s = String::from(
        "| model | kernels | kind | batch | img/s | GFLOP/s | peak MiB | torch img/s | ratio |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {:.1} | {:.2} | {} | {} | {} |\n",
            r.model,
            r.kernels,
            r.kind,
            r.batch,
            r.images_per_s,
            r.gflops,
            fmt_opt(r.peak_mib, 0),
            fmt_opt(r.torch_images_per_s, 1),
            ratio_cell(r),
        );
    }
    s
}

/// The ratio, then each round's in brackets when there were several.
pub(crate) fn ratio_cell(r: &ModelRow) -> String {
    let ratio = fmt_opt(r.ratio, 2);
    if r.round_ratios.len() < 2 {
        return ratio;
    }
    let each: Vec<String> = r.round_ratios.iter().map(|x| format!("{x:.2}")).collect();
    format!("{ratio} ({})", each.join(", "))
}

pub(crate) fn op_table(rows: &[OpRow], batch: usize) -> String {
    let mut s = format!(
        "ops at batch {batch} (ms per call; conv bwd = input + weight gradient as candle computes them; \
         bn: train forward, whole backward)\n\n\
         | op | fast fwd ms | fast dgrad ms | fast wgrad ms | candle fwd ms | candle bwd ms | speed-up |\n\
         |---|---:|---:|---:|---:|---:|---:|\n"
    );
    for fast in rows.iter().filter(|r| r.kernels == "fast") {
        let Some(stock) = rows
            .iter()
            .find(|r| r.kernels == "candle" && r.op == fast.op && r.width == fast.width)
        else {
            continue;
        };
        s += &format!(
            "| W={} {} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.1}x |\n",
            fast.width,
            fast.op,
            fast.fwd_ms,
            fast.dgrad_ms.unwrap_or(fast.bwd_ms),
            fmt_opt(fast.wgrad_ms, 2),
            stock.fwd_ms,
            stock.bwd_ms,
            (stock.fwd_ms + stock.bwd_ms) / (fast.fwd_ms + fast.bwd_ms),
        );
    }
    s
}
