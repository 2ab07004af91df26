//! Property tests of the parsers and rules that turn caller input into domain values: CIDR lists,
//! update masks, page tokens, display names, lifetimes and expiries, roles, client assertions and
//! client secrets. Whatever a caller sends, nothing panics; what is accepted obeys the documented
//! rule and reads back as itself; what is refused is named by its place, in a message of bounded
//! length. Pure functions only (no server, no database), a few hundred cases each; a failure is
//! shrunk and printed, and not persisted to a file.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::LazyLock,
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, TimeDelta, Utc};
use ed25519_dalek::SigningKey;
use icu_properties::{
    CodePointMapData, CodePointSetData,
    props::{
        BidiControl, BinaryProperty, Block, DefaultIgnorableCodePoint, EmojiComponent, EnumeratedProperty,
        GeneralCategory, JoinControl, PrependedConcatenationMark, VariationSelector, WhiteSpace,
    },
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use personal_clients::{
    api::convert::{timestamp, update_request},
    auth::jws::{self, Header},
    domain::{
        CidrList, ClientSecret, DisplayName, MaxLifetime, PageToken, Rejection, Role, RoleSet, SourceAddress, quote,
    },
    error::Error,
    exchange::assertion::{ClientAssertion, MAX_LIFETIME_SECS, SKEW_SECS},
    pb::iam as pb,
};
use proptest::{prelude::*, sample::Index};
use serde_json::json;
use uuid::Uuid;

pub fn tests() -> Vec<libtest_mimic::Trial> {
    plain_tests!(
        cidr_lists_take_any_input_without_panicking,
        cidr_entries_round_trip_through_their_canonical_form,
        cidr_violations_name_the_bad_entries,
        cidr_check_agrees_with_ipnet_containment,
        update_masks_refuse_unknown_paths_by_index_and_name,
        update_expiry_takes_any_timestamp,
        page_tokens_take_any_input_without_panicking,
        page_tokens_round_trip_and_stay_bound_to_user_and_query,
        display_names_accept_only_visible_text_within_the_limit,
        display_name_rejections_name_the_position_not_the_input,
        display_names_follow_unicode_classes_for_every_character,
        max_lifetimes_parse_any_string_and_print_back_as_themselves,
        lifetimes_give_expiries_within_the_limit_and_before_the_year_10000,
        roles_follow_their_alphabet_and_quote_refusals_briefly,
        role_sets_deduplicate_and_name_bad_entries,
        assertions_take_any_input_without_panicking,
        signed_assertions_verify_exactly_within_their_time_window,
        a_changed_byte_makes_a_signed_assertion_refused,
        assertion_claims_of_any_number_never_panic,
        secrets_take_any_input_without_panicking,
        generated_secrets_round_trip_and_refuse_any_changed_key_byte,
    )
}

/// Longest error message any input may produce: quoted input is cut to 64 characters, each
/// escaped to at most 10 bytes (`\u{10ffff}`), plus the fixed text around it.
const MAX_MESSAGE_BYTES: usize = 1024;

/// 9999-12-31T23:59:59Z, the latest second a protobuf `Timestamp` can carry.
const LATEST_EXPIRY_SECS: i64 = 253_402_300_799;

/// The longest `--max-lifetime`, 36500 days, in seconds.
const CENTURY_SECS: u64 = 36_500 * 86_400;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Anything a caller could send: any Unicode, printable ASCII, and text far past every limit.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[ -~]{0,80}", "(?s).{0,40}", "(?s).{200,1000}"]
}

/// A moment between 1970 and 2500, to the nanosecond.
fn any_now() -> impl Strategy<Value = DateTime<Utc>> {
    (0..16_725_225_600_i64, 0..1_000_000_000_u32).prop_map(|(secs, nanos)| moment(secs, nanos))
}

fn moment(secs: i64, nanos: u32) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, nanos).expect("in chrono's range")
}

fn micros_floor(at: DateTime<Utc>) -> DateTime<Utc> {
    at - TimeDelta::nanoseconds(i64::from(at.timestamp_subsec_nanos() % 1_000))
}

/// Whether `kept` is `exact` as the databases store it, rounded down to the microsecond.
fn kept_to_micros(kept: DateTime<Utc>, exact: DateTime<Utc>) -> bool {
    kept == micros_floor(exact)
}

/// One of a few fixed keys: Ed25519 is slow in debug builds, and which key signs is beside the
/// point of every property here.
fn signing_key() -> impl Strategy<Value = SigningKey> {
    prop::sample::select((1..=4_u8).map(|seed| SigningKey::from_bytes(&[seed; 32])).collect::<Vec<_>>())
}

// ---- CIDR lists ----

fn any_network() -> impl Strategy<Value = IpNet> {
    prop_oneof![
        (any::<u32>(), 0..=32_u8).prop_map(|(a, p)| IpNet::V4(Ipv4Net::new(a.into(), p).unwrap())),
        (any::<u128>(), 0..=128_u8).prop_map(|(a, p)| IpNet::V6(Ipv6Net::new(a.into(), p).unwrap())),
        (any::<u32>(), 90..=128_u8)
            .prop_map(|(a, p)| IpNet::V6(Ipv6Net::new(Ipv4Addr::from(a).to_ipv6_mapped(), p).unwrap())),
    ]
}

fn any_address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
        any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
        any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
    ]
}

/// The documented canonical form, computed independently: host bits cleared, and an
/// IPv4-mapped IPv6 network of prefix 96 or more written as IPv4.
fn canonical(network: IpNet) -> IpNet {
    match network {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).unwrap()),
            None => network,
        },
        _ => network,
    }
    .trunc()
}

/// How a caller may write `network`: as displayed, in upper case, padded with spaces.
fn spellings(network: IpNet) -> impl Strategy<Value = String> {
    (0..3_u8, "[ \t]{0,2}", "[ \t]{0,2}").prop_map(move |(style, before, after)| {
        let text = network.to_string();
        let text = if style == 1 { text.to_uppercase() } else { text };
        if style == 2 { format!("{before}{text}{after}") } else { text }
    })
}

