//! `ood train --ensemble N` end to end, in-process: the members share the hold-out and differ
//! in their seed, and every later stage takes the folder as one model; `ood train
//! --distill-from` then teaches one network from the ensemble.

use ood_e2e_tests::{ood as run, setup};

fn training(root: &str, out: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "train",
        "--data-dir",
        root,
        "--preset",
        "tiny",
        "--limit",
        "200",
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    args.into_iter().map(String::from).collect()
}

fn meta(path: &std::path::Path) -> serde_json::Value {
    let m = ood_model::Checkpoint::read_meta(path).unwrap();
    m.training
}

fn tensors(path: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let ck = ood_model::Checkpoint::load(path, &candle_core::Device::Cpu).unwrap();
    ood_model::named_values(&ck.tensors).unwrap()
}

#[test]
fn an_ensemble_trains_into_members_and_is_used_as_one_model() {
    let Some((root, dir)) = setup() else {
        return;
    };
    let root = root.as_str();
    let ens = dir.path().join("ens");
    let ens_s = ens.to_str().unwrap();
    let args = training(root, ens_s, &["--ensemble", "2", "--seed", "4"]);
    run(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();

    let members: Vec<_> = (0..2)
        .map(|i| ens.join(format!("member-{i}/checkpoint.safetensors")))
        .collect();
    let (m0, m1) = (meta(&members[0]), meta(&members[1]));
    assert_eq!(
        (m0["seed"].as_u64(), m1["seed"].as_u64()),
        (Some(4), Some(5))
    );
    assert_eq!(m0["split_seed"], 4);
    assert_eq!(m1["split_seed"], 4);
    assert_ne!(
        ood_model::checkpoint::file_sha256(&members[0]).unwrap(),
        ood_model::checkpoint::file_sha256(&members[1]).unwrap()
    );

    // A second run keeps the finished members (and says so), changing nothing.
    let before = ood_eval::model_sha256(&ens).unwrap();
    run(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert_eq!(ood_eval::model_sha256(&ens).unwrap(), before);

    let model = ood_eval::load_model(&ens, &candle_core::Device::Cpu).unwrap();
    assert_eq!(model.nets.len(), 2);
    run(&["inspect", ens_s]).unwrap();
    run(&["calibrate", ens_s, "--data-dir", root]).unwrap();
    let cal: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ens.join("calibration.json")).unwrap())
            .unwrap();
    assert_eq!(cal["checkpoint_sha256"], before.as_str());
    assert_eq!(cal["n_in_distribution"], 200);
    // Mahalanobis reads every depth of both members: 2 x (W + 2W + 4W) features.
    assert_eq!(cal["accept_rule"]["features"], "all-stages");
    let fitted = &cal["accept_rule"]["score"]["members"][1]["Mahalanobis"]["fitted"];
    let width = m0["model"]["width"].as_u64().unwrap();
    assert_eq!(fitted["dim"].as_u64(), Some(2 * 7 * width));
    let report = dir.path().join("report");
    run(&[
        "evaluate",
        ens_s,
        "--data-dir",
        root,
        "--out",
        report.to_str().unwrap(),
    ])
    .unwrap();
    assert!(report.join("metrics.json").is_file());

    // The ensemble's hold-out is that of --seed 4, which a single model of seed 4 shares:
    // the calibration set is the same digits, only the scores differ.
    let single = dir.path().join("single");
    let args = training(root, single.to_str().unwrap(), &["--seed", "4"]);
    run(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert!(
        tensors(&single.join("checkpoint.safetensors")) == tensors(&members[0]),
        "member 0 is the single model of the same seed, bit for bit"
    );

    // A member trained on another hold-out cannot join, and a changed ensemble is no longer
    // the one its calibration was made for.
    let stranger = dir.path().join("stranger");
    let args = training(root, stranger.to_str().unwrap(), &["--seed", "5"]);
    run(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    std::fs::copy(stranger.join("checkpoint.safetensors"), &members[1]).unwrap();
    let err = ood_eval::load_model(&ens, &candle_core::Device::Cpu)
        .err()
        .expect("a member of another split is refused");
    assert!(
        err.to_string().contains("may differ only in --seed"),
        "{err}"
    );
    assert_ne!(ood_eval::model_sha256(&ens).unwrap(), before);

    // A folder that holds no ensemble is a clear error.
    let err = run(&[
        "calibrate",
        dir.path().to_str().unwrap(),
        "--data-dir",
        root,
    ])
    .unwrap_err();
    assert!(format!("{err:#}").contains("member-0"), "{err:#}");
}

fn train(root: &str, out: &std::path::Path, extra: &[&str]) -> anyhow::Result<()> {
    let args = training(root, out.to_str().unwrap(), extra);
    run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn a_student_learns_from_an_ensemble_of_its_hold_out_and_stays_one_network() {
    let Some((root, dir)) = setup() else {
        return;
    };
    let root = root.as_str();
    let ens = dir.path().join("ens");
    train(root, &ens, &["--ensemble", "2"]).unwrap();
    let ens_s = ens.to_str().unwrap();

    let student = dir.path().join("student");
    train(root, &student, &["--distill-from", ens_s]).unwrap();
    let ck = student.join("checkpoint.safetensors");
    let distill = &meta(&ck)["distill"];
    assert_eq!(
        distill["teacher_sha256"],
        ood_eval::model_sha256(&ens).unwrap().as_str()
    );
    assert_eq!(
        (distill["weight"].as_f64(), distill["temperature"].as_f64()),
        (Some(1.0), Some(4.0))
    );
    let history = ood_train::train::read_history(&student.join("metrics.jsonl")).unwrap();
    assert!(history[0].distillation > 0.0, "{:?}", history[0]);
    // One network, used like any checkpoint.
    let model = ood_eval::load_model(&ck, &candle_core::Device::Cpu).unwrap();
    assert_eq!(model.nets.len(), 1);

    // The teacher's term changes what is learned; at weight 0 the student is the plain model
    // of its seed, bit for bit (the teacher draws no random numbers).
    let plain = dir.path().join("plain");
    train(root, &plain, &[]).unwrap();
    let unweighted = dir.path().join("unweighted");
    train(
        root,
        &unweighted,
        &["--distill-from", ens_s, "--distill-weight", "0"],
    )
    .unwrap();
    let plain_weights = tensors(&plain.join("checkpoint.safetensors"));
    assert!(tensors(&unweighted.join("checkpoint.safetensors")) == plain_weights);
    assert!(tensors(&ck) != plain_weights);

    // A student of another hold-out would be calibrated on digits its teacher trained on.
    let err = train(
        root,
        &dir.path().join("stranger"),
        &["--distill-from", ens_s, "--seed", "3"],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("--split-seed"), "{err:#}");
    train(
        root,
        &dir.path().join("same-split"),
        &["--distill-from", ens_s, "--seed", "3", "--split-seed", "0"],
    )
    .unwrap();
    // The teacher's knobs need a teacher, and a teacher that is not there is named.
    assert!(train(root, &dir.path().join("x"), &["--distill-weight", "2"]).is_err());
    let missing = dir.path().join("no-such-teacher");
    let err = train(
        root,
        &dir.path().join("y"),
        &["--distill-from", missing.to_str().unwrap()],
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("no-such-teacher"), "{err:#}");
}
