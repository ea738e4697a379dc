//! Certificates and keys as vCluster (kubeadm) writes them: PEM, RSA (what
//! vCluster makes) or ECDSA P-256/P-384. Parsing is x509-cert's; signatures
//! and key pairs are checked by aws-lc-rs. Errors are fixed words: never a
//! byte of what was read, which may be a private key.

use aws_lc_rs::signature::{self, KeyPair, UnparsedPublicKey, VerificationAlgorithm};
use chrono::{DateTime, Utc};
use rustls_pki_types::pem::{PemObject, SectionKind};
use x509_cert::Certificate;
use x509_cert::der::{self, Decode, Reader};
use x509_cert::spki::SubjectPublicKeyInfoOwned;

const RSA: &str = "1.2.840.113549.1.1.1";
const EC: &str = "1.2.840.10045.2.1";
const P256: &str = "1.2.840.10045.3.1.7";
const P384: &str = "1.3.132.0.34";
const BASIC_CONSTRAINTS: &str = "2.5.29.19";

/// A public key, as its bytes inside a SubjectPublicKeyInfo: an RSA
/// `RSAPublicKey`, or an uncompressed EC point with its curve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PublicKey {
    Rsa(Vec<u8>),
    Ec { curve: &'static str, point: Vec<u8> },
}

/// One parsed certificate.
pub(super) struct Cert {
    cert: Certificate,
    /// The whole certificate, as it was encoded.
    pub der: Vec<u8>,
    /// The signed part, as it was encoded: what the signature covers.
    tbs: Vec<u8>,
}

impl Cert {
    /// Every certificate of a PEM file, the first one first.
    pub fn parse_pem(pem: &[u8]) -> Result<Vec<Cert>, String> {
        let mut certs = Vec::new();
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
            let (kind, der) = section.map_err(|_| "not valid PEM".to_string())?;
            if kind == SectionKind::Certificate {
                certs.push(Cert::parse_der(&der)?);
            }
        }
        if certs.is_empty() {
            return Err("holds no PEM certificate".into());
        }
        Ok(certs)
    }

    pub fn parse_der(der: &[u8]) -> Result<Cert, String> {
        let bad = |_| "not a valid X.509 certificate".to_string();
        let cert = Certificate::from_der(der).map_err(bad)?;
        let mut reader = der::SliceReader::new(der).map_err(bad)?;
        let tbs = reader
            .sequence(|outer| {
                let tbs = outer.tlv_bytes()?.to_vec();
                // The signature algorithm and the signature: the sequence must be read whole.
                outer.tlv_bytes()?;
                outer.tlv_bytes()?;
                Ok(tbs)
            })
            .map_err(bad)?;
        Ok(Cert {
            cert,
            tbs,
            der: der.to_vec(),
        })
    }

    pub fn subject(&self) -> String {
        self.cert.tbs_certificate.subject.to_string()
    }

    pub fn issuer(&self) -> String {
        self.cert.tbs_certificate.issuer.to_string()
    }

    pub fn not_after(&self) -> DateTime<Utc> {
        let at = self
            .cert
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration();
        DateTime::from_timestamp(i64::try_from(at.as_secs()).unwrap_or(i64::MAX), 0)
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// A CA by its basic constraints (kubeadm marks every CA so).
    pub fn is_ca(&self) -> bool {
        let extensions = self.cert.tbs_certificate.extensions.iter().flatten();
        extensions
            .filter(|e| e.extn_id.to_string() == BASIC_CONSTRAINTS)
            .any(|e| {
                x509_cert::ext::pkix::BasicConstraints::from_der(e.extn_value.as_bytes())
                    .is_ok_and(|bc| bc.ca)
            })
    }

    pub fn names_as_issuer(&self, issuer: &Cert) -> bool {
        self.cert.tbs_certificate.issuer == issuer.cert.tbs_certificate.subject
    }

    pub fn public_key(&self) -> Result<PublicKey, String> {
        spki(&self.cert.tbs_certificate.subject_public_key_info)
    }

    /// Whether `issuer`'s key made this certificate's signature.
    pub fn signed_by(&self, issuer: &Cert) -> Result<(), String> {
        let key = issuer.public_key()?;
        let oid = self.cert.signature_algorithm.oid.to_string();
        let algorithm: &'static dyn VerificationAlgorithm = match (oid.as_str(), &key) {
            ("1.2.840.113549.1.1.11", PublicKey::Rsa(_)) => &signature::RSA_PKCS1_2048_8192_SHA256,
            ("1.2.840.113549.1.1.12", PublicKey::Rsa(_)) => &signature::RSA_PKCS1_2048_8192_SHA384,
            ("1.2.840.113549.1.1.13", PublicKey::Rsa(_)) => &signature::RSA_PKCS1_2048_8192_SHA512,
            ("1.2.840.10045.4.3.2", PublicKey::Ec { curve: P256, .. }) => {
                &signature::ECDSA_P256_SHA256_ASN1
            }
            ("1.2.840.10045.4.3.2", PublicKey::Ec { curve: P384, .. }) => {
                &signature::ECDSA_P384_SHA256_ASN1
            }
            ("1.2.840.10045.4.3.3", PublicKey::Ec { curve: P256, .. }) => {
                &signature::ECDSA_P256_SHA384_ASN1
            }
            ("1.2.840.10045.4.3.3", PublicKey::Ec { curve: P384, .. }) => {
                &signature::ECDSA_P384_SHA384_ASN1
            }
            _ => {
                return Err(format!(
                    "signed with algorithm {oid}, which the drill does not check, by a key it does not know"
                ));
            }
        };
        let key_bytes = match &key {
            PublicKey::Rsa(bytes) => bytes,
            PublicKey::Ec { point, .. } => point,
        };
        let signature = self
            .cert
            .signature
            .as_bytes()
            .ok_or_else(|| "its signature is not a whole number of bytes".to_string())?;
        UnparsedPublicKey::new(algorithm, key_bytes)
            .verify(&self.tbs, signature)
            .map_err(|_| "the signature does not verify".to_string())
    }
}

