//! The admission window of a round: `rounds.admission_window_ms`, how long
//! after the start the edge admits buys in random order rather than in
//! arrival order (0: off). Rounds created before it get 0, so their sales
//! behave as they did.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261204_000004_round_admission"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Rounds::Table)
                    .add_column(
                        ColumnDef::new(Rounds::AdmissionWindowMs)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Rounds::Table)
                    .drop_column(Rounds::AdmissionWindowMs)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Rounds {
    Table,
    AdmissionWindowMs,
}
