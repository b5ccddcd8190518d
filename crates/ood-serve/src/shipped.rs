//! The default model shipped with the code (`assets/models/default/`, written by `cargo xtask
//! release-model`): the trained `small` model of seed 0 without its optimizer state, its
//! calibration and where both came from.
//!
//! They are embedded in the binary with `include_bytes!` rather than looked up at run time (for
//! instance through `CARGO_MANIFEST_DIR`): a binary that is copied elsewhere, run from another
//! folder or built from a crate outside this checkout still has its model, and there is no
//! "model file not found" to go wrong on a fresh clone. It costs about 7 MB of binary (the
//! calibration's KNN bank is 6 MB of it). A rebuilt `assets/models/` is picked up by the next
//! build (cargo tracks included files).

/// Where the embedded checkpoint comes from, relative to the workspace root (what errors and
/// `/healthz` call it).
pub const CHECKPOINT_PATH: &str = "assets/models/default/checkpoint.safetensors";
/// Where the embedded calibration comes from.
pub const CALIBRATION_PATH: &str = "assets/models/default/calibration.json";

/// The checkpoint: model tensors and metadata, no training state.
pub static CHECKPOINT: &[u8] =
    include_bytes!("../../../assets/models/default/checkpoint.safetensors");
/// Its calibration (carrying the checkpoint's SHA-256).
pub static CALIBRATION: &str = include_str!("../../../assets/models/default/calibration.json");
/// Where the model came from: the command, commit, seed, training arguments, headline metrics.
pub static PROVENANCE: &str = include_str!("../../../assets/models/default/provenance.json");
