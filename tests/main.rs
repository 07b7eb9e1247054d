//! One integration-test binary (links once): real SQLite files, the real PostgreSQL.
mod api;
mod cli;
mod common;
mod conformance;
mod fault_soak;
mod http_rules;
mod lease_faults;
mod pg_faults;
mod private_maria;
mod private_pg;
mod process_faults;
mod processes;
mod prometheus;
mod proxy;
mod security;
mod sources;
mod tls;
