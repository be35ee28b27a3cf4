//! Where one request's time goes: the service's stages called directly, in process, one
//! request at a time, each the median of N runs. The handler (`predict` in `src/lib.rs`) runs
//! exactly these calls, in this order; what the table cannot see (HTTP, admission, the
//! blocking-pool hand-off) is the c=1 p50 minus their sum.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use face2simpson_inference::batcher::{self, OnnxClassifier};
use face2simpson_inference::metrics::Metrics;
use face2simpson_inference::upload::{self, BodyLimits};
use face2simpson_inference::{
    BatchConfig, Batcher, Face, Forward, ModelRef, Prediction, Probabilities,
};
use image::{DynamicImage, ImageDecoder, ImageReader};
use model::Preprocessor;
use pipeline::{FaceBox, FaceDetector};
use tokio::sync::Semaphore;

/// One stage's median, in ms.
pub struct Stage {
    pub name: &'static str,
    pub ms: f64,
}

/// The stages of one upload, with what the detector did.
pub struct Stages {
    pub rows: Vec<Stage>,
    pub faces: usize,
    pub passes: usize,
}

impl Stages {
    /// The stages a request runs, without the sub-rows (those indented).
    pub fn total_ms(&self) -> f64 {
        self.rows
            .iter()
            .filter(|s| !s.name.starts_with("  "))
            .map(|s| s.ms)
            .sum()
    }
}

/// What the stages need: the service's detector and classifier settings.
pub struct Bench<'a> {
    pub detector: &'a FaceDetector,
    pub onnx: &'a [u8],
    pub library: &'a std::path::Path,
    pub ort_threads: usize,
    pub pre: Preprocessor,
    pub runs: usize,
}

