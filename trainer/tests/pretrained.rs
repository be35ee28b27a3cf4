//! The backbone we fine-tune really is torchvision's ImageNet MobileNetV2.
#![allow(clippy::unwrap_used)]

use face2simpson_trainer::torch::{Classifier, read_state_dict};
use model::{Preprocessor, decode};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

const SHA256: &str = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889";

fn pth() -> Vec<u8> {
    let path = env!("FACE2SIMPSON_PRETRAINED");
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}; run `make setup` first"))
}

fn imagenet() -> Classifier {
    let mut net = Classifier::with_classes(Device::Cpu, 1000, 0.2);
    net.load_weights(&pth())
        .expect("the .pth covers every tensor of the 1000-class model");
    net
}

fn top5(net: &Classifier, png: &[u8]) -> Vec<i64> {
    let pre = Preprocessor::new(224);
    let x = pre.eval(&pre.fit(&decode(png).unwrap()));
    let probs = net.predict(&Tensor::from_slice(&x).view([1, 3, 224, 224]));
    let (_, idx) = probs.topk(5, -1, true, true);
    Vec::<i64>::try_from(idx.view([-1])).unwrap()
}

#[test]
fn file_is_the_published_one() {
    let digest: String = Sha256::digest(pth())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(digest, SHA256);
}

#[test]
fn legacy_pth_has_torchvision_names_and_shapes() {
    let dict = read_state_dict(&pth()).unwrap();
    let get = |name: &str| {
        dict.iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.size())
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    assert_eq!(get("features.0.0.weight"), [32, 3, 3, 3]);
    assert_eq!(get("features.1.conv.0.0.weight"), [32, 1, 3, 3]);
    assert_eq!(get("features.18.0.weight"), [1280, 320, 1, 1]);
    assert_eq!(get("classifier.1.weight"), [1000, 1280]);
    // Trained batch-norm statistics, not the initial zeros/ones.
    let var = dict
        .iter()
        .find(|(n, _)| n == "features.0.1.running_var")
        .unwrap();
    assert!(var.1.mean(Kind::Float).double_value(&[]) != 1.0);
}

#[test]
fn classifies_imagenet_photos() {
    let net = imagenet();
    // ImageNet classes 281–285 are the domestic cats (tabby, tiger cat, Persian, Siamese, Egyptian).
    let cat = top5(&net, include_bytes!("fixtures/chelsea.png"));
    assert!((281..=285).contains(&cat[0]), "cat photo top-5 {cat:?}");
    // 967 espresso, 968 cup, 504 coffee mug.
    let cup = top5(&net, include_bytes!("fixtures/coffee.png"));
    assert!(
        [967, 968, 504].contains(&cup[0]),
        "coffee photo top-5 {cup:?}"
    );
}

#[test]
fn backbone_loads_into_the_four_class_model() {
    let mut net = Classifier::new(Device::Cpu, 0.2);
    let head_before = net.var_store().variables()["classifier.1.weight"].copy();
    let n = net.load_backbone(&pth()).unwrap();
    let vars = net.var_store().variables();
    assert_eq!(
        n,
        vars.keys().filter(|k| k.starts_with("features.")).count()
    );
    assert!(
        vars["classifier.1.weight"].equal(&head_before),
        "head must stay as initialised"
    );
    let reference = read_state_dict(&pth()).unwrap();
    let (_, w) = reference
        .iter()
        .find(|(n, _)| n == "features.5.conv.1.0.weight")
        .unwrap();
    assert!(vars["features.5.conv.1.0.weight"].equal(w));
}

#[test]
fn wrong_files_are_refused() {
    let mut net = Classifier::new(Device::Cpu, 0.2);
    assert!(net.load_backbone(b"").is_err());
    assert!(
        net.load_backbone(b"PK\x03\x04rest-of-a-zip")
            .unwrap_err()
            .to_string()
            .contains("zip")
    );
    let truncated = &pth()[..100_000];
    assert!(net.load_backbone(truncated).is_err());
    // A full 1000-class file does not fit a 4-class head.
    assert!(
        net.load_weights(&pth())
            .unwrap_err()
            .to_string()
            .contains("shape")
    );
}
