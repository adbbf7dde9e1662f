//! The parts of the configuration that one server owns.
//!
//! Each server crate defines its own table (`[compute]`, `[control]`,
//! `[gateway]`, `[cache]`, `[hybrid]`) as a [`Section`]; the binary lists the
//! ones it serves in a [`Schema`], and core composes them into one
//! [`Config`](super::Config) beside the sections every server shares. Core
//! never names a server's section: it loads, layers, validates and renders
//! them through this trait.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Config;
use crate::CoreError;

/// A server's own table of the configuration.
pub trait Section:
    fmt::Debug + Clone + PartialEq + Default + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// Its table's name (`[compute]`): unique in a schema.
    const NAME: &'static str;

    /// Its dotted keys (`compute.threads`, or a whole table) whose new
    /// values take effect at once, without a restart.
    const LIVE_KEYS: &'static [&'static str] = &[];
    /// Its keys that decide who is trusted, what runs on the host or where
    /// calls go: only an administrator changes them.
    const TRUST_KEYS: &'static [&'static str] = &[];
    /// Its keys that stay with each node in a cluster (its hardware, its own
    /// peers); every other key is cluster-wide.
    const NODE_KEYS: &'static [&'static str] = &[];

    /// Checks that types alone cannot express; `config` is the whole
    /// configuration, for the rules that span sections.
    fn validate(&self, _config: &Config) -> Result<(), CoreError> {
        Ok(())
    }
}

/// `first` then `then`: one key list built from two, for a section whose
/// lists overlap. `N` is their lengths added (another fails the build).
pub const fn keys<const N: usize>(
    first: &[&'static str],
    then: &[&'static str],
) -> [&'static str; N] {
    assert!(
        first.len() + then.len() == N,
        "N must be both lists' lengths added"
    );
    let mut all = [""; N];
    let mut i = 0;
    while i < N {
        all[i] = if i < first.len() {
            first[i]
        } else {
            then[i - first.len()]
        };
        i += 1;
    }
    all
}

/// A section behind the type core cannot name.
trait AnySection: fmt::Debug + Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn clone_box(&self) -> Box<dyn AnySection>;
    fn same_as(&self, other: &dyn AnySection) -> bool;
    fn as_serialize(&self) -> &dyn erased_serde::Serialize;
    fn validate(&self, config: &Config) -> Result<(), CoreError>;
}

impl<T: Section> AnySection for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn clone_box(&self) -> Box<dyn AnySection> {
        Box::new(self.clone())
    }
    fn same_as(&self, other: &dyn AnySection) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
    fn as_serialize(&self) -> &dyn erased_serde::Serialize {
        self
    }
    fn validate(&self, config: &Config) -> Result<(), CoreError> {
        Section::validate(self, config)
    }
}

/// How to read one kind of section.
#[derive(Clone, Copy)]
pub(super) struct Kind {
    name: &'static str,
    roles: Roles,
    parse: fn(toml::Value) -> Result<Box<dyn AnySection>, toml::de::Error>,
    default: fn() -> Box<dyn AnySection>,
}

fn parse_as<T: Section>(value: toml::Value) -> Result<Box<dyn AnySection>, toml::de::Error> {
    Ok(Box::new(value.try_into::<T>()?))
}

fn default_as<T: Section>() -> Box<dyn AnySection> {
    Box::new(T::default())
}

impl Kind {
    fn of<T: Section>() -> Self {
        Self {
            name: T::NAME,
            roles: Roles {
                live: T::LIVE_KEYS,
                trust: T::TRUST_KEYS,
                node: T::NODE_KEYS,
            },
            parse: parse_as::<T>,
            default: default_as::<T>,
        }
    }
}

/// What a section's keys are to the settings: see [`Section::LIVE_KEYS`],
/// [`Section::TRUST_KEYS`] and [`Section::NODE_KEYS`].
#[derive(Clone, Copy)]
pub(super) struct Roles {
    pub(super) live: &'static [&'static str],
    pub(super) trust: &'static [&'static str],
    pub(super) node: &'static [&'static str],
}

/// The server sections a configuration holds: which tables besides the
/// shared ones a file may have. The binary builds it from every server it
/// runs; a test builds one with the sections it needs.
#[derive(Clone, Default)]
pub struct Schema {
    kinds: Arc<Vec<Kind>>,
}

impl Schema {
    pub fn new() -> Self {
        Self::default()
    }

    /// With `T`'s table.
    ///
    /// # Panics
    /// When the schema has a section of that name already: two crates
    /// claiming one table is a programming error.
    pub fn with<T: Section>(mut self) -> Self {
        assert!(
            self.kinds.iter().all(|k| k.name != T::NAME),
            "two sections named [{}]",
            T::NAME
        );
        Arc::make_mut(&mut self.kinds).push(Kind::of::<T>());
        self
    }

