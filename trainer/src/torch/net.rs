//! MobileNetV2 with torchvision's parameter names (`features.N…`, `classifier.1…`), so the
//! ImageNet checkpoint loads by name, and a dropout + linear head for our classes.
//!
//! Convolutions and batch norms are written out rather than taken from `tch::nn` for two
//! reasons measured on the 2-core reference CPU (MobileNetV2, 224 px, batch 32, one Adam step):
//! * **channels-last** weights and activations: oneDNN's depthwise and pointwise kernels run
//!   1.7× faster in NHWC than in NCHW (`tch::nn` has no way to ask for the layout);
//! * **mixed precision** with fp32 master weights, as autocast does it: convolutions compute in
//!   bf16 (or fp16 on a GPU) on a per-step cast of the fp32 weights, batch norm keeps fp32
//!   parameters and statistics, pooling, the head and the loss run in fp32. bf16 doubles the
//!   step again on CPUs with AVX512-BF16; on GPUs it is what tensor cores run.

use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

/// Optimizer group of the pretrained backbone: fine-tuned with a smaller learning rate so the
/// first epochs do not wreck the ImageNet features and batch-norm statistics.
pub const BACKBONE_GROUP: usize = 0;
/// Optimizer group of the freshly initialised classifier.
pub const HEAD_GROUP: usize = 1;

/// Width of the backbone's last feature map.
pub const FEATURES: i64 = model::arch::FEATURES as i64;

const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

/// An NCHW tensor with NHWC strides (PyTorch's `channels_last`): same shape, same values.
pub fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// A bias-free convolution whose fp32 master weight is stored channels-last.
#[derive(Debug)]
struct Conv {
    weight: Tensor,
    stride: i64,
    padding: i64,
    groups: i64,
}

impl Conv {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, ks: i64, stride: i64, groups: i64) -> Self {
        let init = nn::ConvConfig::default().ws_init;
        let dims = [c_out, c_in / groups, ks, ks];
        let weight = channels_last(&nn::init(init, &dims, p.device()));
        Self {
            weight: p.add("weight", weight, true),
            stride,
            padding: (ks - 1) / 2,
            groups,
        }
    }

    fn forward(&self, xs: &Tensor, compute: Kind) -> Tensor {
        // The cast is part of the graph: gradients flow back to the fp32 master weight.
        let w = if self.weight.kind() == compute {
            self.weight.shallow_clone()
        } else {
            self.weight.to_kind(compute)
        };
        xs.conv2d(
            &w,
            None::<Tensor>,
            [self.stride],
            [self.padding],
            [1],
            self.groups,
        )
    }
}

/// Batch norm with fp32 parameters and running statistics, whatever the activations' type.
#[derive(Debug)]
struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BatchNorm {
    fn new(p: &nn::Path, c: i64) -> Self {
        Self {
            weight: p.var("weight", &[c], nn::Init::Const(1.0)),
            bias: p.var("bias", &[c], nn::Init::Const(0.0)),
            running_mean: p.zeros_no_train("running_mean", &[c]),
            running_var: p.ones_no_train("running_var", &[c]),
        }
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            true,
        )
    }
}

/// Conv2d + BatchNorm (+ ReLU6).
#[derive(Debug)]
struct ConvBn {
    conv: Conv,
    bn: BatchNorm,
    relu6: bool,
}

impl ConvBn {
    fn forward(&self, xs: &Tensor, train: bool, compute: Kind) -> Tensor {
        let mut ys = self.bn.forward(&self.conv.forward(xs, compute), train);
        if self.relu6 {
            // In place, as torchvision's `ReLU6(inplace=True)`: one activation fewer to allocate.
            let _ = ys.relu6_();
        }
        ys
    }
}

/// torchvision's `Conv2dNormActivation(…, activation_layer=ReLU6)` at `p/0` and `p/1`.
fn conv_bn_relu6(p: &nn::Path, c_in: i64, c_out: i64, ks: i64, stride: i64, groups: i64) -> ConvBn {
    ConvBn {
        conv: Conv::new(&(p / 0), c_in, c_out, ks, stride, groups),
        bn: BatchNorm::new(&(p / 1), c_out),
        relu6: true,
    }
}

