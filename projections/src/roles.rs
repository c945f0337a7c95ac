//! Who may do what. The genesis names the first operator; operators add
//! and remove operators and nodes; a node may author only node-level facts.
//! [`Roles::authorize`] is always asked with the roles as of the event's
//! causal past (see `fold`), never with whatever sorts before it.

use std::collections::{BTreeMap, BTreeSet};

use makiatto_events::payload::Ipv4Net;
use makiatto_events::{AuthorKey, Event, EventId, NodeName, Payload};
use serde::{Deserialize, Serialize};

/// The cluster as its genesis describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub id: EventId,
    pub name: String,
    pub mesh_range: Ipv4Net,
}

/// Who holds which role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    pub cluster: Option<ClusterInfo>,
    /// Operator key → name.
    pub operators: BTreeMap<AuthorKey, String>,
    /// Node signing key → node name.
    pub nodes: BTreeMap<AuthorKey, NodeName>,
    /// Authors that signed two events at one place in their feed, and where.
    pub forks: BTreeMap<AuthorKey, BTreeSet<u64>>,
}

impl Roles {
    /// Whether the payload changes roles (and so is tracked per causal past).
    pub fn is_role_event(payload: &Payload) -> bool {
        matches!(
            payload,
            Payload::Genesis(_)
                | Payload::OperatorAdded(_)
                | Payload::OperatorRemoved(_)
                | Payload::NodeJoined(_)
                | Payload::NodeRemoved(_)
        )
    }

    /// Whether `event`'s author may say what it says, judged by `self` (the
    /// roles as of its causal past). Genesis is judged by the fold.
    pub fn authorize(&self, event: &Event) -> Result<(), String> {
        let author = event.author();
        let operator = self.operators.contains_key(&author);
        let node = self.nodes.contains_key(&author);
        match event.payload() {
            Payload::Genesis(_) => Ok(()),
            Payload::SecretResealed(_) => {
                if node || operator {
                    Ok(())
                } else {
                    Err("only a node or an operator may reseal a secret".into())
                }
            }
            // The node that orders certificates writes these.
            Payload::AcmeChallenge(_) | Payload::CertificateIssued(_) => {
                if node || operator {
                    Ok(())
                } else {
                    Err(
                        "only a node or an operator may record ACME challenges and certificates"
                            .into(),
                    )
                }
            }
            Payload::Unknown { .. } => Err("this version does not know the event kind".into()),
            Payload::OperatorRemoved(r) if operator => {
                if self.operators.len() == 1 && self.operators.contains_key(&r.key) {
                    Err("removing the last operator would leave nobody to run the cluster".into())
                } else {
                    Ok(())
                }
            }
            _ if operator => Ok(()),
            _ if node => Err("a node may not author operator-level changes".into()),
            _ => Err("the author is neither an operator nor a node of this cluster".into()),
        }
    }

    /// Applies an authorized role event.
    pub fn apply(&mut self, event: &Event) {
        match event.payload() {
            Payload::Genesis(g) => {
                self.cluster = Some(ClusterInfo {
                    id: event.id(),
                    name: g.cluster_name.clone(),
                    mesh_range: g.mesh_range,
                });
                self.operators.insert(g.operator, g.operator_name.clone());
            }
            Payload::OperatorAdded(o) => {
                self.operators.insert(o.key, o.name.clone());
            }
            Payload::OperatorRemoved(o) => {
                self.operators.remove(&o.key);
            }
            Payload::NodeJoined(n) => {
                self.nodes.retain(|_, name| *name != n.name);
                self.nodes.insert(n.signing_key, n.name.clone());
            }
            Payload::NodeRemoved(n) => {
                self.nodes.retain(|_, name| *name != n.name);
            }
            _ => {}
        }
    }

    /// The author's name and role, where known (`alice`, "operator").
    pub fn describe(&self, author: &AuthorKey) -> Option<(String, &'static str)> {
        if let Some(name) = self.operators.get(author) {
            return Some((name.clone(), "operator"));
        }
        self.nodes.get(author).map(|n| (n.to_string(), "node"))
    }
}
