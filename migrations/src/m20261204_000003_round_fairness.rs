//! What a round sets for a fair sale, one column each (added one at a
//! time: SQLite alters one column per statement):
//! - `rounds.pow_difficulty`: the proof-of-work difficulty of its ticket
//!   challenge; 0 asks for none;
//! - `rounds.admission_window_ms`: how long after the start the edge
//!   admits buys in random order rather than in arrival order; 0 is off.
//!
//! Rounds created before it get 0 for both, so their sales behave as they
//! did.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261204_000003_round_fairness"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Rounds::PowDifficulty, Rounds::AdmissionWindowMs] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Rounds::Table)
                        .add_column(ColumnDef::new(column).big_integer().not_null().default(0))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Rounds::AdmissionWindowMs, Rounds::PowDifficulty] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Rounds::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Rounds {
    Table,
    PowDifficulty,
    AdmissionWindowMs,
}
