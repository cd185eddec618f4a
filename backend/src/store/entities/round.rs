//! A sale round (`rounds` table).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rounds")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub name: String,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub status: String,
    pub created_by: String,
    pub submitted_by: Option<String>,
    pub reviewed_by: Option<String>,
    pub reject_reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// How long after the start the edge admits buys in random order (0: off).
    pub admission_window_ms: i64,
    /// Keys a ticket's proof-of-work challenge makes a buyer derive at
    /// most; 0: no challenge.
    pub pow_difficulty: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    #[sea_orm(has_many = "super::item::Entity")]
    Item,
}

impl Related<super::item::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Item.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
