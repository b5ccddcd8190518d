//! Seeded open-set splits: known classes for training, unknown classes held out for testing.

use crate::source::LabeledImages;
use crate::{DataError, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Which labels the model learns (known) and which it must flag (unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassSpec {
    /// Known labels in class-index order: `known[i]` is the label of class index `i`.
    pub known: Vec<u8>,
    pub unknown: Vec<u8>,
}

impl Default for ClassSpec {
    /// The report's setting: digits 1-9 known, 0 unknown.
    fn default() -> Self {
        Self {
            known: (1..=9).collect(),
            unknown: vec![0],
        }
    }
}

impl ClassSpec {
    /// Checks that the two lists are non-empty (known), free of repeats and disjoint.
    pub fn new(known: Vec<u8>, unknown: Vec<u8>) -> Result<Self> {
        let mut seen = [false; 256];
        for &l in known.iter().chain(&unknown) {
            if seen[l as usize] {
                return Err(DataError::InvalidClasses(format!(
                    "label {l} appears twice in known {known:?} / unknown {unknown:?}"
                )));
            }
            seen[l as usize] = true;
        }
        if known.len() < 2 {
            return Err(DataError::InvalidClasses(
                "at least two known classes are needed".into(),
            ));
        }
        Ok(Self { known, unknown })
    }

    /// All labels 0-9 but `unknown`: the leave-one-digit-out setting.
    pub fn leave_out(unknown: u8) -> Self {
        Self {
            known: (0..=9).filter(|&d| d != unknown).collect(),
            unknown: vec![unknown],
        }
    }

    pub fn num_known(&self) -> usize {
        self.known.len()
    }

    /// The class index of a label, `None` for labels that are not known.
    pub fn class_index(&self, label: u8) -> Option<usize> {
        self.known.iter().position(|&k| k == label)
    }

    pub fn is_unknown(&self, label: u8) -> bool {
        self.unknown.contains(&label)
    }
}

/// How to split: the class spec, the validation hold-out size and the seed.
#[derive(Debug, Clone)]
pub struct SplitConfig {
    pub classes: ClassSpec,
    /// Known-class training images held out for validation and calibration (5,000 in the report).
    pub validation_size: usize,
    pub seed: u64,
    /// Keep only the first `limit` images of each split (quick runs and tests).
    pub limit: Option<usize>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            classes: ClassSpec::default(),
            validation_size: 5000,
            seed: 0,
            limit: None,
        }
    }
}

/// The four sets of the open-set protocol.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Known-class training images minus the validation hold-out.
    pub train: LabeledImages,
    /// The hold-out: known-class training images never trained on.
    pub validation: LabeledImages,
    /// Test images of known classes.
    pub test_known: LabeledImages,
    /// Test images of unknown classes.
    pub test_unknown: LabeledImages,
    /// Known-class training images before the hold-out was taken (54,077 for MNIST 1-9).
    pub pool_size: usize,
}

impl Splits {
    /// Splits the standard train and test sets. The hold-out is a seeded random sample of the
    /// known-class training pool; the rest keeps its file order.
    pub fn new(train: &LabeledImages, test: &LabeledImages, config: &SplitConfig) -> Result<Self> {
        let classes = &config.classes;
        let pool: Vec<usize> = (0..train.len())
            .filter(|&i| classes.class_index(train.labels[i]).is_some())
            .collect();
        if config.validation_size >= pool.len() {
            return Err(DataError::InvalidClasses(format!(
                "the validation hold-out ({}) must be smaller than the known-class training pool ({})",
                config.validation_size,
                pool.len()
            )));
        }
        let mut shuffled = pool.clone();
        shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(config.seed));
        let mut held_out = shuffled[..config.validation_size].to_vec();
        held_out.sort_unstable();
        let mut is_held = vec![false; train.len()];
        for &i in &held_out {
            is_held[i] = true;
        }
        let train_idx: Vec<usize> = pool.iter().copied().filter(|&i| !is_held[i]).collect();
        let test_known: Vec<usize> = (0..test.len())
            .filter(|&i| classes.class_index(test.labels[i]).is_some())
            .collect();
        let test_unknown: Vec<usize> = (0..test.len())
            .filter(|&i| classes.is_unknown(test.labels[i]))
            .collect();
        Ok(Splits {
            train: train.select(&train_idx).truncated(config.limit),
            validation: train.select(&held_out).truncated(config.limit),
            test_known: test.select(&test_known).truncated(config.limit),
            test_unknown: test.select(&test_unknown).truncated(config.limit),
            pool_size: pool.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::Images;

    fn data(labels: Vec<u8>) -> LabeledImages {
        let n = labels.len();
        LabeledImages {
            images: Images::new(1, 1, (0..n).map(|i| i as u8).collect()),
            labels,
        }
    }

    #[test]
    fn class_spec_checks() {
        assert!(ClassSpec::new(vec![1, 2], vec![2]).is_err());
        assert!(ClassSpec::new(vec![1], vec![0]).is_err());
        let spec = ClassSpec::leave_out(3);
        assert_eq!(spec.num_known(), 9);
        assert_eq!(spec.class_index(4), Some(3));
        assert_eq!(spec.class_index(3), None);
        assert!(spec.is_unknown(3));
        assert_eq!(ClassSpec::default().class_index(1), Some(0));
    }

    #[test]
    fn splits_are_disjoint_seeded_and_sized() {
        let train = data((0..100).map(|i| (i % 10) as u8).collect());
        let test = data((0..20).map(|i| (i % 10) as u8).collect());
        let cfg = SplitConfig {
            validation_size: 30,
            seed: 7,
            ..Default::default()
        };
        let a = Splits::new(&train, &test, &cfg).unwrap();
        let b = Splits::new(&train, &test, &cfg).unwrap();
        assert_eq!(a.pool_size, 90);
        assert_eq!(a.train.len(), 60);
        assert_eq!(a.validation.len(), 30);
        assert_eq!(a.validation, b.validation);
        assert_eq!(a.test_known.len(), 18);
        assert_eq!(a.test_unknown.labels, vec![0, 0]);
        // The pixel value is the image index: train and validation never share an image.
        let mut all: Vec<u8> = a.train.images.pixels.clone();
        all.extend(&a.validation.images.pixels);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 90);
        assert!(!a.train.labels.contains(&0));
        let c = Splits::new(
            &train,
            &test,
            &SplitConfig {
                seed: 8,
                ..cfg.clone()
            },
        )
        .unwrap();
        assert_ne!(a.validation, c.validation);
        let limited = Splits::new(
            &train,
            &test,
            &SplitConfig {
                limit: Some(5),
                ..cfg
            },
        )
        .unwrap();
        assert_eq!(limited.train.len(), 5);
        assert_eq!(limited.validation.len(), 5);
    }
}
