//! One row of the table: what the shop asks after a sale with a fault,
//! computed from the stores (Redis counters and attempts, the orders in the
//! database, the backend's own reconcile without repair) and from what
//! every buyer was told (the crowd's ledger). Also the wait for the sale to
//! come to rest before judging.
//!
//! This module reads the stores; it never writes to them.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use seckill_backend::{
    domain::attempt::AttemptId,
    store::{entities::order, keys::ItemKeys},
};
use seckill_loadgen::{
    buyer::Told,
    setup::RoundInfo,
    verdict::{Snapshot, StoreReader},
};
use serde::Serialize;
use tokio::time::Instant;

use crate::scenario::{FaultRecord, Scenario};

/// One scenario's figures and whether they meet the goal.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Row {
    pub scenario: u32,
    pub name: String,
    pub round_id: i64,
    pub buyers: u32,
    pub stock: i64,
    /// Buy requests answered `202`.
    pub accepted: u64,
    /// Attempts a buyer first learnt of from a `200` (a retry that found
    /// the attempt after the 202 was lost); judged like the 202s.
    pub accepted_on_retry: u64,
    /// Units of paid orders.
    pub units_sold: i64,
    /// Buy answers `503` (as the crowd saw them, edge or backend).
    pub answers_503: u64,
    /// Of those, the backends' (the edge's own 503 — no permit could be
    /// leased in time — carries `retry_after_ms`).
    pub answers_503_backend: u64,
    /// Buy requests that got no HTTP answer (connection refused, reset,
    /// timeout).
    pub buy_errors: u64,
    /// Units beyond stock: live orders in the database, reserved + sold in
    /// Redis (per item the larger, summed).
    pub oversold: i64,
    pub oversold_db: i64,
    pub oversold_redis: i64,
    /// Units still reserved once the sale ended, the payment timeout ran
    /// and nothing was in flight: Redis `reserved`, or units of orders
    /// still unpaid past their deadline (per item the larger, summed).
    pub stranded: i64,
    /// Attempts still `queued`/`writing` in Redis at the end.
    pub stranded_attempts: u64,
    /// Buyers told 202 whose attempt ended `cancelled` for a reason other
    /// than their own non-payment (`expired`), by reason.
    pub false_accepts: u64,
    pub false_accept_reasons: BTreeMap<String, u64>,
    /// Buyers first told `202 processing` (journaled while Redis was away).
    pub journaled: u64,
    /// Of those, the ones whose replay was refused (`sold_out`, …): not
    /// false accepts — `processing` promises nothing — but bounded by the
    /// journal (by default each item's stock).
    pub processing_refused: u64,
    /// The journals' bound over the round's items: each backend's journal
    /// holds up to each item's stock (the default).
    pub journal_bound: i64,
    /// (Scenario 12) orders written while the broker was still down.
    pub orders_while_broker_down: Option<u64>,
    /// Reservations the fault itself destroyed (Redis restarts only): told
    /// 202, made before the kill, absent from Redis right after the
    /// restart and without an order in the database at that moment (an
    /// order is the reservation's durable record, so Redis losing it
    /// destroys nothing).
    pub destroyed: Option<u64>,
    /// Told 202, made before the kill, absent from Redis right after the
    /// restart, whether or not the database had its order.
    pub missing_after_restart: Option<u64>,
    /// Buyers told 202 who never saw `ordered`/`cancelled`.
    pub no_final_answer: u64,
    /// Buyers told 202 whose attempt has neither an order in the database
    /// nor a recorded cancellation.
    pub acked_lost: u64,
    /// Buyers whose payment was answered `200` but whose order is not paid.
    pub paid_not_sold: u64,
    /// Items whose Redis counters disagree with the database (reconcile).
    pub counters_disagree: u64,
    /// Units edge leases hold beyond what is available (the permit
    /// invariant: leases never exceed `available`).
    pub permits_over: i64,
    /// Units live edge leases still hold once the sale is at rest: with no
    /// one buying, the pool must be all that is available.
    pub permits_held_at_rest: i64,
    /// Seconds from the injection to the first 202 for a buy sent after it.
    pub recovery_secs: Option<f64>,
    /// Seconds from the injection until the fault was lifted.
    pub fault_secs: Option<f64>,
    /// Units available, and units not yet sold, just before the injection
    /// (Redis).
    pub available_at_fault: Option<i64>,
    pub unsold_at_fault: Option<i64>,
    /// Seconds over which the crowd arrived.
    pub spread_secs: f64,
    /// The crowd was cut by its time cap.
    pub crowd_capped: bool,
    pub elapsed_secs: f64,
    pub passed: bool,
    /// Every goal the row misses, with its figure.
    pub why: Vec<String>,
    pub notes: Vec<String>,
}

