use anyhow::Result;
use candle_core::Device;
use ood_model::{build, parameter_count, Checkpoint, ModelConfig, PRESETS};
use std::path::Path;

pub fn presets() -> Result<()> {
    println!(
        "{:<7} {:>5} {:>9} {:>12} {:>14}  summary",
        "preset", "width", "blocks", "parameters", "MFLOP/image"
    );
    for p in PRESETS.iter() {
        let config = ModelConfig::new(p.width, p.blocks, 9);
        let (varmap, _) = build(&config, &Device::Cpu, 0)?;
        println!(
            "{:<7} {:>5} {:>9} {:>12} {:>14.1}  {}",
            p.name,
            p.width,
            format!("{:?}", p.blocks).replace(' ', ""),
            parameter_count(&varmap),
            config.forward_flops_per_image() as f64 / 1e6,
            p.summary
        );
    }
    println!("(9 classes; FLOPs are the forward pass of trunk, classifier and decoder)");
    Ok(())
}

/// Describes a checkpoint, or each member of an ensemble folder.
pub fn checkpoint(path: &Path, json: bool) -> Result<()> {
    let Some(members) = ood_eval::model::ensemble_members(path)? else {
        return one_checkpoint(path, json);
    };
    if !json {
        println!(
            "ensemble of {} in {} (sha256 {})",
            members.len(),
            path.display(),
            ood_eval::model_sha256(path)?
        );
    }
    for member in &members {
        one_checkpoint(member, json)?;
    }
    Ok(())
}

fn one_checkpoint(path: &Path, json: bool) -> Result<()> {
    let meta = Checkpoint::read_meta(path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&meta)?);
        return Ok(());
    }
    let sha = ood_model::checkpoint::file_sha256(path)?;
    println!("checkpoint: {}", path.display());
    println!("  sha256: {sha}");
    println!(
        "  written by: {} (format {})",
        meta.producer, meta.format_version
    );
    println!(
        "  model: preset {} width {} blocks {:?} classes {} ({:.1} MFLOP/image)",
        meta.preset,
        meta.model.width,
        meta.model.blocks,
        meta.model.num_classes,
        meta.model.forward_flops_per_image() as f64 / 1e6
    );
    println!(
        "  known classes: {:?}  unknown: {:?}",
        meta.known_classes, meta.unknown_classes
    );
    let epochs = meta
        .training
        .get("epochs")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    print!("  epoch {}/{epochs}, step {}", meta.epoch, meta.step);
    if meta.batch_in_epoch > 0 {
        print!(
            " (interrupted after batch {} of epoch {})",
            meta.batch_in_epoch,
            meta.epoch + 1
        );
    }
    println!(", seed {}", meta.seed);
    if let Some(m) = meta.metrics.as_object() {
        let fields: Vec<String> = m
            .iter()
            .map(|(k, v)| match v.as_f64() {
                Some(f) if f.fract() != 0.0 => format!("{k} {f:.4}"),
                _ => format!("{k} {v}"),
            })
            .collect();
        println!("  last epoch: {}", fields.join(", "));
    }
    println!("  training: {}", serde_json::to_string(&meta.training)?);
    Ok(())
}

pub fn strip(checkpoint: &Path, out: &Path) -> Result<()> {
    let (before, after) = ood_model::checkpoint::strip_training_state(checkpoint, out)?;
    println!(
        "wrote {} ({after} bytes; {} had {before} with its training state; sha256 {})",
        out.display(),
        checkpoint.display(),
        ood_model::checkpoint::file_sha256(out)?
    );
    Ok(())
}
