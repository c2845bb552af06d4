//! Memory per cached presence entry: fills the presence store with N users
//! (one session each), then looks every user up through the cache, and
//! prints the RSS growth of the second step divided by N.
//!
//!   cargo run --release --example presence_cache_memory -- 1000000

use std::sync::Arc;
use std::time::Duration;

use switchyard::presence::cache::CachedPresence;
use switchyard::presence::memory::MemoryPresence;
use switchyard::presence::{PresenceConfig, PresenceStore, Session};
use switchyard::UserId;
use switchyard_cli::bench::process::rss;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let config = PresenceConfig {
        cache_capacity: n * 2,
        cache_ttl: Duration::from_secs(3600),
        ..PresenceConfig::default()
    };
    let store = Arc::new(MemoryPresence::new(Duration::from_secs(3600)));
    let users: Vec<UserId> = (0..n)
        .map(|i| UserId::try_from(format!("user-{i:08}")).unwrap())
        .collect();
    for (i, user) in users.iter().enumerate() {
        store
            .online(Session {
                user: user.clone(),
                device: "phone".into(),
                gateway: format!("gw-eu-{}", i % 100).parse().unwrap(),
                region: "eu".into(),
                since_micros: 0,
            })
            .await?;
    }
    let cached = CachedPresence::new(store, &config);
    let before = rss();
    for user in &users {
        cached.locate_shared(user).await?;
    }
    let after = rss();
    println!(
        "{n} cached entries: RSS {:.1} MiB -> {:.1} MiB, {:.0} B per entry (user id, one session, cache bookkeeping)",
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / n as f64
    );
    Ok(())
}
