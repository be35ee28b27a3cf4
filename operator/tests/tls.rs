//! A real TLS client can be built. kube and object_store must agree on one rustls crypto
//! provider: with two in the dependency tree, rustls panics on the first HTTPS connection,
//! which the mock API tests (plain tower services) never make.
#![allow(clippy::unwrap_used)]

use kube::{Client, Config};

#[tokio::test]
async fn https_client_connects_without_a_crypto_provider_panic() {
    // A closed port: the request must fail with a connection error, not a panic.
    let config = Config::new("https://127.0.0.1:9".parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let err = client.apiserver_version().await.unwrap_err();
    let text = format!("{err:#}");
    assert!(!text.contains("CryptoProvider"), "unexpected error: {text}");
}
