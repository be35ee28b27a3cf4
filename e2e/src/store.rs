//! A real S3 endpoint on loopback: s3s-fs over a directory, on its own thread and runtime so
//! it keeps answering whatever the test's thread is doing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use artifacts::Storage;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

/// The bucket every test uses.
pub const BUCKET: &str = "face2simpson";
const ACCESS_KEY: &str = "e2e-access";
const SECRET_KEY: &str = "e2e-secret-key";

/// A running S3 server; it stops with the test process.
#[derive(Debug)]
pub struct S3Store {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    root: PathBuf,
}

impl S3Store {
    /// Serves `root` (one directory per bucket) on a free loopback port.
    pub fn start(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join(BUCKET))?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let fs = s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3s-fs: {e:?}"))?;
        let mut builder = S3ServiceBuilder::new(fs);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("s3-store".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    while let Ok((socket, _)) = listener.accept().await {
                        let service = service.clone();
                        tokio::spawn(async move {
                            let _ = ConnBuilder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(socket), service)
                                .await;
                        });
                    }
                });
            })?;
        Ok(Self {
            endpoint,
            root: root.to_owned(),
        })
    }

    /// The store URL a SimpsonModel names.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The keys of the credentials Secret, exactly what a user puts there for MinIO or any
    /// S3-compatible store (see examples/s3.yaml).
    pub fn secret_data(&self) -> BTreeMap<String, String> {
        self.secret_data_via(&self.endpoint)
    }

    /// [`S3Store::secret_data`] reaching the store through `endpoint` (a
    /// [`crate::proxy::StoreProxy`]).
    pub fn secret_data_via(&self, endpoint: &str) -> BTreeMap<String, String> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT", endpoint),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The store as the test sees it, through the same S3 protocol.
    pub fn storage(&self, prefix: &str) -> Result<Storage> {
        Storage::open_with_env(&self.url(prefix), self.secret_data())
            .with_context(|| format!("cannot open {}", self.url(prefix)))
    }

    /// The directory behind the bucket, for assertions on raw objects.
    pub fn bucket_dir(&self) -> PathBuf {
        self.root.join(BUCKET)
    }
}
