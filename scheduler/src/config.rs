//! The scheduler's settings: how it scores nodes, how it breaks ties,
//! whether it may preempt. Plain data, passed in with every call.

use std::fmt;
use std::str::FromStr;

/// How the scheduler scores the nodes a replica fits on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Best fit: the node that would be fullest afterwards, so whole nodes
    /// stay free for big work.
    #[default]
    Binpack,
    /// Worst fit: the node that would be emptiest afterwards, so load is
    /// spread out.
    Spread,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Binpack => "binpack",
            Algorithm::Spread => "spread",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "binpack" => Ok(Algorithm::Binpack),
            "spread" => Ok(Algorithm::Spread),
            other => Err(format!(
                "{other:?} is not a scheduler algorithm; expected binpack or spread"
            )),
        }
    }
}

/// The scheduler's settings: plain data, passed in with every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub algorithm: Algorithm,
    /// Breaks ties between equally good nodes. The same seed and input give
    /// the same plan.
    pub seed: u64,
    /// Whether a job may evict allocations of jobs at least 10 priority
    /// points lower when its replicas fit nowhere.
    pub preemption: bool,
    /// In index mode, how many fitting nodes per node class are scored for
    /// each replica (at least 1; 1 is pure best fit).
    pub candidates: u32,
    /// With several planners at once: this planner's share of the nodes,
    /// tried first so that planners working from the same view rarely
    /// pick the same room (see [`Stripe`]).
    pub stripe: Option<Stripe>,
}

/// One planner's share of the nodes when `of` planners plan at once from
/// the same view: the nodes whose position in the view is `index` modulo
/// `of`. A job is placed within its planner's share when it fits there
/// without evicting anything, and on every node otherwise, so a stripe
/// changes where work goes, never whether it fits or what it evicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stripe {
    pub index: u32,
    pub of: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            algorithm: Algorithm::Binpack,
            seed: 0,
            preemption: true,
            candidates: 4,
            stripe: None,
        }
    }
}