/// Text no CIDR parser should take: words, out-of-range prefixes and octets, stray slashes.
fn not_a_network() -> impl Strategy<Value = String> {
    prop_oneof![
        "[g-z]{1,12}",
        (any::<u32>(), 33..=255_u8).prop_map(|(a, p)| format!("{}/{p}", Ipv4Addr::from(a))),
        (any::<u128>(), 129..=255_u16).prop_map(|(a, p)| format!("{}/{p}", Ipv6Addr::from(a))),
        any::<u32>().prop_map(|a| format!("{}/", Ipv4Addr::from(a))),
        (256..1000_u16, any::<u8>()).prop_map(|(a, b)| format!("{a}.{b}.0.1")),
        Just(String::new()),
        "(?s).{65,300}".prop_map(|s| format!("{s}!")),
    ]
}

async fn cidr_lists_take_any_input_without_panicking() {
    let entry = prop_oneof![any_text(), "[0-9a-fA-F.:/ %\\[\\]x-]{0,45}"];
    proptest!(config(512), |(entries in prop::collection::vec(entry, 0..8))| {
        match CidrList::parse(&entries) {
            Ok(list) => {
                prop_assert!(list.networks().len() <= entries.len());
                prop_assert_eq!(CidrList::parse(&list.to_strings()), Ok(list.clone()));
            }
            Err(violations) => {
                prop_assert!(!violations.is_empty());
                for violation in &violations {
                    let index = violation.index.expect("fewer than 100 entries: each violation names one");
                    prop_assert!(index < entries.len());
                    prop_assert!(CidrList::parse(&[&entries[index]]).is_err(), "entry {index} alone is refused too");
                    prop_assert!(violation.description.contains(&quote(&entries[index])));
                    prop_assert!(violation.description.len() <= MAX_MESSAGE_BYTES, "{}", violation.description);
                }
            }
        }
    });
}

async fn cidr_entries_round_trip_through_their_canonical_form() {
    let entries = prop::collection::vec(
        prop_oneof![
            any_network().prop_flat_map(|network| (Just(canonical(network)), spellings(network))),
            any_address().prop_map(|address| (canonical(IpNet::from(address)), format!(" {address} "))),
        ],
        0..6,
    );
    proptest!(config(512), |(entries in entries)| {
        let texts: Vec<&str> = entries.iter().map(|(_, text)| text.as_str()).collect();
        let list = CidrList::parse(&texts).map_err(|v| TestCaseError::fail(format!("{texts:?}: {v:?}")))?;
        let mut expected: Vec<IpNet> = Vec::new();
        for (network, _) in &entries {
            if !expected.contains(network) {
                expected.push(*network);
            }
        }
        prop_assert_eq!(list.networks(), expected.as_slice(), "canonical, first of duplicates kept, in order");
        for (network, text) in &entries {
            // The address the entry names is inside what it became.
            let named: IpAddr = text.trim().split('/').next().unwrap().parse().unwrap();
            // (An IPv4-mapped address matches as IPv4, so not inside an IPv6 network under /96.)
            if network.addr().is_ipv4() || named.to_canonical().is_ipv6() {
                prop_assert!(network.contains(&named.to_canonical()));
                prop_assert!(list.allows(named));
            }
        }
        prop_assert_eq!(CidrList::parse(&list.to_strings()), Ok(list.clone()));
        prop_assert_eq!(CidrList::from_networks(list.networks().to_vec()), list);
    });
}

async fn cidr_violations_name_the_bad_entries() {
    let good = any_network().prop_map(|network| network.to_string());
    let marked = prop::collection::vec(
        prop_oneof![3 => good.prop_map(|t| (true, t)), 1 => not_a_network().prop_map(|t| (false, t))],
        1..12,
    );
    proptest!(config(512), |(entries in marked, extra in 1..20_usize)| {
        let texts: Vec<&str> = entries.iter().map(|(_, text)| text.as_str()).collect();
        let bad: Vec<usize> = entries.iter().enumerate().filter(|(_, (ok, _))| !ok).map(|(i, _)| i).collect();
        match CidrList::parse(&texts) {
            Ok(_) => prop_assert!(bad.is_empty()),
            Err(violations) => {
                let indexes: Vec<usize> = violations.iter().map(|v| v.index.unwrap()).collect();
                prop_assert_eq!(&indexes, &bad);
                for violation in &violations {
                    let entry = texts[violation.index.unwrap()];
                    prop_assert!(violation.description.contains(&quote(entry)), "{}", violation.description);
                    prop_assert!(violation.description.len() <= MAX_MESSAGE_BYTES);
                }
            }
        }
        // Past the limit the list as a whole is refused, whatever its entries.
        let too_many: Vec<&str> = texts.iter().copied().cycle().take(CidrList::MAX_ENTRIES + extra).collect();
        let violations = CidrList::parse(&too_many).unwrap_err();
        prop_assert_eq!(violations.len(), 1);
        prop_assert_eq!(violations[0].index, None);
    });
}

