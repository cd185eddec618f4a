//! The proof-of-work difficulty of a round's ticket challenge
//! (`rounds.pow_difficulty`): 0, the default and what existing rounds get,
//! asks for no challenge.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261204_000003_round_pow"
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
                        ColumnDef::new(Rounds::PowDifficulty)
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
                    .drop_column(Rounds::PowDifficulty)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Rounds {
    Table,
    PowDifficulty,
}
