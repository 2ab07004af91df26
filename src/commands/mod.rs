//! The commands besides `serve`, one module each, each with only the options it uses: they call
//! the service library and print what an operator or a script reads.

pub mod bench;
pub mod client_assertion;
pub mod completions;
pub mod keys;
pub mod migrate;
pub mod mint_token;
