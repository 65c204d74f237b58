//! Join tokens and API bearer tokens.
//!
//! A join token is `DIPLO1::<sha256 of the CA certificate, hex>::<id>.<secret>`, k3s style:
//! the agent pins the CA from the hash before it sends anything, and the control plane
//! stores only the id and a hash of the secret. An API token is `dpl_<id>.<secret>`.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use sha2::{Digest, Sha256};

const JOIN_PREFIX: &str = "DIPLO1";
const API_PREFIX: &str = "dpl_";
const ID_LEN: usize = 8;
const SECRET_LEN: usize = 32;

/// Why a token string could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// The token does not have the expected shape.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
}

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Lower-case hex sha256 of the cluster CA certificate (DER).
    pub ca_hash: String,
    /// Public identifier, used to look the token up.
    pub id: String,
    /// The secret part; only its hash is stored.
    pub secret: String,
}

impl JoinToken {
    /// Makes a fresh token for a CA with the given hash.
    pub fn generate(ca_hash: &str) -> Self {
        JoinToken { ca_hash: ca_hash.to_ascii_lowercase(), id: random_alnum(ID_LEN), secret: random_alnum(SECRET_LEN) }
    }
}

// The secret never appears in debug output or logs.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken").field("ca_hash", &self.ca_hash).field("id", &self.id).finish_non_exhaustive()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{JOIN_PREFIX}::{}::{}.{}", self.ca_hash, self.id, self.secret)
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split("::");
        let (Some(prefix), Some(ca_hash), Some(credential), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed("expected DIPLO1::<ca-hash>::<id>.<secret>"));
        };
        if prefix != JOIN_PREFIX {
            return Err(TokenError::Malformed("unknown token version, expected DIPLO1"));
        }
        if ca_hash.len() != 64 || !ca_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed("the CA hash must be 64 hex characters"));
        }
        let (id, secret) = split_credential(credential)?;
        Ok(JoinToken { ca_hash: ca_hash.to_ascii_lowercase(), id, secret })
    }
}

/// A parsed API bearer token.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Public identifier, used to look the token up.
    pub id: String,
    /// The secret part; only its hash is stored.
    pub secret: String,
}

impl ApiToken {
    /// Makes a fresh API token.
    pub fn generate() -> Self {
        ApiToken { id: random_alnum(ID_LEN), secret: random_alnum(SECRET_LEN) }
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken").field("id", &self.id).finish_non_exhaustive()
    }
}

impl fmt::Display for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{API_PREFIX}{}.{}", self.id, self.secret)
    }
}

impl FromStr for ApiToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.trim().strip_prefix(API_PREFIX).ok_or(TokenError::Malformed("API tokens start with dpl_"))?;
        let (id, secret) = split_credential(rest)?;
        Ok(ApiToken { id, secret })
    }
}

/// Lower-case hex sha256 of a token secret: the only form in which secrets are stored.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn split_credential(credential: &str) -> Result<(String, String), TokenError> {
    let (id, secret) = credential.split_once('.').ok_or(TokenError::Malformed("expected <id>.<secret> after the prefix"))?;
    let alnum = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !alnum(id) || !alnum(secret) {
        return Err(TokenError::Malformed("token id and secret must be non-empty and alphanumeric"));
    }
    Ok((id.to_owned(), secret.to_owned()))
}

fn random_alnum(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn join_token_round_trips_and_hides_its_secret() {
        let token = JoinToken::generate(HASH);
        let parsed: JoinToken = token.to_string().parse().expect("parses");
        assert_eq!(parsed, token);
        assert!(!format!("{token:?}").contains(&token.secret));
        assert_ne!(JoinToken::generate(HASH).secret, token.secret);
    }

    #[test]
    fn malformed_join_tokens_are_refused_with_a_reason() {
        let cases = [
            ("", "expected DIPLO1"),
            ("K10abc::user:pass", "expected DIPLO1"),
            ("DIPLO2::{HASH}::abc.def", "unknown token version"),
            ("DIPLO1::abcd::abc.def", "64 hex"),
            ("DIPLO1::{HASH}::abcdef", "<id>.<secret>"),
            ("DIPLO1::{HASH}::abc.", "alphanumeric"),
            ("DIPLO1::{HASH}::a-b.c", "alphanumeric"),
        ];
        for (input, reason) in cases {
            let input = input.replace("{HASH}", HASH);
            let err = input.parse::<JoinToken>().expect_err(&input);
            assert!(err.to_string().contains(reason), "{input}: {err}");
        }
    }

    #[test]
    fn api_token_round_trips() {
        let token = ApiToken::generate();
        assert_eq!(token.to_string().parse::<ApiToken>(), Ok(token.clone()));
        assert!("Bearer x".parse::<ApiToken>().is_err());
        assert_eq!(hash_secret("abc").len(), 64);
        assert_ne!(hash_secret("abc"), hash_secret("abd"));
    }
}
