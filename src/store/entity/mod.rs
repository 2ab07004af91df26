//! One module per table.

pub mod assertion_replay;
pub mod personal_client;
pub mod signing_key;
