//! The network: a ResNet trunk shared by a classifier head and a denoising decoder head.

use crate::config::ModelConfig;
use crate::ops::batchnorm::{batch_norm, BatchNorm};
use crate::ops::conv::{Conv2d, ConvTranspose2d};
use candle_core::{Module, ModuleT, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

fn bn(channels: usize, vb: VarBuilder) -> Result<BatchNorm> {
    batch_norm(channels, vb)
}

fn conv3x3(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Conv2d> {
    Conv2d::new(cin, cout, 3, stride, 1, false, vb)
}

/// `bn(conv(x))`, then a ReLU when `relu`. In evaluation on the fast kernels, one pass: the
/// BatchNorm folded into the convolution (no separate pass over the activations). The folded
/// op has no gradient, so it runs only where none is asked for: where the input is not part of
/// a graph (ODIN's input gradient goes through the layers one after the other). Evaluation
/// gives the weights no gradient, as nothing trains in evaluation.
fn conv_bn(x: &Tensor, conv: &Conv2d, bn: &BatchNorm, train: bool, relu: bool) -> Result<Tensor> {
    if !train && !x.track_op() {
        if let Some(y) = conv.forward_folded(x, bn, relu)? {
            return Ok(y);
        }
    }
    let y = x.apply(conv)?;
    if relu {
        bn.forward_t_relu(&y, train)
    } else {
        y.apply_t(bn, train)
    }
}

/// Two 3x3 convolutions with BatchNorm and ReLU, plus an identity or 1x1-projection shortcut.
#[derive(Debug, Clone)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    shortcut: Option<(Conv2d, BatchNorm)>,
}

impl BasicBlock {
    pub fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let shortcut = if stride != 1 || cin != cout {
            Some((
                Conv2d::new(cin, cout, 1, stride, 0, false, vb.pp("proj"))?,
                bn(cout, vb.pp("proj_bn"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: conv3x3(cin, cout, stride, vb.pp("conv1"))?,
            bn1: bn(cout, vb.pp("bn1"))?,
            conv2: conv3x3(cout, cout, 1, vb.pp("conv2"))?,
            bn2: bn(cout, vb.pp("bn2"))?,
            shortcut,
        })
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = conv_bn(x, &self.conv1, &self.bn1, train, true)?;
        let y = conv_bn(&y, &self.conv2, &self.bn2, train, false)?;
        let skip = match &self.shortcut {
            Some((conv, norm)) => conv_bn(x, conv, norm, train, false)?,
            None => x.clone(),
        };
        crate::ops::residual::add_relu(&y, &skip)
    }
}

/// 3x3 stride-1 stem (no max-pool: the input is only 28x28), then three stages of width
/// W, 2W, 4W at full, half and quarter resolution.
#[derive(Debug, Clone)]
pub struct Trunk {
    stem: Conv2d,
    stem_bn: BatchNorm,
    blocks: Vec<BasicBlock>,
    /// The number of blocks in each stage.
    stage_blocks: Vec<usize>,
}

impl Trunk {
    pub fn new(config: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let w = config.width;
        let mut blocks = Vec::new();
        let mut cin = w;
        for (stage, &n) in config.blocks.iter().enumerate() {
            let cout = w << stage;
            for b in 0..n {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                let name = format!("stage{}.block{}", stage + 1, b + 1);
                blocks.push(BasicBlock::new(cin, cout, stride, vb.pp(name))?);
                cin = cout;
            }
        }
        Ok(Self {
            stem: conv3x3(1, w, 1, vb.pp("stem"))?,
            stem_bn: bn(w, vb.pp("stem_bn"))?,
            blocks,
            stage_blocks: config.blocks.to_vec(),
        })
    }
}

impl Trunk {
    /// The feature map at the end of each stage (W@28x28, 2W@14x14, 4W@7x7), in evaluation
    /// or training mode: what detectors that look at several depths read.
    pub fn stage_outputs(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let mut h = conv_bn(x, &self.stem, &self.stem_bn, train, true)?;
        let mut outputs = Vec::new();
        let mut blocks = self.blocks.iter();
        for &n in &self.stage_blocks {
            for block in blocks.by_ref().take(n) {
                h = h.apply_t(block, train)?;
            }
            outputs.push(h.clone());
        }
        Ok(outputs)
    }
}

impl ModuleT for Trunk {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = conv_bn(x, &self.stem, &self.stem_bn, train, true)?;
        for block in &self.blocks {
            h = h.apply_t(block, train)?;
        }
        Ok(h)
    }
}

/// Transposed convolutions back to the input size: 4W@7x7 -> 2W@14x14 -> W@28x28 -> 1@28x28,
/// through a sigmoid into [0, 1]. (Transposed convolutions rather than upsampling: candle
/// 0.11's nearest upsampling overwrites gradients and its bilinear one has no backward.)
#[derive(Debug, Clone)]
pub struct Decoder {
    up1: ConvTranspose2d,
    bn1: BatchNorm,
    up2: ConvTranspose2d,
    bn2: BatchNorm,
    out: Conv2d,
}

impl Decoder {
    pub fn new(config: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let w = config.width;
        Ok(Self {
            up1: ConvTranspose2d::new(4 * w, 2 * w, 4, 2, 1, vb.pp("up1"))?,
            bn1: bn(2 * w, vb.pp("bn1"))?,
            up2: ConvTranspose2d::new(2 * w, w, 4, 2, 1, vb.pp("up2"))?,
            bn2: bn(w, vb.pp("bn2"))?,
            out: Conv2d::new(w, 1, 3, 1, 1, true, vb.pp("out"))?,
        })
    }
}

impl ModuleT for Decoder {
    fn forward_t(&self, features: &Tensor, train: bool) -> Result<Tensor> {
        let h = self
            .bn1
            .forward_t_relu(&features.apply(&self.up1)?, train)?;
        let h = self.bn2.forward_t_relu(&h.apply(&self.up2)?, train)?;
        candle_nn::ops::sigmoid(&h.apply(&self.out)?)
    }
}

/// The two heads' outputs for one batch.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// `(N, num_classes)` classifier logits.
    pub logits: Tensor,
    /// `(N, feature_dim)` globally average-pooled trunk features (for feature-based detectors).
    pub pooled: Tensor,
    /// `(N, 1, 28, 28)` decoder output in [0, 1].
    pub reconstruction: Tensor,
}

/// The whole model: trunk, classifier head (global average pool + linear) and decoder head.
#[derive(Debug, Clone)]
pub struct OodNet {
    pub config: ModelConfig,
    trunk: Trunk,
    classifier: Linear,
    decoder: Decoder,
}

impl OodNet {
    pub fn new(config: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            config: config.clone(),
            trunk: Trunk::new(config, vb.pp("trunk"))?,
            classifier: linear(
                config.feature_dim(),
                config.num_classes,
                vb.pp("classifier"),
            )?,
            decoder: Decoder::new(config, vb.pp("decoder"))?,
        })
    }

    /// The trunk's feature map `(N, 4W, 7, 7)`.
    pub fn features(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        images.apply_t(&self.trunk, train)
    }

    /// The trunk's feature map at the end of each stage (see [`Trunk::stage_outputs`]); the
    /// last is [`OodNet::features`].
    pub fn stage_features(&self, images: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        self.trunk.stage_outputs(images, train)
    }

    /// Global average pooling of a feature map: `(N, C, H, W)` -> `(N, C)`.
    pub fn pool(features: &Tensor) -> Result<Tensor> {
        features.mean((2, 3))
    }

    pub fn classify(&self, pooled: &Tensor) -> Result<Tensor> {
        self.classifier.forward(pooled)
    }

    pub fn decode(&self, features: &Tensor, train: bool) -> Result<Tensor> {
        features.apply_t(&self.decoder, train)
    }

    /// Both heads on the same images.
    pub fn forward_all(&self, images: &Tensor, train: bool) -> Result<Outputs> {
        let features = self.features(images, train)?;
        let pooled = Self::pool(&features)?;
        Ok(Outputs {
            logits: self.classify(&pooled)?,
            reconstruction: self.decode(&features, train)?,
            pooled,
        })
    }
}

impl ModuleT for OodNet {
    /// The classifier's logits.
    fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        self.classify(&Self::pool(&self.features(images, train)?)?)
    }
}
