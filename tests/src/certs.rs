//! Certificates for tests, made by the tests (never committed keys): a CA and the leaf
//! certificates it signs, as PEM files.

use std::path::{Path, PathBuf};

pub use rcgen::DnType;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// A test CA writing into `dir`: `ca.pem`, then `NAME.pem` and `NAME.key` per leaf.
pub struct TestCa {
    dir: PathBuf,
    cert: Certificate,
    key: KeyPair,
}

/// A distinguished name of `(type, value)` pairs, in order.
pub fn name(pairs: &[(DnType, &str)]) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    for (kind, value) in pairs {
        name.push(kind.clone(), *value);
    }
    name
}

/// The host names a broker on this machine is dialled by.
pub fn local_hosts() -> Vec<String> {
    vec!["localhost".to_string(), "127.0.0.1".to_string()]
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl TestCa {
    pub fn new(dir: &Path, common_name: &str) -> TestCa {
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name = name(&[(DnType::CommonName, common_name)]);
        let cert = params.self_signed(&key).expect("a CA certificate");
        std::fs::write(dir.join("ca.pem"), cert.pem()).expect("writing ca.pem");
        TestCa {
            dir: dir.to_path_buf(),
            cert,
            key,
        }
    }

    /// A certificate for `subject` naming `hosts` (empty for a client's), signed by this
    /// CA: `FILE.pem` and `FILE.key`.
    pub fn leaf(&self, file: &str, subject: &[(DnType, &str)], hosts: Vec<String>) {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(hosts).expect("certificate params");
        params.distinguished_name = name(subject);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("signing");
        std::fs::write(self.dir.join(format!("{file}.pem")), cert.pem()).expect("writing");
        std::fs::write(self.dir.join(format!("{file}.key")), key.serialize_pem()).expect("writing");
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}
