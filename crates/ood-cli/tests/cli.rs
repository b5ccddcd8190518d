//! The `ood` binary: exit codes and one-line errors on bad input.

use std::process::Command;

fn ood(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ood"))
        .args(args)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A data root whose mnist/ holds valid small files, then one of them damaged by `damage`.
fn data_root(damage: impl FnOnce(&std::path::Path)) -> tempfile::TempDir {
    use ood_data::idx::Images;
    use ood_data::{source::write_split, LabeledImages, Split};
    let root = tempfile::tempdir().unwrap();
    let mnist = root.path().join("mnist");
    let data = LabeledImages {
        images: Images::new(28, 28, vec![0; 20 * 784]),
        labels: (0..20).map(|i| (i % 10) as u8).collect(),
    };
    write_split(&mnist, Split::Train, &data).unwrap();
    write_split(&mnist, Split::Test, &data).unwrap();
    damage(&mnist);
    root
}

#[test]
fn truncated_data_file_is_a_one_line_error_with_exit_code_1() {
    let root = data_root(|dir| {
        let p = dir.join("train-images-idx3-ubyte");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 7]).unwrap();
    });
    let (code, _, err) = ood(&["data-info", "--data-dir", root.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("train-images-idx3-ubyte") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn corrupt_and_missing_data_are_errors() {
    let root =
        data_root(|dir| std::fs::write(dir.join("t10k-labels-idx1-ubyte"), b"garbage!").unwrap());
    let (code, _, err) = ood(&["data-info", "--data-dir", root.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("t10k-labels-idx1-ubyte") && err.contains("magic"),
        "{err}"
    );

    let empty = tempfile::tempdir().unwrap();
    let (code, _, err) = ood(&["data-info", "--data-dir", empty.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("fetch-data"), "{err}");
}

#[test]
fn small_valid_data_is_described() {
    let root = data_root(|_| {});
    // 18 known-class images cannot hold a 5,000-image hold-out: a clear error, not a panic.
    let (code, out, err) = ood(&["data-info", "--data-dir", root.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("mnist train: 20 images"), "{out}");
    assert!(err.contains("validation hold-out"), "{err}");
}

#[test]
fn bad_checkpoints_and_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors");
    std::fs::write(&p, b"not a checkpoint").unwrap();
    let (code, _, err) = ood(&["inspect", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("model.safetensors"), "{err}");
    let (code, _, _) = ood(&["train", "--preset", "enormous"]);
    assert_eq!(code, 1);
    let (code, _, err) = ood(&["train", "--device", "cuda"]);
    assert_eq!(code, 1);
    assert!(err.contains("CUDA") || err.contains("mnist"), "{err}");
    let (code, out, _) = ood(&["presets"]);
    assert_eq!(code, 0);
    assert!(out.contains("tiny") && out.contains("small") && out.contains("paper"));
}
