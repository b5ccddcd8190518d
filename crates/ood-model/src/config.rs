//! Model configuration and the named presets.

use serde::{Deserialize, Serialize};

/// Everything needed to rebuild a model's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Channels of the first stage; the stages have `width`, `2 * width` and `4 * width`.
    pub width: usize,
    /// BasicBlocks in each of the three stages (at 28x28, 14x14 and 7x7).
    pub blocks: [usize; 3],
    /// One logit per known class.
    pub num_classes: usize,
    /// Side of the square input images.
    pub image_size: usize,
}

impl ModelConfig {
    pub fn new(width: usize, blocks: [usize; 3], num_classes: usize) -> Self {
        Self {
            width,
            blocks,
            num_classes,
            image_size: 28,
        }
    }

    /// Channels of the trunk's output (and of the pooled feature vector).
    pub fn feature_dim(&self) -> usize {
        4 * self.width
    }

    /// Channels of every stage's output together (W + 2W + 4W): the length of the feature
    /// vector that pools each depth of the trunk ([`crate::OodNet::stage_features`]).
    pub fn stage_feature_dim(&self) -> usize {
        (0..self.blocks.len())
            .map(|stage| self.width << stage)
            .sum()
    }

    /// Analytic forward multiply-adds per image, as (trunk, classifier, decoder).
    pub fn macs_per_image(&self) -> (u64, u64, u64) {
        let conv = |cin: usize, cout: usize, k: usize, out_side: usize| {
            (cin * cout * k * k * out_side * out_side) as u64
        };
        let w = self.width;
        let s = self.image_size;
        let mut trunk = conv(1, w, 3, s);
        let mut cin = w;
        for (stage, &n) in self.blocks.iter().enumerate() {
            let cout = w << stage;
            let side = s >> stage;
            for b in 0..n {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                trunk += conv(cin, cout, 3, side) + conv(cout, cout, 3, side);
                if stride != 1 || cin != cout {
                    trunk += conv(cin, cout, 1, side);
                }
                cin = cout;
            }
        }
        let classifier = (4 * w * self.num_classes) as u64;
        // A transposed convolution scatters cin * cout * k * k products from each input pixel.
        let decoder = conv(4 * w, 2 * w, 4, s / 4) + conv(2 * w, w, 4, s / 2) + conv(w, 1, 3, s);
        (trunk, classifier, decoder)
    }

    /// Forward floating-point operations per image (two per multiply-add).
    pub fn forward_flops_per_image(&self) -> u64 {
        let (t, c, d) = self.macs_per_image();
        2 * (t + c + d)
    }
}

/// A named configuration.
#[derive(Debug, Clone)]
pub struct Preset {
    pub name: &'static str,
    pub summary: &'static str,
    pub width: usize,
    pub blocks: [usize; 3],
}

/// The presets, smallest first.
pub const PRESETS: [Preset; 3] = [
    Preset {
        name: "tiny",
        summary: "for tests: trains in seconds",
        width: 4,
        blocks: [1, 1, 1],
    },
    Preset {
        name: "small",
        summary: "the default: trains to 99% validation accuracy in minutes on a 2-core CPU",
        width: 16,
        blocks: [1, 1, 1],
    },
    Preset {
        name: "paper",
        summary: "the report's size (ResNet-18 without its last stage, W = 64): for a GPU",
        width: 64,
        blocks: [2, 2, 2],
    },
];

/// The configuration of a named preset for `num_classes` known classes.
pub fn preset(name: &str, num_classes: usize) -> crate::Result<ModelConfig> {
    PRESETS
        .iter()
        .find(|p| p.name == name)
        .map(|p| ModelConfig::new(p.width, p.blocks, num_classes))
        .ok_or_else(|| {
            let names: Vec<_> = PRESETS.iter().map(|p| p.name).collect();
            crate::ModelError::Config(format!(
                "unknown preset {name:?}; the presets are {}",
                names.join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_match_the_pytorch_reference_model() {
        // ../shared/bench/torch_ref.py: W=16 47.0 MFLOP/image, W=64 746.8 (10 outputs).
        let w16 = ModelConfig::new(16, [2, 2, 2], 10).forward_flops_per_image() as f64 / 1e6;
        let w64 = ModelConfig::new(64, [2, 2, 2], 10).forward_flops_per_image() as f64 / 1e6;
        assert!((w16 - 47.0).abs() < 0.05, "{w16}");
        assert!((w64 - 746.8).abs() < 0.05, "{w64}");
    }

    #[test]
    fn presets_resolve() {
        assert_eq!(preset("small", 9).unwrap().width, 16);
        let err = preset("huge", 9).unwrap_err().to_string();
        assert!(err.contains("tiny, small, paper"), "{err}");
    }
}