/// torchvision's `InvertedResidual`: optional 1×1 expansion, 3×3 depthwise, 1×1 projection.
#[derive(Debug)]
struct InvertedResidual {
    layers: Vec<ConvBn>,
    residual: bool,
}

impl InvertedResidual {
    fn new(p: &nn::Path, c_in: i64, c_out: i64, stride: i64, expansion: i64) -> Self {
        let hidden = expansion * c_in;
        let mut layers = Vec::new();
        let mut id = 0;
        if expansion != 1 {
            layers.push(conv_bn_relu6(&(p / id), c_in, hidden, 1, 1, 1));
            id += 1;
        }
        layers.push(conv_bn_relu6(&(p / id), hidden, hidden, 3, stride, hidden));
        layers.push(ConvBn {
            conv: Conv::new(&(p / (id + 1)), hidden, c_out, 1, 1, 1),
            bn: BatchNorm::new(&(p / (id + 2)), c_out),
            relu6: false,
        });
        Self {
            layers,
            residual: stride == 1 && c_in == c_out,
        }
    }

    fn forward(&self, xs: &Tensor, train: bool, compute: Kind) -> Tensor {
        let ys = self
            .layers
            .iter()
            .fold(xs.shallow_clone(), |h, l| l.forward(&h, train, compute));
        if self.residual { xs + ys } else { ys }
    }
}

/// MobileNetV2 features followed by global average pooling, dropout and a linear classifier.
#[derive(Debug)]
pub struct MobileNetV2 {
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    last: ConvBn,
    dropout: f64,
    head: nn::Linear,
    /// What convolutions compute in while training; evaluation always runs in fp32.
    train_kind: Kind,
}

impl MobileNetV2 {
    /// Builds the network under `p`: `p/features/…` and `p/classifier/1`.
    pub fn new(p: &nn::Path, num_classes: i64, dropout: f64) -> Self {
        let f = p.set_group(BACKBONE_GROUP) / "features";
        let mut c_in = 32;
        let stem = conv_bn_relu6(&(&f / 0), 3, c_in, 3, 2, 1);
        let mut blocks = Vec::new();
        let mut layer = 1;
        // The same table the ONNX exporter walks (model::arch), so the two graphs agree.
        for (expansion, c_out, repeats, stride) in model::arch::INVERTED_RESIDUAL_SETTINGS {
            let (expansion, c_out, stride) = (expansion as i64, c_out as i64, stride as i64);
            for i in 0..repeats {
                let stride = if i == 0 { stride } else { 1 };
                let path = &f / layer / "conv";
                blocks.push(InvertedResidual::new(&path, c_in, c_out, stride, expansion));
                c_in = c_out;
                layer += 1;
            }
        }
        let last = conv_bn_relu6(&(&f / layer), c_in, FEATURES, 1, 1, 1);
        let head = nn::linear(
            p.set_group(HEAD_GROUP) / "classifier" / 1,
            FEATURES,
            num_classes,
            Default::default(),
        );
        Self {
            stem,
            blocks,
            last,
            dropout,
            head,
            train_kind: Kind::Float,
        }
    }

    /// Convolutions compute in `kind` (Float, BFloat16 or Half) while training.
    pub fn set_train_kind(&mut self, kind: Kind) {
        self.train_kind = kind;
    }

    pub fn train_kind(&self) -> Kind {
        self.train_kind
    }

    /// Pooled 1280-d embeddings, in fp32.
    pub fn embed(&self, xs: &Tensor, train: bool) -> Tensor {
        let compute = if train { self.train_kind } else { Kind::Float };
        let xs = if xs.kind() == compute {
            xs.shallow_clone()
        } else {
            xs.to_kind(compute)
        };
        let h = self.stem.forward(&xs, train, compute);
        let h = self
            .blocks
            .iter()
            .fold(h, |h, b| b.forward(&h, train, compute));
        self.last.forward(&h, train, compute).mean_dim(
            Some([2i64, 3].as_slice()),
            false,
            Kind::Float,
        )
    }
}

impl ModuleT for MobileNetV2 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.embed(xs, train)
            .dropout(self.dropout, train)
            .apply(&self.head)
    }
}
