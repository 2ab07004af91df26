//! What happens to a connection and a request before any handler sees them: HTTP on the port
//! ([`transport`]), the connections held ([`connections`]) and their TLS ([`tls`]), the one
//! memory budget for all a peer can make the server hold ([`budget`]), admission into it and into
//! the places for requests ([`admission`], with reflection streams in [`reflection`]), and the
//! metrics and the span of every call ([`metrics`], [`trace`]). Which protocol a request speaks
//! is asked of [`crate::protocol`]; a refusal is answered by [`crate::error::answers`]. Nothing
//! here knows a route or a rule of the service.

pub mod admission;
pub mod budget;
pub mod connections;
pub mod metrics;
pub mod reflection;
pub mod tls;
pub mod trace;
pub mod transport;
