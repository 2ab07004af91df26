//! One module per table.

pub mod personal_client;
pub mod signing_key;
