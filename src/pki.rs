//! The cluster's PKI: a CA created on the control plane's first start, server, node and
//! operator certificates signed by it, and the identity a peer certificate carries.
//!
//! Identities live in a SPIFFE-style URI SAN:
//! `spiffe://diplo/node/<node-id>` or `spiffe://diplo/operator/<role>/<name>`.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

const SPIFFE_NODE: &str = "spiffe://diplo/node/";

/// How far back a leaf certificate's `not_before` is set before its issuance, to
/// tolerate clock skew between the control plane and nodes. It is not part of the
/// certificate's lifetime: a node certificate issued for 24 h is valid from 5 min
/// before its issuance until 24 h after it.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);
const SPIFFE_OPERATOR: &str = "spiffe://diplo/operator/";

/// Errors from certificate handling.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM or DER input could not be parsed.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was being parsed (e.g. "CSR", "certificate").
        what: &'static str,
        /// Parser message.
        reason: String,
    },
    /// The certificate carries no Diplo identity.
    #[error("certificate carries no Diplo identity (no spiffe://diplo/ URI SAN)")]
    NoIdentity,
}

/// A PEM certificate with its PEM private key.
#[derive(Clone)]
pub struct CertifiedKey {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM PKCS#8 private key.
    pub key_pem: String,
}

/// Who a verified client certificate belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    /// An agent, for its own node only.
    Node {
        /// The node id the control plane assigned at join.
        node_id: String,
    },
    /// A human or automation with an operator role.
    Operator {
        /// Role name (`admin`, `deployer`, `viewer`).
        role: String,
        /// Operator name.
        name: String,
    },
}

/// The cluster certificate authority.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// Creates a new CA, valid for ten years.
    pub fn generate(cluster_name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = distinguished_name(&format!("Diplo CA {cluster_name}"), "diplo");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(CertificateAuthority { cert_der: cert.der().to_vec(), issuer: Issuer::new(params, key), cert_pem, key_pem })
    }

    /// Loads a CA from its PEM certificate and PEM key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| invalid("CA key", e))?;
        let cert_der = pem_to_der(cert_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(|e| invalid("CA certificate", e))?;
        Ok(CertificateAuthority { cert_pem: cert_pem.to_owned(), cert_der, key_pem: key_pem.to_owned(), issuer })
    }

    /// PEM of the CA certificate.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// PEM of the CA private key (to persist it, 0600).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Lower-case hex sha256 of the CA certificate's DER: what join tokens carry.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.cert_der))
    }

    /// Issues a TLS server certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, names: &[String], lifetime: Duration) -> Result<CertifiedKey, PkiError> {
        let mut params = leaf_params("diplo-control-plane", "diplo-control-plane", lifetime)?;
        params.subject_alt_names = names.iter().map(|name| san_for(name)).collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// Issues an operator client certificate carrying `role` and `name`.
    pub fn issue_operator(&self, name: &str, role: &str, lifetime: Duration) -> Result<CertifiedKey, PkiError> {
        let mut params = leaf_params(name, "diplo-operators", lifetime)?;
        params.subject_alt_names = vec![uri_san(&format!("{SPIFFE_OPERATOR}{role}/{name}"))?];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    /// Signs a node's CSR. Only the CSR's public key is used: the subject, the SAN
    /// (`spiffe://diplo/node/<node_id>`) and the lifetime are the control plane's choice.
    /// Returns the PEM certificate and its expiry.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node_id: &str,
        node_name: &str,
        lifetime: Duration,
    ) -> Result<(String, OffsetDateTime), PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| invalid("CSR", e))?;
        let mut params = leaf_params(node_name, "diplo-nodes", lifetime)?;
        params.subject_alt_names = vec![uri_san(&format!("{SPIFFE_NODE}{node_id}"))?];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let expires = params.not_after;
        csr.params = params;
        Ok((csr.signed_by(&self.issuer)?.pem(), expires))
    }

    /// Whether `cert_pem` is a node certificate this CA issued to `node_id` (whatever
    /// its validity period) for the key that signed `csr_pem`: proof that the CSR comes
    /// from that node, even after its certificate expired.
    pub fn proves_node_key(&self, cert_pem: &str, node_id: &str, csr_pem: &str) -> bool {
        let check = || -> Result<bool, PkiError> {
            let cert_der = pem_to_der(cert_pem)?;
            let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).map_err(|e| invalid("certificate", e))?;
            let (_, ca) = x509_parser::parse_x509_certificate(&self.cert_der).map_err(|e| invalid("CA certificate", e))?;
            if cert.verify_signature(Some(ca.public_key())).is_err() {
                return Ok(false);
            }
            if peer_identity(&cert_der)? != (PeerIdentity::Node { node_id: node_id.to_owned() }) {
                return Ok(false);
            }
            let csr_der = pem_to_der(csr_pem)?;
            let (_, csr) =
                <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&csr_der)
                    .map_err(|e| invalid("CSR", e))?;
            if csr.verify_signature().is_err() {
                return Ok(false);
            }
            Ok(csr.certification_request_info.subject_pki.raw == cert.public_key().raw)
        };
        check().unwrap_or(false)
    }

    fn issue(&self, params: CertificateParams) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// Generates a node key pair and a CSR for it. Returns `(key_pem, csr_pem)`; the key
