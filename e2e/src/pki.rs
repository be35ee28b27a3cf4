//! The certificates a cluster needs: one CA that signs the API server's serving certificate
//! and authenticates client certificates, an admin client certificate (group
//! `system:masters`) and the key pair that signs ServiceAccount tokens.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// PEM files written into a cluster's directory.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate (clients trust it, the API server verifies client certificates with it).
    pub ca_cert: PathBuf,
    /// The API server's serving certificate and key.
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    /// The admin client certificate and key.
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    /// Signs ServiceAccount tokens.
    pub service_account_key: PathBuf,
    /// Verifies them.
    pub service_account_public_key: PathBuf,
}

fn write(dir: &Path, name: &str, pem: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, pem).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

impl Pki {
    /// Generates everything into `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "face2simpson-e2e-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let serving_key = KeyPair::generate()?;
        let mut serving = CertificateParams::new(vec![
            "localhost".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
        ])?;
        serving
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &issuer)?;

        let admin_key = KeyPair::generate()?;
        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin
            .distinguished_name
            .push(DnType::CommonName, "e2e-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin.signed_by(&admin_key, &issuer)?;

        let sa_key = KeyPair::generate()?;
        Ok(Self {
            ca_cert: write(dir, "ca.crt", &ca_cert.pem())?,
            serving_cert: write(dir, "apiserver.crt", &serving_cert.pem())?,
            serving_key: write(dir, "apiserver.key", &serving_key.serialize_pem())?,
            admin_cert: write(dir, "admin.crt", &admin_cert.pem())?,
            admin_key: write(dir, "admin.key", &admin_key.serialize_pem())?,
            service_account_key: write(dir, "sa.key", &sa_key.serialize_pem())?,
            service_account_public_key: write(dir, "sa.pub", &sa_key.public_key_pem())?,
        })
    }
}