fn median(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// Median wall time of `f` over `runs` calls, in ms (one untimed call first).
fn median_ms<T>(runs: usize, mut f: impl FnMut() -> T) -> f64 {
    std::hint::black_box(f());
    median(
        (0..runs.max(1))
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(f());
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

/// Median time of the orientation step alone (applying EXIF's rotation and the conversion to
/// RGB8), each run on a freshly decoded image.
fn orient_ms(runs: usize, bytes: &[u8]) -> f64 {
    median(
        (0..runs.max(1))
            .map(|_| {
                let (mut img, orientation) = decode_pixels(bytes);
                let start = Instant::now();
                img.apply_orientation(orientation);
                std::hint::black_box(img.into_rgb8());
                start.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

/// `model::decode` without its orientation step: the pixel decode alone, at full size (what
/// `pipeline::decode` does for the small uploads; for the 12 MP photo, which it decodes
/// reduced, the full decode pipeline version 1 paid).
fn decode_pixels(bytes: &[u8]) -> (DynamicImage, image::metadata::Orientation) {
    let mut decoder = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .expect("in-memory reader")
        .into_decoder()
        .expect("a JPEG");
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).expect("decodes");
    (img, orientation)
}

/// The handler's answer, built and serialised as `Json(Prediction)` does.
fn serialize(boxes: &[FaceBox], probs: &[Probabilities]) -> Vec<u8> {
    let verdict = |p: &Probabilities| {
        let map: BTreeMap<String, f32> = model::CLASSES
            .iter()
            .zip(p)
            .map(|(c, v)| ((*c).to_owned(), *v))
            .collect();
        (model::CLASSES[batcher::top1(p)].to_owned(), map)
    };
    let faces = boxes
        .iter()
        .zip(probs)
        .map(|(b, p)| {
            let (character, probabilities) = verdict(p);
            Face {
                bbox: *b,
                character,
                probabilities,
            }
        })
        .collect::<Vec<_>>();
    let (character, probabilities) = verdict(&probs[0]);
    serde_json::to_vec(&Prediction {
        character,
        probabilities,
        face_detected: !faces.is_empty(),
        faces,
        model: ModelRef {
            run_id: Some("bench".into()),
            test_accuracy: None,
        },
    })
    .expect("serialises")
}

impl Bench<'_> {
    fn classifier(&self) -> anyhow::Result<OnnxClassifier> {
        let env = face2simpson_inference::runtime::environment(self.library)?;
        let session = face2simpson_inference::runtime::session(env, self.onnx, self.ort_threads)?;
        Ok(OnnxClassifier::new(session))
    }

    /// `upload::read` over an in-memory body: the handler's read, without the socket.
    fn read_ms(&self, rt: &tokio::runtime::Runtime, bytes: &[u8]) -> f64 {
        let limits = BodyLimits {
            max_bytes: 32 << 20,
            timeout: Duration::from_secs(30),
            min_rate: 0,
        };
        let budget = Arc::new(Semaphore::new(256 << 20));
        let len = Some(bytes.len() as u64);
        median_ms(self.runs, || {
            let body = axum::body::Body::from(bytes.to_vec());
            rt.block_on(upload::read(body, len, &limits, &budget))
                .map(|u| u.bytes.len())
                .expect("reads")
        })
    }

    /// The classifier as the handler reaches it: through the batcher's queue, which waits
    /// `max_wait` for company before a pass even when nobody else is there.
    fn batcher_ms(
        &self,
        rt: &tokio::runtime::Runtime,
        inputs: &[Vec<f32>],
        batch: BatchConfig,
    ) -> anyhow::Result<f64> {
        let model: Box<dyn Forward> = Box::new(self.classifier()?);
        let size = self.pre.image_size;
        let batcher = Batcher::spawn(vec![model], size, batch, Arc::new(Metrics::default()))?;
        Ok(median_ms(self.runs, || {
            rt.block_on(batcher.classify(inputs.to_vec()))
                .expect("classifies")
        }))
    }

    /// Every stage of one upload, in the handler's order.
    pub fn measure(
        &self,
        rt: &tokio::runtime::Runtime,
        bytes: &[u8],
        batch: BatchConfig,
    ) -> anyhow::Result<Stages> {
        let photo = pipeline::decode(bytes, self.pre)?;
        let boxes = self.detector.detect(&photo)?;
        let inputs = pipeline::model_inputs(&photo, &boxes, self.pre);
        let flat: Vec<f32> = inputs.concat();
        let mut forward = self.classifier()?;
        let size = self.pre.image_size as usize;
        let probs = forward
            .forward(&flat, inputs.len(), size)
            .map_err(anyhow::Error::msg)?;
        let (w, h) = photo.image.dimensions();

        let stage = |name, ms| {
            eprintln!("  {name}: {ms:.2} ms");
            Stage { name, ms }
        };
        let rows = vec![
            stage("read body (in memory)", self.read_ms(rt, bytes)),
            stage(
                "decode + orient (pipeline::decode)",
                median_ms(self.runs, || pipeline::decode(bytes, self.pre)),
            ),
            stage(
                "  pixel decode at full size (zune-jpeg)",
                median_ms(self.runs, || decode_pixels(bytes)),
            ),
            stage("  orient at full size", orient_ms(self.runs, bytes)),
            stage(
                "detect (BlazeFace)",
                median_ms(self.runs, || self.detector.detect(&photo)),
            ),
            stage(
                "crop + fit + normalise",
                median_ms(self.runs, || {
                    pipeline::model_inputs(&photo, &boxes, self.pre)
                }),
            ),
            stage(
                "classify (via the batcher)",
                self.batcher_ms(rt, &inputs, batch)?,
            ),
            stage(
                "  of which forward pass",
                median_ms(self.runs, || forward.forward(&flat, inputs.len(), size)),
            ),
            stage(
                "serialize",
                median_ms(self.runs, || serialize(&boxes, &probs)),
            ),
        ];
        Ok(Stages {
            rows,
            faces: boxes.len(),
            passes: pipeline::detector_passes(w, h),
        })
    }
}