/// How far ahead of its deadline a refused payment must have been sent to
/// count as paid in time (clock reading and network slack).
const PAY_MARGIN_MS: i64 = 250;

/// Statuses of an order that hold units.
fn live(status: &str) -> bool {
    status != order::status::CANCELLED
}

fn unsettled(status: &str) -> bool {
    status == order::status::PENDING_PAYMENT || status == order::status::PAYING
}

/// Waits until the round is at rest — no attempt queued or being written,
/// no order pending or paying, nothing reserved — or `limit` passes;
/// returns the last snapshot either way.
pub async fn quiesce(
    reader: &StoreReader,
    round_id: i64,
    limit: Duration,
) -> anyhow::Result<Snapshot> {
    let deadline = Instant::now() + limit;
    loop {
        let s = reader.snapshot(round_id).await?;
        let reserved: i64 = s
            .items
            .iter()
            .map(|i| i.counters.map(|c| c[2]).unwrap_or(0))
            .sum();
        let open_orders = s.orders.iter().filter(|o| unsettled(&o.status)).count();
        if (s.pending() == 0 && open_orders == 0 && reserved == 0) || Instant::now() >= deadline {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The status and reason Redis holds for each of `ids`.
pub async fn attempt_states(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    ids: &[&String],
) -> anyhow::Result<HashMap<String, (Option<String>, Option<String>)>> {
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let mut pipe = redis::pipe();
        for id in chunk {
            let key = match id.parse::<AttemptId>() {
                Ok(a) => ItemKeys::new(prefix, a.round_id, a.item_id).attempt(id),
                Err(_) => format!("{prefix}:unparsable:{id}"),
            };
            // A journaled buy the replay refused has no attempt, only its
            // recorded answer.
            let refusal = match id.parse::<AttemptId>() {
                Ok(a) => ItemKeys::new(prefix, a.round_id, a.item_id).journaled(id),
                Err(_) => format!("{prefix}:unparsable:{id}"),
            };
            pipe.cmd("HMGET").arg(key).arg("status").arg("reason");
            pipe.cmd("HMGET").arg(refusal).arg("status").arg("reason");
        }
        let v: Vec<(Option<String>, Option<String>)> = pipe.query_async(redis).await?;
        for (id, pair) in chunk.iter().zip(v.chunks(2)) {
            let st = if pair[0].0.is_some() {
                pair[0].clone()
            } else {
                pair[1].clone()
            };
            out.insert((*id).clone(), st);
        }
    }
    Ok(out)
}

/// Edge permits of one item at rest: units available, and units held by
/// leases that have not expired.
#[derive(Clone, Copy, Debug, Default)]
pub struct Leases {
    pub available: i64,
    pub leased: i64,
}

/// Waits until no live edge lease holds units of the round's items (idle
/// edges hand theirs back; a dead edge's lease expires), or `limit`
/// passes; returns the last reading. Expired leases not yet reclaimed
/// count as free: Redis reclaims them on the next call.
pub async fn leases_at_rest(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    round: &RoundInfo,
    limit: Duration,
) -> anyhow::Result<Vec<Leases>> {
    let deadline = Instant::now() + limit;
    loop {
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(redis).await?;
        let now = secs * 1000 + micros / 1000;
        let mut out = Vec::new();
        for item in &round.items {
            let k = ItemKeys::new(prefix, round.id, item.id);
            let available: Option<i64> = redis::cmd("HGET")
                .arg(k.stock())
                .arg("available")
                .query_async(redis)
                .await?;
            let held: HashMap<String, i64> = redis::cmd("HGETALL")
                .arg(k.leases())
                .query_async(redis)
                .await?;
            let exps: HashMap<String, i64> = redis::cmd("HGETALL")
                .arg(k.lease_exp())
                .query_async(redis)
                .await?;
            let leased = held
                .iter()
                .filter(|(n, _)| exps.get(*n).is_some_and(|e| *e > now))
                .map(|(_, u)| *u)
                .sum();
            out.push(Leases {
                available: available.unwrap_or(0),
                leased,
            });
        }
        if out.iter().all(|l| l.leased == 0) || Instant::now() >= deadline {
            return Ok(out);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Everything a row is computed from.
pub struct Inputs<'a> {
    pub scenario: Scenario,
    pub round: &'a RoundInfo,
    pub buyers: u32,
    pub told: &'a HashMap<String, Told>,
    pub buy_outcomes: &'a BTreeMap<String, u64>,
    pub snapshot: &'a Snapshot,
    /// Status and reason in Redis of every attempt told 202.
    pub redis_attempts: &'a HashMap<String, (Option<String>, Option<String>)>,
    /// The JSON of `seckill-backend reconcile` and whether it exited 2.
    pub reconcile: Option<(&'a serde_json::Value, bool)>,
    pub fault: &'a FaultRecord,
    pub crowd_capped: bool,
    /// Edge leases per item once at rest.
    pub leases: &'a [Leases],
}

/// Computes the row and judges it against the goal.
pub fn row(inp: &Inputs<'_>) -> Row {
    let sc = inp.scenario;
    let mut r = Row {
        scenario: sc.id,
        name: sc.name.to_owned(),
        round_id: inp.round.id,
        buyers: inp.buyers,
        stock: inp.round.total_stock(),
        accepted: inp.told.values().filter(|t| !t.retry).count() as u64,
        accepted_on_retry: inp.told.values().filter(|t| t.retry).count() as u64,
        crowd_capped: inp.crowd_capped,
        available_at_fault: inp.fault.available_at_fault,
        unsold_at_fault: inp.fault.unsold_at_fault,
        notes: inp.fault.notes.clone(),
        // Each of the two backends journals up to each item's stock.
        journal_bound: inp.round.total_stock() * 2,
        orders_while_broker_down: inp.fault.orders_while_down,
        ..Default::default()
    };
    for (outcome, n) in inp.buy_outcomes {
        if outcome.starts_with("503") {
            r.answers_503 += n;
            if !outcome.ends_with("at_edge") {
                r.answers_503_backend += n;
            }
        } else if outcome.starts_with("error") {
            r.buy_errors += n;
        }
    }

    let orders: HashMap<&str, &order::Model> = inp
        .snapshot
        .orders
        .iter()
        .map(|o| (o.attempt_id.as_str(), o))
        .collect();
    r.units_sold = inp
        .snapshot
        .orders
        .iter()
        .filter(|o| o.status == order::status::PAID)
        .map(|o| o.qty)
        .sum();

    if r.accepted_on_retry > 0 {
        r.notes.push(format!(
            "{} attempts reached their buyer only through a retry answered 200 (the 202 was lost)",
            r.accepted_on_retry
        ));
    }

    // Per item: oversold and stranded units.
    for is in &inp.snapshot.items {
        let stock = is.item.stock;
        let item_orders = || {
            inp.snapshot
                .orders
                .iter()
                .filter(|o| o.item_id == is.item.id)
        };
        let db_live: i64 = item_orders()
            .filter(|o| live(&o.status))
            .map(|o| o.qty)
            .sum();
        let db_open: i64 = item_orders()
            .filter(|o| unsettled(&o.status))
            .map(|o| o.qty)
            .sum();
        let (redis_over, reserved) = match is.counters {
            Some([_, _, reserved, sold]) => ((reserved + sold - stock).max(0), reserved),
            None => (0, 0),
        };
        let db_over = (db_live - stock).max(0);
        r.oversold_db += db_over;
        r.oversold_redis += redis_over;
        r.oversold += db_over.max(redis_over);
        r.stranded += reserved.max(db_open).max(0);
        if is.counters.is_none() {
            r.notes.push(format!(
                "item {}: no counters in Redis at the end",
                is.item.id
            ));
        }
    }
    r.stranded_attempts = inp.snapshot.pending() as u64;
    for l in inp.leases {
        r.permits_over += (l.leased - l.available).max(0);
        r.permits_held_at_rest += l.leased;
    }
    let stuck: Vec<String> = inp
        .snapshot
        .items
        .iter()
        .flat_map(|i| i.attempts.iter())
        .filter(|(_, a)| !matches!(a.status.as_str(), "ordered" | "paid" | "cancelled"))
        .take(3)
        .map(|(id, a)| {
            let told = if inp.told.contains_key(id) {
                "its buyer was told 202"
            } else {
                "its buyer was not told 202"
            };
            format!("{id} ({}, {told})", a.status)
        })
        .collect();
    if !stuck.is_empty() {
        r.notes.push(format!(
            "attempts left unfinished, e.g. {}",
            stuck.join(", ")
        ));
    }

    // Per buyer told 202: what became of the attempt.
    let mut lost_examples = Vec::new();
    for (id, t) in inp.told {
        if !matches!(t.status.as_str(), "ordered" | "paid" | "cancelled") {
            r.no_final_answer += 1;
        }
        let told_cancel = (t.status == "cancelled").then(|| t.reason.clone().unwrap_or_default());
        let stored = inp.redis_attempts.get(id).cloned().unwrap_or((None, None));
        let store_cancel: Option<String> = match orders.get(id.as_str()) {
            Some(o) if o.status == order::status::CANCELLED => {
                Some(o.cancel_reason.clone().unwrap_or_else(|| "unknown".into()))
            }
            Some(o) => {
                if t.paid && o.status != order::status::PAID {
                    r.paid_not_sold += 1;
                }
                None
            }
            None => match stored {
                (Some(s), reason) if s == "cancelled" => Some(match reason.as_deref() {
                    Some("expired") | None => "cancelled_without_order".into(),
                    Some(x) => x.to_owned(),
                }),
                (status, _) => {
                    if told_cancel.is_none() {
                        r.acked_lost += 1;
                        if lost_examples.len() < 3 {
                            lost_examples.push(format!(
                                "{id} (redis: {})",
                                status.as_deref().unwrap_or("missing")
                            ));
                        }
                    }
                    None
                }
            },
        };
        if t.paid
            && let Some(o) = orders.get(id.as_str())
            && o.status == order::status::CANCELLED
        {
            r.paid_not_sold += 1;
        }
        // A payment sent well before the order's deadline (by the clock
        // that set it) and refused as expired: not the buyer's non-payment.
        let paid_in_time = t.pay_status == 409
            && orders
                .get(id.as_str())
                .is_some_and(|o| t.pay_sent_ms + PAY_MARGIN_MS < o.pay_by_ms);
        let store_cancel = match store_cancel {
            Some(reason) if reason == "expired" && paid_in_time => {
                Some("expired_though_paid_in_time".to_owned())
            }
            other => other,
        };
        let false_reason = [told_cancel, store_cancel]
            .into_iter()
            .flatten()
            .find(|reason| reason != "expired");
        if t.processing {
            r.journaled += 1;
        }
        // `processing` then refused without an order: the journal's
        // replay said no; the buyer was never told the units were theirs.
        if t.processing && false_reason.is_some() && !orders.contains_key(id.as_str()) {
            r.processing_refused += 1;
            continue;
        }
        if let Some(reason) = false_reason {
            r.false_accepts += 1;
            *r.false_accept_reasons.entry(reason).or_default() += 1;
        }
    }
    if !lost_examples.is_empty() {
        r.notes
            .push(format!("lost, e.g. {}", lost_examples.join(", ")));
    }

    // Reservations the fault destroyed: told 202, made before the kill,
    // absent from Redis right after the restart, not yet in the database.
    if sc.can_destroy()
        && let Some((present, ordered)) = inp.fault.after_restart.as_ref()
    {
        let killed = inp.fault.injected_ms.unwrap_or(i64::MAX);
        let missing: Vec<&String> = inp
            .told
            .keys()
            .filter(|id| {
                id.parse::<AttemptId>()
                    .is_ok_and(|a| (a.ulid.timestamp_ms() as i64) < killed)
                    && !present.contains(*id)
            })
            .collect();
        r.missing_after_restart = Some(missing.len() as u64);
        let destroyed = missing.iter().filter(|id| !ordered.contains(**id)).count() as u64;
        r.notes.push(format!(
            "{} attempts told 202 before the kill were missing from Redis after the restart; \
             {destroyed} of them had no order in the database yet (destroyed)",
            missing.len()
        ));
        r.destroyed = Some(destroyed);
    }

    // Reconcile, without repair.
    match inp.reconcile {
        Some((json, differs)) => {
            let items = json
                .get("items")
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default();
            let mut examples = Vec::new();
            for it in &items {
                let diffs = it
                    .get("differences")
                    .and_then(|v| v.as_array())
                    .map(|d| d.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>())
                    .unwrap_or_default();
                if !diffs.is_empty() {
                    r.counters_disagree += 1;
                    if examples.len() < 2 {
                        examples.push(format!(
                            "item {}: {}",
                            it.get("item_id").and_then(|v| v.as_i64()).unwrap_or(0),
                            diffs.join("; ")
                        ));
                    }
                }
            }
            if differs && r.counters_disagree == 0 {
                r.counters_disagree = 1;
                examples.push("reconcile exited 2".into());
            }
            if !examples.is_empty() {
                r.notes.push(format!("reconcile: {}", examples.join(" | ")));
            }
        }
        None => {
            r.counters_disagree = inp.snapshot.items.len() as u64;
            r.notes.push("reconcile could not run".into());
        }
    }

    // Recovery: the first 202 for a buy sent after the injection.
    if let Some(at) = inp.fault.injected_ms {
        r.fault_secs = inp.fault.lifted_ms.map(|l| (l - at) as f64 / 1000.0);
        r.recovery_secs = inp
            .told
            .values()
            .filter(|t| t.sent_ms >= at)
            .map(|t| t.told_ms)
            .min()
            .map(|first| (first - at) as f64 / 1000.0);
        if r.recovery_secs.is_none() {
            r.notes
                .push("no 202 for any buy sent after the injection".into());
        }
        if inp.fault.unsold_at_fault == Some(0) {
            r.notes
                .push("every unit was already sold when the fault was injected".into());
        }
    }

    judge(&mut r, inp.fault);
    r
}

fn judge(r: &mut Row, fault: &FaultRecord) {
    let mut why = Vec::new();
    if let Some(e) = &fault.error {
        why.push(format!("fault not injected as planned: {e}"));
    }
    if r.oversold > 0 {
        why.push(format!(
            "oversold {} (database {}, redis {})",
            r.oversold, r.oversold_db, r.oversold_redis
        ));
    }
    if r.permits_over > 0 {
        why.push(format!(
            "edge leases hold {} units more than available",
            r.permits_over
        ));
    }
    if r.permits_held_at_rest > 0 {
        why.push(format!(
            "edge leases still hold {} units at rest",
            r.permits_held_at_rest
        ));
    }
    if r.stranded > 0 {
        why.push(format!(
            "stranded {} units ({} attempts still queued/writing)",
            r.stranded, r.stranded_attempts
        ));
    }
    let allowed = r.destroyed.unwrap_or(0);
    if r.false_accepts > allowed {
        let reasons: Vec<String> = r
            .false_accept_reasons
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        why.push(format!(
            "false accepts {} > destroyed {allowed} ({})",
            r.false_accepts,
            reasons.join(", ")
        ));
    }
    if r.no_final_answer > 0 {
        why.push(format!(
            "{} buyers told 202 never saw a final answer",
            r.no_final_answer
        ));
    }
    if r.acked_lost > 0 {
        why.push(format!("{} acknowledged buys lost", r.acked_lost));
    }
    if r.processing_refused as i64 > r.journal_bound {
        why.push(format!(
            "{} buyers told processing were refused, beyond the journal bound {}",
            r.processing_refused, r.journal_bound
        ));
    }
    if fault.no_503_goal && r.answers_503_backend > 0 {
        why.push(format!(
            "{} buys answered 503 by a backend while the spool had room",
            r.answers_503_backend
        ));
    }
    if fault.orders_while_down == Some(0) {
        why.push("no order written while the broker was down".into());
    }
    if r.paid_not_sold > 0 {
        why.push(format!("{} paid orders not sold", r.paid_not_sold));
    }
    if r.counters_disagree > 0 {
        why.push(format!(
            "{} items' counters disagree with the database",
            r.counters_disagree
        ));
    }
    r.passed = why.is_empty();
    r.why = why;
}

#[cfg(test)]
mod tests {
    use super::*;
    use seckill_backend::store::entities::item;
    use seckill_loadgen::{setup::ItemInfo, verdict::ItemSnapshot};
    use serde_json::json;

    use crate::scenario;

    const A1: &str = "1-2-01M8TF2R1PWG8DKPAFYV5E37HX";
    const A2: &str = "1-2-01M8TF2R242SG0WGG1B8744FBA";
    const A3: &str = "1-2-01M8TF2R25KPRPB9M08BARSMS7";

    fn order(attempt: &str, status: &str, reason: Option<&str>) -> order::Model {
        order::Model {
            id: attempt.into(),
            attempt_id: attempt.into(),
            round_id: 1,
            item_id: 2,
            user_id: attempt.into(),
            qty: 1,
            unit_price_cents: 1,
            status: status.into(),
            reserved_at_ms: 0,
            created_at_ms: 0,
            pay_by_ms: 0,
            paid_at_ms: None,
            cancelled_at_ms: None,
            cancel_reason: reason.map(str::to_owned),
            payment_started_at_ms: None,
            charge_id: None,
            counters_applied: true,
        }
    }

    fn told(status: &str, reason: Option<&str>, paid: bool) -> Told {
        Told {
            user: "u".into(),
            item_id: 2,
            status: status.into(),
            reason: reason.map(str::to_owned),
            sent_ms: 10,
            told_ms: 20,
            paid,
            retry: false,
            pay_status: if paid { 200 } else { 0 },
            pay_sent_ms: 0,
            processing: false,
        }
    }

    fn snapshot(counters: [i64; 4], orders: Vec<order::Model>) -> Snapshot {
        Snapshot {
            round_id: 1,
            items: vec![ItemSnapshot {
                item: item::Model {
                    id: 2,
                    round_id: 1,
                    title: "t".into(),
                    description: "d".into(),
                    image_url: "i".into(),
                    original_price_cents: 2,
                    sale_price_cents: 1,
                    stock: counters[0],
                    per_user_limit: 1,
                },
                counters: Some(counters),
                buyers: HashMap::new(),
                attempts: HashMap::new(),
            }],
            orders,
        }
    }

    fn round() -> RoundInfo {
        RoundInfo {
            id: 1,
            status: "approved".into(),
            starts_at_ms: 0,
            ends_at_ms: 1,
            items: vec![ItemInfo {
                id: 2,
                title: "t".into(),
                stock: 2,
                per_user_limit: 1,
            }],
        }
    }

    fn judge_of(
        sc: u32,
        snap: &Snapshot,
        told: &HashMap<String, Told>,
        redis: &HashMap<String, (Option<String>, Option<String>)>,
        fault: &FaultRecord,
    ) -> Row {
        let reconcile = json!({"items": [{"item_id": 2, "differences": []}]});
        row(&Inputs {
            scenario: scenario::by_id(sc).unwrap(),
            round: &round(),
            buyers: 10,
            told,
            buy_outcomes: &BTreeMap::from([
                ("503 unavailable".into(), 4),
                ("202 queued".into(), 3),
            ]),
            snapshot: snap,
            redis_attempts: redis,
            reconcile: Some((&reconcile, false)),
            fault,
            crowd_capped: false,
            leases: &[Leases {
                available: 1,
                leased: 0,
            }],
        })
    }

    #[test]
    fn a_clean_sale_meets_the_goal() {
        let snap = snapshot(
            [2, 1, 0, 1],
            vec![
                order(A1, order::status::PAID, None),
                order(A2, order::status::CANCELLED, Some("expired")),
            ],
        );
        let told = HashMap::from([
            (A1.to_owned(), told("ordered", None, true)),
            (A2.to_owned(), told("ordered", None, false)),
        ]);
        let r = judge_of(0, &snap, &told, &HashMap::new(), &FaultRecord::default());
        assert!(r.passed, "{:?}", r.why);
        assert_eq!((r.accepted, r.units_sold, r.answers_503), (2, 1, 4));
    }

    #[test]
    fn every_failure_is_counted_and_explained() {
        // A1: cancelled sold_out after a 202; A2: nothing anywhere (lost);
        // A3: never saw a final status. Redis holds more than the stock.
        let snap = snapshot(
            [2, 0, 2, 1],
            vec![order(A1, order::status::CANCELLED, Some("sold_out"))],
        );
        let told = HashMap::from([
            (A1.to_owned(), told("cancelled", Some("sold_out"), false)),
            (A2.to_owned(), told("ordered", None, false)),
            (A3.to_owned(), told("queued", None, false)),
        ]);
        let redis = HashMap::from([(A3.to_owned(), (Some("queued".into()), None))]);
        let r = judge_of(3, &snap, &told, &redis, &FaultRecord::default());
        assert!(!r.passed);
        assert_eq!(r.false_accepts, 1);
        assert_eq!(r.false_accept_reasons.get("sold_out"), Some(&1));
        assert_eq!(
            r.acked_lost, 2,
            "A2 and A3 have neither order nor cancellation"
        );
        assert_eq!(r.no_final_answer, 1);
        assert_eq!(r.oversold, 1);
        assert_eq!(r.stranded, 2);
        assert_eq!(r.why.len(), 5, "{:?}", r.why);
    }

    #[test]
    fn a_payment_refused_before_the_deadline_is_no_non_payment() {
        let mut expired = order(A1, order::status::CANCELLED, Some("expired"));
        expired.pay_by_ms = 5_000;
        let snap = snapshot([2, 2, 0, 0], vec![expired]);
        let mut t = told("ordered", None, false);
        (t.pay_status, t.pay_sent_ms) = (409, 4_000);
        let told_map = HashMap::from([(A1.to_owned(), t.clone())]);
        let r = judge_of(
            11,
            &snap,
            &told_map,
            &HashMap::new(),
            &FaultRecord::default(),
        );
        assert_eq!(
            r.false_accept_reasons.get("expired_though_paid_in_time"),
            Some(&1)
        );
        // Sent after the deadline: the buyer's own lateness.
        t.pay_sent_ms = 5_100;
        let told_map = HashMap::from([(A1.to_owned(), t)]);
        let r = judge_of(
            11,
            &snap,
            &told_map,
            &HashMap::new(),
            &FaultRecord::default(),
        );
        assert!(r.passed, "{:?}", r.why);
    }

    #[test]
    fn false_accepts_within_what_a_redis_restart_destroyed_meet_the_goal() {
        let snap = snapshot([2, 2, 0, 0], vec![]);
        let told = HashMap::from([(A1.to_owned(), told("cancelled", Some("sold_out"), false))]);
        let redis = HashMap::from([(
            A1.to_owned(),
            (Some("cancelled".into()), Some("sold_out".into())),
        )]);
        let fault = FaultRecord {
            injected_ms: Some(i64::MAX),
            after_restart: Some((Default::default(), Default::default())),
            ..Default::default()
        };
        let r = judge_of(2, &snap, &told, &redis, &fault);
        assert_eq!((r.false_accepts, r.destroyed), (1, Some(1)));
        assert!(r.passed, "{:?}", r.why);
        // The same answer after a fault that destroys nothing misses it.
        assert!(!judge_of(3, &snap, &told, &redis, &FaultRecord::default()).passed);
    }
}