fn spki(info: &SubjectPublicKeyInfoOwned) -> Result<PublicKey, String> {
    let bits = info
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| "a public key that is not a whole number of bytes".to_string())?
        .to_vec();
    match info.algorithm.oid.to_string().as_str() {
        RSA => Ok(PublicKey::Rsa(bits)),
        EC => {
            let curve = info
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok())
                .map(|oid| oid.to_string());
            match curve.as_deref() {
                Some(P256) => Ok(PublicKey::Ec {
                    curve: P256,
                    point: bits,
                }),
                Some(P384) => Ok(PublicKey::Ec {
                    curve: P384,
                    point: bits,
                }),
                _ => Err("an EC key on a curve other than P-256 or P-384".into()),
            }
        }
        other => Err(format!("a public key of algorithm {other}, not RSA or EC")),
    }
}

/// The public half of a PEM private key (PKCS#1, PKCS#8 or SEC1), once the
/// key is known to be whole: aws-lc-rs checks an RSA key's parts against each
/// other and an EC key's point against its scalar.
pub(super) fn private_key(pem: &[u8]) -> Result<PublicKey, String> {
    let mut found = None;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = section.map_err(|_| "not valid PEM".to_string())?;
        let der = zeroize::Zeroizing::new(der);
        let public = match kind {
            SectionKind::RsaPrivateKey => rsa(signature::RsaKeyPair::from_der(&der)),
            SectionKind::PrivateKey => {
                rsa(signature::RsaKeyPair::from_pkcs8(&der)).or_else(|_| ec(&der))
            }
            SectionKind::EcPrivateKey => ec(&der),
            _ => continue,
        };
        if found.is_some() {
            return Err("holds more than one private key".into());
        }
        found = Some(public?);
    }
    found.ok_or_else(|| "holds no PEM private key".to_string())
}

fn rsa(
    pair: Result<signature::RsaKeyPair, aws_lc_rs::error::KeyRejected>,
) -> Result<PublicKey, String> {
    let pair = pair.map_err(|_| "not a valid RSA private key".to_string())?;
    Ok(PublicKey::Rsa(pair.public_key().as_ref().to_vec()))
}

fn ec(der: &[u8]) -> Result<PublicKey, String> {
    for (curve, algorithm) in [
        (P256, &signature::ECDSA_P256_SHA256_ASN1_SIGNING),
        (P384, &signature::ECDSA_P384_SHA384_ASN1_SIGNING),
    ] {
        if let Ok(pair) = signature::EcdsaKeyPair::from_private_key_der(algorithm, der) {
            return Ok(PublicKey::Ec {
                curve,
                point: pair.public_key().as_ref().to_vec(),
            });
        }
    }
    Err("not a valid RSA or EC (P-256, P-384) private key".into())
}

/// A PEM `PUBLIC KEY` (SubjectPublicKeyInfo), as `sa.pub` is.
pub(super) fn public_key(pem: &[u8]) -> Result<PublicKey, String> {
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = section.map_err(|_| "not valid PEM".to_string())?;
        if kind == SectionKind::PublicKey {
            let info = SubjectPublicKeyInfoOwned::from_der(&der)
                .map_err(|_| "not a valid SubjectPublicKeyInfo".to_string())?;
            return spki(&info);
        }
    }
    Err("holds no PEM public key".into())
}
