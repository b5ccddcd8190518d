//! Values worked by hand on tiny tensors, and finite-difference gradient checks in f64.

use candle_core::{DType, Device, Tensor, Var};
use ood_losses::*;

fn t2(v: &[[f64; 3]]) -> Tensor {
    let flat: Vec<f64> = v.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (v.len(), 3), &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn targets(v: &[u32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

#[test]
fn hand_worked_values() {
    // Two classes. Row 0: even scores, target 0 (argmax ties go to 0: correct).
    // Row 1: p = [0.25, 0.75], target 0: wrong.
    let logits = Tensor::new(&[[0f64, 0.0], [0.0, 3f64.ln()]], &Device::Cpu).unwrap();
    let t = targets(&[0, 0]);
    let ln2 = 2f64.ln();
    let ce = (ln2 + 4f64.ln()) / 2.0;
    assert!((scalar(&cross_entropy(&logits, &t).unwrap()) - ce).abs() < 1e-12);
    let pen = (-0.5 * 0.5f64.ln() + -0.75 * 0.25f64.ln()) / 2.0;
    assert!((scalar(&inverse_focal_penalty(&logits, &t).unwrap()) - pen).abs() < 1e-12);
    // Only row 1 is wrong: unbiased std of [0.25, 0.75] = sqrt(0.125), averaged over 2 rows.
    let std = 0.125f64.sqrt() / 2.0;
    assert!((scalar(&std_loss(&logits, &t, StdSign::Intended).unwrap()) - std).abs() < 1e-9);
    assert!((scalar(&std_loss(&logits, &t, StdSign::Literal).unwrap()) + std).abs() < 1e-9);
    let recon = Tensor::new(&[0f64, 1.0], &Device::Cpu).unwrap();
    let clean = Tensor::new(&[1f64, 1.0], &Device::Cpu).unwrap();
    assert!((scalar(&denoising_mse(&recon, &clean).unwrap()) - 0.5).abs() < 1e-12);

    let w = LossWeights {
        k: 2.0,
        lambda_std: 3.0,
        lambda_rec: 4.0,
        std_sign: StdSign::Intended,
    };
    let terms = objective(&logits, &t, Some((&recon, &clean)), &w).unwrap();
    let total = ce + 2.0 * pen + 3.0 * std + 4.0 * 0.5;
    assert!((scalar(&terms.total) - total).abs() < 1e-9);
}

#[test]
fn log_one_minus_p_is_exact_when_p_rounds_to_one() {
    // p_0 = 1 - e^-100 rounds to exactly 1 in f32 and f64; log(1 - p_0) is still about -100.
    let logits = Tensor::new(&[[100f32, 0.0]], &Device::Cpu).unwrap();
    let l = log_one_minus_softmax(&logits)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert!((l[0][0] + 100.0).abs() < 1e-3, "{:?}", l);
    assert!(l[0][1].abs() < 1e-6);
    // A confident wrong class costs about 100 and has a finite, useful gradient.
    let v = Var::new(&[[100f32, 0.0]], &Device::Cpu).unwrap();
    let pen = inverse_focal_penalty(v.as_tensor(), &targets(&[1])).unwrap();
    assert!((pen.to_scalar::<f32>().unwrap() - 100.0).abs() < 1e-2);
    let g = pen.backward().unwrap();
    let g = g.get(&v).unwrap().to_vec2::<f32>().unwrap();
    assert!(g[0].iter().all(|x| x.is_finite()) && g[0][0] > 0.5, "{g:?}");
}

/// Checks the analytic gradient of `f` at `x` against central differences.
fn check_gradient(f: impl Fn(&Tensor) -> Tensor, x: &Tensor) {
    let var = Var::from_tensor(x).unwrap();
    let y = f(var.as_tensor());
    let grads = y.backward().unwrap();
    let analytic: Vec<f64> = grads
        .get(&var)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let base: Vec<f64> = x.flatten_all().unwrap().to_vec1().unwrap();
    let h = 1e-6;
    for i in 0..base.len() {
        let at = |d: f64| {
            let mut v = base.clone();
            v[i] += d;
            scalar(&f(&Tensor::from_vec(v, x.shape(), &Device::Cpu).unwrap()))
        };
        let numeric = (at(h) - at(-h)) / (2.0 * h);
        assert!(
            (numeric - analytic[i]).abs() < 1e-6 * (1.0 + numeric.abs()),
            "element {i}: numeric {numeric}, analytic {}",
            analytic[i]
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    let logits = t2(&[[0.3, -1.2, 2.0], [1.5, 0.2, -0.7], [0.1, 0.4, 0.35]]);
    let t = targets(&[2, 1, 0]); // rows 1 and 2 are misclassified
    check_gradient(|z| cross_entropy(z, &t).unwrap(), &logits);
    check_gradient(|z| inverse_focal_penalty(z, &t).unwrap(), &logits);
    check_gradient(|z| std_loss(z, &t, StdSign::Intended).unwrap(), &logits);
    check_gradient(|z| std_loss(z, &t, StdSign::Literal).unwrap(), &logits);
    let clean = Tensor::new(&[[0.0f64, 0.5, 1.0]], &Device::Cpu).unwrap();
    check_gradient(
        |r| denoising_mse(r, &clean).unwrap(),
        &t2(&[[0.2, 0.9, 0.4]]),
    );
    let w = LossWeights::default();
    check_gradient(|z| objective(z, &t, None, &w).unwrap().total, &logits);
}

#[test]
fn std_loss_ignores_correct_samples_and_rewards_even_scores() {
    let t = targets(&[0]);
    let correct = t2(&[[3.0, 0.0, 0.0]]);
    assert_eq!(
        scalar(&std_loss(&correct, &t, StdSign::Intended).unwrap()),
        0.0
    );
    let peaked_wrong = t2(&[[0.0, 5.0, 0.0]]);
    let even_wrong = t2(&[[0.0, 0.1, 0.0]]);
    let a = scalar(&std_loss(&peaked_wrong, &t, StdSign::Intended).unwrap());
    let b = scalar(&std_loss(&even_wrong, &t, StdSign::Intended).unwrap());
    assert!(a > b && b > 0.0);
}

#[test]
fn energy_margin_by_hand_and_its_gradient() {
    // Row energies: -ln(3 e^0) = -ln 3, and -ln(e^2 + 2) for [2, 0, 0].
    let known = t2(&[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]]);
    let e: Vec<f64> = energy(&known).unwrap().to_vec1().unwrap();
    assert!((e[0] + 3f64.ln()).abs() < 1e-12 && (e[1] + (2f64.exp() + 2.0).ln()).abs() < 1e-12);
    // Margins -1.5 and -0.5: known row 0 (-1.0986) is 0.4014 above its margin, row 1
    // (-2.2395) below it; the negative (-ln 3 again) is 0.5986 below its margin.
    let negative = t2(&[[0.0, 0.0, 0.0]]);
    let margins = EnergyMargins {
        known: -1.5,
        negative: -0.5,
    };
    let want = (1.5 - 3f64.ln()).powi(2) / 2.0 + (3f64.ln() - 0.5).powi(2);
    let got = scalar(&energy_margin(&known, &negative, margins).unwrap());
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    // Both on the right side of their margins: no loss at all.
    let wide = EnergyMargins {
        known: 0.0,
        negative: -5.0,
    };
    assert_eq!(
        scalar(&energy_margin(&known, &negative, wide).unwrap()),
        0.0
    );
    check_gradient(|z| energy_margin(z, &negative, margins).unwrap(), &known);
    check_gradient(
        |z| energy_margin(&known, z, margins).unwrap(),
        &t2(&[[0.3, -0.2, 0.1]]),
    );
}

#[test]
fn distillation_by_hand_and_its_gradient() {
    // Teacher row [ln 3, 0, 0] at T = 2: its softened softmax is that of [ln 3 / 2, 0, 0].
    let student = t2(&[[0.0, 0.0, 0.0], [1.0, -1.0, 0.5]]);
    let teacher = t2(&[[3f64.ln(), 0.0, 0.0], [1.0, -1.0, 0.5]]);
    let softmax = |z: [f64; 3]| {
        let s: f64 = z.iter().map(|x| x.exp()).sum();
        z.map(|x| x.exp() / s)
    };
    let p = softmax([3f64.ln() / 2.0, 0.0, 0.0]);
    let kl: f64 = p.iter().map(|pi| pi * (pi / (1.0 / 3.0)).ln()).sum();
    // Row 1 matches its teacher and adds nothing; the mean is over both rows, times T^2.
    let want = 4.0 * kl / 2.0;
    let got = scalar(&distillation(&student, &teacher, 2.0).unwrap());
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    assert!(scalar(&distillation(&teacher, &teacher, 4.0).unwrap()).abs() < 1e-12);
    check_gradient(|z| distillation(z, &teacher, 2.0).unwrap(), &student);
    // The teacher is detached: no gradient reaches it.
    let t = Var::from_tensor(&teacher).unwrap();
    let grads = distillation(&student, t.as_tensor(), 2.0)
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&t).is_none());
    assert!(distillation(&student, &teacher, 0.0).is_err());
}

#[test]
fn logit_pairing_by_hand_and_its_gradient() {
    let copy = t2(&[[1.0, 0.0, -1.0], [2.0, 2.0, 2.0]]);
    let original = t2(&[[3.0, 0.0, -1.0], [2.0, 2.0, 5.0]]);
    // Gaps: 2 in row 0, 3 in row 1; the mean of squares is over all six logits.
    let got = scalar(&logit_pairing(&copy, &original).unwrap());
    assert!((got - (4.0 + 9.0) / 6.0).abs() < 1e-12, "{got}");
    assert!(scalar(&logit_pairing(&original, &original).unwrap()).abs() < 1e-12);
    check_gradient(|z| logit_pairing(z, &original).unwrap(), &copy);
    // The original is detached: only the copy is pulled.
    let o = Var::from_tensor(&original).unwrap();
    let grads = logit_pairing(&copy, o.as_tensor())
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&o).is_none());
    assert!(logit_pairing(&copy, &t2(&[[0.0, 0.0, 0.0]])).is_err());
}