async fn cidr_check_agrees_with_ipnet_containment() {
    let case = (prop::collection::vec(any_network(), 0..5), any::<Index>(), any::<u128>(), any_address(), 0..3_u8);
    proptest!(config(512), |((networks, pick, host_bits, random, how) in case)| {
        let texts: Vec<String> = networks.iter().map(ToString::to_string).collect();
        let list = CidrList::parse(&texts).unwrap();
        // An address inside one of the networks (its host bits random), or anywhere.
        let address = match (how, networks.is_empty()) {
            (0 | 1, false) => {
                let network = canonical(networks[pick.index(networks.len())]);
                let inside = match network {
                    IpNet::V4(v4) => {
                        let mask = u32::from(v4.netmask());
                        IpAddr::V4((u32::from(v4.network()) | (host_bits as u32 & !mask)).into())
                    }
                    IpNet::V6(v6) => {
                        let mask = u128::from(v6.netmask());
                        IpAddr::V6((u128::from(v6.network()) | (host_bits & !mask)).into())
                    }
                };
                match inside {
                    IpAddr::V4(v4) if how == 1 => IpAddr::V6(v4.to_ipv6_mapped()),
                    other => other,
                }
            }
            _ => random,
        };
        let canonical_address = address.to_canonical();
        let inside = networks.iter().any(|network| canonical(*network).contains(&canonical_address));
        let expected = if networks.is_empty() || inside { Ok(()) } else { Err(Rejection::SourceNotAllowed) };
        let source = SourceAddress::resolve::<&str>(Some(address), &[], &[]);
        prop_assert_eq!(list.check(source), expected);
        prop_assert_eq!(list.allows(address), expected.is_ok());
        let unknown = if networks.is_empty() { Ok(()) } else { Err(Rejection::UnknownSource) };
        prop_assert_eq!(list.check(None), unknown, "a source that cannot be told fails closed");
    });
}

// ---- Update masks ----

const UPDATABLE_PATHS: [&str; 8] = [
    "display_name",
    "displayName",
    "allow_source_cidr",
    "allowSourceCidr",
    "scoped_roles",
    "scopedRoles",
    "expires_time",
    "expiresTime",
];

const IMMUTABLE_PATHS: [&str; 7] = ["id", "client_id", "clientId", "user_id", "created_at", "updatedAt", "deleted_at"];

fn mask_path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(&UPDATABLE_PATHS[..]).prop_map(str::to_owned),
        1 => prop::sample::select(&IMMUTABLE_PATHS[..]).prop_map(str::to_owned),
        2 => any_text(),
        2 => (prop::sample::select(&UPDATABLE_PATHS[..]), "[ ._A-Za-z]{1,3}", any::<bool>())
            .prop_map(|(path, noise, before)| if before { format!("{noise}{path}") } else { format!("{path}{noise}") }),
        1 => prop::sample::select(&UPDATABLE_PATHS[..]).prop_map(str::to_uppercase),
    ]
}

/// A request to update a client whose every field is valid, with `update_mask` set to `paths`.
fn update(expires_time: prost_types::Timestamp, paths: Vec<String>) -> pb::PersonalClientServiceUpdateRequest {
    let client = pb::PersonalClient {
        id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001).to_string(),
        display_name: "ci bot".into(),
        allow_source_cidr: vec!["10.0.0.0/8".into()],
        scoped_roles: vec!["reader".into()],
        expires_time: Some(expires_time),
        ..Default::default()
    };
    pb::PersonalClientServiceUpdateRequest { client: Some(client), update_mask: Some(prost_types::FieldMask { paths }) }
}

async fn update_masks_refuse_unknown_paths_by_index_and_name() {
    let year: MaxLifetime = "365d".parse().unwrap();
    proptest!(config(512), |(paths in prop::collection::vec(mask_path(), 0..6), now in any_now())| {
        let tomorrow = timestamp(now + TimeDelta::days(1));
        let request = update(tomorrow, paths.clone());
        let unknown: Vec<usize> =
            paths.iter().enumerate().filter(|(_, p)| !UPDATABLE_PATHS.contains(&p.as_str())).map(|(i, _)| i).collect();
        match update_request(&request, &year, now) {
            Ok((_, changes)) => {
                prop_assert!(unknown.is_empty(), "{paths:?} accepted");
                // An empty mask updates every field the request sets: here, all of them.
                let named = |a: &str, b: &str| paths.is_empty() || paths.iter().any(|p| p == a || p == b);
                prop_assert_eq!(changes.display_name.is_some(), named("display_name", "displayName"));
                prop_assert_eq!(changes.allow_source_cidr.is_some(), named("allow_source_cidr", "allowSourceCidr"));
                prop_assert_eq!(changes.scoped_roles.is_some(), named("scoped_roles", "scopedRoles"));
                prop_assert_eq!(changes.expires_at.is_some(), named("expires_time", "expiresTime"));
            }
            Err(Error::InvalidArgument(violations)) => {
                let fields: Vec<String> = violations.iter().map(|v| v.field.clone()).collect();
                let expected: Vec<String> = unknown.iter().map(|i| format!("update_mask.paths[{i}]")).collect();
                prop_assert_eq!(fields, expected);
                for (violation, index) in violations.iter().zip(&unknown) {
                    prop_assert!(violation.description.contains(&quote(&paths[*index])), "{}", violation.description);
                    prop_assert!(violation.description.len() <= MAX_MESSAGE_BYTES);
                }
            }
            Err(other) => return Err(TestCaseError::fail(other.to_string())),
        }
    });
}

async fn update_expiry_takes_any_timestamp() {
    let seconds = prop_oneof![any::<i64>(), -100_000..400 * 86_400_i64, LATEST_EXPIRY_SECS - 5..LATEST_EXPIRY_SECS + 5];
    let nanos = prop_oneof![any::<i32>(), 0..1_000_000_000_i32];
    let limit = prop::sample::select(vec![None, Some(1), Some(365 * 86_400), Some(CENTURY_SECS)]);
    let case = (seconds, nanos, limit, any_now(), any::<bool>());
    proptest!(config(512), |((seconds, nanos, limit, now, relative) in case)| {
        let latest = limit.map(|secs| now + TimeDelta::seconds(secs as i64));
        let limit = lifetime_limit(limit);
        // Relative to now half the time, so that both sides of every bound are reached.
        let seconds = if relative { now.timestamp().saturating_add(seconds) } else { seconds };
        let request = update(prost_types::Timestamp { seconds, nanos }, vec!["expiresTime".into()]);
        let requested = u32::try_from(nanos).ok().and_then(|nanos| DateTime::from_timestamp(seconds, nanos));
        let acceptable = requested.filter(|at| {
            *at > now && at.timestamp() <= LATEST_EXPIRY_SECS && latest.is_none_or(|latest| *at <= latest)
        });
        match update_request(&request, &limit, now) {
            Ok((_, changes)) => {
                let requested = acceptable.expect("only an acceptable expiry passes");
                let Some(Some(kept)) = changes.expires_at else {
                    return Err(TestCaseError::fail(format!("{:?} for {requested}", changes.expires_at)));
                };
                prop_assert!(kept_to_micros(kept, requested), "{requested} kept as {kept}");
            }
            Err(Error::InvalidArgument(violations)) => {
                prop_assert!(acceptable.is_none(), "{requested:?} refused: {violations:?}");
                prop_assert_eq!(violations.len(), 1);
                prop_assert_eq!(&violations[0].field, "client.expires_time");
            }
            Err(other) => return Err(TestCaseError::fail(other.to_string())),
        }
    });
}

