//! Scoring a network on a split: loss, accuracy, confusion matrix, predictions; and the
//! champion re-scored on the run's test images.

use model::{CLASSES, Preprocessor};
use tch::{Device, Reduction, Tensor};

use super::{TrainError, weights_err};
use super::batches::{EVAL_BATCH, for_each_batch, to_batch};
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

/// Scores `net` on `samples` in eval mode. Empty splits score 0 with no loss.
pub fn evaluate(
    net: &Classifier,
    samples: &[Sample],
    pre: &Preprocessor,
    label_smoothing: f64,
) -> Result<Evaluation, TrainError> {
    let k = CLASSES.len();
    let mut confusion = vec![vec![0u64; k]; k];
    let mut loss_sum = 0.0;
    let mut predictions = Vec::with_capacity(samples.len());
    let batches: Vec<Vec<usize>> = (0..samples.len())
        .collect::<Vec<_>>()
        .chunks(EVAL_BATCH)
        .map(<[usize]>::to_vec)
        .collect();
    tch::no_grad(|| {
        for_each_batch(
            samples,
            &batches,
            |_, s| pre.eval(&s.image),
            |(xs, labels)| -> Result<(), TrainError> {
                let (x, y) = to_batch(net, &xs, &labels, pre.image_size);
                let logits = net.logits(&x, false);
                let loss = logits.f_cross_entropy_loss(
                    &y,
                    None::<Tensor>,
                    Reduction::Sum,
                    -100,
                    label_smoothing,
                )?;
                loss_sum += loss.double_value(&[]);
                let predicted =
                    Vec::<i64>::try_from(logits.argmax(-1, false).to_device(Device::Cpu))?;
                for (t, p) in labels.iter().zip(predicted) {
                    confusion[*t as usize][p as usize] += 1;
                    predictions.push(p as u8);
                }
                Ok(())
            },
        )
    })?;
    let n = samples.len();
    let correct: u64 = (0..k).map(|i| confusion[i][i]).sum();
    Ok(Evaluation {
        loss: if n == 0 { 0.0 } else { loss_sum / n as f64 },
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
        .map_err(weights_err("loading the champion's weights"))?;
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
    evaluate(net, samples, &Preprocessor::new(image_size), label_smoothing)
}
