//! Getting MNIST for users who do not have the IDX files: a download from the Hugging Face
//! hub through candle-datasets (feature `hub`), written out as standard IDX files.
//!
//! The conversion from candle-datasets' tensors to IDX files is always compiled and tested;
//! only the network call sits behind the feature.

use crate::idx::Images;
use crate::source::{write_split, LabeledImages, Split};
use crate::Result;
use candle_core::{DType, Tensor};
use std::path::Path;

/// Turns candle-datasets' MNIST tensors (images `(N, 784)` f32 in [0, 1], labels `(N,)` u8)
/// into 28x28 byte images.
pub fn labeled_images_from_tensors(images: &Tensor, labels: &Tensor) -> Result<LabeledImages> {
    let (n, pixels_per_image) = images.dims2()?;
    let side = (pixels_per_image as f64).sqrt() as usize;
    if side * side != pixels_per_image {
        return Err(crate::DataError::Download(format!(
            "images of {pixels_per_image} pixels are not square"
        )));
    }
    let bytes = (images.to_dtype(DType::F32)? * 255.0)?
        .round()?
        .clamp(0.0, 255.0)?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    let labels = labels.to_dtype(DType::U8)?.to_vec1::<u8>()?;
    if labels.len() != n {
        return Err(crate::DataError::Download(format!(
            "{n} images but {} labels",
            labels.len()
        )));
    }
    Ok(LabeledImages {
        images: Images::new(side, side, bytes),
        labels,
    })
}

/// Writes a candle-datasets `Dataset` as `dir/{train,t10k}-{images,labels}-idx?-ubyte`.
pub fn write_candle_dataset(
    dir: &Path,
    train: (&Tensor, &Tensor),
    test: (&Tensor, &Tensor),
) -> Result<()> {
    write_split(
        dir,
        Split::Train,
        &labeled_images_from_tensors(train.0, train.1)?,
    )?;
    write_split(
        dir,
        Split::Test,
        &labeled_images_from_tensors(test.0, test.1)?,
    )
}

/// Downloads MNIST from the Hugging Face hub (`ylecun/mnist`) into `root/mnist/`.
#[cfg(feature = "hub")]
pub fn fetch_mnist(root: &Path) -> Result<std::path::PathBuf> {
    let ds = candle_datasets::vision::mnist::load()
        .map_err(|e| crate::DataError::Download(format!("MNIST from the Hugging Face hub: {e}")))?;
    let dir = root.join(crate::source::MNIST);
    write_candle_dataset(
        &dir,
        (&ds.train_images, &ds.train_labels),
        (&ds.test_images, &ds.test_labels),
    )?;
    Ok(dir)
}

/// Without the `hub` feature there is no download; the error says how to get one.
#[cfg(not(feature = "hub"))]
pub fn fetch_mnist(_root: &Path) -> Result<std::path::PathBuf> {
    Err(crate::DataError::Download(
        "this build has no hub support: rebuild with `--features hub` (cargo xtask fetch-data does)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn tensors_become_idx_files() {
        let dev = Device::Cpu;
        let pixels: Vec<f32> = (0..2 * 784).map(|i| (i % 256) as f32 / 255.0).collect();
        let images = Tensor::from_vec(pixels, (2, 784), &dev).unwrap();
        let labels = Tensor::from_vec(vec![7u8, 3], 2, &dev).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_candle_dataset(dir.path(), (&images, &labels), (&images, &labels)).unwrap();
        let ds = crate::DatasetDir::at(dir.path()).unwrap();
        let back = ds.load(Split::Train).unwrap();
        assert_eq!(back.labels, vec![7, 3]);
        assert_eq!(back.images.rows, 28);
        assert_eq!(back.images.image(1)[0], (784 % 256) as u8);
        assert_eq!(ds.load(Split::Test).unwrap(), back);
    }

    #[test]
    #[cfg(not(feature = "hub"))]
    fn without_the_feature_the_error_says_how() {
        let err = fetch_mnist(Path::new("/tmp")).unwrap_err().to_string();
        assert!(err.contains("--features hub"), "{err}");
    }
}
