//! Distillation: one network (the student) trained on the softened outputs of another model
//! (the teacher, usually an ensemble from `ood train --ensemble N`) beside the usual objective,
//! so that serving keeps one forward pass per image while it inherits some of the ensemble's
//! better-ordered scores.
//!
//! The teacher runs in evaluation mode on exactly the images the student sees in each step
//! (after the warp and the pen restyling), so the soft targets follow the augmentation. It must
//! hold out the same validation digits as the student: calibration treats those as digits the
//! model has never seen, and a teacher trained on them would pass them on.

use crate::{Result, TrainConfig, TrainError};
use candle_core::Tensor;
use ood_model::OodNet;
use serde::{Deserialize, Serialize};

/// What a distilled student learns from; stored in its checkpoint's training arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Distillation {
    /// The teacher's checkpoint or ensemble folder, as given (for the reader: `--resume`
    /// compares the SHA-256 alone, [`TrainConfig::for_resume`]).
    pub teacher: String,
    /// The teacher's SHA-256 (of its checkpoint, or of its members' in order), so that
    /// `--resume` refuses a teacher that changed under the student.
    pub teacher_sha256: String,
    /// The weight of [`ood_losses::distillation`] in the objective.
    pub weight: f64,
    /// The softmax temperature of the soft targets.
    pub temperature: f64,
}

impl Distillation {
    /// Weight 1 beside the cross-entropy and Hinton et al.'s middle temperature of 4: MNIST
    /// teachers are confident, and a low temperature would leave little but the arg-max to
    /// learn. Not tuned on any OOD set.
    pub const DEFAULT_WEIGHT: f64 = 1.0;
    pub const DEFAULT_TEMPERATURE: f64 = 4.0;
}

/// A trained model whose logits a student learns from: one net, or an ensemble's members
/// (their logits averaged, as [`crate::infer()`] reads an ensemble).
pub struct Teacher {
    nets: Vec<OodNet>,
    /// The (first member's) training arguments.
    config: TrainConfig,
}

impl Teacher {
    pub fn new(nets: Vec<OodNet>, config: TrainConfig) -> Result<Self> {
        if nets.is_empty() {
            return Err(TrainError::Config(
                "a teacher needs at least one net".into(),
            ));
        }
        Ok(Self { nets, config })
    }

    /// Whether `student` may learn from this teacher: the same classes, image size and
    /// validation hold-out.
    pub fn check_student(&self, student: &TrainConfig) -> Result<()> {
        let (t, s) = (&self.config, student);
        let mismatch = |what: &str, teacher: String, student: String, fix: &str| {
            Err(TrainError::Config(format!(
                "the teacher was trained with {what} {teacher}, the student with {student}: {fix}"
            )))
        };
        if (&t.known_classes, &t.unknown_classes) != (&s.known_classes, &s.unknown_classes) {
            return mismatch(
                "known/unknown digits",
                format!("{:?}/{:?}", t.known_classes, t.unknown_classes),
                format!("{:?}/{:?}", s.known_classes, s.unknown_classes),
                "give the student the teacher's --known and --unknown",
            );
        }
        let (tm, sm) = (&self.nets[0].config, &s.model);
        if (tm.image_size, tm.num_classes) != (sm.image_size, sm.num_classes) {
            return mismatch(
                "image side/classes",
                format!("{}/{}", tm.image_size, tm.num_classes),
                format!("{}/{}", sm.image_size, sm.num_classes),
                "the student must read the teacher's images and name its classes",
            );
        }
        if (t.split_seed(), t.validation_size, t.limit)
            != (s.split_seed(), s.validation_size, s.limit)
        {
            return mismatch(
                "the validation hold-out (split seed, size, limit)",
                format!("{}, {}, {:?}", t.split_seed(), t.validation_size, t.limit),
                format!("{}, {}, {:?}", s.split_seed(), s.validation_size, s.limit),
                "the teacher would have trained on digits the student is validated and calibrated on; give the student --split-seed (and --limit) of the teacher",
            );
        }
        Ok(())
    }

