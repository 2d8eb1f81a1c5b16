//! The clusters a gateway takes claims for (`--clusters`): every well-formed
//! cluster id when no list is given, else only the listed ones.
//!
//! On a shared NATS anyone who may publish to `backbeat.*.intake` could
//! otherwise make up clusters at will, and each new cluster is new state
//! downstream (subjects in the streams, a fold per cluster in the processor).
//! A claim for a cluster outside the list is refused with
//! [`REASON_CLUSTER_NOT_ALLOWED`] and kept as a dead letter under
//! [`INVALID_CLUSTER_REJECT_SUBJECT`]: not under its own cluster's reject
//! subject, so refused clusters do not add subjects to `BACKBEAT_REJECTS`
//! either. The gateway itself keeps no state per cluster.

use std::collections::BTreeSet;

use backbeat_schemas::names::is_valid_cluster_id;

use super::admission::{Admission, INVALID_CLUSTER_REJECT_SUBJECT};

/// The reason given for a claim whose (well-formed) cluster id is not on the
/// gateway's allow-list. Not a SPEC §5 reason: the fold never sees it (SPEC §9.8).
pub const REASON_CLUSTER_NOT_ALLOWED: &str = "cluster_not_allowed";

/// The most cluster ids an allow-list may hold (a limit on everything).
pub const ALLOWED_CLUSTERS_MAX: usize = 10_000;

/// A cluster id on `--clusters` that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowedClustersError {
    #[error("--clusters: {0:?} is not a cluster id ([A-Za-z0-9_-]{{1,64}})")]
    InvalidId(String),
    #[error("--clusters: an empty list would refuse every claim; leave it out to take every cluster")]
    Empty,
    #[error("--clusters: at most {ALLOWED_CLUSTERS_MAX} cluster ids; got {0}")]
    TooMany(usize),
}

/// Which well-formed cluster ids the gateway takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedClusters {
    /// `None`: every well-formed id.
    only: Option<BTreeSet<String>>,
}

impl AllowedClusters {
    /// Every well-formed cluster id.
    pub fn all() -> AllowedClusters {
        AllowedClusters { only: None }
    }

    /// Only `ids`, each a valid cluster id.
    pub fn only<S: AsRef<str>>(ids: &[S]) -> Result<AllowedClusters, AllowedClustersError> {
        if ids.is_empty() {
            return Err(AllowedClustersError::Empty);
        }
        if ids.len() > ALLOWED_CLUSTERS_MAX {
            return Err(AllowedClustersError::TooMany(ids.len()));
        }
        let mut only = BTreeSet::new();
        for id in ids {
            let id = id.as_ref();
            if !is_valid_cluster_id(id) {
                return Err(AllowedClustersError::InvalidId(id.to_string()));
            }
            only.insert(id.to_string());
        }
        Ok(AllowedClusters { only: Some(only) })
    }

    /// The listed ids, or `None` for every well-formed id.
    pub fn listed(&self) -> Option<Vec<&str>> {
        self.only.as_ref().map(|ids| ids.iter().map(String::as_str).collect())
    }

    /// The refusal of an input for `cluster`, when its cluster is well formed
    /// but not allowed. `None` otherwise: a malformed id is [`super::admit`]'s
    /// `invalid_cluster`, so SPEC order (the id first) holds either way.
    pub fn refusal(&self, cluster: &str) -> Option<Admission> {
        let only = self.only.as_ref()?;
        if !is_valid_cluster_id(cluster) || only.contains(cluster) {
            return None;
        }
        Some(Admission::Reject {
            reject_subject: INVALID_CLUSTER_REJECT_SUBJECT.to_string(),
            reason: REASON_CLUSTER_NOT_ALLOWED.to_string(),
            message: format!("this gateway does not take claims for cluster {cluster:?} (--clusters)"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_list_every_well_formed_cluster_is_taken() {
        assert_eq!(AllowedClusters::all().refusal("anything"), None);
        assert_eq!(AllowedClusters::all().listed(), None);
    }

    #[test]
    fn with_a_list_others_are_refused_to_the_shared_reject_subject() {
        let allowed = AllowedClusters::only(&["alpha", "beta"]).unwrap();
        assert_eq!(allowed.listed(), Some(vec!["alpha", "beta"]));
        assert_eq!(allowed.refusal("alpha"), None);
        match allowed.refusal("gamma") {
            Some(Admission::Reject {
                reject_subject, reason, ..
            }) => {
                assert_eq!(reason, REASON_CLUSTER_NOT_ALLOWED);
                assert_eq!(reject_subject, INVALID_CLUSTER_REJECT_SUBJECT);
            }
            other => panic!("{other:?}"),
        }
        // A malformed id is left to admit(), which names it invalid_cluster.
        assert_eq!(allowed.refusal("a$b"), None);
    }

    #[test]
    fn lists_are_checked() {
        assert_eq!(
            AllowedClusters::only(&["ok", "not ok"]),
            Err(AllowedClustersError::InvalidId("not ok".into()))
        );
        assert_eq!(AllowedClusters::only::<&str>(&[]), Err(AllowedClustersError::Empty));
        let many: Vec<String> = (0..=ALLOWED_CLUSTERS_MAX).map(|i| format!("c{i}")).collect();
        assert_eq!(
            AllowedClusters::only(&many),
            Err(AllowedClustersError::TooMany(ALLOWED_CLUSTERS_MAX + 1))
        );
    }
}
