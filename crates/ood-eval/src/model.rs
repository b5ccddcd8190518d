//! A trained model ready to use: one checkpoint file, or an ensemble folder of members
//! (`member-0/checkpoint.safetensors`, ... as `ood train --ensemble N` writes them) read as one
//! model.

use crate::{Calibration, EvalError, Result};
use candle_core::Device;
use ood_model::{Checkpoint, CheckpointMeta, OodNet};
use ood_train::TrainConfig;
use sha2::Digest;
use std::path::{Path, PathBuf};

/// A checkpoint or an ensemble, ready to use: its metadata, training arguments and rebuilt
/// networks.
pub struct LoadedModel {
    /// The checkpoint file, or the ensemble's folder.
    pub path: PathBuf,
    /// The (first member's) checkpoint metadata.
    pub meta: CheckpointMeta,
    /// The (first member's) training arguments; every member shares them but for its seed.
    pub train: TrainConfig,
    /// One net, or the members of an ensemble in order (see [`ood_train::infer()`]).
    pub nets: Vec<OodNet>,
    /// The checkpoint file of each net.
    pub members: Vec<PathBuf>,
    /// The model's SHA-256 ([`model_sha256`]), computed from the bytes it was loaded from.
    pub sha256: String,
}

impl LoadedModel {
    /// The image side the model takes.
    pub fn image_size(&self) -> usize {
        self.nets[0].config.image_size
    }

    pub fn is_ensemble(&self) -> bool {
        self.nets.len() > 1
    }
}

/// The member checkpoints of an ensemble folder, in member order; `None` when `path` is not a
/// folder.
pub fn ensemble_members(path: &Path) -> Result<Option<Vec<PathBuf>>> {
    if !path.is_dir() {
        return Ok(None);
    }
    let mut members = Vec::new();
    while path
        .join(ood_train::member_dir(members.len()))
        .join(ood_train::CHECKPOINT_FILE)
        .is_file()
    {
        members.push(
            path.join(ood_train::member_dir(members.len()))
                .join(ood_train::CHECKPOINT_FILE),
        );
    }
    if members.is_empty() {
        return Err(EvalError::Checkpoint(
            path.to_path_buf(),
            format!(
                "a folder, but no ensemble: {}/{} is missing (give a checkpoint file, or a folder from `ood train --ensemble N`)",
                ood_train::member_dir(0),
                ood_train::CHECKPOINT_FILE
            ),
        ));
    }
    Ok(Some(members))
}

/// Loads a checkpoint written by the training stage, or an ensemble folder of them. The
/// members of an ensemble must agree on everything but their seed: above all on the
/// validation hold-out, which calibration uses as unseen digits.
pub fn load_model(path: &Path, device: &Device) -> Result<LoadedModel> {
    let members = ensemble_members(path)?.unwrap_or_else(|| vec![path.to_path_buf()]);
    let mut loaded: Option<LoadedModel> = None;
    let mut member_hashes = Vec::new();
    for file in &members {
        let bytes = std::fs::read(file).map_err(|e| EvalError::Io(file.clone(), e))?;
        let member = load_model_from_bytes(&bytes, file, device)?;
        member_hashes.push(member.sha256.clone());
        match &mut loaded {
            None => {
                loaded = Some(LoadedModel {
                    path: path.to_path_buf(),
                    ..member
                })
            }
            Some(model) => {
                if member.train.without_member_seed() != model.train.without_member_seed() {
                    return Err(EvalError::Checkpoint(
                        file.clone(),
                        format!(
                            "was trained with other arguments than {} (members of an ensemble may differ only in --seed)",
                            model.members[0].display()
                        ),
                    ));
                }
                model.nets.extend(member.nets);
                model.members.extend(member.members);
            }
        }
    }
    let mut model = loaded.expect("at least one member");
    if path.is_dir() {
        model.sha256 = ensemble_sha256(&member_hashes);
    }
    Ok(model)
}

/// Loads one checkpoint held in memory (a model embedded in a binary); `path` is what errors
/// and [`LoadedModel::path`] call it.
pub fn load_model_from_bytes(bytes: &[u8], path: &Path, device: &Device) -> Result<LoadedModel> {
    let ck = Checkpoint::from_bytes(bytes, path, device)?;
    let train: TrainConfig = serde_json::from_value(ck.meta.training.clone()).map_err(|e| {
        EvalError::Checkpoint(
            path.to_path_buf(),
            format!("unreadable training arguments: {e}"),
        )
    })?;
    let (_, net) = ck.build_model(path, device)?;
    Ok(LoadedModel {
        path: path.to_path_buf(),
        meta: ck.meta,
        train,
        nets: vec![net],
        members: vec![path.to_path_buf()],
        sha256: ood_model::checkpoint::sha256_hex(bytes),
    })
}

/// Loads a checkpoint or ensemble folder and its calibration (by default `calibration.json`
/// beside the checkpoint or in the folder), which must have been made for exactly this model.
pub fn calibrated_model(
    checkpoint: &Path,
    calibration: Option<&Path>,
    device: &Device,
) -> Result<(LoadedModel, Calibration)> {
    let model = load_model(checkpoint, device)?;
    let path = calibration.map_or_else(
        || crate::calibration::default_calibration_path(checkpoint),
        Path::to_path_buf,
    );
    let calibration = crate::calibration::read_calibration_for(&path, checkpoint, &model.sha256)?;
    Ok((model, calibration))
}

/// The SHA-256 that ties a calibration or report to a model: the file's own for a checkpoint;
/// for an ensemble folder, that of its members' hashes in order (so changing, adding or
/// removing a member changes it). [`LoadedModel::sha256`] is the same, from the bytes loaded.
pub fn model_sha256(path: &Path) -> Result<String> {
    match ensemble_members(path)? {
        None => Ok(ood_model::checkpoint::file_sha256(path)?),
        Some(members) => Ok(ensemble_sha256(
            &members
                .iter()
                .map(ood_model::checkpoint::file_sha256)
                .collect::<Result<Vec<_>, _>>()?,
        )),
    }
}

/// The hash of an ensemble: SHA-256 over `member-<i>:<member's hash>` lines, in member order.
fn ensemble_sha256(member_hashes: &[String]) -> String {
    let mut hasher = sha2::Sha256::new();
    for (i, sha) in member_hashes.iter().enumerate() {
        hasher.update(format!("{}:{sha}\n", ood_train::member_dir(i)));
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