/// stays on the node.
pub fn generate_csr(node_name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), csr_with(node_name, &key)?))
}

/// A fresh CSR for an existing key (certificate renewal keeps the node's key).
pub fn csr_for_key(node_name: &str, key_pem: &str) -> Result<String, PkiError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| invalid("node key", e))?;
    csr_with(node_name, &key)
}

fn csr_with(node_name: &str, key: &KeyPair) -> Result<String, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = distinguished_name(node_name, "diplo-nodes");
    Ok(params.serialize_request(key)?.pem()?)
}

/// Lower-case hex sha256 of the first certificate in a PEM bundle.
pub fn fingerprint_pem(cert_pem: &str) -> Result<String, PkiError> {
    Ok(hex::encode(Sha256::digest(pem_to_der(cert_pem)?)))
}

/// Expiry of the first certificate in a PEM bundle.
pub fn not_after_pem(cert_pem: &str) -> Result<OffsetDateTime, PkiError> {
    let der = pem_to_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| invalid("certificate", e))?;
    Ok(cert.validity().not_after.to_datetime())
}

/// Start of validity of the first certificate in a PEM bundle.
pub fn not_before_pem(cert_pem: &str) -> Result<OffsetDateTime, PkiError> {
    let der = pem_to_der(cert_pem)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|e| invalid("certificate", e))?;
    Ok(cert.validity().not_before.to_datetime())
}

/// The Diplo identity in a (verified) DER certificate.
pub fn peer_identity(cert_der: &[u8]) -> Result<PeerIdentity, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| invalid("certificate", e))?;
    let san = cert.subject_alternative_name().map_err(|e| invalid("certificate", e))?.ok_or(PkiError::NoIdentity)?;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && let Some(identity) = parse_identity_uri(uri)
        {
            return Ok(identity);
        }
    }
    Err(PkiError::NoIdentity)
}

fn parse_identity_uri(uri: &str) -> Option<PeerIdentity> {
    if let Some(node_id) = uri.strip_prefix(SPIFFE_NODE) {
        return (!node_id.is_empty()).then(|| PeerIdentity::Node { node_id: node_id.to_owned() });
    }
    let (role, name) = uri.strip_prefix(SPIFFE_OPERATOR)?.split_once('/')?;
    (!role.is_empty() && !name.is_empty()).then(|| PeerIdentity::Operator { role: role.to_owned(), name: name.to_owned() })
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, PkiError> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| invalid("PEM", e))?;
    Ok(parsed.contents)
}

fn leaf_params(common_name: &str, organization: &str, lifetime: Duration) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = distinguished_name(common_name, organization);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    // Tolerate small clock skew between control plane and nodes.
    params.not_before = now - time::Duration::try_from(CLOCK_SKEW_ALLOWANCE).map_err(|e| invalid("clock skew allowance", e))?;
    params.not_after = now + time::Duration::try_from(lifetime).map_err(|e| invalid("lifetime", e))?;
    Ok(params)
}

fn distinguished_name(common_name: &str, organization: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, organization);
    dn
}

fn san_for(name: &str) -> Result<SanType, PkiError> {
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) => Ok(SanType::DnsName(name.try_into().map_err(|e| invalid("DNS name", e))?)),
    }
}

fn uri_san(uri: &str) -> Result<SanType, PkiError> {
    Ok(SanType::URI(uri.try_into().map_err(|e| invalid("URI SAN", e))?))
}

