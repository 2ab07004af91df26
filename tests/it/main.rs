//! The integration tests, one binary: a real server on 127.0.0.1:0, real databases, the
//! generated client. `cargo test` runs each storage test on SQLite, and on PostgreSQL too when
//! `PC_TEST_DATABASE_URL` names a server where tests may create databases; without it those are
//! reported as ignored (and fail under `CI=true`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

mod abuse_limits;
mod audit;
mod authentication;
mod cli;
mod external_issuer;
mod hostile_traffic;
mod json_api;
mod key_rotation;
mod layers;
mod lifecycle;
mod memory_budget;
mod mesh;
mod operations;
mod ownership;
mod properties;
mod replicas;
mod search;
mod search_scale;
mod standards;
mod token_exchange;
mod traces;
mod transport;
mod unavailable;
mod validation;

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = libtest_mimic::Arguments::from_args();
    // The tests wait on sockets and databases far more than they compute.
    args.test_threads.get_or_insert(8);
    if common::postgres_admin_url().is_none() && !args.list {
        eprintln!("PostgreSQL tests are ignored: set PC_TEST_DATABASE_URL=postgres://... to run them too");
    }
    let trials = [
        abuse_limits::tests(),
        audit::tests(),
        authentication::tests(),
        cli::tests(),
        external_issuer::tests(),
        hostile_traffic::tests(),
        json_api::tests(),
        key_rotation::tests(),
        layers::tests(),
        lifecycle::tests(),
        memory_budget::tests(),
        mesh::tests(),
        operations::tests(),
        ownership::tests(),
        properties::tests(),
        replicas::tests(),
        search::tests(),
        search_scale::tests(),
        standards::tests(),
        token_exchange::tests(),
        traces::tests(),
        transport::tests(),
        unavailable::tests(),
        validation::tests(),
    ]
    .into_iter()
    .flatten()
    .collect();
    libtest_mimic::run(&args, trials).exit_code()
}
