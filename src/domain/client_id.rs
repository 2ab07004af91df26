//! OAuth2 client ids of personal clients, as Create draws them.

use rand_core::{OsRng, RngCore};

const ADJECTIVES: &[&str] = &[
    "amber",
    "ancient",
    "autumn",
    "bold",
    "brave",
    "bright",
    "calm",
    "clever",
    "cosmic",
    "crimson",
    "crisp",
    "dapper",
    "daring",
    "dawn",
    "eager",
    "electric",
    "emerald",
    "fancy",
    "fearless",
    "fierce",
    "gentle",
    "gleaming",
    "golden",
    "grand",
    "happy",
    "hidden",
    "humble",
    "icy",
    "jolly",
    "keen",
    "kind",
    "lively",
    "lucky",
    "lunar",
    "mellow",
    "misty",
    "modest",
    "noble",
    "patient",
    "polar",
    "proud",
    "quiet",
    "rapid",
    "royal",
    "rustic",
    "silent",
    "silver",
    "snowy",
    "solar",
    "steady",
    "stellar",
    "sunny",
    "swift",
    "tidy",
    "tranquil",
    "valiant",
    "vivid",
    "wandering",
    "warm",
    "wild",
    "wise",
    "witty",
    "young",
    "zesty",
];

const NOUNS: &[&str] = &[
    "badger", "beacon", "bear", "birch", "breeze", "brook", "canyon", "cedar", "cliff", "cloud", "comet", "coral",
    "crane", "creek", "dolphin", "dune", "eagle", "ember", "falcon", "fern", "field", "fjord", "forest", "fox",
    "galaxy", "glacier", "grove", "harbor", "hawk", "heron", "island", "lagoon", "lake", "lantern", "leaf", "lynx",
    "maple", "meadow", "meteor", "moon", "moose", "mountain", "nebula", "oak", "ocean", "orchid", "otter", "owl",
    "panda", "pebble", "pine", "planet", "prairie", "quartz", "raven", "reef", "river", "sparrow", "spruce", "star",
    "summit", "thunder", "tiger", "willow",
];

/// The OAuth2 client id of a personal client: `<adjective>-<noun>-<NNNNN>@<public host>/pcc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId(String);

impl ClientId {
    /// A random client id; the store enforces uniqueness and asks for another on a collision.
    pub fn generate(public_host: &str) -> Self {
        let mut rng = OsRng;
        let adjective = ADJECTIVES[pick(&mut rng, ADJECTIVES.len())];
        let noun = NOUNS[pick(&mut rng, NOUNS.len())];
        let number = pick(&mut rng, 100_000);
        Self(format!("{adjective}-{noun}-{number:05}@{public_host}/pcc"))
    }

    /// A client id as stored or as a token carries it; its shape is not checked again.
    pub fn from_stored(id: String) -> Self {
        Self(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Uniform enough in `0..bound` for small bounds: the bias of a 64-bit modulus is below 2^-40.
fn pick(rng: &mut impl RngCore, bound: usize) -> usize {
    (rng.next_u64() % bound as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_the_documented_shape() {
        let id = ClientId::generate("pc.example.com").into_string();
        let (name, host) = id.split_once('@').unwrap();
        assert_eq!(host, "pc.example.com/pcc");
        let parts: Vec<&str> = name.split('-').collect();
        assert_eq!(parts.len(), 3, "{id}");
        assert!(ADJECTIVES.contains(&parts[0]) && NOUNS.contains(&parts[1]));
        assert!(parts[2].len() == 5 && parts[2].chars().all(|c| c.is_ascii_digit()));
    }
}
