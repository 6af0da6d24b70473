//! Operations on a connection that another node holds (join or leave a group, bind or unbind
//! a uid, set a session, close): the API of the node that received the request sends them to
//! the node named in the client id, which runs them on its shards and answers. JSON on the
//! wire (control-plane traffic, small and rare), validated again by the receiver.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::addressing::{Applied, RequestError, Session};
use crate::ids::{ConnId, GroupId, NodeId, Uid, NAME_BYTES_MAX};
use crate::Handle;

/// An operation for the node that holds the connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RemoteOp {
    /// `PUT /api/groups/{group}/clients/{id}`.
    JoinGroup {
        /// The group.
        group: String,
    },
    /// `DELETE /api/groups/{group}/clients/{id}`.
    LeaveGroup {
        /// The group.
        group: String,
    },
    /// `PUT /api/clients/{id}/uid`.
    BindUid {
        /// The uid.
        uid: String,
    },
    /// `DELETE /api/clients/{id}/uid`.
    UnbindUid,
    /// `PUT` (replace) or `PATCH` (merge) `/api/clients/{id}/session`.
    SetSession {
        /// The session (object).
        session: Session,
        /// Merge rather than replace.
        merge: bool,
    },
    /// `DELETE /api/clients/{id}`.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
}

/// The holding node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpAnswer {
    /// Done; the state changed.
    Done,
    /// Nothing to change.
    Unchanged,
    /// No such connection there.
    NoSuchClient,
    /// Refused by a limit.
    Refused {
        /// Why.
        reason: String,
    },
    /// The operation did not decode or a name is invalid.
    Invalid {
        /// Why.
        reason: String,
    },
    /// Its shards were busy, did not answer in time, or it is stopping.
    Unavailable {
        /// Why.
        reason: String,
    },
}

impl OpAnswer {
    /// Back to what the API answers.
    pub fn into_applied(self) -> Result<Applied, OpError> {
        match self {
            OpAnswer::Done => Ok(Applied::Done),
            OpAnswer::Unchanged => Ok(Applied::Unchanged),
            OpAnswer::NoSuchClient => Ok(Applied::NoSuchClient),
            OpAnswer::Refused { reason } => Ok(Applied::Refused(reason)),
            OpAnswer::Invalid { reason } => Err(OpError::Invalid(reason)),
            OpAnswer::Unavailable { reason } => Err(OpError::RemoteUnavailable(reason)),
        }
    }
}

/// Why a forwarded operation or query has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// This node's own shards failed (local operation).
    #[error("{0}")]
    Request(RequestError),
    /// The node in the client id is not in the cluster (HTTP 404).
    #[error("no node {0} in the cluster: the client is gone")]
    UnknownNode(NodeId),
    /// It is there but did not answer in time (HTTP 504).
    #[error("node {0} did not answer within the cluster query timeout ({1:?})")]
    Timeout(NodeId, Duration),
    /// Redis is unreachable: nothing can be forwarded (HTTP 503).
    #[error("the cluster backplane is down: operations on other nodes' clients are unavailable")]
    BackplaneDown,
    /// The other node answered that its shards were unavailable (HTTP 503).
    #[error("the node holding the client: {0}")]
    RemoteUnavailable(String),
    /// The other node refused the operation as invalid (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// The other node's answer did not decode (HTTP 503; counted as malformed).
    #[error("the node holding the client sent an answer this node cannot read")]
    BadAnswer,
}

/// Run `op` (JSON) on `client`, a connection of this node: the answering side.
pub(crate) async fn apply(h: &Handle, client: ConnId, op: &[u8], t: Duration) -> OpAnswer {
    let op: RemoteOp = match serde_json::from_slice(op) {
        Ok(op) => op,
        Err(e) => return OpAnswer::Invalid { reason: format!("operation: {e}") },
    };
    let pending = match op {
        RemoteOp::JoinGroup { group } => match GroupId::new(&group, NAME_BYTES_MAX) {
            Ok(g) => h.join_group(client, g),
            Err(e) => return OpAnswer::Invalid { reason: format!("group: {e}") },
        },
        RemoteOp::LeaveGroup { group } => match GroupId::new(&group, NAME_BYTES_MAX) {
            Ok(g) => h.leave_group(client, g),
            Err(e) => return OpAnswer::Invalid { reason: format!("group: {e}") },
        },
        RemoteOp::BindUid { uid } => match Uid::new(&uid, NAME_BYTES_MAX) {
            Ok(u) => h.bind_uid(client, u),
            Err(e) => return OpAnswer::Invalid { reason: format!("uid: {e}") },
        },
        RemoteOp::UnbindUid => h.unbind_uid(client),
        RemoteOp::SetSession { session, merge } => h.set_session(client, session, merge),
        RemoteOp::Close { code, reason } => h.close(client, code, &reason),
    };
    match tokio::time::timeout(t, pending).await {
        Ok(Ok(Applied::Done)) => OpAnswer::Done,
        Ok(Ok(Applied::Unchanged)) => OpAnswer::Unchanged,
        Ok(Ok(Applied::NoSuchClient)) => OpAnswer::NoSuchClient,
        Ok(Ok(Applied::Refused(reason))) => OpAnswer::Refused { reason },
        Ok(Err(e)) => OpAnswer::Unavailable { reason: e.to_string() },
        Err(_) => OpAnswer::Unavailable { reason: RequestError::Timeout.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_and_answers_round_trip_as_json() {
        let mut session = Session::new();
        session.insert("a".into(), 1.into());
        for op in [
            RemoteOp::JoinGroup { group: "g".into() },
            RemoteOp::LeaveGroup { group: "g".into() },
            RemoteOp::BindUid { uid: "u".into() },
            RemoteOp::UnbindUid,
            RemoteOp::SetSession { session, merge: true },
            RemoteOp::Close { code: 4000, reason: "bye".into() },
        ] {
            let json = serde_json::to_vec(&op).unwrap();
            assert_eq!(serde_json::from_slice::<RemoteOp>(&json).unwrap(), op);
        }
        for a in [
            OpAnswer::Done,
            OpAnswer::Refused { reason: "limit".into() },
            OpAnswer::Unavailable { reason: "busy".into() },
        ] {
            let json = serde_json::to_vec(&a).unwrap();
            assert_eq!(serde_json::from_slice::<OpAnswer>(&json).unwrap(), a);
        }
        assert_eq!(
            OpAnswer::Invalid { reason: "x".into() }.into_applied(),
            Err(OpError::Invalid("x".into()))
        );
    }
}
