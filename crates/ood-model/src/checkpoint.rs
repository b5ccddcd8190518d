//! Safetensors checkpoints that carry everything needed to rebuild and interpret the model.
//!
//! Layout: the model's variables under their own names (`trunk.stem.weight`, ...), optional
//! training state under `optimizer.` names, and one metadata entry, [`META_KEY`], holding a
//! JSON [`CheckpointMeta`]. Any later stage takes the file alone.

use crate::config::ModelConfig;
use crate::net::OodNet;
use crate::{ModelError, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::HashMap;
use std::path::Path;

/// The safetensors metadata key of the JSON metadata.
pub const META_KEY: &str = "candle-ood";
/// Bumped whenever the layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
/// Names starting with this belong to the training state, not to the model.
pub const OPTIMIZER_PREFIX: &str = "optimizer.";

/// What a checkpoint says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format_version: u32,
    /// The preset the model came from, or "custom".
    pub preset: String,
    pub model: ModelConfig,
    /// Labels of the classes, in class-index order.
    pub known_classes: Vec<u8>,
    /// Labels held out as unknown.
    pub unknown_classes: Vec<u8>,
    pub seed: u64,
    /// Epochs completed.
    pub epoch: usize,
    /// Batches done in the epoch under way (0 at an epoch boundary; more after Ctrl-C).
    pub batch_in_epoch: usize,
    /// Optimizer steps taken in all.
    pub step: u64,
    /// The training arguments, as the training stage wrote them.
    pub training: serde_json::Value,
    /// The last epoch's metrics.
    pub metrics: serde_json::Value,
    /// The program that wrote the file.
    pub producer: String,
}

/// A loaded checkpoint: metadata and all tensors by name.
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub tensors: HashMap<String, Tensor>,
}

fn corrupt(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| corrupt(path, e.to_string()))
}

fn parse_meta(path: &Path, bytes: &[u8]) -> Result<CheckpointMeta> {
    let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| corrupt(path, format!("not a valid safetensors file ({e})")))?;
    let json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| {
            corrupt(
                path,
                "a safetensors file, but not a candle-ood checkpoint (no metadata)",
            )
        })?;
    let meta: CheckpointMeta = serde_json::from_str(json)
        .map_err(|e| corrupt(path, format!("unreadable checkpoint metadata: {e}")))?;
    if meta.format_version != FORMAT_VERSION {
        return Err(corrupt(
            path,
            format!(
                "checkpoint format {} but this program reads format {FORMAT_VERSION}",
                meta.format_version
            ),
        ));
    }
    Ok(meta)
}

impl Checkpoint {
    /// Reads only the metadata.
    pub fn read_meta(path: impl AsRef<Path>) -> Result<CheckpointMeta> {
        let path = path.as_ref();
        parse_meta(path, &read_file(path)?)
    }

