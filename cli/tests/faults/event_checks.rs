//! The invariants of the events round, read from the databases (order, inventory,
//! notification, the mail provider's ledger) and JetStream's consumer info after settling:
//!
//! - every PAID order has exactly one allocation or backorder (the inventory's fulfilment, and
//!   exactly one StockAllocated or OrderBackordered in its outbox), exactly one CONFIRMED or
//!   BACKORDERED notification to match (and the ledger's one message), and the order records
//!   the same fulfilment;
//! - every cancelled paid order: its allocation released exactly once (RELEASED and one
//!   StockReleased; a backordered one just CANCELLED, no release) and exactly one CANCELLED
//!   notification;
//! - per SKU: on hand = initial − allocated + released, and `allocated` = what ALLOCATED
//!   orders hold; an order's allocations are its lines;
//! - nothing (fulfilment, allocation, notification, sent message) for an order that does not
//!   exist or was never paid;
//! - every durable consumer's lag 0, nothing dead-lettered.

use std::collections::{BTreeMap, HashMap};

use sqlx::{AnyPool, Row as _};

use super::events::CONSUMERS;

/// The pools the checks read.
pub struct Databases<'a> {
    pub orders: &'a AnyPool,
    pub inventory: &'a AnyPool,
    pub notifications: &'a AnyPool,
}

async fn pairs(db: &AnyPool, sql: &'static str) -> Vec<(String, String)> {
    sqlx::query(sql)
        .fetch_all(db)
        .await
        .expect(sql)
        .iter()
        .map(|r| (r.try_get(0).expect(sql), r.try_get(1).expect(sql)))
        .collect()
}

/// Per (order, sku): the quantity, from rows of (order_id, sku, quantity).
async fn quantities(db: &AnyPool, sql: &'static str) -> BTreeMap<(String, String), i64> {
    let mut out = BTreeMap::new();
    for r in sqlx::query(sql).fetch_all(db).await.expect(sql) {
        let key = (r.try_get(0).expect(sql), r.try_get(1).expect(sql));
        *out.entry(key).or_default() += r.try_get::<i64, _>(2).expect(sql);
    }
    out
}

/// How many events of each type each subject (order) has in an outbox.
async fn outbox(db: &AnyPool) -> HashMap<(String, String), usize> {
    let mut out = HashMap::new();
    for key in pairs(db, "SELECT subject, event_type FROM outbox").await {
        *out.entry(key).or_default() += 1;
    }
    out
}

