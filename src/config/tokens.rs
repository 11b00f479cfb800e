//! Bearer tokens in the settings: `BearerToken`, reading a token list, and refusing a token that could mean two things.

use super::{Env, MIN_TOKEN_CHARS};
use secrecy::{ExposeSecret, SecretString};

/// One bearer token of a token list, and the Chatwoot account it is bound to:
/// `<account_id>:<token>` binds it, a bare token reaches every account. Tokens
/// are at least [`MIN_TOKEN_CHARS`] long, so a leading `digits:` is never
/// mistaken for part of one.
#[derive(Clone)]
pub struct BearerToken {
    pub secret: SecretString,
    /// The only account the token reaches; `None`: every account.
    pub account: Option<i64>,
}

impl From<&str> for BearerToken {
    /// An unbound token.
    fn from(token: &str) -> Self {
        Self {
            secret: SecretString::from(token.to_owned()),
            account: None,
        }
    }
}

impl BearerToken {
    /// A token bound to `account`.
    pub fn bound(account: i64, token: &str) -> Self {
        Self {
            account: Some(account),
            ..Self::from(token)
        }
    }

    /// Reads `<account_id>:<token>` or a bare token; `Err` when the account
    /// id is not a positive number (the token itself is never in the error).
    fn parse(raw: &str) -> Result<Self, &'static str> {
        let Some((prefix, token)) = raw.split_once(':') else {
            return Ok(Self::from(raw));
        };
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Self::from(raw));
        }
        match prefix.parse::<i64>() {
            Ok(account) if account > 0 => Ok(Self::bound(account, token)),
            _ => Err("is bound to an account id that is not a positive number"),
        }
    }
}

impl Env<'_> {
    /// Comma-separated tokens, each may be bound (`<account_id>:<token>`); the
    /// values never appear in a problem, only their position.
    pub(super) fn tokens(&mut self, name: &str) -> Vec<BearerToken> {
        match self.required(name) {
            Some(raw) => self.token_list(name, &raw, true),
            None => Vec::new(),
        }
    }

    /// Like [`Env::tokens`], but none at all is fine; `bindable: false`
    /// refuses a token bound to an account.
    pub(super) fn optional_tokens(&mut self, name: &str, bindable: bool) -> Vec<BearerToken> {
        match self.optional(name) {
            Some(raw) => self.token_list(name, &raw, bindable),
            None => Vec::new(),
        }
    }

    fn token_list(&mut self, name: &str, raw: &str, bindable: bool) -> Vec<BearerToken> {
        let mut tokens = Vec::new();
        for (i, raw) in raw.split(',').map(str::trim).enumerate() {
            let problem = match BearerToken::parse(raw) {
                Err(problem) => problem.to_owned(),
                Ok(token) if token.secret.expose_secret().chars().count() < MIN_TOKEN_CHARS => {
                    format!("is shorter than {MIN_TOKEN_CHARS} characters")
                }
                Ok(token) if token.account.is_some() && !bindable => {
                    "is bound to an account, but these tokens reach every account: drop `<account_id>:`"
                        .to_owned()
                }
                Ok(token) => {
                    tokens.push(token);
                    continue;
                }
            };
            self.problems
                .push(format!("{name}: token #{} {problem}", i + 1));
        }
        tokens
    }

    /// Refuses a token that could mean two things: listed under two roles
    /// (the last grant would silently win), or bound to two accounts (or
    /// bound and unbound) in one list. One line per pair of variables, naming
    /// them and never the token.
    pub(super) fn check_ambiguity(&mut self, lists: &[(&str, &[BearerToken])]) {
        let mut seen: Vec<(&str, &BearerToken)> = Vec::new();
        for (name, tokens) in lists {
            for token in *tokens {
                let secret = token.secret.expose_secret();
                for (other_name, other) in &seen {
                    if other.secret.expose_secret() != secret {
                        continue;
                    }
                    let problem = if other_name != name {
                        format!("the same token is listed in {other_name} and {name}: a token has one role, list it in one")
                    } else if other.account != token.account {
                        format!("{name} binds the same token to two accounts (or bound and not): bind each token to one account")
                    } else {
                        continue;
                    };
                    if !self.problems.contains(&problem) {
                        self.problems.push(problem);
                    }
                }
                seen.push((name, token));
            }
        }
    }
}
