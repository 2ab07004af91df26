//! The rules between flags, and between flags and the key schedule, checked before the service
//! starts: each mistake is a usage error naming its flag.

use std::time::Duration;

use super::{Config, RotationInterval};
use crate::{domain::KeySchedule, error::Error};

impl Config {
    /// The rules between flags and the key schedule: no token outlives the publication of the
    /// key that signed it, and a rotation leaves each key time to be published before it signs.
    pub fn check(&self) -> Result<(), Error> {
        let schedule = &self.keys.schedule;
        check_token_ttl("--token-ttl", self.credentials.token_ttl, schedule)?;
        if self.issuer.issuer.is_none() {
            // The default issuer, made of --public-host, must be a URL as much as a given one.
            super::values::parse_issuer(&self.issuer.issuer()).map_err(|message| {
                Error::config(
                    "--public-host",
                    format!("makes the default --issuer, which {message}; set --issuer"),
                    None,
                )
            })?;
        }
        if let RotationInterval(Some(every)) = self.serving.key_rotation_interval
            && every < schedule.activation_lead()
        {
            return Err(Error::config(
                "--key-rotation-interval",
                format!(
                    "must be at least {} (or `off`): a new key is published that long before it signs",
                    humantime::format_duration(schedule.activation_lead())
                ),
                None,
            ));
        }
        let mesh = &self.mesh;
        let names = [&mesh.identity_user_header, &mesh.identity_client_header, &mesh.identity_roles_header];
        if names[0] == names[1] || names[0] == names[2] || names[1] == names[2] {
            return Err(Error::config(
                "--identity-user-header",
                "--identity-user-header, --identity-client-header and --identity-roles-header must name three different headers",
                None,
            ));
        }
        Ok(())
    }
}

/// A token lifetime (`flag`) within the longest the key schedule allows: a key stops being
/// published that long after it stops signing, so a longer-lived token would outlive its key.
pub fn check_token_ttl(flag: &'static str, ttl: Duration, schedule: &KeySchedule) -> Result<(), Error> {
    if ttl > schedule.max_token_ttl {
        return Err(Error::config(
            flag,
            format!(
                "must be at most {}: a signing key stays published that long after it stops signing, and a token must not outlive its key",
                humantime::format_duration(schedule.max_token_ttl)
            ),
            None,
        ));
    }
    Ok(())
}