fn invalid(what: &'static str, reason: impl std::fmt::Display) -> PkiError {
    PkiError::Invalid { what, reason: reason.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_nodes_own_key_and_certificate_prove_it_is_that_node() {
        let ca = CertificateAuthority::generate("t").expect("CA");
        let other_ca = CertificateAuthority::generate("other").expect("CA");
        let (key, csr) = generate_csr("pi").expect("CSR");
        let (cert, _) = ca.sign_node_csr(&csr, "id-1", "pi", Duration::from_secs(1)).expect("cert");
        let (foreign, _) = other_ca.sign_node_csr(&csr, "id-1", "pi", Duration::from_secs(1)).expect("cert");
        let again = csr_for_key("pi", &key).expect("CSR");
        let (_, stranger) = generate_csr("pi").expect("CSR");
        // The same key (a fresh CSR for it), even once the certificate has expired.
        std::thread::sleep(Duration::from_millis(1100));
        assert!(ca.proves_node_key(&cert, "id-1", &again));
        assert!(!ca.proves_node_key(&cert, "id-2", &again), "another node's id");
        assert!(!ca.proves_node_key(&cert, "id-1", &stranger), "another key");
        assert!(!ca.proves_node_key(&foreign, "id-1", &again), "another CA");
        assert!(!ca.proves_node_key("garbage", "id-1", &again));
        assert!(!ca.proves_node_key(&cert, "id-1", "garbage"));
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn ca_survives_a_round_trip_through_pem() {
        let ca = CertificateAuthority::generate("test").expect("ca");
        let loaded = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).expect("load");
        assert_eq!(loaded.fingerprint(), ca.fingerprint());
        assert_eq!(fingerprint_pem(ca.cert_pem()).expect("fp"), ca.fingerprint());
        // A certificate issued by the reloaded CA names the same issuer.
        let server = loaded.issue_server(&["localhost".into(), "127.0.0.1".into()], DAY).expect("server");
        assert!(server.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn node_certificate_carries_only_the_node_id_the_control_plane_chose() {
        let ca = CertificateAuthority::generate("test").expect("ca");
        let (key, csr) = generate_csr("pi-4").expect("csr");
        assert!(csr_for_key("pi-4", &key).expect("renewal csr").contains("CERTIFICATE REQUEST"));
        let (cert_pem, expires) = ca.sign_node_csr(&csr, "node-123", "pi-4", DAY).expect("sign");
        let der = pem_to_der(&cert_pem).expect("der");
        assert_eq!(peer_identity(&der).expect("identity"), PeerIdentity::Node { node_id: "node-123".into() });
        let not_after = not_after_pem(&cert_pem).expect("expiry");
        assert_eq!(not_after.unix_timestamp(), expires.unix_timestamp());
        assert!(expires > OffsetDateTime::now_utc() + time::Duration::hours(23));
    }

    /// A CSR is only a public key to the control plane: whatever names, CA flag or key
    /// usages it asks for, the issued certificate carries the node's URI SAN alone, is
    /// not a CA and is good for client authentication only.
    #[test]
    fn a_csr_asking_for_extra_names_gets_only_the_nodes_uri_san() {
        let ca = CertificateAuthority::generate("test").expect("ca");
        let key = KeyPair::generate().expect("key");
        let mut asked = CertificateParams::new(vec!["control-plane.example".to_owned(), "127.0.0.1".to_owned()]).expect("params");
        asked.distinguished_name = distinguished_name("admin", "diplo-operators");
        asked.subject_alt_names.push(uri_san("spiffe://diplo/operator/admin/root").expect("uri"));
        asked.subject_alt_names.push(uri_san("spiffe://diplo/node/someone-else").expect("uri"));
        asked.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        asked.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let csr = asked.serialize_request(&key).expect("csr").pem().expect("pem");
        // The CSR does carry the names: the control plane is the one dropping them.
        let parsed = CertificateSigningRequestParams::from_pem(&csr).expect("parse csr");
        assert_eq!(parsed.params.subject_alt_names.len(), 4, "{:?}", parsed.params.subject_alt_names);

        let (cert_pem, _) = ca.sign_node_csr(&csr, "node-1", "pi", DAY).expect("sign");
        let der = pem_to_der(&cert_pem).expect("der");
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("certificate");
        let names: Vec<String> = cert
            .subject_alternative_name()
            .expect("SAN extension")
            .expect("a SAN")
            .value
            .general_names
            .iter()
            .map(|name| name.to_string())
            .collect();
        assert_eq!(names, vec!["URI(spiffe://diplo/node/node-1)".to_owned()], "the node's URI SAN alone");
        assert_eq!(peer_identity(&der).expect("identity"), PeerIdentity::Node { node_id: "node-1".into() });
        assert!(!cert.is_ca(), "a node certificate is never a CA");
        let eku = cert.extended_key_usage().expect("EKU").expect("an EKU").value;
        assert!(eku.client_auth && !eku.server_auth, "client authentication only: {eku:?}");
        let cn: Vec<&str> = cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).collect();
        assert_eq!(cn, vec!["pi"], "the subject is the node's name, not the CSR's");
        // The key is the CSR's: the node keeps its private key.
        assert_eq!(cert.public_key().raw, rcgen::PublicKeyData::subject_public_key_info(&key).as_slice());
    }

    #[test]
    fn operator_certificate_carries_role_and_name() {
        let ca = CertificateAuthority::generate("test").expect("ca");
        let op = ca.issue_operator("admin", "admin", DAY).expect("operator");
        let der = pem_to_der(&op.cert_pem).expect("der");
        assert_eq!(peer_identity(&der).expect("identity"), PeerIdentity::Operator { role: "admin".into(), name: "admin".into() });
    }

    #[test]
    fn garbage_is_rejected_with_what_was_wrong() {
        let ca = CertificateAuthority::generate("test").expect("ca");
        let err = ca.sign_node_csr("not a csr", "n", "n", DAY).expect_err("must fail");
        assert!(err.to_string().contains("CSR"), "{err}");
        let server = ca.issue_server(&["localhost".into()], DAY).expect("server");
        let der = pem_to_der(&server.cert_pem).expect("der");
        assert!(matches!(peer_identity(&der), Err(PkiError::NoIdentity)));
        assert_eq!(parse_identity_uri("spiffe://diplo/node/"), None);
        assert_eq!(parse_identity_uri("spiffe://other/node/x"), None);
    }
}
