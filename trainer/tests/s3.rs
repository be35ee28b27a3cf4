//! The `s3://` path against a real S3 server (s3s-fs) on 127.0.0.1.
#![allow(clippy::unwrap_used)]

mod common;

use artifacts::Storage;
use common::{config, dataset, train};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

const ACCESS_KEY: &str = "face2simpson";
const SECRET_KEY: &str = "face2simpson-secret";

/// Starts s3s-fs over `root` on an ephemeral loopback port and returns its endpoint.
async fn s3_server(root: &std::path::Path) -> String {
    std::fs::create_dir_all(root.join("bucket")).unwrap();
    let fs = s3s_fs::FileSystem::new(root).unwrap();
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let service = service.clone();
            tokio::spawn(async move {
                let _ = ConnBuilder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

fn s3_env(endpoint: &str, secret: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_REGION", "us-east-1"),
        ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn trains_from_and_writes_to_s3() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = s3_server(dir.path()).await;
    let storage =
        Storage::open_with_env("s3://bucket/face2simpson", s3_env(&endpoint, SECRET_KEY)).unwrap();
    dataset(&storage, 6, 48, 2).await;
    let out = train(&storage, &config("s3-run", 32, 1)).await.unwrap();
    assert_eq!(storage.get_metrics("s3-run").await.unwrap(), out.metrics);
    // The objects really live in the server's bucket directory.
    assert!(
        dir.path()
            .join("bucket/face2simpson/runs/s3-run/model.safetensors")
            .exists()
    );
    assert!(
        dir.path()
            .join("bucket/face2simpson/datasets/test/train/homer/00000.png")
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = s3_server(dir.path()).await;
    let storage = Storage::open_with_env("s3://bucket/x", s3_env(&endpoint, "wrong")).unwrap();
    let err = storage.get("runs/a/metrics.json").await.unwrap_err();
    assert!(!err.is_not_found());
    assert!(err.to_string().contains("runs/a/metrics.json"), "{err}");
}
