//! API tokens in a cluster: kept by the metadata group, so a token created through any node
//! authenticates on every node once the node has applied the change (a heartbeat later,
//! well under a second), and a revoked one stops working the same way. Each node's
//! `tokens.json` is imported into the cluster when `cluster init` runs on it and not read
//! after; the `core-node tokens` command edits that local file only, so in a cluster tokens
//! are managed through the admin API (docs/cluster.md).

use super::metadata::{METADATA_GROUP, MetaCommand, StoredToken};
use super::node::{ClusterError, ClusterNode};
use crate::auth::store::TokenRecord;
use crate::auth::{Role, Token, TokenId, TokenInfo};
use protocols::Tenant;
use std::time::Duration;

/// How long a token change waits for this node to apply it before answering.
const LOCAL_APPLY_WAIT: Duration = Duration::from_secs(5);

impl ClusterNode {
    async fn propose_meta(&self, command: &MetaCommand) -> Result<u64, ClusterError> {
        let map = self.map();
        let payload =
            postcard::to_allocvec(command).map_err(|e| ClusterError::Refused(e.to_string()))?;
        let outcome = self
            .propose_to(METADATA_GROUP, &map.metadata_voters(), payload)
            .await?;
        Ok(outcome.stored)
    }

    /// Waits until this node's map has reached `version` (it applied the change).
    async fn applied_here(&self, version: u64) {
        let mut map = self.map_receiver();
        let _ =
            tokio::time::timeout(LOCAL_APPLY_WAIT, map.wait_for(|m| m.version >= version)).await;
    }

    /// Creates a token for the whole cluster; answers it once this node authenticates it.
    pub async fn create_token(
        &self,
        tenant: &Tenant,
        role: Role,
        description: &str,
        expires_ms: Option<i64>,
    ) -> Result<(TokenInfo, Token), ClusterError> {
        if self.map().version == 0 {
            return Err(ClusterError::NotInitialised);
        }
        let token = Token::generate().map_err(|e| ClusterError::Refused(e.to_string()))?;
        let secret = token.clone();
        let hash = tokio::task::spawn_blocking(move || secret.hash_secret())
            .await
            .map_err(|e| ClusterError::Refused(format!("hashing task: {e}")))?
            .map_err(|e| ClusterError::Refused(e.to_string()))?;
        let record = TokenRecord {
            id: token.id().clone(),
            tenant: tenant.clone(),
            role,
            hash,
            created_ms: crate::auth::store::now_ms(),
            description: description.to_owned(),
            expires_ms,
        };
        let version = self
            .propose_meta(&MetaCommand::PutToken(StoredToken::from(&record)))
            .await?;
        self.applied_here(version).await;
        Ok((TokenInfo::from(&record), token))
    }

    /// Revokes token `id` of `tenant` (any tenant when `None`) in the whole cluster.
    pub async fn revoke_token(
        &self,
        id: &TokenId,
        tenant: Option<&Tenant>,
    ) -> Result<Option<TokenInfo>, ClusterError> {
        let map = self.map();
        let Some(record) = map
            .tokens
            .iter()
            .filter_map(StoredToken::record)
            .find(|r| &r.id == id && tenant.is_none_or(|t| &r.tenant == t))
        else {
            return Ok(None);
        };
        let version = self
            .propose_meta(&MetaCommand::RevokeToken(id.as_str().to_owned()))
            .await?;
        self.applied_here(version).await;
        Ok(Some(TokenInfo::from(&record)))
    }
}