    /// The section names, in the order they were added.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.kinds.iter().map(|k| k.name)
    }

    /// One role's keys of every section, the shared sections' first.
    fn keys_in(
        &self,
        role: fn(&Roles) -> &'static [&'static str],
    ) -> impl Iterator<Item = &'static str> + '_ {
        let shared = std::iter::once(super::SHARED_ROLES);
        shared
            .chain(self.kinds.iter().map(|k| k.roles))
            .flat_map(move |roles| role(&roles).iter().copied())
    }

    /// The keys only an administrator changes.
    pub fn trust_keys(&self) -> Vec<&'static str> {
        self.keys_in(|r| r.trust).collect()
    }

    /// The keys that stay with each node in a cluster.
    pub fn node_keys(&self) -> Vec<&'static str> {
        self.keys_in(|r| r.node).collect()
    }

    /// Whether a new value of dotted `key` takes effect at once.
    pub fn is_live(&self, key: &str) -> bool {
        self.keys_in(|r| r.live).any(|live| within(live, key))
    }

    /// Whether dotted `key` is, holds, or lies within a trust setting.
    pub fn touches_trust(&self, key: &str) -> bool {
        self.keys_in(|r| r.trust)
            .any(|trust| within(trust, key) || within(key, trust))
    }

    /// Whether dotted `key` is one node's own.
    pub fn is_node_key(&self, key: &str) -> bool {
        self.keys_in(|r| r.node).any(|own| within(own, key))
    }

    /// Every section of the schema out of `table` (removing their tables
    /// from it), each its default where the table has none.
    pub(super) fn take_sections(&self, table: &mut toml::Table) -> Result<Sections, CoreError> {
        let mut sections = Sections::default();
        for kind in self.kinds.iter() {
            let section = match table.remove(kind.name) {
                Some(value) => (kind.parse)(value)
                    .map_err(|e| CoreError::Config(format!("{}: {}", kind.name, e.message())))?,
                None => (kind.default)(),
            };
            sections.0.insert(kind.name, (*kind, section));
        }
        Ok(sections)
    }
}

/// Whether dotted `inner` is `outer` or lies within it.
fn within(outer: &str, inner: &str) -> bool {
    inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('.'))
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

/// The server sections of one configuration, by name, each with how to
/// read it again (so a configuration knows its own schema).
#[derive(Default)]
pub struct Sections(BTreeMap<&'static str, (Kind, Box<dyn AnySection>)>);

impl Sections {
    /// `T`, or its default when this configuration has no `T`.
    pub(super) fn get<T: Section>(&self) -> &T {
        self.0
            .get(T::NAME)
            .and_then(|(_, s)| s.as_any().downcast_ref())
            .unwrap_or_else(|| default_of::<T>())
    }

    /// `T` to change, added as its default first when missing.
    pub(super) fn get_mut<T: Section>(&mut self) -> &mut T {
        self.0
            .entry(T::NAME)
            .or_insert_with(|| (Kind::of::<T>(), default_as::<T>()))
            .1
            .as_any_mut()
            .downcast_mut()
            .unwrap_or_else(|| panic!("[{}] is held as another type", T::NAME))
    }

    pub(super) fn validate(&self, config: &Config) -> Result<(), CoreError> {
        self.0.values().try_for_each(|(_, s)| s.validate(config))
    }

    /// The schema these sections were read with.
    pub(super) fn schema(&self) -> Schema {
        Schema {
            kinds: Arc::new(self.0.values().map(|(kind, _)| *kind).collect()),
        }
    }
}

/// One default of each section type for the whole process, for reads of a
/// section a configuration does not hold (a test's `Config::default()`).
fn default_of<T: Section>() -> &'static T {
    type Defaults = HashMap<TypeId, &'static (dyn Any + Send + Sync)>;
    static DEFAULTS: OnceLock<Mutex<Defaults>> = OnceLock::new();
    let mut defaults = DEFAULTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let default = *defaults
        .entry(TypeId::of::<T>())
        .or_insert_with(|| Box::leak(Box::new(T::default())));
    default
        .downcast_ref()
        .expect("the defaults are keyed by their type")
}

impl Clone for Sections {
    fn clone(&self) -> Self {
        let copy = |(kind, section): &(Kind, Box<dyn AnySection>)| (*kind, section.clone_box());
        Self(
            self.0
                .iter()
                .map(|(name, held)| (*name, copy(held)))
                .collect(),
        )
    }
}

impl PartialEq for Sections {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().all(|(name, (_, s))| {
                other
                    .0
                    .get(name)
                    .is_some_and(|(_, o)| s.same_as(o.as_ref()))
            })
    }
}

impl fmt::Debug for Sections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(name, (_, s))| (name, s)))
            .finish()
    }
}

impl Serialize for Sections {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, (_, section)) in &self.0 {
            map.serialize_entry(name, section.as_serialize())?;
        }
        map.end()
    }
}
