//! personal-clients: issues and manages personal client credentials, the per-user OAuth2 API
//! keys of an IAM platform, behind `c1.api.iam.v1.PersonalClientService`.
//!
//! Data flows one way, each layer importing only those below it: [`server`] composes the
//! service; [`edge`] takes each connection and request before a handler does; [`api`]
//! translates the wire into domain values and hands them, with the caller that [`auth`] put
//! into the request, to the rules in [`clients`] and [`exchange`], which work on [`domain`]
//! values through the [`store`]; [`telemetry`] traces each call. `docs/code-map.md` draws the
//! layers.

pub mod api;
pub mod audit;
pub mod auth;
pub mod clients;
pub mod config;
pub mod domain;
pub mod edge;
pub mod error;
pub mod exchange;
pub mod grpc_methods;
pub mod health;
pub mod metrics;
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod pb;
pub mod protocol;
pub mod rate;
pub mod server;
pub mod store;
pub mod telemetry;
