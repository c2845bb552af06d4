//! Which gateways exist and where: the router asks it for a gateway's region
//! (group targets) and its peer address (direct links), through a short
//! in-process [`cache`]; the consistent-hash [`ring`] over live gateways
//! assigns users to them.

pub mod cache;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
pub mod ring;

use async_trait::async_trait;

use crate::error::StoreError;
use crate::topology::{GatewayId, GatewayInfo};

/// Live gateways.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers (or refreshes) a gateway.
    async fn register(&self, gateway: &GatewayInfo) -> Result<(), StoreError>;
    /// Removes a gateway that is leaving.
    async fn deregister(&self, gateway: &GatewayId) -> Result<(), StoreError>;
    /// A gateway by id, if it is alive.
    async fn get(&self, gateway: &GatewayId) -> Result<Option<GatewayInfo>, StoreError>;
    /// Every live gateway.
    async fn list(&self) -> Result<Vec<GatewayInfo>, StoreError>;
    /// The consistent-hash ring over the live gateways, `vnodes` points
    /// each, for [`ring::Ring::assign`] (load balancing users).
    async fn ring(&self, vnodes: u32) -> Result<ring::Ring, StoreError> {
        Ok(ring::Ring::new(self.list().await?, vnodes))
    }
}
