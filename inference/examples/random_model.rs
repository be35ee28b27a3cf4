//! Writes a real-sized ONNX classifier with seeded random weights, for checks that need a model
//! the service can load but no trained one (the inference image's smoke test when the trainer
//! image is not built). Pure Rust: no libtorch involved.
//!
//!     cargo run --release -p face2simpson-inference --example random_model -- OUT.onnx [SIZE]

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .context("usage: random_model OUT.onnx [IMAGE_SIZE]")?;
    let size: u32 = args.next().map_or(Ok(224), |s| s.parse())?;
    let onnx = model::onnx::export(&model::onnx::Weights::random(0, model::CLASSES.len()), size)?;
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, onnx).with_context(|| format!("writing {out}"))?;
    Ok(())
}
