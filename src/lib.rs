//! syncpool: a database-backed worker pool that keeps a fleet's database accounts in sync.
//!
//! A map of the crate (see docs/ARCHITECTURE.md for the whole picture):
//! - [`store`]: the storage interface and its SQLite and PostgreSQL implementations;
//!   the only place that knows SQL.
//! - [`queue`]: the job payload and the queue name shared by producers and workers.
//! - `consumer`: the apalis workers over the store's database (with the store, the only
//!   code that names a database; `worker/` and `http/` never do, see scripts/structure.py).
//! - [`worker`]: the apalis set-up, the per-job pipeline (lease, sync, finish) and the
//!   group-commit writer.
//! - [`http`]: `serve`'s API (OpenAPI at `/api/v1/openapi.json`), the legacy routes,
//!   bearer auth, health and `/metrics`; handlers call the store, never SQL.
//! - [`scheduler`]: cron slots (each fires once across replicas) and the daily cleanup.
//! - [`cli`]: the `syncpool` command line (grammar in `cli/args.rs`, one file per command
//!   or family of commands in `cli/cmd/`, the newcomer's first run in `cli/demo.rs`).
//! - [`validate`]: input rules shared by the CLI and the API (one message, one field).
//! - [`metrics`]: metric names, per-process recording, fleet-wide rendering from the
//!   database.
//! - [`history`]: account change history (the diff of a sync as audit rows, and which
//!   changes are privilege-sensitive); written by the store's finish step.
//! - [`settings`], [`model`], [`redact`]: timings, the shared types, secret scrubbing.
//! - `sqlite_busy`: the SQLite busy handler that counts waits (the one `unsafe`).
//! - `text`: wording shared by the CLI and the console (`1 instance`, `4m05s`).
//!
//! The account sources (PostgreSQL, MySQL, simulated) and TLS to instances live in the
//! `syncpool-workers` crate (`workers/`).

pub(crate) mod audit;
pub mod cli;
pub(crate) mod consumer;
pub(crate) mod history;
pub mod http;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod queue;
pub(crate) mod redact;
pub mod scheduler;
pub(crate) mod settings;
mod sqlite_busy;
pub mod store;
mod text;
pub(crate) mod tokens;
pub mod validate;
pub mod webhooks;
pub(crate) mod worker;
