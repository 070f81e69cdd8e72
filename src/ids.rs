//! Sets and maps keyed by internal item numbers, hashed with `foldhash`
//! (randomly seeded, like the standard hasher) instead of SipHash: a Recommend call
//! asks "is this item excluded?" tens of thousands of times (the planner's
//! sample, every node a filtered graph walk visits, every scored row), and
//! SipHash made up about a sixth of the server's CPU under load.

use std::collections::{HashMap, HashSet};

/// The hasher of [`IdSet`] and [`IdMap`].
pub type IdHasher = foldhash::fast::RandomState;

/// A set of internal item numbers.
pub type IdSet = HashSet<u32, IdHasher>;

/// A map from internal item numbers.
pub type IdMap<V> = HashMap<u32, V, IdHasher>;
