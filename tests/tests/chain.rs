//! The whole chain through the `ood` command line, in-process: train the tiny preset on a
//! small real subset, calibrate, evaluate, and check the files, their fields and the figures.

use ood_e2e_tests::{ood, setup};

fn run(args: &[&str]) {
    ood(args).unwrap_or_else(|e| panic!("ood {}: {e:#}", args.join(" ")));
}

#[test]
fn train_calibrate_evaluate_writes_every_file() {
    let Some((root, dir)) = setup() else {
        return;
    };
    let root = root.as_str();
    let run_dir = dir.path().join("run");
    let run_dir_s = run_dir.to_str().unwrap();
    run(&[
        "train",
        "--data-dir",
        root,
        "--preset",
        "tiny",
        "--limit",
        "300",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--out",
        run_dir_s,
    ]);
    let ckpt = run_dir.join("checkpoint.safetensors");
    let ckpt_s = ckpt.to_str().unwrap();
    run(&["inspect", ckpt_s]);
    run(&["calibrate", ckpt_s, "--data-dir", root]);
    // The default rule reads no reconstruction error (so serving runs the trunk once); the
    // report's rule does.
    let accept = ood_eval::read_calibration(&run_dir.join("calibration.json"), &ckpt).unwrap();
    assert!(!accept.reads_reconstruction_error());
    let report_cal = dir.path().join("calibration-report.json");
    run(&[
        "calibrate",
        ckpt_s,
        "--data-dir",
        root,
        "--rule",
        "report",
        "--out",
        report_cal.to_str().unwrap(),
    ]);
    let report_rule = ood_eval::read_calibration(&report_cal, &ckpt).unwrap();
    assert!(report_rule.reads_reconstruction_error());
    let cal: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("calibration.json")).unwrap())
            .unwrap();
    assert_eq!(cal["n_in_distribution"], 300);
    assert_eq!(cal["n_synthetic_ood"], 300);
    assert_eq!(cal["checkpoint_sha256"].as_str().unwrap().len(), 64);
    let t = cal["rule"]["msp_threshold"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&t), "{t}");
    assert!(cal["roc_msp"].as_array().unwrap().len() >= 2);
    // The acceptance rule is in force: its threshold accepts at least 99% of the held-out
    // digits, set on them alone.
    assert_eq!(cal["config"]["decision"], "accept");
    let accept = &cal["accept_rule"];
    assert_eq!(accept["accept"], 0.99);
    assert!(
        accept["held_out_accepted"].as_f64().unwrap() >= 0.99,
        "{accept}"
    );
    assert!(accept["threshold"].as_f64().unwrap().is_finite());
    assert_eq!(accept["score"]["members"].as_array().unwrap().len(), 3);

    let report = dir.path().join("report");
    run(&[
        "evaluate",
        ckpt_s,
        "--data-dir",
        root,
        "--out",
        report.to_str().unwrap(),
    ]);
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("metrics.json")).unwrap())
            .unwrap();
    let e = &m["evaluation"];
    assert_eq!(e["n_known"], 300);
    assert_eq!(e["n_unknown"], 300);
    for field in [
        "unknown_detection",
        "known_accuracy",
        "closed_set_accuracy",
        "oscr",
    ] {
        let v = e[field].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{field} = {v}");
    }
    let auroc = e["near"]["msp"]["auroc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&auroc));
    let confusion = e["confusion"].as_array().unwrap();
    assert_eq!(confusion.len(), 10);
    let total: u64 = confusion
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 600);
    // The drawn-digit set: the same test digits redrawn, every pen first, then each pen, the
    // pens in turn over the digits.
    let drawn = e["drawn"].as_array().unwrap();
    let pens: Vec<&str> = drawn.iter().map(|r| r["pen"].as_str().unwrap()).collect();
    // Then every pen split by whether it kept the strokes whole: the two halves make the set.
    assert_eq!(
        pens,
        [
            "all",
            "canvas",
            "thin",
            "thick",
            "whole strokes",
            "broken strokes"
        ]
    );
    for field in ["n_known", "n_unknown"] {
        let halves = drawn[4][field].as_u64().unwrap() + drawn[5][field].as_u64().unwrap();
        assert_eq!(halves, 300, "{field}");
    }
    assert_eq!(drawn[0]["n_known"], 300);
    assert_eq!(drawn[0]["n_unknown"], 300);
    assert_eq!(
        drawn[1..4]
            .iter()
            .map(|r| r["n_known"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [100, 100, 100]
    );
    for r in drawn {
        let (right, refused) = (
            r["accepted_right"].as_f64().unwrap(),
            r["refused"].as_f64().unwrap(),
        );
        assert!(right + refused <= 1.0 + 1e-12, "{r}");
        assert!(right <= r["closed_set_accuracy"].as_f64().unwrap(), "{r}");
    }
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("zero accuracy") && md.contains("AUROC"));
    assert!(md.contains("## Drawn digits") && md.contains("| thick | 100 |"));
    assert!(
        md.contains("Operating points") && md.contains("MinP[Energy(T=1)+Mahalanobis+KNN(k=50)]")
    );
    assert!(
        e["decision"].as_str().unwrap().starts_with("OOD when MinP"),
        "{}",
        e["decision"]
    );
    // MSP, the three members and the default score, at every acceptance of the curve.
    let points = e["operating_points"].as_array().unwrap();
    assert_eq!(
        points.len(),
        5 * ood_eval::evaluation::TRADE_OFF_ACCEPTANCES.len()
    );
    for p in points {
        for field in ["known_accepted", "known_accepted_right", "unknown_caught"] {
            let v = p[field].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{p}");
        }
        assert!(p["known_accepted_right"].as_f64() <= p["known_accepted"].as_f64());
    }
    for fig in [
        "trade_off.png",
        "roc.png",
        "msp_hist.png",
        "recon_by_label.png",
        "top200_labels.png",
        "denoise_known.png",
        "denoise_unknown.png",
        "confusion.png",
    ] {
        let bytes = std::fs::read(report.join(fig)).unwrap_or_else(|e| panic!("{fig}: {e}"));
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 5_000,
            "{fig}: {} bytes",
            bytes.len()
        );
    }
    for fig in ["calibration_msp_hist.png", "calibration_synthetic_ood.png"] {
        assert!(
            std::fs::metadata(run_dir.join(fig)).unwrap().len() > 5_000,
            "{fig}"
        );
    }

    // The OOD benchmark: every detector on every set, written atomically.
    let bench = dir.path().join("bench");
    run(&[
        "bench-ood",
        ckpt_s,
        "--data-dir",
        root,
        "--out",
        bench.to_str().unwrap(),
        "--fit-limit",
        "200",
        "--synthetic-count",
        "50",
    ]);
    let b: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bench.join("bench-ood.json")).unwrap())
            .unwrap();
    let detectors = b["detectors"].as_array().unwrap().len();
    let sets = b["ood_sets"].as_array().unwrap().len();
    assert!(
        detectors >= 9 && sets >= 5,
        "{detectors} detectors, {sets} sets"
    );
    assert_eq!(b["rows"].as_array().unwrap().len(), detectors * sets);
    for row in b["rows"].as_array().unwrap() {
        let auroc = row["auroc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&auroc), "{row}");
    }
    assert!(std::fs::read_to_string(bench.join("bench-ood.md"))
        .unwrap()
        .contains("| MSP |"));
    // Every detector's refusals of valid digits, as MNIST has them and drawn.
    let refusals = b["drawn_refusals"].as_array().unwrap();
    assert_eq!(
        refusals.len(),
        detectors - 2,
        "all but ODIN and the binary report's rule"
    );
    assert!(refusals.iter().any(|r| r["detector"]
        .as_str()
        .unwrap()
        .ends_with("budget 60/20/20%]")));
    for r in refusals {
        for field in ["test_refused", "drawn_refused"] {
            assert!((0.0..=1.0).contains(&r[field].as_f64().unwrap()), "{r}");
        }
    }

    // The energy-led budget with the restyled reference: twice the references, and a rule
    // that names each member's own p-value limit.
    // (Into a folder that does not exist yet: calibrate makes it.)
    let led = dir.path().join("led").join("calibration.json");
    run(&[
        "calibrate",
        ckpt_s,
        "--data-dir",
        root,
        "--score",
        "energy-led",
        "--reference-pens",
        "--out",
        led.to_str().unwrap(),
    ]);
    let led_cal = ood_eval::read_calibration(&led, &ckpt).unwrap();
    let rule = led_cal.accept_rule.as_ref().unwrap();
    assert_eq!(rule.n_restyled, 300);
    let shares = rule.score.budget_shares();
    assert!(
        shares
            .iter()
            .zip([0.6, 0.2, 0.2])
            .all(|(s, want)| (s - want).abs() < 1e-12),
        "{shares:?}"
    );
    let said = led_cal.describe();
    assert!(
        said.contains("p-value of Energy(T=1) is below")
            && said.contains("or of KNN(k=50) below")
            && said.contains("each also restyled by another pen"),
        "{said}"
    );
    // Energy's limit is three times each feature member's.
    let limits: Vec<f64> = said
        .split(" below ")
        .skip(1)
        .map(|s| s[..6].parse().unwrap())
        .collect();
    assert_eq!(limits.len(), 3, "{said}");
    assert!((limits[0] / limits[1] - 3.0).abs() < 0.05, "{said}");

    // The restyled copies for the feature members alone, which read the last stage's
    // features: energy and the threshold keep MNIST's held-out digits.
    let fpens = dir.path().join("fpens").join("calibration.json");
    run(&[
        "calibrate",
        ckpt_s,
        "--data-dir",
        root,
        "--reference-pens",
        "features",
        "--fit-pens",
        "--features",
        "last",
        "--knn-bank",
        "60",
        "--p-values",
        "smooth",
        "--out",
        fpens.to_str().unwrap(),
    ]);
    let fpens_cal = ood_eval::read_calibration(&fpens, &ckpt).unwrap();
    let rule = fpens_cal.accept_rule.as_ref().unwrap();
    assert_eq!(rule.reference_pens(), ood_eval::ReferencePens::Features);
    assert_eq!(rule.features, ood_eval::FeatureDepth::Last);
    assert_eq!(rule.n_restyled, 300);
    assert!(fpens_cal.config.fit_pens);
    // `--p-values smooth` is stored, and the threshold still accepts the asked fraction of
    // held-out digits (they sit on the references' steps, where smooth equals the step).
    assert_eq!(fpens_cal.config.p_values, ood_calibrate::PValues::Smooth);
    assert_eq!(rule.score.p_values(), ood_calibrate::PValues::Smooth);
    assert_eq!(led_cal.config.p_values, ood_calibrate::PValues::Step);
    assert!(rule.held_out_accepted >= 0.99, "{}", rule.held_out_accepted);
    // `--knn-bank` keeps that many rows in the KNN member (the default, 10,000, would keep
    // every one of the fitted images here).
    let bank = |cal: &ood_eval::Calibration| {
        let rule = cal.accept_rule.as_ref().unwrap();
        rule.score
            .members()
            .iter()
            .find_map(|m| match m {
                ood_calibrate::pvalue::Member::Knn(knn) => Some(knn.bank_len()),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(fpens_cal.config.knn_bank, 60);
    assert_eq!(bank(&fpens_cal), 60);
    assert_eq!(bank(&led_cal), led_cal.accept_rule.as_ref().unwrap().n_fit);
    // The restyled copy of each training image is fitted beside it.
    assert_eq!(rule.n_fit, 2 * led_cal.accept_rule.as_ref().unwrap().n_fit);
    let said = fpens_cal.describe();
    assert!(
        said.contains("the feature members' references also hold each restyled")
            && said.contains("the feature members fitted on training digits in other pens too")
            && said.contains("; smooth p]"),
        "{said}"
    );
    assert_eq!(
        led_cal.accept_rule.as_ref().unwrap().reference_pens(),
        ood_eval::ReferencePens::All
    );

    // Prediction on image files: MNIST test digits written as inverted, enlarged PGMs.
    let (_, test) = ood_e2e_tests::mnist().unwrap();
    let mut files = Vec::new();
    for i in 0..3 {
        let img = test.images.image(i);
        let mut pgm = b"P5 56 56 255\n".to_vec();
        pgm.extend((0..56 * 56).map(|p| 255 - img[(p / 56 / 2) * 28 + (p % 56) / 2]));
        let f = dir.path().join(format!("digit{i}.pgm"));
        std::fs::write(&f, pgm).unwrap();
        files.push(f.to_str().unwrap().to_string());
    }
    let mut args = vec!["predict", "--checkpoint", ckpt_s, "--json"];
    args.extend(files.iter().map(String::as_str));
    run(&args);
    let bad = dir.path().join("notes.png");
    std::fs::write(&bad, "not an image").unwrap();
    args.push(bad.to_str().unwrap());
    let err = ood(&args).unwrap_err();
    assert!(
        format!("{err:#}").contains("1 of 4 images could not be read"),
        "{err:#}"
    );

    // A calibration is refused for another checkpoint.
    let other = dir.path().join("other");
    run(&[
        "train",
        "--data-dir",
        root,
        "--preset",
        "tiny",
        "--limit",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--seed",
        "5",
        "--out",
        other.to_str().unwrap(),
    ]);
    let err = ood(&[
        "evaluate",
        other.join("checkpoint.safetensors").to_str().unwrap(),
        "--data-dir",
        root,
        "--out",
        dir.path().join("r2").to_str().unwrap(),
        "--calibration",
        run_dir.join("calibration.json").to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(format!("{err:#}").contains("another checkpoint"), "{err:#}");
}

#[test]
fn too_few_training_images_for_knn_is_a_clear_error_with_a_way_out() {
    let Some((root, dir)) = setup() else {
        return;
    };
    let run_dir = dir.path().join("few");
    run(&[
        "train",
        "--data-dir",
        root.as_str(),
        "--preset",
        "tiny",
        "--limit",
        "40",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--out",
        run_dir.to_str().unwrap(),
    ]);
    let ckpt = run_dir.join("checkpoint.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    let err = ood(&["calibrate", ckpt, "--data-dir", root.as_str()]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("at least 50 training images") && msg.contains("has 40"),
        "{msg}"
    );
    assert!(!run_dir.join("calibration.json").exists());
    // A bank smaller than the neighbours read is refused, naming the flag.
    let err = ood(&[
        "calibrate",
        ckpt,
        "--data-dir",
        root.as_str(),
        "--score",
        "energy-led",
        "--knn-bank",
        "10",
    ])
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("--knn-bank"), "{msg}");
    // The way out it names works.
    run(&[
        "calibrate",
        ckpt,
        "--data-dir",
        root.as_str(),
        "--score",
        "energy+mahalanobis",
    ]);
    assert!(run_dir.join("calibration.json").exists());
}