    /// The teacher's logits for `images`, `(N, C)`, in evaluation mode and detached: the mean
    /// over the members of an ensemble.
    pub fn logits(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        let mut sum: Option<Tensor> = None;
        for net in &self.nets {
            let logits = net.classify(&OodNet::pool(&net.features(images, false)?)?)?;
            sum = Some(match sum {
                Some(s) => (s + logits)?,
                None => logits,
            });
        }
        let mean = (sum.expect("a teacher has nets") / self.nets.len() as f64)?;
        Ok(mean.detach())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use ood_data::ClassSpec;

    fn config() -> TrainConfig {
        TrainConfig::new("tiny", &ClassSpec::default()).unwrap()
    }

    fn teacher(seeds: &[u64], config: TrainConfig) -> Teacher {
        let nets = seeds
            .iter()
            .map(|&s| ood_model::build(&config.model, &Device::Cpu, s).unwrap().1)
            .collect();
        Teacher::new(nets, config).unwrap()
    }

    #[test]
    fn a_teacher_averages_its_members_logits_in_evaluation_mode() {
        let c = config();
        let images = Tensor::from_vec(
            (0..2 * 28 * 28)
                .map(|i| ((i * 37) % 100) as f32 / 100.0)
                .collect(),
            (2, 1, 28, 28),
            &Device::Cpu,
        )
        .unwrap();
        let (a, b) = (teacher(&[1], c.clone()), teacher(&[2], c.clone()));
        let both = teacher(&[1, 2], c);
        let mean = ((a.logits(&images).unwrap() + b.logits(&images).unwrap()).unwrap() / 2.0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let got = both.logits(&images).unwrap().to_vec2::<f32>().unwrap();
        for (g, m) in got.iter().flatten().zip(mean.iter().flatten()) {
            assert!((g - m).abs() < 1e-5, "{g} vs {m}");
        }
        assert!(Teacher::new(Vec::new(), config()).is_err());
    }

    #[test]
    fn a_student_must_share_the_teachers_classes_and_hold_out() {
        let t = teacher(&[0], config());
        t.check_student(&config()).unwrap();
        // An ensemble member's seed differs, its hold-out does not: a fine teacher.
        t.check_student(&config().ensemble_member(0)).unwrap();
        let other_split = TrainConfig {
            seed: 1,
            ..config()
        };
        let e = t.check_student(&other_split).unwrap_err().to_string();
        assert!(
            e.contains("validation hold-out") && e.contains("--split-seed"),
            "{e}"
        );
        let same_split = TrainConfig {
            split_seed: Some(0),
            ..other_split
        };
        t.check_student(&same_split).unwrap();
        let limited = TrainConfig {
            limit: Some(100),
            ..config()
        };
        assert!(t.check_student(&limited).is_err());
        let classes = ClassSpec::new(vec![1, 2, 3, 4, 5, 6, 7, 8], vec![0, 9]).unwrap();
        let other_classes = TrainConfig::new("tiny", &classes).unwrap();
        let e = t.check_student(&other_classes).unwrap_err().to_string();
        assert!(e.contains("known/unknown"), "{e}");
    }

    #[test]
    fn resume_names_the_teacher_by_its_hash_not_its_path() {
        let with = |teacher: &str, sha: &str| TrainConfig {
            distill: Some(Distillation {
                teacher: teacher.into(),
                teacher_sha256: sha.into(),
                weight: 1.0,
                temperature: 4.0,
            }),
            ..config()
        };
        let saved = with("runs/ens", "abc");
        assert_eq!(
            saved.for_resume(),
            with("/work/runs/ens", "abc").for_resume()
        );
        assert_ne!(saved.for_resume(), with("runs/ens", "abd").for_resume());
        // The hold-out's seed is written out, as before.
        assert_eq!(saved.for_resume().split_seed, Some(0));
    }
}