// ---- Page tokens ----

const MALFORMED_TOKEN: &str = "is not a page token this service issued; send next_page_token unchanged";
const OTHER_LISTING: &str = "belongs to another listing; use it with the same caller and query that returned it";

async fn page_tokens_take_any_input_without_panicking() {
    let token = prop_oneof![
        any_text(),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(|bytes| URL_SAFE_NO_PAD.encode(bytes)),
        (any_text(), any_text(), any::<u128>()).prop_map(|(u, q, a)| {
            URL_SAFE_NO_PAD.encode(json!({"u": u, "q": q, "a": Uuid::from_u128(a)}).to_string())
        }),
    ];
    proptest!(config(512), |(token in token, user in any_text(), query in any_text())| {
        match PageToken::decode(&token, &user, &query) {
            Ok(None) => prop_assert!(token.is_empty()),
            Ok(Some(decoded)) => {
                prop_assert!(!token.is_empty());
                prop_assert_eq!(decoded.clone(), PageToken::new(&user, &query, decoded.after));
            }
            Err(message) => {
                prop_assert!(!token.is_empty());
                prop_assert!(message == MALFORMED_TOKEN || message == OTHER_LISTING, "{message}");
            }
        }
    });
}

async fn page_tokens_round_trip_and_stay_bound_to_user_and_query() {
    let case = (any_text(), any_text(), any_text(), any_text(), any::<u128>());
    proptest!(config(512), |((user, other_user, query, other_query, after) in case)| {
        let token = PageToken::new(&user, &query, Uuid::from_u128(after));
        let encoded = token.encode();
        prop_assert!(!encoded.is_empty());
        prop_assert!(encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "URL-safe");
        prop_assert_eq!(PageToken::decode(&encoded, &user, &query), Ok(Some(token.clone())));
        prop_assert_eq!(token.after, Uuid::from_u128(after));
        if other_user != user {
            prop_assert_eq!(PageToken::decode(&encoded, &other_user, &query), Err(OTHER_LISTING.to_owned()));
        }
        if other_query != query {
            prop_assert_eq!(PageToken::decode(&encoded, &user, &other_query), Err(OTHER_LISTING.to_owned()));
        }
    });
}

// ---- Display names ----

/// What Unicode's character database says of every code point, in the terms the display-name
/// rule needs, read from ICU4X's copy of it (`icu_properties`) and not from the service's tables:
/// a range added to or dropped from those tables makes the tests below fail. Looked up once into
/// tables, as ICU4X takes about a microsecond a lookup unoptimised and one test asks about every
/// character.
struct Unicode {
    category: Vec<GeneralCategory>,
    block: Vec<Block>,
    default_ignorable: Vec<bool>,
    bidi_control: Vec<bool>,
    join_control: Vec<bool>,
    variation_selector: Vec<bool>,
    emoji_component: Vec<bool>,
    prepended_concatenation_mark: Vec<bool>,
    white_space: Vec<bool>,
}

/// The blocks Unicode names "Combining ...": marks that only change the character before them.
/// The service's rule speaks of these blocks only, so a lone mark of another block (U+0483
/// COMBINING CYRILLIC TITLO, the Hebrew points, the Devanagari vowel signs: general category Mn or
/// Me, well over a thousand of them) counts as showing something, here as there.
const COMBINING_BLOCKS: [Block; 5] = [
    Block::CombiningDiacriticalMarks,
    Block::CombiningDiacriticalMarksExtended,
    Block::CombiningDiacriticalMarksSupplement,
    Block::CombiningDiacriticalMarksForSymbols,
    Block::CombiningHalfMarks,
];

/// A symbol whose glyph is empty (general category So, so no property marks it blank).
const BRAILLE_PATTERN_BLANK: char = '\u{2800}';

fn unicode() -> &'static Unicode {
    static UNICODE: LazyLock<Unicode> = LazyLock::new(Unicode::load);
    &UNICODE
}

impl Unicode {
    fn load() -> Self {
        const CODE_POINTS: usize = 0x11_0000;
        fn set<P: BinaryProperty>() -> Vec<bool> {
            let mut has = vec![false; CODE_POINTS];
            CodePointSetData::new::<P>().iter_ranges().flatten().for_each(|code| has[code as usize] = true);
            has
        }
        fn map<T: EnumeratedProperty>(missing: T) -> Vec<T> {
            let mut values = vec![missing; CODE_POINTS];
            for range in CodePointMapData::<T>::new().iter_ranges() {
                range.range.for_each(|code| values[code as usize] = range.value);
            }
            values
        }
        Self {
            category: map(GeneralCategory::Unassigned),
            block: map(Block::NoBlock),
            default_ignorable: set::<DefaultIgnorableCodePoint>(),
            bidi_control: set::<BidiControl>(),
            join_control: set::<JoinControl>(),
            variation_selector: set::<VariationSelector>(),
            emoji_component: set::<EmojiComponent>(),
            prepended_concatenation_mark: set::<PrependedConcatenationMark>(),
            white_space: set::<WhiteSpace>(),
        }
    }

    fn category(&self, c: char) -> GeneralCategory {
        self.category[c as usize]
    }

