//! The last line of defence for secrets: smoke never prints a token itself,
//! but a server may echo one back in an error, and that text goes into reports.

use secrecy::SecretString;

/// Replaces every known secret in a text with `***`.
pub struct Redactor {
    secrets: Vec<SecretString>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = SecretString>) -> Self {
        Self {
            secrets: secrets.into_iter().collect(),
        }
    }

    pub fn scrub(&self, text: &str) -> String {
        self.secrets
            .iter()
            .map(secrecy::ExposeSecret::expose_secret)
            .filter(|s| !s.is_empty())
            .fold(text.to_owned(), |text, secret| text.replace(secret, "***"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echoed_token_is_replaced() {
        let redactor = Redactor::new([SecretString::from("s3cr3t-token")]);
        assert_eq!(redactor.scrub("bad token s3cr3t-token!"), "bad token ***!");
    }
}
