//! Rounds, their items, and orders (one per reservation attempt).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261122_000001_rounds_items_orders"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Rounds::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Rounds::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Rounds::Name).string().not_null())
                    .col(ColumnDef::new(Rounds::StartsAtMs).big_integer().not_null())
                    .col(ColumnDef::new(Rounds::EndsAtMs).big_integer().not_null())
                    .col(ColumnDef::new(Rounds::Status).string().not_null())
                    .col(ColumnDef::new(Rounds::CreatedBy).string().not_null())
                    .col(ColumnDef::new(Rounds::SubmittedBy).string().null())
                    .col(ColumnDef::new(Rounds::ReviewedBy).string().null())
                    .col(ColumnDef::new(Rounds::RejectReason).string().null())
                    .col(ColumnDef::new(Rounds::CreatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(Rounds::UpdatedAtMs).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_rounds_status_ends")
                    .table(Rounds::Table)
                    .col(Rounds::Status)
                    .col(Rounds::EndsAtMs)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Items::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Items::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Items::RoundId).big_integer().not_null())
                    .col(ColumnDef::new(Items::Title).string().not_null())
                    .col(ColumnDef::new(Items::Description).text().not_null())
                    .col(ColumnDef::new(Items::ImageUrl).string().not_null())
                    .col(
                        ColumnDef::new(Items::OriginalPriceCents)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Items::SalePriceCents)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Items::Stock).big_integer().not_null())
                    .col(ColumnDef::new(Items::PerUserLimit).big_integer().not_null())
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_items_round")
                            .from(Items::Table, Items::RoundId)
                            .to(Rounds::Table, Rounds::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_items_round")
                    .table(Items::Table)
                    .col(Items::RoundId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Orders::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(Orders::Id).string().not_null().primary_key())
                    .col(ColumnDef::new(Orders::AttemptId).string().not_null())
                    .col(ColumnDef::new(Orders::RoundId).big_integer().not_null())
                    .col(ColumnDef::new(Orders::ItemId).big_integer().not_null())
                    .col(ColumnDef::new(Orders::UserId).string().not_null())
                    .col(ColumnDef::new(Orders::Qty).big_integer().not_null())
                    .col(
                        ColumnDef::new(Orders::UnitPriceCents)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Orders::Status).string().not_null())
                    .col(
                        ColumnDef::new(Orders::ReservedAtMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Orders::CreatedAtMs).big_integer().not_null())
                    .col(ColumnDef::new(Orders::PayByMs).big_integer().not_null())
                    .col(ColumnDef::new(Orders::PaidAtMs).big_integer().null())
                    .col(ColumnDef::new(Orders::CancelledAtMs).big_integer().null())
                    .col(ColumnDef::new(Orders::CancelReason).string().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_orders_attempt")
                    .table(Orders::Table)
                    .col(Orders::AttemptId)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("uq_orders_round_item_user")
                    .table(Orders::Table)
                    .col(Orders::RoundId)
                    .col(Orders::ItemId)
                    .col(Orders::UserId)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_orders_status_pay_by")
                    .table(Orders::Table)
                    .col(Orders::Status)
                    .col(Orders::PayByMs)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Orders::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Items::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Rounds::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Rounds {
    Table,
    Id,
    Name,
    StartsAtMs,
    EndsAtMs,
    Status,
    CreatedBy,
    SubmittedBy,
    ReviewedBy,
    RejectReason,
    CreatedAtMs,
    UpdatedAtMs,
}

#[derive(DeriveIden)]
enum Items {
    Table,
    Id,
    RoundId,
    Title,
    Description,
    ImageUrl,
    OriginalPriceCents,
    SalePriceCents,
    Stock,
    PerUserLimit,
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    AttemptId,
    RoundId,
    ItemId,
    UserId,
    Qty,
    UnitPriceCents,
    Status,
    ReservedAtMs,
    CreatedAtMs,
    PayByMs,
    PaidAtMs,
    CancelledAtMs,
    CancelReason,
}
