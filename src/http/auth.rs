//! Bearer-token authentication for Support's endpoints.

use super::problem::ApiError;
use actix_web::http::header::AUTHORIZATION;
use actix_web::HttpRequest;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The accepted Support tokens, kept only as SHA-256 digests: comparing digests
/// in constant time reveals neither a token nor its length.
#[derive(Clone)]
pub struct BearerTokens(Vec<[u8; 32]>);

impl BearerTokens {
    pub fn new(tokens: &[SecretString]) -> Self {
        Self(tokens.iter().map(|t| digest(t.expose_secret())).collect())
    }

    /// Accepts `Authorization: Bearer <token>` when the token is one of ours.
    pub fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let presented = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::Unauthorized)?;
        let presented = digest(presented);
        // Check every token so timing does not tell which one matched.
        let matched = self.0.iter().fold(subtle::Choice::from(0), |acc, known| {
            acc | known.ct_eq(&presented)
        });
        if bool::from(matched) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}
