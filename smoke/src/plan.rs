//! Which checks run, decided before any request is sent.
//!
//! A check that lacks its inputs is skipped with the reason, unless the
//! operator named it in `--only`: asking for a check that cannot run is a
//! configuration error, never a silent pass.

use crate::cli::{CheckName, Cli};

/// What happens to one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Run,
    Skip(String),
}

/// Every check in running order, each with its selection.
pub type Plan = Vec<(CheckName, Selection)>;

/// A check named in `--only` that cannot run.
#[derive(Debug, thiserror::Error)]
#[error("{check} cannot run: {reason}")]
pub struct PlanError {
    pub check: &'static str,
    pub reason: String,
}

/// Decides every check's selection.
pub fn plan(cli: &Cli) -> Result<Plan, PlanError> {
    let mut planned: Vec<(CheckName, Selection)> = Vec::new();
    for name in CheckName::ALL {
        let selection = select(cli, name, &planned)?;
        planned.push((name, selection));
    }
    Ok(planned)
}

fn select(
    cli: &Cli,
    name: CheckName,
    earlier: &[(CheckName, Selection)],
) -> Result<Selection, PlanError> {
    if !cli.only.is_empty() && !cli.only.contains(&name) {
        return Ok(Selection::Skip("not selected by --only".into()));
    }
    if cli.skip.contains(&name) {
        return Ok(Selection::Skip("skipped by --skip".into()));
    }
    let Some(reason) = missing_input(cli, name).or_else(|| missing_prerequisite(name, earlier))
    else {
        return Ok(Selection::Run);
    };
    if cli.only.contains(&name) {
        return Err(PlanError {
            check: name.as_str(),
            reason,
        });
    }
    Ok(Selection::Skip(reason))
}

fn missing_input(cli: &Cli, name: CheckName) -> Option<String> {
    let needs_conversation = cli.account_id.is_none() || cli.conversation_id.is_none();
    let missing = match name {
        CheckName::RelayHealth | CheckName::RelayAuth => return None,
        CheckName::RelayValidation if cli.token.is_none() => "--token",
        CheckName::RelayDelivery if cli.token.is_none() => "--token",
        CheckName::RelayDelivery if needs_conversation => "--account-id and --conversation-id",
        CheckName::ChatwootHealth if cli.chatwoot_url.is_none() => "--chatwoot-url",
        CheckName::ChatwootMessage if cli.chatwoot_token.is_none() => "--chatwoot-token",
        _ => return None,
    };
    Some(format!("needs {missing}"))
}

/// Both later checks inspect the reply that relay.delivery posts.
fn missing_prerequisite(name: CheckName, earlier: &[(CheckName, Selection)]) -> Option<String> {
    if !matches!(
        name,
        CheckName::RelayIdempotency | CheckName::ChatwootMessage
    ) {
        return None;
    }
    let delivery_runs = earlier
        .iter()
        .any(|(n, s)| *n == CheckName::RelayDelivery && *s == Selection::Run);
    (!delivery_runs).then(|| "needs relay.delivery, which does not run".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cli(args: &[&str]) -> Cli {
        let base = ["smoke", "--url", "http://relay.test"];
        Cli::try_parse_from(base.iter().chain(args)).expect("valid arguments")
    }

    fn selection(planned: &[(CheckName, Selection)], name: CheckName) -> &Selection {
        &planned.iter().find(|(n, _)| *n == name).expect("planned").1
    }

    #[test]
    fn without_a_token_only_the_checks_that_need_none_run() {
        let planned = plan(&cli(&[])).unwrap();
        let running: Vec<_> = planned
            .iter()
            .filter(|(_, s)| *s == Selection::Run)
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(running, [CheckName::RelayHealth, CheckName::RelayAuth]);
        assert_eq!(
            selection(&planned, CheckName::RelayDelivery),
            &Selection::Skip("needs --token".into())
        );
    }

    #[test]
    fn a_check_named_in_only_without_its_inputs_is_a_configuration_error() {
        let err = plan(&cli(&["--only", "relay.delivery", "--token", "t"])).unwrap_err();
        assert_eq!(err.check, "relay.delivery");
        assert!(err.reason.contains("--account-id"), "{err}");
    }

    #[test]
    fn idempotency_alone_in_only_asks_for_delivery_too() {
        let args = [
            "--only",
            "relay.idempotency",
            "--token",
            "t",
            "--account-id",
            "1",
            "--conversation-id",
            "1",
        ];
        let err = plan(&cli(&args)).unwrap_err();
        assert!(err.reason.contains("relay.delivery"), "{err}");
    }

    #[test]
    fn skipping_delivery_skips_what_depends_on_it() {
        let planned = plan(&cli(&["--skip", "relay.delivery"])).unwrap();
        assert_eq!(
            selection(&planned, CheckName::RelayIdempotency),
            &Selection::Skip("needs relay.delivery, which does not run".into())
        );
    }
}
