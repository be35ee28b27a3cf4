//! Scoring a network on a split: loss, accuracy, confusion matrix, predictions; and the
//! champion re-scored on the run's test images.

use model::{CLASSES, Preprocessor};
use tch::{Device, Kind, Reduction, Tensor};

use super::batches::{EVAL_BATCH, Normalizer, for_each_batch, ordered_batches};
use super::{TrainError, input_weights_err};
use crate::dataset::Sample;
use crate::torch::Classifier;

/// Accuracy, loss and confusion matrix over a split.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
    /// `confusion[true][predicted]`
    pub confusion: Vec<Vec<u64>>,
    /// Predicted class per sample, in the order of the samples.
    pub predictions: Vec<u8>,
}

/// Scores `net` on `samples` in eval mode. Empty splits score 0 with no loss. Loss and
/// predictions stay on the device until the split is done: one host sync per evaluation.
pub fn evaluate(
    net: &Classifier,
    samples: &[Sample],
    pre: &Preprocessor,
    label_smoothing: f64,
) -> Result<Evaluation, TrainError> {
    let k = CLASSES.len();
    let mut confusion = vec![vec![0u64; k]; k];
    let device = net.device();
    let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
    let mut predicted = Vec::new();
    let batches = ordered_batches(samples.len(), EVAL_BATCH);
    let norm = Normalizer::new(device);
    tch::no_grad(|| {
        for_each_batch(
            samples,
            &batches,
            pre.image_size,
            device,
            |_, s, out| s.image.read_into(out),
            |batch| -> Result<(), TrainError> {
                let (x, y) = batch.normalized(&norm);
                let logits = net.logits(&x, false);
                loss_sum += logits.f_cross_entropy_loss(
                    &y,
                    None::<Tensor>,
                    Reduction::Sum,
                    -100,
                    label_smoothing,
                )?;
                predicted.push(logits.argmax(-1, false));
                Ok(())
            },
        )
    })?;
    let predicted: Vec<i64> = match predicted.is_empty() {
        true => Vec::new(),
        false => Vec::<i64>::try_from(Tensor::cat(&predicted, 0).to_device(Device::Cpu))?,
    };
    for (s, p) in samples.iter().zip(&predicted) {
        confusion[s.label][*p as usize] += 1;
    }
    let predictions = predicted.into_iter().map(|p| p as u8).collect();
    let n = samples.len();
    let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
    Ok(Evaluation {
        loss: if n == 0 {
            0.0
        } else {
            loss_sum.double_value(&[]) / n as f64
        },
        accuracy: if n == 0 {
            0.0
        } else {
            correct as f64 / n as f64
        },
        confusion,
        predictions,
    })
}

/// The champion's network, loaded before training so that unusable weights fail the run
/// before the expensive part.
pub fn load_champion(weights: &[u8], device: Device) -> Result<Classifier, TrainError> {
    // Dropout plays no part in evaluation.
    let mut net = Classifier::new(device, 0.0);
    net.load_weights(weights)
        .map_err(input_weights_err("loading the champion's weights"))?;
    Ok(net)
}

/// The champion re-scored on the run's test images, preprocessed at the champion's own image
/// size (`samples` were fitted to it), so it is judged as it would be served.
pub fn score_champion(
    net: &Classifier,
    samples: &[Sample],
    image_size: u32,
    label_smoothing: f64,
) -> Result<Evaluation, TrainError> {
    evaluate(
        net,
        samples,
        &Preprocessor::new(image_size),
        label_smoothing,
    )
}
