//! What each command does, one file per command or family of commands (as mini-redis'
//! `cmd/`); `cli::run` opens the database and hands the parsed flags to one of them:
//! - `instances.rs`: `instances add|import|list|remove`, the instance registry;
//! - `sessions.rs`: `sync`, `sync-all`, `sessions`, `session` and `cancel`;
//! - `accounts.rs`: `accounts`; `changes.rs`: `changes`, the account change history;
//! - `locks.rs`: `locks` and `queue`;
//! - `worker.rs`: `worker`; `serve.rs`: `serve`;
//! - `maintenance.rs`: `migrate` and `cleanup`;
//! - `access.rs`: `tokens` and `audit`;
//! - `policy.rs`: `policy set|show|check` and `drift`; `webhooks.rs`: `webhooks`.
//!
//! The grammar and help of every command are in `cli/args.rs`; `syncpool demo` is
//! `cli/demo.rs`.

pub(crate) mod access;
pub(crate) mod accounts;
pub(crate) mod changes;
pub(crate) mod instances;
pub(crate) mod locks;
pub(crate) mod maintenance;
pub(crate) mod policy;
pub(crate) mod serve;
pub(crate) mod sessions;
pub(crate) mod webhooks;
pub(crate) mod worker;