    /// A control character: general category Cc (C0, DEL, C1).
    fn control(&self, c: char) -> bool {
        self.category(c) == GeneralCategory::Control
    }

    /// A character that shows nothing or reorders the text around it: a format character (Cf),
    /// a default-ignorable code point (Default_Ignorable_Code_Point, which takes in the Hangul
    /// fillers and the code points Unicode keeps for future invisible characters), a bidirectional
    /// control (Bidi_Control), or a line or paragraph separator (Zl, Zp). Less what scripts and
    /// emoji need.
    fn invisible(&self, c: char) -> bool {
        let i = c as usize;
        let hidden = matches!(
            self.category(c),
            GeneralCategory::Format | GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator
        ) || self.default_ignorable[i]
            || self.bidi_control[i];
        hidden && !self.needed_by_scripts(c)
    }

    /// The format and default-ignorable characters a script or emoji needs: the joiners
    /// (Join_Control), the variation selectors (Variation_Selector), the tags of emoji tag
    /// sequences (Emoji_Component), the signs Unicode wants shown though they are format characters
    /// (Prepended_Concatenation_Mark: the Arabic number signs and their kin), and the Egyptian
    /// hieroglyph format controls that arrange signs into quadrats.
    fn needed_by_scripts(&self, c: char) -> bool {
        let i = c as usize;
        self.join_control[i]
            || self.variation_selector[i]
            || self.emoji_component[i]
            || self.prepended_concatenation_mark[i]
            || self.block[i] == Block::EgyptianHieroglyphFormatControls
    }

    /// Whether a name may hold `c`.
    fn allowed(&self, c: char) -> bool {
        !self.control(c) && !self.invisible(c)
    }

    /// Whether `c`, allowed in a name, shows something by itself: not White_Space, not
    /// default-ignorable (the joiners, selectors and tags kept for scripts and emoji show nothing
    /// alone), not a mark of a "Combining ..." block, and not the braille blank.
    fn shows_something(&self, c: char) -> bool {
        let i = c as usize;
        self.allowed(c)
            && !self.white_space[i]
            && !self.default_ignorable[i]
            && !COMBINING_BLOCKS.contains(&self.block[i])
            && c != BRAILLE_PATTERN_BLANK
    }
}

/// Names built from a pool of what names are made of, and of what they must not contain.
fn name_like() -> impl Strategy<Value = String> {
    const VISIBLE: &[char] = &['a', 'Z', '7', ' ', '-', 'é', '日', 'ß', 'ж', 'ي', '🚀', '👩', '\u{200D}', '\u{FE0F}'];
    const HIDDEN: &[char] = &[
        '\0',
        '\n',
        '\t',
        '\u{7F}',
        '\u{85}',
        '\u{9B}',
        '\u{AD}',
        '\u{200B}',
        '\u{200E}',
        '\u{202E}',
        '\u{2028}',
        '\u{2066}',
        '\u{2069}',
        '\u{3164}',
        '\u{FEFF}',
        '\u{E0001}',
        '\u{E0100}',
        '\u{1BCA0}',
        '\u{180E}',
    ];
    let c = prop_oneof![20 => prop::sample::select(VISIBLE), 1 => prop::sample::select(HIDDEN), 1 => any::<char>()];
    prop::collection::vec(c, 0..260).prop_map(String::from_iter)
}

async fn display_names_accept_only_visible_text_within_the_limit() {
    let unicode = unicode();
    proptest!(config(512), |(input in prop_oneof![any_text(), name_like()])| {
        let chars = input.chars().count();
        match DisplayName::parse(&input) {
            Ok(name) => {
                prop_assert_eq!(name.as_str(), input.as_str());
                prop_assert!(!input.trim().is_empty());
                prop_assert!((1..=DisplayName::MAX_CHARS).contains(&chars), "{chars} characters accepted");
                prop_assert!(input.chars().all(|c| unicode.allowed(c)), "{input:?}");
                prop_assert!(input.chars().any(|c| unicode.shows_something(c)), "{input:?} shows nothing");
            }
            Err(message) => {
                prop_assert!(message.len() <= 200, "{message}");
                let visible =
                    input.chars().all(|c| unicode.allowed(c)) && input.chars().any(|c| unicode.shows_something(c));
                prop_assert!(!visible || chars > DisplayName::MAX_CHARS, "{input:?} refused: {message}");
            }
        }
    });
}

async fn display_name_rejections_name_the_position_not_the_input() {
    let unicode = unicode();
    // A few well-known ones, or any character Unicode's classes refuse.
    let refused: Vec<char> = every_char().filter(|c| !unicode.allowed(*c)).collect();
    let hidden = prop_oneof![
        prop::sample::select(vec![
            '\0', '\n', '\u{1B}', '\u{7F}', '\u{9F}', '\u{200B}', '\u{202E}', '\u{2066}', '\u{FEFF}'
        ]),
        prop::sample::select(refused),
    ]
    .prop_map(|c| (c, unicode.control(c)));
    proptest!(config(512), |(name in "[a-zA-Z0-9 ]{0,150}[a-z]", at in any::<Index>(), (c, control) in hidden)| {
        let mut chars: Vec<char> = name.chars().collect();
        let position = at.index(chars.len() + 1);
        chars.insert(position, c);
        let input: String = chars.into_iter().collect();
        let message = DisplayName::parse(&input).unwrap_err();
        prop_assert!(message.contains(&format!("at position {position}")), "{input:?}: {message}");
        let kind = if control { "control character" } else { "invisible or direction-changing" };
        prop_assert!(message.contains(kind), "{message}");
        prop_assert!(name.len() < 12 || !message.contains(&name), "the input is not echoed: {message}");
    });
}

/// Every Unicode scalar value.
fn every_char() -> impl Iterator<Item = char> {
    (0..=u32::from(char::MAX)).filter_map(char::from_u32)
}

