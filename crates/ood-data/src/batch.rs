//! Seeded mini-batches as candle tensors.

use crate::source::LabeledImages;
use crate::split::ClassSpec;
use crate::{DataError, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Derives an independent seed for one stream of randomness (say, the order of epoch 3) from
/// the run's seed, so that any batch can be rebuilt on its own (which makes resuming exact).
pub fn derive_seed(seed: u64, stream: u64, index: u64) -> u64 {
    // splitmix64 over a mix of the three: cheap, and well spread for neighbouring inputs.
    let mut z = seed
        ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded RNG for one stream; see [`derive_seed`].
pub fn stream_rng(seed: u64, stream: u64, index: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(derive_seed(seed, stream, index))
}

const ORDER_STREAM: u64 = 1;

/// One mini-batch: images `(N, 1, rows, cols)` in [0, 1] and class indices `(N,)` as `u32`.
#[derive(Debug, Clone)]
pub struct Batch {
    pub images: Tensor,
    pub targets: Tensor,
    /// The same pixels on the host, for building noised copies without a device round trip.
    pub pixels: Vec<f32>,
    pub class_indices: Vec<u32>,
}

impl Batch {
    /// The batch of `rows x cols` images given as host pixels and class indices.
    pub fn new(
        pixels: Vec<f32>,
        class_indices: Vec<u32>,
        (rows, cols): (usize, usize),
        device: &Device,
    ) -> Result<Self> {
        let n = class_indices.len();
        let images = Tensor::from_slice(&pixels, (n, 1, rows, cols), device)?;
        let targets = Tensor::from_slice(&class_indices, n, device)?;
        Ok(Batch {
            images,
            targets,
            pixels,
            class_indices,
        })
    }
}

/// Cuts a labelled set into mini-batches, in a fresh seeded order each epoch when shuffling.
#[derive(Debug, Clone)]
pub struct Batcher<'a> {
    data: &'a LabeledImages,
    class_indices: Vec<u32>,
    pub batch_size: usize,
    pub seed: u64,
    pub shuffle: bool,
    /// Drops a last partial batch (training) or keeps it (evaluation).
    pub drop_last: bool,
}

impl<'a> Batcher<'a> {
    /// Fails when a label is not one of the known classes.
    pub fn new(data: &'a LabeledImages, classes: &ClassSpec, batch_size: usize) -> Result<Self> {
        assert!(batch_size > 0, "batch size must be positive");
        let class_indices = data
            .labels
            .iter()
            .map(|&l| {
                classes.class_index(l).map(|c| c as u32).ok_or_else(|| {
                    DataError::InvalidClasses(format!(
                        "label {l} is not a known class {:?}",
                        classes.known
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            data,
            class_indices,
            batch_size,
            seed: 0,
            shuffle: false,
            drop_last: false,
        })
    }

    pub fn shuffled(mut self, seed: u64) -> Self {
        self.shuffle = true;
        self.seed = seed;
        self.drop_last = true;
        self
    }

    pub fn num_batches(&self) -> usize {
        let n = self.data.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// The order of the items in `epoch`: the same for the same seed and epoch.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.data.len()).collect();
        if self.shuffle {
            order.shuffle(&mut stream_rng(self.seed, ORDER_STREAM, epoch as u64));
        }
        order
    }

    /// Batch `index` of an epoch whose order is `order` (see [`Batcher::order`]).
    pub fn batch(&self, order: &[usize], index: usize, device: &Device) -> Result<Batch> {
        let (pixels, class_indices) = self.host_batch(order, index);
        let shape = (self.data.images.rows, self.data.images.cols);
        Batch::new(pixels, class_indices, shape, device)
    }

    /// Batch `index` of `order` on the host: its pixels (f32 in [0, 1]) and class indices,
    /// for callers that change the pixels before they become tensors (on another thread).
    pub fn host_batch(&self, order: &[usize], index: usize) -> (Vec<f32>, Vec<u32>) {
        let start = index * self.batch_size;
        let end = (start + self.batch_size).min(order.len());
        let items = &order[start..end];
        let (rows, cols) = (self.data.images.rows, self.data.images.cols);
        let mut pixels = Vec::with_capacity(items.len() * rows * cols);
        for &i in items {
            pixels.extend(self.data.images.image(i).iter().map(|&p| p as f32 / 255.0));
        }
        let class_indices: Vec<u32> = items.iter().map(|&i| self.class_indices[i]).collect();
        (pixels, class_indices)
    }

    /// All batches of one epoch, in order.
    pub fn epoch(
        &self,
        epoch: usize,
        device: &'a Device,
    ) -> impl Iterator<Item = Result<Batch>> + '_ {
        let order = self.order(epoch);
        (0..self.num_batches()).map(move |i| self.batch(&order, i, device))
    }
}

/// Pixels of a whole set as `f32` in [0, 1], for callers that batch by hand.
pub fn to_unit_f32(data: &LabeledImages) -> Vec<f32> {
    data.images
        .pixels
        .iter()
        .map(|&p| p as f32 / 255.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::Images;

    fn data() -> LabeledImages {
        LabeledImages {
            images: Images::new(2, 2, (0..40).map(|v| (v * 6) as u8).collect()),
            labels: vec![1, 2, 3, 1, 2, 3, 1, 2, 3, 1],
        }
    }

    #[test]
    fn batches_have_shapes_ranges_and_mapped_labels() {
        let d = data();
        let classes = ClassSpec::new(vec![3, 1, 2], vec![0]).unwrap();
        let b = Batcher::new(&d, &classes, 4).unwrap();
        assert_eq!(b.num_batches(), 3);
        let batches: Vec<Batch> = b.epoch(0, &Device::Cpu).collect::<Result<_>>().unwrap();
        assert_eq!(batches[0].images.dims(), &[4, 1, 2, 2]);
        assert_eq!(batches[2].images.dims(), &[2, 1, 2, 2]);
        assert_eq!(batches[0].class_indices, vec![1, 2, 0, 1]);
        assert_eq!(
            batches[0].targets.to_vec1::<u32>().unwrap(),
            vec![1, 2, 0, 1]
        );
        let max = batches[2]
            .images
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((max - 234.0 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn shuffling_is_seeded_and_changes_per_epoch() {
        let d = data();
        let classes = ClassSpec::new(vec![1, 2, 3], vec![0]).unwrap();
        let b = Batcher::new(&d, &classes, 3).unwrap().shuffled(5);
        assert_eq!(b.num_batches(), 3);
        assert_eq!(b.order(0), b.clone().order(0));
        assert_ne!(b.order(0), b.order(1));
        let mut sorted = b.order(1);
        sorted.sort_unstable();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(derive_seed(1, 2, 3), derive_seed(1, 2, 4));
    }

    #[test]
    fn unknown_labels_are_rejected() {
        let d = data();
        let classes = ClassSpec::new(vec![1, 2], vec![3]).unwrap();
        assert!(Batcher::new(&d, &classes, 2).is_err());
    }
}
