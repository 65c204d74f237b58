//! Who is calling, and the checks every RPC and route goes through.

use crate::error::ServiceError;
use crate::model::Role;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An agent holding a node certificate: it may act for its own node only.
    Node {
        /// Node id from the certificate.
        node_id: String,
    },
    /// An operator (certificate or bearer token).
    Operator {
        /// Operator or token name.
        name: String,
        /// What it may do.
        role: Role,
    },
}

impl Caller {
    /// Name used in events and logs (never a secret).
    pub fn actor(&self) -> String {
        match self {
            Caller::Node { node_id } => format!("node:{node_id}"),
            Caller::Operator { name, role } => format!("{role}:{name}"),
        }
    }

    /// Requires an operator; `role` is the least powerful role allowed.
    pub fn require_operator(&self, least: Role) -> Result<(), ServiceError> {
        match self {
            Caller::Operator { role, .. } if *role <= least => Ok(()),
            Caller::Operator { role, .. } => {
                Err(ServiceError::PermissionDenied(format!("role {role} may not do this; {least} or higher is needed")))
            }
            Caller::Node { .. } => Err(ServiceError::PermissionDenied("node certificates cannot call operator APIs".into())),
        }
    }

    /// Whether this is an operator with `least` or a more powerful role.
    pub fn has_role(&self, least: Role) -> bool {
        matches!(self, Caller::Operator { role, .. } if *role <= least)
    }

    /// Requires a node certificate (of any node); returns its node id.
    pub fn require_any_node(&self) -> Result<&str, ServiceError> {
        match self {
            Caller::Node { node_id } => Ok(node_id),
            Caller::Operator { .. } => Err(ServiceError::PermissionDenied("only a node certificate may do this".into())),
        }
    }

    /// Requires the node certificate of `node_id` itself.
    pub fn require_node(&self, node_id: &str) -> Result<(), ServiceError> {
        match self {
            Caller::Node { node_id: own } if own == node_id => Ok(()),
            Caller::Node { node_id: own } => Err(ServiceError::PermissionDenied(format!("node {own} may not act for node {node_id}"))),
            Caller::Operator { .. } => Err(ServiceError::PermissionDenied("only the node's own certificate may do this".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_nodes_stay_in_their_lane() {
        let viewer = Caller::Operator { name: "v".into(), role: Role::Viewer };
        let admin = Caller::Operator { name: "a".into(), role: Role::Admin };
        let node = Caller::Node { node_id: "n1".into() };
        assert!(admin.require_operator(Role::Viewer).is_ok());
        assert!(viewer.require_operator(Role::Viewer).is_ok());
        assert!(viewer.require_operator(Role::Deployer).is_err());
        assert!(node.require_operator(Role::Viewer).is_err());
        assert!(node.require_node("n1").is_ok());
        assert!(node.require_node("n2").is_err());
        assert!(admin.require_node("n1").is_err());
        assert_eq!(node.require_any_node().ok(), Some("n1"));
        assert!(admin.require_any_node().is_err());
        assert!(admin.has_role(Role::Admin) && admin.has_role(Role::Viewer));
        assert!(viewer.has_role(Role::Viewer) && !viewer.has_role(Role::Deployer));
        assert!(!node.has_role(Role::Viewer));
    }
}
