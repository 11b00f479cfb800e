//! Exit codes, one per failure class. 2 is clap's own code for usage errors,
//! so smoke's configuration errors share it and nothing else does.

use std::process::ExitCode;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every check that ran passed.
    Passed = 0,
    /// At least one check failed.
    Failed = 1,
    /// Usage or configuration error: nothing was checked.
    Usage = 2,
    /// goldrelay never answered: DNS, connect or TLS failed throughout.
    Unreachable = 3,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}