/// Every character, after a letter and alone, against Unicode's classes: one code point added to
/// or dropped from the service's tables shows here, where random names would meet it only by
/// chance.
async fn display_names_follow_unicode_classes_for_every_character() {
    let unicode = unicode();
    let mut findings: Vec<(u32, String)> = Vec::new();
    let mut after_letter = String::new();
    for c in every_char() {
        let refusal = if unicode.control(c) {
            Some("control character")
        } else if unicode.invisible(c) {
            Some("invisible or direction-changing")
        } else {
            None
        };
        after_letter.clear();
        after_letter.extend(['a', c]);
        let finding = match (DisplayName::parse(&after_letter), refusal) {
            (Ok(_), Some(kind)) => Some(format!("accepted after a letter; Unicode's classes make it {kind}")),
            (Err(message), Some(kind)) if !message.contains(kind) => Some(format!("not refused as {kind}: {message}")),
            (Err(message), None) => Some(format!("refused after a letter: {message}")),
            (_, Some(_)) => None,
            (Ok(_), None) => match (DisplayName::parse(&c.to_string()).is_ok(), unicode.shows_something(c)) {
                (true, false) => Some("accepted alone, though it shows nothing".to_owned()),
                (false, true) => Some("refused alone, though it shows something".to_owned()),
                _ => None,
            },
        };
        let category = unicode.category(c);
        if let Some(finding) = finding {
            findings.push((c.into(), format!("({category:?}) {finding}")));
        }
    }
    assert!(findings.is_empty(), "the service and Unicode's classes disagree on:\n{}", ranges(&findings));
}

/// Consecutive code points of the same finding as one line: `U+2060..U+2064 finding`.
fn ranges(findings: &[(u32, String)]) -> String {
    let mut lines: Vec<(u32, u32, &str)> = Vec::new();
    for (code, finding) in findings {
        match lines.last_mut() {
            Some((_, last, text)) if *last + 1 == *code && text == finding => *last = *code,
            _ => lines.push((*code, *code, finding)),
        }
    }
    lines
        .iter()
        .map(|(first, last, text)| {
            if first == last { format!("U+{first:04X} {text}") } else { format!("U+{first:04X}..U+{last:04X} {text}") }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- Lifetimes and expiries ----

fn max_lifetime_text() -> impl Strategy<Value = String> {
    let unit = prop::sample::select(vec![
        "ns", "us", "ms", "s", "sec", "m", "min", "h", "hours", "d", "days", "w", "weeks", "M", "months", "y", "years",
    ]);
    let part = ("[0-9]{1,22}", unit).prop_map(|(n, u)| format!("{n}{u}"));
    prop_oneof![
        any_text(),
        prop::collection::vec(part, 1..4).prop_map(|parts| parts.join(" ")),
        "[nN][oO][nN][eE]",
        (1..=36_500_u64 * 86_400, 0..1_000_000_000_u32)
            .prop_map(|(s, ns)| humantime::format_duration(Duration::new(s, ns)).to_string()),
    ]
}

async fn max_lifetimes_parse_any_string_and_print_back_as_themselves() {
    let now = moment(1_800_000_000, 0);
    proptest!(config(512), |(input in max_lifetime_text())| {
        if let Ok(limit) = input.parse::<MaxLifetime>() {
            prop_assert_eq!(limit.to_string().parse::<MaxLifetime>(), Ok(limit), "{} prints as {}", input, limit);
            if let Some(latest) = limit.expiry_for_lifetime(None, now).unwrap() {
                prop_assert!(latest > now - TimeDelta::microseconds(1));
                prop_assert!(latest <= now + TimeDelta::days(36_500), "{input} is more than a century");
            } else {
                prop_assert!(input.eq_ignore_ascii_case("none"));
            }
        }
    });
}

async fn lifetimes_give_expiries_within_the_limit_and_before_the_year_10000() {
    let lifetime = prop_oneof![
        any::<(i64, i32)>(),
        (0..=200 * 366 * 86_400_i64, 0..1_000_000_000_i32),
        (-3..3_i64, -1_000_000_002..1_000_000_002_i32),
        (prop::sample::select(vec![i64::MIN, i64::MAX, i64::MAX / 1_000_000_000]), any::<i32>()),
    ];
    let limit = prop_oneof![Just(None), (1..=CENTURY_SECS).prop_map(Some), Just(Some(CENTURY_SECS))];
    proptest!(config(512), |((seconds, nanos) in lifetime, limit in limit, now in any_now())| {
        let max = lifetime_limit(limit);
        let latest = max.expiry_for_lifetime(None, now).unwrap();
        let result = max.expiry_for_lifetime(Some((seconds, nanos)), now);
        let well_formed =
            (-999_999_999..=999_999_999).contains(&nanos) && seconds.signum() * i64::from(nanos.signum()) >= 0;
        let positive = seconds > 0 || nanos > 0;
        match result {
            Ok(Some(expiry)) => {
                prop_assert!(well_formed && positive, "({seconds}, {nanos}) accepted");
                let requested = Duration::new(seconds.unsigned_abs(), nanos.unsigned_abs());
                prop_assert!(limit.is_none_or(|limit| requested <= Duration::from_secs(limit)), "past the limit");
                let exact = now + TimeDelta::new(seconds, nanos.unsigned_abs()).unwrap();
                prop_assert!(kept_to_micros(expiry, exact), "{exact} kept as {expiry}");
                prop_assert!(exact.timestamp() <= LATEST_EXPIRY_SECS, "{expiry} is not before the year 10000");
                prop_assert!(latest.is_none_or(|latest| expiry <= latest), "{expiry} is past the limit {max}");
            }
            Ok(None) => return Err(TestCaseError::fail("a requested lifetime gave no expiry")),
            Err(message) => {
                prop_assert!(message.len() <= MAX_MESSAGE_BYTES);
                // Refused only for a reason.
                let requested = Duration::new(seconds.unsigned_abs(), nanos.unsigned_abs());
                let exact = TimeDelta::from_std(requested).ok().and_then(|d| now.checked_add_signed(d));
                let fits = limit.is_none_or(|limit| requested <= Duration::from_secs(limit))
                    && exact.is_some_and(|at| at.timestamp() <= LATEST_EXPIRY_SECS);
                prop_assert!(!(well_formed && positive && fits), "({seconds}, {nanos}) refused: {message}");
            }
        }
    });
}

/// A `--max-lifetime` of `limit` seconds, or `none`.
fn lifetime_limit(limit: Option<u64>) -> MaxLifetime {
    limit.map_or_else(|| "none".to_owned(), |secs| format!("{secs}s")).parse().unwrap()
}

// ---- Roles ----

fn role_like() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9_.:-]{1,20}",
        1 => "[A-Za-z0-9_.:-]{120,135}",
        1 => "[a-c]{1,2}",
        1 => "[A-Za-z0-9_.:\\- /@é\u{0}\u{202E}]{0,20}",
        1 => any_text(),
    ]
}