/// Every invariant but the lag; violations name the order or SKU. Prints the counts.
pub async fn check(db: &Databases<'_>, initial: &[(String, i64)]) -> Vec<String> {
    let mut violations = Vec::new();
    let order_rows =
        sqlx::query("SELECT id, state, fulfilment FROM orders").fetch_all(db.orders).await.expect("orders");
    let orders: HashMap<String, (String, Option<String>)> = order_rows
        .iter()
        .map(|r| {
            (
                r.try_get("id").expect("id"),
                (r.try_get("state").expect("state"), r.try_get("fulfilment").expect("f")),
            )
        })
        .collect();
    let order_events = outbox(db.orders).await;
    let inventory_events = outbox(db.inventory).await;
    let lines = quantities(db.orders, "SELECT order_id, sku, quantity FROM order_items").await;
    let allocations = quantities(db.inventory, "SELECT order_id, sku, quantity FROM allocations").await;
    let fulfilments: HashMap<String, String> =
        pairs(db.inventory, "SELECT order_id, state FROM fulfilments").await.into_iter().collect();
    let mut notified: HashMap<String, Vec<String>> = HashMap::new();
    for (order_id, kind) in pairs(db.notifications, "SELECT order_id, kind FROM notifications").await {
        notified.entry(order_id).or_default().push(kind);
    }
    let ledger: Vec<String> = sqlx::query_scalar("SELECT idempotency_key FROM mail_ledger")
        .fetch_all(db.notifications)
        .await
        .expect("ledger");
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    for key in &ledger {
        let (order_id, kind) = key.split_once('/').unwrap_or((key, ""));
        sent.entry(order_id.to_owned()).or_default().push(kind.to_owned());
    }

    let events_of = |events: &HashMap<(String, String), usize>, id: &str, ty: &str| {
        events.get(&(id.to_owned(), ty.to_owned())).copied().unwrap_or(0)
    };
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, (state, order_fulfilment)) in &orders {
        let paid = events_of(&order_events, id, "shopmesh.order.v1.OrderPaid");
        let cancelled = events_of(&order_events, id, "shopmesh.order.v1.OrderCancelled");
        let allocated = events_of(&inventory_events, id, "shopmesh.inventory.v1.StockAllocated");
        let backordered = events_of(&inventory_events, id, "shopmesh.inventory.v1.OrderBackordered");
        let released = events_of(&inventory_events, id, "shopmesh.inventory.v1.StockReleased");
        let fulfilment = fulfilments.get(id).map(String::as_str);
        let mut kinds = notified.get(id).cloned().unwrap_or_default();
        kinds.sort();
        let mut mailed = sent.get(id).cloned().unwrap_or_default();
        mailed.sort();
        if paid > 1 || cancelled > 1 {
            violations
                .push(format!("order {id}: {paid} OrderPaid and {cancelled} OrderCancelled in its outbox"));
        }
        if paid == 0 {
            // Never paid: nothing may have happened to it downstream (a cancelled unpaid order
            // may be told it was cancelled).
            if fulfilment.is_some() || allocated + backordered + released > 0 {
                violations.push(format!("order {id} ({state}) never paid, yet fulfilment {fulfilment:?}"));
            }
            kinds.retain(|k| k != "CANCELLED");
            if !kinds.is_empty() {
                violations.push(format!("order {id} ({state}) never paid, yet notified {kinds:?}"));
            }
            continue;
        }
        // A cancel handled before its OrderPaid (that one redelivered late) leaves nothing to
        // allocate: the inventory records the order cancelled, and no allocation or backorder.
        let first = match (allocated, backordered) {
            (1, 0) => Some("CONFIRMED"),
            (0, 1) => Some("BACKORDERED"),
            (0, 0) if state == "CANCELLED" => None,
            _ => {
                violations.push(format!(
                    "{state} order {id}: {allocated} allocations and {backordered} backorders published"
                ));
                continue;
            }
        };
        let (want_fulfilment, want_kinds, want_released, recorded) = match (state.as_str(), first) {
            ("PAID", Some("CONFIRMED")) => ("ALLOCATED", vec!["CONFIRMED"], 0, Some("ALLOCATED")),
            ("PAID", Some(_)) => ("BACKORDERED", vec!["BACKORDERED"], 0, Some("BACKORDERED")),
            ("CANCELLED", Some("CONFIRMED")) => {
                ("RELEASED", vec!["CANCELLED", "CONFIRMED"], 1, Some("RELEASED"))
            }
            // The order records what the inventory said: a backorder cancelled stays BACKORDERED.
            ("CANCELLED", Some(_)) => ("CANCELLED", vec!["BACKORDERED", "CANCELLED"], 0, Some("BACKORDERED")),
            ("CANCELLED", None) => ("CANCELLED", vec!["CANCELLED"], 0, None),
            _ => {
                violations.push(format!("order {id} is {state} after an OrderPaid"));
                continue;
            }
        };
        *counts.entry(if state == "PAID" { "paid" } else { "cancelled after paid" }).or_default() += 1;
        *counts.entry(want_fulfilment).or_default() += 1;
        if fulfilment != Some(want_fulfilment) {
            violations
                .push(format!("order {id} {state}: inventory says {fulfilment:?}, not {want_fulfilment}"));
        }
        if released != want_released {
            violations
                .push(format!("order {id} {state}: {released} releases published, not {want_released}"));
        }
        if kinds != want_kinds {
            violations.push(format!("order {id} {state}: notified {kinds:?}, not {want_kinds:?}"));
        }
        if mailed != want_kinds {
            violations
                .push(format!("order {id} {state}: the mail ledger sent {mailed:?}, not {want_kinds:?}"));
        }
        if order_fulfilment.as_deref() != recorded {
            violations.push(format!(
                "order {id} {state}: its fulfilment is {order_fulfilment:?}, not {recorded:?}"
            ));
        }
        if allocated > 0 {
            let of = |m: &BTreeMap<(String, String), i64>| {
                m.iter().filter(|((o, _), _)| o == id).map(|((_, s), q)| (s.clone(), *q)).collect::<Vec<_>>()
            };
            if of(&allocations) != of(&lines) {
                violations.push(format!(
                    "order {id}: allocated {:?}, ordered {:?}",
                    of(&allocations),
                    of(&lines)
                ));
            }
        }
    }
    let exists = |id: &String| orders.contains_key(id);
    for id in fulfilments.keys().filter(|id| !exists(id)) {
        violations.push(format!("a fulfilment for order {id}, which does not exist"));
    }
    for ((id, sku), _) in allocations.iter().filter(|((id, _), _)| !exists(id)) {
        violations.push(format!("an allocation of {sku} for order {id}, which does not exist"));
    }
    for id in notified.keys().chain(sent.keys()).filter(|id| !exists(id)) {
        violations.push(format!("a notification for order {id}, which does not exist"));
    }

    // Stock: initial − allocated + released, and what ALLOCATED orders hold.
    let stock = sqlx::query("SELECT sku, on_hand, allocated FROM stock")
        .fetch_all(db.inventory)
        .await
        .expect("stock");
    for row in &stock {
        let sku: String = row.try_get("sku").expect("sku");
        let (on_hand, held): (i64, i64) =
            (row.try_get("on_hand").expect("on_hand"), row.try_get("allocated").expect("allocated"));
        let initial = initial.iter().find(|(s, _)| *s == sku).map_or(0, |(_, n)| *n);
        let (mut allocated, mut released, mut holding) = (0, 0, 0);
        for ((id, _), q) in allocations.iter().filter(|((_, s), _)| *s == sku) {
            allocated += q;
            match fulfilments.get(id).map(String::as_str) {
                Some("RELEASED") => released += q,
                Some("ALLOCATED") => holding += q,
                other => violations.push(format!("order {id} holds an allocation of {sku} but is {other:?}")),
            }
        }
        if on_hand != initial - allocated + released || held != holding {
            violations.push(format!(
                "{sku}: on hand {on_hand}, allocated {held}; initial {initial} - allocated {allocated} + released {released} = {}, held {holding}",
                initial - allocated + released
            ));
        }
        println!("{sku}: initial {initial}, allocated {allocated}, released {released}, on hand {on_hand}");
    }
    let kinds = |k: &str| notified.values().flatten().filter(|x| *x == k).count();
    println!(
        "events: {} orders, {counts:?}; notifications CONFIRMED {}, BACKORDERED {}, CANCELLED {}; {} messages in the mail ledger",
        orders.len(),
        kinds("CONFIRMED"),
        kinds("BACKORDERED"),
        kinds("CANCELLED"),
        ledger.len()
    );
    violations
}

