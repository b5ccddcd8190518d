//! Where datasets live: a data root holding one folder per dataset, each with the four
//! standard IDX file names (`.gz` or not).

use crate::idx::{self, Images};
use crate::{DataError, Result};
use std::path::{Path, PathBuf};

/// The environment variable that names the data root when no `--data-dir` is given.
pub const DATA_DIR_ENV: &str = "OOD_DATA_DIR";
/// The data root used when neither the flag nor the environment variable is set.
pub const DEFAULT_DATA_DIR: &str = "assets/data";

/// The folder names of the datasets the tools know by name.
pub const MNIST: &str = "mnist";
pub const FASHION_MNIST: &str = "fashion-mnist";

/// Picks the data root: the explicit flag, else `$OOD_DATA_DIR`, else `assets/data`.
pub fn resolve_data_root(flag: Option<&Path>) -> PathBuf {
    if let Some(dir) = flag {
        return dir.to_path_buf();
    }
    match std::env::var_os(DATA_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_DATA_DIR),
    }
}

/// One of the two standard splits of an MNIST-style dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The standard file stems of the images and labels of this split.
    pub fn file_stems(self) -> (&'static str, &'static str) {
        match self {
            Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        }
    }
}

/// Images with one label each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabeledImages {
    pub images: Images,
    pub labels: Vec<u8>,
}

impl LabeledImages {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images and labels at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> LabeledImages {
        let n = self.images.pixels_per_image();
        let mut pixels = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            pixels.extend_from_slice(self.images.image(i));
        }
        LabeledImages {
            images: Images::new(self.images.rows, self.images.cols, pixels),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
        }
    }

    /// Keeps the first `limit` items (all when `None`).
    pub fn truncated(mut self, limit: Option<usize>) -> LabeledImages {
        if let Some(limit) = limit.filter(|&l| l < self.len()) {
            self.labels.truncate(limit);
            self.images
                .pixels
                .truncate(limit * self.images.pixels_per_image());
        }
        self
    }

    /// How many items carry each label 0..=255 (only the used prefix is returned).
    pub fn label_histogram(&self) -> Vec<usize> {
        let max = self
            .labels
            .iter()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1);
        let mut hist = vec![0; max];
        for &l in &self.labels {
            hist[l as usize] += 1;
        }
        hist
    }
}

/// A folder holding one MNIST-style dataset.
#[derive(Debug, Clone)]
pub struct DatasetDir {
    pub path: PathBuf,
}

impl DatasetDir {
    /// The dataset folder `name` under the data root; an error with instructions when absent.
    pub fn in_root(root: &Path, name: &str) -> Result<DatasetDir> {
        let path = root.join(name);
        if !path.is_dir() {
            return Err(DataError::MissingDataset {
                name: name.to_string(),
                path,
            });
        }
        Ok(DatasetDir { path })
    }

    /// Any folder of IDX files, named by path.
    pub fn at(path: impl Into<PathBuf>) -> Result<DatasetDir> {
        let path = path.into();
        if !path.is_dir() {
            return Err(DataError::MissingDataset {
                name: path.display().to_string(),
                path,
            });
        }
        Ok(DatasetDir { path })
    }

    /// Finds `stem` or `stem.gz` in the folder.
    fn find(&self, stem: &str) -> Result<PathBuf> {
        for candidate in [stem.to_string(), format!("{stem}.gz")] {
            let p = self.path.join(candidate);
            if p.is_file() {
                return Ok(p);
            }
        }
        Err(DataError::MissingFile {
            path: self.path.join(stem),
        })
    }

    pub fn has_split(&self, split: Split) -> bool {
        let (images, labels) = split.file_stems();
        self.find(images).is_ok() && self.find(labels).is_ok()
    }

    /// Loads one split and checks that images and labels agree in number.
    pub fn load(&self, split: Split) -> Result<LabeledImages> {
        let (images_stem, labels_stem) = split.file_stems();
        let images_path = self.find(images_stem)?;
        let labels_path = self.find(labels_stem)?;
        let images = idx::read_images(&images_path)?;
        let labels = idx::read_labels(&labels_path)?;
        if images.len() != labels.len() {
            return Err(DataError::CountMismatch {
                images: images_path,
                image_count: images.len(),
                labels: labels_path,
                label_count: labels.len(),
            });
        }
        Ok(LabeledImages { images, labels })
    }
}

/// Writes a split into `dir` under the standard (uncompressed) names.
pub fn write_split(dir: &Path, split: Split, data: &LabeledImages) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| DataError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let (images, labels) = split.file_stems();
    idx::write_images(dir.join(images), &data.images)?;
    idx::write_labels(dir.join(labels), &data.labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(n: usize) -> LabeledImages {
        LabeledImages {
            images: Images::new(2, 2, (0..n * 4).map(|v| v as u8).collect()),
            labels: (0..n).map(|v| (v % 3) as u8).collect(),
        }
    }

    #[test]
    fn write_then_load_and_count_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        write_split(dir.path(), Split::Test, &tiny(5)).unwrap();
        let ds = DatasetDir::at(dir.path()).unwrap();
        assert!(ds.has_split(Split::Test));
        assert!(!ds.has_split(Split::Train));
        assert_eq!(ds.load(Split::Test).unwrap(), tiny(5));
        let err = ds.load(Split::Train).unwrap_err();
        assert!(matches!(err, DataError::MissingFile { .. }), "{err}");

        idx::write_labels(dir.path().join("t10k-labels-idx1-ubyte"), &[1, 2]).unwrap();
        let err = ds.load(Split::Test).unwrap_err();
        assert!(matches!(err, DataError::CountMismatch { .. }));
        assert!(err.to_string().contains("t10k-labels-idx1-ubyte"), "{err}");
    }

    #[test]
    fn missing_dataset_says_how_to_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = DatasetDir::in_root(dir.path(), MNIST).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("fetch-data") && msg.contains(DATA_DIR_ENV),
            "{msg}"
        );
    }

    #[test]
    fn flag_beats_environment() {
        assert_eq!(
            resolve_data_root(Some(Path::new("/x"))),
            PathBuf::from("/x")
        );
    }

    #[test]
    fn select_truncate_histogram() {
        let d = tiny(6);
        let s = d.select(&[4, 1]);
        assert_eq!(s.labels, vec![1, 1]);
        assert_eq!(s.images.image(0), d.images.image(4));
        assert_eq!(d.label_histogram(), vec![2, 2, 2]);
        assert_eq!(d.clone().truncated(Some(2)).len(), 2);
        assert_eq!(d.clone().truncated(None).len(), 6);
    }
}
