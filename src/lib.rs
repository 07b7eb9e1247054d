//! syncpool: a database-backed worker pool that keeps a fleet's database accounts in sync.
//!
//! A map of the crate (see docs/ARCHITECTURE.md for the whole picture):
//! - [`store`]: the storage interface and its SQLite and PostgreSQL implementations;
//!   the only place that knows SQL.
//! - [`queue`]: the job payload and the queue name shared by producers and workers.
//! - [`worker`]: the apalis set-up, the per-job pipeline (lease, sync, finish) and the
//!   group-commit writer.
//! - [`cli`]: the `syncpool` command line; [`demo`]: the newcomer's first run.
//! - [`metrics`], [`settings`], [`model`], [`redact`]: cross-cutting pieces.

pub mod cli;
pub mod demo;
pub mod http;
pub mod metrics;
pub mod model;
pub mod queue;
pub mod redact;
pub mod scheduler;
pub mod settings;
mod sqlite_busy;
pub mod store;
pub mod validate;
pub mod worker;
