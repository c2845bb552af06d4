//! In-process registry.

use std::collections::BTreeMap;

use async_trait::async_trait;
use parking_lot::RwLock;

use super::Registry;
use crate::error::StoreError;
use crate::topology::{GatewayId, GatewayInfo};

/// Gateways in a map.
#[derive(Default)]
pub struct MemoryRegistry {
    gateways: RwLock<BTreeMap<GatewayId, GatewayInfo>>,
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, gateway: &GatewayInfo) -> Result<(), StoreError> {
        self.gateways
            .write()
            .insert(gateway.id.clone(), gateway.clone());
        Ok(())
    }

    async fn deregister(&self, gateway: &GatewayId) -> Result<(), StoreError> {
        self.gateways.write().remove(gateway);
        Ok(())
    }

    async fn get(&self, gateway: &GatewayId) -> Result<Option<GatewayInfo>, StoreError> {
        Ok(self.gateways.read().get(gateway).cloned())
    }

    async fn list(&self) -> Result<Vec<GatewayInfo>, StoreError> {
        Ok(self.gateways.read().values().cloned().collect())
    }
}
