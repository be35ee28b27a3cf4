//! MobileNetV2's architecture as data: the layers, their torchvision parameter names and shapes.
//!
//! The trainer's libtorch network and the ONNX exporter both walk this description, so the two
//! cannot disagree about which tensor goes where.

/// Width of the backbone's last feature map.
pub const FEATURES: usize = 1280;
/// Batch-norm epsilon (libtorch's and torchvision's default).
pub const BN_EPS: f32 = 1e-5;
/// The classifier's parameter prefix (`classifier.1.weight`, `classifier.1.bias`); index 0 is
/// the dropout, which has no parameters.
pub const HEAD: &str = "classifier.1";

/// (expansion, out channels, repeats, first stride) — Sandler et al. 2018, table 2.
pub const INVERTED_RESIDUAL_SETTINGS: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// A bias-free convolution followed by batch norm and, optionally, ReLU6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvBn {
    /// Prefix of the convolution's `weight`.
    pub conv: String,
    /// Prefix of the batch norm's `weight`, `bias`, `running_mean` and `running_var`.
    pub bn: String,
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
    pub relu6: bool,
}

impl ConvBn {
    pub fn padding(&self) -> usize {
        (self.kernel - 1) / 2
    }

    /// Shape of the convolution weight: `[c_out, c_in / groups, k, k]`.
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.c_out,
            self.c_in / self.groups,
            self.kernel,
            self.kernel,
        ]
    }
}

/// One entry of `features`: a plain conv (stem and last layer) or an inverted residual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Block {
    Conv(ConvBn),
    InvertedResidual {
        convs: Vec<ConvBn>,
        /// Input added to the output (stride 1 and equal widths).
        residual: bool,
    },
}

/// `torchvision`'s `Conv2dNormActivation` at `features.N`: `N.0` conv, `N.1` batch norm.
fn conv_bn_relu6(
    prefix: &str,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
) -> ConvBn {
    ConvBn {
        conv: format!("{prefix}.0"),
        bn: format!("{prefix}.1"),
        c_in,
        c_out,
        kernel,
        stride,
        groups,
        relu6: true,
    }
}

/// The backbone, in order: stem, 17 inverted residuals, the 1×1 conv to [`FEATURES`].
pub fn features() -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut c_in = 32;
    blocks.push(Block::Conv(conv_bn_relu6("features.0", 3, c_in, 3, 2, 1)));
    let mut layer = 1;
    for (expansion, c_out, repeats, first_stride) in INVERTED_RESIDUAL_SETTINGS {
        for i in 0..repeats {
            let stride = if i == 0 { first_stride } else { 1 };
            let p = format!("features.{layer}.conv");
            let hidden = expansion * c_in;
            let mut convs = Vec::new();
            let mut id = 0;
            if expansion != 1 {
                convs.push(conv_bn_relu6(&format!("{p}.0"), c_in, hidden, 1, 1, 1));
                id += 1;
            }
            convs.push(conv_bn_relu6(
                &format!("{p}.{id}"),
                hidden,
                hidden,
                3,
                stride,
                hidden,
            ));
            // The projection is linear: a bare conv at `id + 1` and its batch norm at `id + 2`.
            convs.push(ConvBn {
                conv: format!("{p}.{}", id + 1),
                bn: format!("{p}.{}", id + 2),
                c_in: hidden,
                c_out,
                kernel: 1,
                stride: 1,
                groups: 1,
                relu6: false,
            });
            blocks.push(Block::InvertedResidual {
                convs,
                residual: stride == 1 && c_in == c_out,
            });
            c_in = c_out;
            layer += 1;
        }
    }
    blocks.push(Block::Conv(conv_bn_relu6(
        &format!("features.{layer}"),
        c_in,
        FEATURES,
        1,
        1,
        1,
    )));
    blocks
}

/// Every parameter and batch-norm statistic with its shape, for `num_classes` outputs.
pub fn parameter_shapes(num_classes: usize) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let mut push_conv = |c: &ConvBn| {
        out.push((format!("{}.weight", c.conv), c.weight_shape().to_vec()));
        for stat in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{}.{stat}", c.bn), vec![c.c_out]));
        }
    };
    for block in features() {
        match block {
            Block::Conv(c) => push_conv(&c),
            Block::InvertedResidual { convs, .. } => convs.iter().for_each(&mut push_conv),
        }
    }
    out.push((format!("{HEAD}.weight"), vec![num_classes, FEATURES]));
    out.push((format!("{HEAD}.bias"), vec![num_classes]));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchvision_layout() {
        let blocks = features();
        assert_eq!(blocks.len(), 19, "stem + 17 inverted residuals + last conv");
        let shapes = parameter_shapes(4);
        let shape = |name: &str| {
            shapes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.clone())
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert_eq!(shape("features.0.0.weight"), [32, 3, 3, 3]);
        assert_eq!(shape("features.1.conv.0.0.weight"), [32, 1, 3, 3]);
        assert_eq!(shape("features.1.conv.1.weight"), [16, 32, 1, 1]);
        assert_eq!(shape("features.1.conv.2.running_var"), [16]);
        assert_eq!(shape("features.2.conv.0.0.weight"), [96, 16, 1, 1]);
        assert_eq!(shape("features.2.conv.3.bias"), [24]);
        assert_eq!(shape("features.18.0.weight"), [1280, 320, 1, 1]);
        assert_eq!(shape("classifier.1.weight"), [4, 1280]);
        // torchvision's MobileNetV2 has 3.5 M parameters with its 1000-class head.
        let params: usize = parameter_shapes(1000)
            .iter()
            .filter(|(n, _)| !n.contains("running_"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(params, 3_504_872);
    }
}