/// Each durable consumer's lag as JetStream counts it: pending plus delivered and not acked.
pub async fn consumer_lag(js: &async_nats::jetstream::Context) -> Vec<(&'static str, u64)> {
    let mut lag = Vec::new();
    for (stream, durable) in CONSUMERS {
        let info = match js.get_stream(stream).await {
            Ok(s) => s.consumer_info(durable).await.ok(),
            Err(_) => None,
        };
        // A consumer not there (yet) or a broker not answering counts as lagging.
        lag.push((durable, info.map_or(u64::MAX, |i| i.num_pending + i.num_ack_pending as u64)));
    }
    lag
}

/// Lag back to 0 on every consumer, and nothing dead-lettered; prints the redeliveries seen.
pub async fn lag(js: &async_nats::jetstream::Context) -> Vec<String> {
    let mut violations = Vec::new();
    for (durable, n) in consumer_lag(js).await {
        if n != 0 {
            violations.push(format!("consumer {durable} still {n} behind"));
        }
    }
    let dead = match js.get_stream("SHOPMESH_DEAD_LETTER").await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(u64::MAX),
        Err(_) => 0,
    };
    if dead != 0 {
        violations.push(format!("{dead} events dead-lettered"));
    }
    println!(
        "consumer lag 0 on {} consumers: {}; dead letters {dead}",
        CONSUMERS.len(),
        violations.is_empty()
    );
    violations
}
