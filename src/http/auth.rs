//! Bearer-token authentication: the [`Caller`] extractor. A handler that takes
//! a `Caller` cannot run for a request without a valid token.

use super::problem::ApiError;
use super::AppState;
use actix_web::dev::Payload;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, FromRequest, HttpRequest};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::future::{ready, Ready};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// What a token lets its bearer do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Support's tools: post gold replies, read them, retry dead ones.
    Support,
}

impl Role {
    /// Every role; a new one is added here and to the enum.
    const ALL: [Role; 1] = [Role::Support];

    /// A non-zero code, so 0 can mean "no token matched" in constant-time selection.
    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.code() == code)
    }
}

/// An authenticated request's caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// What the presented token grants.
    pub role: Role,
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let caller = match req.app_data::<web::Data<AppState>>() {
            Some(state) => state.tokens.caller(req),
            None => {
                // Fail closed: an app built without state authenticates no one.
                tracing::error!("no AppState registered; refusing the request");
                Err(ApiError::Unauthorized)
            }
        };
        ready(caller)
    }
}

/// The accepted tokens and the role each grants, kept only as SHA-256 digests:
/// comparing digests in constant time reveals neither a token nor its length.
#[derive(Clone, Default)]
pub struct BearerTokens(Vec<([u8; 32], Role)>);

impl BearerTokens {
    /// Support tokens (`GOLDRELAY_TOKENS`).
    pub fn new(support: &[SecretString]) -> Self {
        Self::default().grant(Role::Support, support)
    }

    /// Adds `tokens`, each granting `role`.
    pub fn grant(mut self, role: Role, tokens: &[SecretString]) -> Self {
        let digests = tokens.iter().map(|t| (digest(t.expose_secret()), role));
        self.0.extend(digests);
        self
    }

    /// The caller of `Authorization: Bearer <token>` when the token is one of ours.
    pub fn caller(&self, req: &HttpRequest) -> Result<Caller, ApiError> {
        let presented = bearer(req).ok_or(ApiError::Unauthorized)?;
        let presented = digest(presented);
        // Check every token so timing does not tell which one matched.
        let matched = self.0.iter().fold(0u8, |found, (known, role)| {
            u8::conditional_select(&found, &role.code(), known.ct_eq(&presented))
        });
        let role = Role::from_code(matched).ok_or(ApiError::Unauthorized)?;
        Ok(Caller { role })
    }
}

/// The token of a well-formed `Authorization: Bearer <token>` header.
fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn tokens() -> BearerTokens {
        BearerTokens::new(&[SecretString::from("s3cret")])
    }

    #[test]
    fn a_configured_token_is_a_support_caller() {
        let req = TestRequest::default()
            .insert_header((AUTHORIZATION, "Bearer s3cret"))
            .to_http_request();
        assert_eq!(tokens().caller(&req).unwrap().role, Role::Support);
    }

    #[test]
    fn no_token_or_an_unknown_one_is_unauthorized() {
        for header in [None, Some("Bearer s3cre"), Some("Basic s3cret")] {
            let mut req = TestRequest::default();
            if let Some(value) = header {
                req = req.insert_header((AUTHORIZATION, value));
            }
            let refused = tokens().caller(&req.to_http_request());
            assert!(matches!(refused, Err(ApiError::Unauthorized)), "{header:?}");
        }
    }
}
