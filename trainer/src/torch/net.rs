//! MobileNetV2 with torchvision's parameter names (`features.N…`, `classifier.1…`), so the
//! ImageNet checkpoint loads by name, and a dropout + linear head for our classes.

use tch::nn::{self, ModuleT};
use tch::{Kind, Tensor};

/// Optimizer group of the pretrained backbone: fine-tuned with a smaller learning rate so the
/// first epochs do not wreck the ImageNet features and batch-norm statistics.
pub const BACKBONE_GROUP: usize = 0;
/// Optimizer group of the freshly initialised classifier.
pub const HEAD_GROUP: usize = 1;

/// Width of the backbone's last feature map.
pub const FEATURES: i64 = model::arch::FEATURES as i64;

/// Conv2d + BatchNorm + ReLU6.
fn conv_bn_relu6(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    ks: i64,
    stride: i64,
    groups: i64,
) -> nn::SequentialT {
    let cfg = nn::ConvConfig {
        stride,
        padding: (ks - 1) / 2,
        groups,
        bias: false,
        ..Default::default()
    };
    nn::seq_t()
        .add(nn::conv2d(&p / 0, c_in, c_out, ks, cfg))
        .add(nn::batch_norm2d(&p / 1, c_out, Default::default()))
        .add_fn(|xs| xs.clamp(0.0, 6.0))
}

fn inverted_residual(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    stride: i64,
    expansion: i64,
) -> nn::FuncT<'static> {
    let hidden = expansion * c_in;
    let mut conv = nn::seq_t();
    let mut id = 0;
    if expansion != 1 {
        conv = conv.add(conv_bn_relu6(&p / id, c_in, hidden, 1, 1, 1));
        id += 1;
    }
    conv = conv
        .add(conv_bn_relu6(&p / id, hidden, hidden, 3, stride, hidden))
        .add(nn::conv2d(
            &p / (id + 1),
            hidden,
            c_out,
            1,
            nn::ConvConfig {
                bias: false,
                ..Default::default()
            },
        ))
        .add(nn::batch_norm2d(&p / (id + 2), c_out, Default::default()));
    let residual = stride == 1 && c_in == c_out;
    nn::func_t(move |xs, train| {
        let ys = xs.apply_t(&conv, train);
        if residual { xs + ys } else { ys }
    })
}

/// MobileNetV2 features followed by global average pooling, dropout and a linear classifier.
#[derive(Debug)]
pub struct MobileNetV2 {
    features: nn::SequentialT,
    dropout: f64,
    head: nn::Linear,
}

impl MobileNetV2 {
    /// Builds the network under `p`: `p/features/…` and `p/classifier/1`.
    pub fn new(p: &nn::Path, num_classes: i64, dropout: f64) -> Self {
        let f = p.set_group(BACKBONE_GROUP) / "features";
        let mut c_in = 32;
        let mut features = nn::seq_t().add(conv_bn_relu6(&f / 0, 3, c_in, 3, 2, 1));
        let mut layer = 1;
        // The same table the ONNX exporter walks (model::arch), so the two graphs agree.
        for (expansion, c_out, repeats, stride) in model::arch::INVERTED_RESIDUAL_SETTINGS {
            let (expansion, c_out, stride) = (expansion as i64, c_out as i64, stride as i64);
            for i in 0..repeats {
                let stride = if i == 0 { stride } else { 1 };
                features = features.add(inverted_residual(
                    &f / layer / "conv",
                    c_in,
                    c_out,
                    stride,
                    expansion,
                ));
                c_in = c_out;
                layer += 1;
            }
        }
        features = features.add(conv_bn_relu6(&f / layer, c_in, FEATURES, 1, 1, 1));
        let head = nn::linear(
            p.set_group(HEAD_GROUP) / "classifier" / 1,
            FEATURES,
            num_classes,
            Default::default(),
        );
        Self {
            features,
            dropout,
            head,
        }
    }

    /// Pooled 1280-d embeddings.
    pub fn embed(&self, xs: &Tensor, train: bool) -> Tensor {
        xs.apply_t(&self.features, train)
            .mean_dim(Some([2i64, 3].as_slice()), false, Kind::Float)
    }
}

impl ModuleT for MobileNetV2 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.embed(xs, train)
            .dropout(self.dropout, train)
            .apply(&self.head)
    }
}
