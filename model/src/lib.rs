//! The face2simpson model contract, free of any tensor library: the class list, the one
//! preprocessing pipeline shared by training, evaluation and serving, the network's architecture
//! as data, and its export to ONNX.
//!
//! The trainer runs the network on libtorch (`face2simpson_trainer::torch`); the inference service
//! runs the ONNX export on ONNX Runtime. Both preprocess with [`Preprocessor`], so serving cannot
//! drift from training.

pub mod arch;
pub mod decode;
pub mod onnx;
pub mod preprocess;
pub mod resize;

pub use decode::{Decoded, ImageError, decode, decode_reduced};
pub use preprocess::{AUGMENTATIONS, Augmentation, Preprocessor};
pub use resize::{Region, resize_region};

/// The characters we tell apart, in the order of the model's outputs. The one definition.
pub const CLASSES: [&str; 4] = ["homer", "marge", "bart", "lisa"];

/// Index of a class name in [`CLASSES`].
pub fn class_index(name: &str) -> Option<usize> {
    CLASSES.iter().position(|c| *c == name)
}
