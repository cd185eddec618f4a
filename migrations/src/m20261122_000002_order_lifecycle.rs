//! Payment and settlement columns on orders.
//!
//! - `payment_started_at_ms`: set while a payment is in flight (status
//!   `paying`), so a payment whose outcome was never learnt can be resolved.
//! - `charge_id`: the payment provider's reference of the charge.
//! - `counters_applied`: false between a settlement decided in the database
//!   (paid, expired) and its effect on the Redis counters; the lifecycle
//!   sweep re-applies what a crash left half done.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261122_000002_order_lifecycle"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        for col in [
            ColumnDef::new(Orders::PaymentStartedAtMs)
                .big_integer()
                .null()
                .to_owned(),
            ColumnDef::new(Orders::ChargeId).string().null().to_owned(),
            ColumnDef::new(Orders::CountersApplied)
                .boolean()
                .not_null()
                .default(true)
                .to_owned(),
        ] {
            let mut col = col;
            manager
                .alter_table(
                    Table::alter()
                        .table(Orders::Table)
                        .add_column(&mut col)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_orders_counters_applied")
                    .table(Orders::Table)
                    .col(Orders::CountersApplied)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_orders_round_item_status")
                    .table(Orders::Table)
                    .col(Orders::RoundId)
                    .col(Orders::ItemId)
                    .col(Orders::Status)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for name in [
            "idx_orders_counters_applied",
            "idx_orders_round_item_status",
        ] {
            manager
                .drop_index(Index::drop().name(name).table(Orders::Table).to_owned())
                .await?;
        }
        for col in [
            Orders::PaymentStartedAtMs,
            Orders::ChargeId,
            Orders::CountersApplied,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Orders::Table)
                        .drop_column(col)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    RoundId,
    ItemId,
    Status,
    PaymentStartedAtMs,
    ChargeId,
    CountersApplied,
}
