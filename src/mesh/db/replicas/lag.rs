//! Each replica's replay lag, measured on the replica itself every [`LAG_INTERVAL`] (never per
//! call), and whether reads may use it.
//!
//! Lag is 0 while the standby streams from its primary with nothing received left to replay
//! (`pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()`: an idle primary sends nothing, and
//! the time of the last replayed commit says nothing then); otherwise it is the age of the last
//! replayed commit (`now() - pg_last_xact_replay_timestamp()`), which overstates it after a
//! quiet spell, never understates it. A standby not streaming (its WAL receiver gone) is
//! judged by that age alone, so one cut off from its primary is left once it is older than
//! `--max-replica-lag`. A server not in recovery (the read URL names a primary) has no lag.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::Row as _;

use super::{LAG_INTERVAL, POOL, Replicas, SERVER};

/// The lag in seconds, NULL when unknown (nothing replayed yet and not caught up). The simple
/// protocol (no parameters), so it passes any pooler unchanged.
const LAG: &str = "SELECT CAST(CASE \
     WHEN NOT pg_is_in_recovery() THEN 0 \
     WHEN EXISTS (SELECT 1 FROM pg_stat_wal_receiver) \
          AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
     ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END AS DOUBLE PRECISION)";

/// Watches replica `index` of `replicas` until they are dropped: its lag every
/// [`LAG_INTERVAL`], and whether it is usable (answering within the interval, lag at most
/// `max_lag`). Each change is logged once; so is every replica becoming unusable, when reads
/// go to the primary.
pub(super) async fn watch(replicas: Weak<Replicas>, index: usize, max_lag: Duration, name: &'static str) {
    let mut tick = tokio::time::interval(LAG_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut logged_first = false;
    loop {
        tick.tick().await;
        let Some(replicas) = replicas.upgrade() else { return };
        let replica = &replicas.members[index];
        let measured = tokio::time::timeout(LAG_INTERVAL, async {
            let mut conn = replica.pool.acquire().await?;
            sqlx::raw_sql(LAG).fetch_one(&mut *conn).await?.try_get::<Option<f64>, _>(0)
        })
        .await;
        let lag_gauge = metrics::gauge!("shopmesh_db_replica_lag_seconds", POOL => name, SERVER => replica.address.clone());
        let usable_gauge =
            metrics::gauge!("shopmesh_db_replica_usable", POOL => name, SERVER => replica.address.clone());
        let (usable, why) = match measured {
            Ok(Ok(Some(lag))) => {
                lag_gauge.set(lag);
                if lag <= max_lag.as_secs_f64() {
                    (true, String::new())
                } else {
                    (false, format!("replay lag {lag:.1}s over --max-replica-lag {max_lag:?}"))
                }
            }
            Ok(Ok(None)) => (false, "replay lag unknown (nothing replayed yet)".to_owned()),
            Ok(Err(err)) => (false, format!("not answering: {err}")),
            Err(_) => (false, format!("no answer within {LAG_INTERVAL:?}")),
        };
        usable_gauge.set(if usable { 1.0 } else { 0.0 });
        let was = replica.usable.swap(usable, Ordering::Relaxed);
        if was != usable || !logged_first {
            logged_first = true;
            if usable {
                tracing::info!(pool = name, replica = %replica.address, "replica in use for reads");
            } else {
                tracing::warn!(pool = name, replica = %replica.address, reason = %why,
                               "replica not used for reads until it catches up");
            }
            if !replicas.members.iter().any(|r| r.usable.load(Ordering::Relaxed)) && (was || !usable) {
                tracing::warn!(pool = name, "no replica usable: read-only calls read from the primary");
            }
        }
    }
}
