//! The storage of the policy and of the violations it finds (`batch/drift.rs` evaluates
//! it in the finish). Written once for both databases in `common/policy.rs`.

use async_trait::async_trait;

use super::Result;
use crate::model::{DriftFilter, Finding, Policy, PolicySetOutcome, StoredPolicy, Violation};

/// The fleet's declared state and its drift.
#[async_trait]
pub trait PolicyStore: Send + Sync + 'static {
    /// Stores `policy` (checked whole; `source` is the file as given) as the next
    /// version, then evaluates it against every instance's current inventory, a slice of
    /// instances per transaction. A crash part-way loses nothing: each instance's next
    /// sync evaluates the version in force.
    async fn policy_set(&self, policy: &Policy, source: &str) -> Result<PolicySetOutcome>;
    /// The policy in force, if one was ever set.
    async fn policy_get(&self) -> Result<Option<StoredPolicy>>;
    /// What `policy` would flag against today's inventory; stores nothing.
    async fn policy_check(&self, policy: &Policy) -> Result<Vec<Finding>>;
    /// Violations, newest first, a page at a time.
    async fn drift_list(&self, filter: &DriftFilter) -> Result<Vec<Violation>>;
    /// Open violations by rule (the metric, fleet-wide).
    async fn violations_by_rule(&self) -> Result<Vec<(String, i64)>>;
}