    /// Reads the whole file onto `device`.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Checkpoint> {
        let path = path.as_ref();
        Self::from_bytes(&read_file(path)?, path, device)
    }

    /// Reads a checkpoint held in memory (a model embedded in a binary); `name` is what errors
    /// call it.
    pub fn from_bytes(bytes: &[u8], name: &Path, device: &Device) -> Result<Checkpoint> {
        let path = name;
        let meta = parse_meta(path, bytes)?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| corrupt(path, format!("not a valid safetensors file ({e})")))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            use candle_core::safetensors::Load;
            let t = view
                .load(device)
                .map_err(|e| corrupt(path, format!("tensor {name}: {e}")))?;
            tensors.insert(name, t);
        }
        Ok(Checkpoint { meta, tensors })
    }

    /// Rebuilds the model and fills it with the checkpoint's weights.
    pub fn build_model(&self, path: &Path, device: &Device) -> Result<(VarMap, OodNet)> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let net = OodNet::new(&self.meta.model, vb)?;
        self.load_into(path, &varmap)?;
        Ok((varmap, net))
    }

    /// Copies the model tensors into `varmap`, which must have exactly the same names and
    /// shapes (a checkpoint of another configuration is refused).
    pub fn load_into(&self, path: &Path, varmap: &VarMap) -> Result<()> {
        let vars = varmap
            .data()
            .lock()
            .expect("the var map lock is never poisoned");
        for (name, var) in vars.iter() {
            let t = self.tensors.get(name).ok_or_else(|| {
                corrupt(
                    path,
                    format!("tensor {name} is missing: the file holds another model configuration"),
                )
            })?;
            if t.dims() != var.dims() {
                return Err(corrupt(
                    path,
                    format!(
                        "tensor {name} has shape {:?}, the model needs {:?}",
                        t.dims(),
                        var.dims()
                    ),
                ));
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        if let Some(extra) = self
            .tensors
            .keys()
            .find(|n| !n.starts_with(OPTIMIZER_PREFIX) && !vars.contains_key(*n))
        {
            return Err(corrupt(
                path,
                format!("unexpected tensor {extra}: the file holds another model configuration"),
            ));
        }
        Ok(())
    }

    /// The training-state tensors (names without the prefix).
    pub fn optimizer_state(&self) -> HashMap<String, Tensor> {
        self.tensors
            .iter()
            .filter_map(|(n, t)| {
                n.strip_prefix(OPTIMIZER_PREFIX)
                    .map(|s| (s.to_string(), t.clone()))
            })
            .collect()
    }
}

/// Writes the model's variables, `extra` training state (named without the prefix) and the
/// metadata to `path`, atomically.
pub fn save_checkpoint(
    path: impl AsRef<Path>,
    meta: &CheckpointMeta,
    varmap: &VarMap,
    extra: &[(String, Tensor)],
) -> Result<()> {
    let path = path.as_ref();
    let vars = varmap
        .data()
        .lock()
        .expect("the var map lock is never poisoned");
    let mut named: Vec<(String, Tensor)> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    named.extend(
        extra
            .iter()
            .map(|(n, t)| (format!("{OPTIMIZER_PREFIX}{n}"), t.clone())),
    );
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut info = HashMap::new();
    info.insert(
        META_KEY.to_string(),
        serde_json::to_string(meta).expect("metadata serialises"),
    );
    let bytes = safetensors::serialize(named.iter().map(|(n, t)| (n.as_str(), t)), Some(info))
        .map_err(|e| corrupt(path, format!("cannot serialise: {e}")))?;
    ood_data::atomic::write_atomic(path, &bytes).map_err(|e| corrupt(path, e.to_string()))
}

/// The SHA-256 of a file, hex: ties calibrations and reports to the exact checkpoint.
pub fn file_sha256(path: impl AsRef<Path>) -> Result<String> {
    Ok(sha256_hex(&read_file(path.as_ref())?))
}

/// The SHA-256 of bytes, hex (what [`file_sha256`] gives for a file holding them).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies the checkpoint `src` to `dst` without its training state: the model's tensors and
/// the metadata only, which is all that inference, `inspect` and calibration read (such a file
/// cannot be resumed). Returns the sizes in bytes of `src` and `dst`. Written atomically.
pub fn strip_training_state(src: &Path, dst: &Path) -> Result<(u64, u64)> {
    let bytes = read_file(src)?;
    let meta = parse_meta(src, &bytes)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| corrupt(src, format!("not a valid safetensors file ({e})")))?;
    // Sorted, so that the same model always gives the same bytes (and so the same hash).
    let mut kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with(OPTIMIZER_PREFIX))
        .collect();
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    let mut info = HashMap::new();
    info.insert(
        META_KEY.to_string(),
        serde_json::to_string(&meta).expect("metadata serialises"),
    );
    let out = safetensors::serialize(kept.iter().map(|(n, t)| (n.as_str(), t)), Some(info))
        .map_err(|e| corrupt(dst, format!("cannot serialise: {e}")))?;
    ood_data::atomic::write_atomic(dst, &out).map_err(|e| corrupt(dst, e.to_string()))?;
    Ok((bytes.len() as u64, out.len() as u64))
}

/// Named tensors as `(name, flattened f32 values)`, sorted by name: the plain form in which two
/// models or checkpoints are compared value for value (`varmap.data()` or
/// [`Checkpoint::tensors`]).
pub fn named_values<'a>(
    tensors: impl IntoIterator<Item = (&'a String, &'a Tensor)>,
) -> Result<Vec<(String, Vec<f32>)>> {
    let mut values = tensors
        .into_iter()
        .map(|(name, t)| {
            let v = t.flatten_all()?.to_dtype(candle_core::DType::F32)?;
            Ok((name.clone(), v.to_vec1::<f32>()?))
        })
        .collect::<Result<Vec<_>>>()?;
    values.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(values)
}