fn is_role(s: &str) -> bool {
    (1..=Role::MAX_CHARS).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

async fn roles_follow_their_alphabet_and_quote_refusals_briefly() {
    proptest!(config(512), |(input in role_like())| {
        match Role::parse(&input) {
            Ok(role) => {
                prop_assert!(is_role(&input), "{input:?} accepted");
                prop_assert_eq!(role.as_str(), input.as_str());
                prop_assert_eq!(role.to_string(), input);
            }
            Err(message) => {
                prop_assert!(!is_role(&input), "{input:?} refused: {message}");
                prop_assert!(message.starts_with(&quote(&input)), "{message}");
                prop_assert!(message.len() <= MAX_MESSAGE_BYTES, "{} bytes", message.len());
            }
        }
    });
}

async fn role_sets_deduplicate_and_name_bad_entries() {
    let entries = prop_oneof![prop::collection::vec(role_like(), 0..8), prop::collection::vec("[a-z]{1,2}", 45..56),];
    proptest!(config(512), |(entries in entries)| {
        let bad: Vec<usize> = entries.iter().enumerate().filter(|(_, e)| !is_role(e)).map(|(i, _)| i).collect();
        let mut distinct: Vec<String> = Vec::new();
        for entry in entries.iter().filter(|e| is_role(e)) {
            if !distinct.contains(entry) {
                distinct.push(entry.clone());
            }
        }
        prop_assert_eq!(RoleSet::from_claims(&entries).to_strings(), distinct.clone(), "claims keep the valid ones");
        match RoleSet::parse(&entries) {
            Ok(roles) => {
                prop_assert!(entries.len() <= RoleSet::MAX_ENTRIES && bad.is_empty());
                prop_assert_eq!(roles.to_strings(), distinct);
            }
            Err(violations) if entries.len() > RoleSet::MAX_ENTRIES => {
                prop_assert_eq!(violations.len(), 1);
                prop_assert_eq!(violations[0].index, None);
            }
            Err(violations) => {
                let indexes: Vec<usize> = violations.iter().map(|v| v.index.unwrap()).collect();
                prop_assert_eq!(indexes, bad);
            }
        }
    });
}

// ---- Client assertions ----

const AUDIENCE: &str = "pc.example.com";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

async fn assertions_take_any_input_without_panicking() {
    let header = prop_oneof![
        any_text().prop_map(b64),
        prop::sample::select(vec!["EdDSA", "Ed25519", "none", "HS256"])
            .prop_map(|alg| b64(json!({"alg": alg}).to_string())),
        Just(b64(r#"{"alg":"EdDSA","crit":["exp"]}"#)),
    ];
    let payload = prop_oneof![any_text().prop_map(b64), any_text(), Just(b64("{}"))];
    let signature = prop_oneof![prop::collection::vec(any::<u8>(), 62..66).prop_map(b64), any_text()];
    let token = prop_oneof![any_text(), (header, payload, signature).prop_map(|(h, p, s)| format!("{h}.{p}.{s}")),];
    proptest!(config(512), |(token in token, key in signing_key(), now in any::<i64>())| {
        if let Ok(assertion) = ClientAssertion::parse(&token) {
            prop_assert_eq!(token.split('.').count(), 3);
            let _ = assertion.claimed_issuer();
            let verified = assertion.verify(&key.verifying_key(), "client", &[AUDIENCE], now);
            prop_assert_eq!(verified, Err(Rejection::BadSignature), "nobody signed it with this key");
        }
    });
}

async fn signed_assertions_verify_exactly_within_their_time_window() {
    let case = (signing_key(), any_text(), -1_000..1_000_i64, 0..4_000_000_000_i64, -1_000..1_000_i64, any::<bool>());
    proptest!(config(64), |((key, client, lifetime, signed_at, offset, mismatch) in case)| {
        let token = ClientAssertion::sign(&key, &client, AUDIENCE, lifetime, signed_at);
        let assertion = ClientAssertion::parse(&token).unwrap();
        prop_assert_eq!(assertion.claimed_issuer(), Some(client.as_str()));
        let now = signed_at + offset;
        let exp = signed_at + lifetime.clamp(1, MAX_LIFETIME_SECS);
        let expected = if exp + SKEW_SECS <= now {
            Err(Rejection::AssertionExpired)
        } else if exp > now + MAX_LIFETIME_SECS + SKEW_SECS {
            Err(Rejection::AssertionTooLongLived)
        } else if signed_at > now + SKEW_SECS {
            Err(Rejection::NotYetValid)
        } else {
            Ok(exp + SKEW_SECS)
        };
        let verified = assertion.verify(&key.verifying_key(), &client, &["other", AUDIENCE], now);
        prop_assert_eq!(verified.as_ref().map(|v| v.spent_until), expected.as_ref().map(|at| *at));
        if let Ok(verified) = verified {
            prop_assert!(Uuid::try_parse(&verified.one_time_value).is_ok());
        }
        // Signed for one client and audience, it is no one else's.
        let (other_client, audiences, refusal) = if mismatch {
            (format!("{client}x"), [AUDIENCE], Rejection::IssuerMismatch)
        } else {
            (client.clone(), ["other"], Rejection::AudienceMismatch)
        };
        prop_assert_eq!(assertion.verify(&key.verifying_key(), &other_client, &audiences, signed_at), Err(refusal));
    });
}

async fn a_changed_byte_makes_a_signed_assertion_refused() {
    const CLIENT: &str = "brave-otter-00001@pc.example.com/pcc";
    const NOW: i64 = 1_800_000_000;
    let key = SigningKey::from_bytes(&[7; 32]);
    let public_key = key.verifying_key();
    let verify =
        |token: &str| ClientAssertion::parse(token).and_then(|a| a.verify(&public_key, CLIENT, &[AUDIENCE], NOW));
    let token = ClientAssertion::sign(&key, CLIENT, AUDIENCE, 60, NOW);
    assert!(verify(&token).is_ok());
    let replacement = prop::sample::select(b"AQgw_-09azZ.=+/ ".to_vec());
    proptest!(config(256), |(at in any::<Index>(), replacement in replacement)| {
        let mut bytes = token.clone().into_bytes();
        let i = at.index(bytes.len());
        // Another character of the base64url alphabet, a separator, or what a sloppy encoder sends.
        bytes[i] = if replacement != bytes[i] { replacement } else if bytes[i] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(bytes).unwrap();
        prop_assert!(verify(&changed).is_err(), "byte {i} changed and still accepted: {changed}");
    });
}

async fn assertion_claims_of_any_number_never_panic() {
    // Any integer and any float, the extremes included, and numbers near `now`.
    let number = prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        prop::num::f64::NORMAL.prop_map(|n| json!(n)),
        prop::sample::select(vec![i64::MAX, i64::MAX - 30, i64::MIN]).prop_map(|n| json!(n)),
        (1_799_999_000..1_800_001_000_i64).prop_map(|n| json!(n)),
        (1_799_999_000.0..1_800_001_000.0_f64).prop_map(|n| json!(n)),
        Just(json!("soon")),
        Just(json!(null)),
    ];
    let jti = prop::option::of("[a-z0-9]{0,300}");
    let case = (signing_key(), number.clone(), number.clone(), number, jti);
    proptest!(config(128), |((key, exp, iat, nbf, jti) in case)| {
        let now = 1_800_000_000_i64;
        let mut claims = json!({"iss": "c", "sub": "c", "aud": AUDIENCE, "exp": exp, "iat": iat, "nbf": nbf});
        if let Some(jti) = &jti {
            claims["jti"] = json!(jti);
        }
        let token = jws::sign(&Header { alg: "EdDSA".into(), ..Header::default() }, &claims, &key);
        let result = ClientAssertion::parse(&token).and_then(|a| a.verify(&key.verifying_key(), "c", &[AUDIENCE], now));
        if let Ok(verified) = result {
            let exp = exp.as_f64().unwrap().floor() as i64;
            prop_assert!(exp + SKEW_SECS > now && exp <= now + MAX_LIFETIME_SECS + SKEW_SECS, "exp {exp} accepted");
            for at in [&iat, &nbf] {
                prop_assert!(at.as_f64().is_none_or(|at| at.floor() as i64 <= now + SKEW_SECS), "{at} is ahead");
            }
            prop_assert_eq!(verified.spent_until, exp + SKEW_SECS);
            prop_assert_eq!(Some(verified.one_time_value), jti);
        }
    });
}

// ---- Client secrets ----

async fn secrets_take_any_input_without_panicking() {
    let jwk =
        (any_text(), any_text(), prop::collection::vec(any::<u8>(), 0..40), prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(kty, crv, x, d)| b64(json!({"kty": kty, "crv": crv, "x": b64(x), "d": b64(d)}).to_string()));
    let key_part = prop_oneof![any_text(), any_text().prop_map(b64), jwk];
    let secret = prop_oneof![
        any_text(),
        ("[a-z:]{0,12}", "v[0-9]|[a-z]{0,3}", key_part).prop_map(|(ns, v, key)| format!("secret-token:{ns}:{v}:{key}")),
    ];
    proptest!(config(512), |(input in secret)| {
        match ClientSecret::parse(&input) {
            Ok(secret) => {
                prop_assert_eq!(secret.expose(), input.trim());
                prop_assert!(secret.signing_key().is_ok());
                prop_assert!(!format!("{:?}", secret).contains(secret.expose()), "Debug hides the secret");
            }
            Err(message) => {
                prop_assert!(message.len() <= 200, "{message}");
                prop_assert!(input.len() < 20 || !message.contains(&input), "the input is not echoed: {message}");
            }
        }
    });
}

async fn generated_secrets_round_trip_and_refuse_any_changed_key_byte() {
    let case = ("[^: ]{1,20}", "[ \t\n]{0,2}", any::<Index>(), prop::sample::select(b"AQgw_-09azZ=+/".to_vec()));
    proptest!(config(256), |((namespace, padding, at, replacement) in case)| {
        let (secret, public_key) = ClientSecret::generate(&namespace);
        let prefix = format!("secret-token:{namespace}:v1:");
        prop_assert!(secret.expose().starts_with(&prefix));
        let parsed = ClientSecret::parse(&format!("{padding}{}{padding}", secret.expose())).unwrap();
        prop_assert_eq!(&parsed, &secret);
        prop_assert_eq!(parsed.signing_key().unwrap().verifying_key(), public_key);

        let mut bytes = secret.expose().as_bytes().to_vec();
        let i = prefix.len() + at.index(bytes.len() - prefix.len());
        bytes[i] = if bytes[i] == replacement { if replacement == b'A' { b'B' } else { b'A' } } else { replacement };
        let changed = String::from_utf8(bytes).unwrap();
        prop_assert!(ClientSecret::parse(&changed).is_err(), "key byte {} changed and still read", i - prefix.len());
    });
}
