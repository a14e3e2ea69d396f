//! Deliberate defects, for proving that the chaos suite's checker can fail
//! (`drover-chaos run --break NAME`). Each one re-introduces a bug the control plane
//! must not have; the matching invariant must then report a violation.
//!
//! Only debug builds accept them: a release binary refuses a config that sets any
//! (see [`crate::config::ServerConfig::validate`]), so they never reach a real fleet.
//!
//! ```toml
//! [test_breaks]
//! accept_stale_epochs = true   # completions naming a replaced lease are applied to the current one
//! ack_before_commit = true     # queue calls are answered before their entry commits
//! renew_without_quorum = true  # a leader that lost its quorum still grants and renews leases
//! cancel_before_commit = true  # cancel calls are answered `cancelled` before their entry commits
//! ```

use serde::Deserialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestBreaks {
    pub accept_stale_epochs: bool,
    pub ack_before_commit: bool,
    pub renew_without_quorum: bool,
    pub cancel_before_commit: bool,
}

impl TestBreaks {
    pub fn any(&self) -> bool {
        self.accept_stale_epochs || self.ack_before_commit || self.renew_without_quorum || self.cancel_before_commit
    }
}
