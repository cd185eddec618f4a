//! Rounds and items in the database: create, read, and status changes made
//! with a conditional update so two reviewers cannot both win.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set,
    TransactionTrait, sea_query::Expr,
};

use super::{
    StoreError,
    entities::{item, round},
};
use crate::domain::{NewRound, RoundStatus};

/// A round with its items.
#[derive(Clone, Debug)]
pub struct RoundWithItems {
    pub round: round::Model,
    pub items: Vec<item::Model>,
}

/// Inserts a draft round and its items in one transaction.
pub async fn create(
    db: &DatabaseConnection,
    new: &NewRound,
    created_by: &str,
    now_ms: i64,
) -> Result<RoundWithItems, StoreError> {
    let txn = db.begin().await?;
    let round = round::ActiveModel {
        name: Set(new.name.clone()),
        starts_at_ms: Set(new.starts_at_ms),
        ends_at_ms: Set(new.ends_at_ms),
        status: Set(RoundStatus::Draft.as_str().to_owned()),
        created_by: Set(created_by.to_owned()),
        submitted_by: Set(None),
        reviewed_by: Set(None),
        reject_reason: Set(None),
        created_at_ms: Set(now_ms),
        updated_at_ms: Set(now_ms),
        admission_window_ms: Set(new.admission_window_ms),
        pow_difficulty: Set(new.pow_difficulty),
        ..Default::default()
    }
    .insert(&txn)
    .await?;
    let mut items = Vec::with_capacity(new.items.len());
    for it in &new.items {
        let m = item::ActiveModel {
            round_id: Set(round.id),
            title: Set(it.title.clone()),
            description: Set(it.description.clone()),
            image_url: Set(it.image_url.clone()),
            original_price_cents: Set(it.original_price_cents),
            sale_price_cents: Set(it.sale_price_cents),
            stock: Set(it.stock),
            per_user_limit: Set(it.per_user_limit),
            ..Default::default()
        }
        .insert(&txn)
        .await?;
        items.push(m);
    }
    txn.commit().await?;
    Ok(RoundWithItems { round, items })
}

/// A round and its items, `None` if there is no such round.
pub async fn get(
    db: &DatabaseConnection,
    round_id: i64,
) -> Result<Option<RoundWithItems>, StoreError> {
    let Some(round) = round::Entity::find_by_id(round_id).one(db).await? else {
        return Ok(None);
    };
    let items = item::Entity::find()
        .filter(item::Column::RoundId.eq(round_id))
        .order_by_asc(item::Column::Id)
        .all(db)
        .await?;
    Ok(Some(RoundWithItems { round, items }))
}

/// Every approved round with its items, oldest first.
pub async fn approved(db: &DatabaseConnection) -> Result<Vec<RoundWithItems>, StoreError> {
    with_items(
        db,
        round::Entity::find()
            .filter(round::Column::Status.eq(RoundStatus::Approved.as_str()))
            .order_by_asc(round::Column::Id),
    )
    .await
}

/// Approved rounds that have not ended, with their items, soonest first.
pub async fn visible(
    db: &DatabaseConnection,
    now_ms: i64,
) -> Result<Vec<RoundWithItems>, StoreError> {
    with_items(
        db,
        round::Entity::find()
            .filter(round::Column::Status.eq(RoundStatus::Approved.as_str()))
            .filter(round::Column::EndsAtMs.gt(now_ms))
            .order_by_asc(round::Column::StartsAtMs),
    )
    .await
}

/// The rounds `query` selects, each with its items in id order.
async fn with_items(
    db: &DatabaseConnection,
    query: sea_orm::Select<round::Entity>,
) -> Result<Vec<RoundWithItems>, StoreError> {
    let rounds = query.find_with_related(item::Entity).all(db).await?;
    Ok(rounds
        .into_iter()
        .map(|(round, mut items)| {
            items.sort_by_key(|i| i.id);
            RoundWithItems { round, items }
        })
        .collect())
}

/// Moves a round from `from` to `to` only if it is still in `from`; returns
/// whether this call made the change.
pub async fn transition(
    db: &DatabaseConnection,
    round_id: i64,
    from: RoundStatus,
    to: RoundStatus,
    actor: &str,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    let mut q = round::Entity::update_many()
        .col_expr(round::Column::Status, Expr::value(to.as_str()))
        .col_expr(round::Column::UpdatedAtMs, Expr::value(now_ms));
    q = match to {
        RoundStatus::Submitted => q
            .col_expr(round::Column::SubmittedBy, Expr::value(actor))
            .col_expr(
                round::Column::ReviewedBy,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                round::Column::RejectReason,
                Expr::value(Option::<String>::None),
            ),
        RoundStatus::Approved | RoundStatus::Rejected => q
            .col_expr(round::Column::ReviewedBy, Expr::value(actor))
            .col_expr(
                round::Column::RejectReason,
                Expr::value(reason.map(str::to_owned)),
            ),
        RoundStatus::Draft => q,
    };
    let res = q
        .filter(round::Column::Id.eq(round_id))
        .filter(round::Column::Status.eq(from.as_str()))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}
