//! The DataFusion `TableProvider` of every table: the archive's Parquet files
//! and the tail's rows together. A scan takes, under the tail's lock, the
//! archive's view (its files) and the tail's batches (sealed batches are
//! shared, not copied), which never hold the same row (the tail drops what
//! the view holds under the same lock), and plans the union of a Parquet
//! scan of those files, the query's filters pushed into it (files, row
//! groups, pages and rows pruned), and an in-memory scan of the batches. A
//! query sees the table as it was when the query was planned.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::DFSchema;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;

use crate::archive::parquet as archive_parquet;

use super::{Table, TailTables};

/// One table of the tail, as DataFusion sees it.
#[derive(Debug)]
pub struct TailTable {
    /// Which table.
    table: Table,
    /// Its schema (fixed).
    schema: SchemaRef,
    /// Every table's rows.
    tables: Arc<Mutex<TailTables>>,
}

impl TailTable {
    pub fn new(table: Table, tables: Arc<Mutex<TailTables>>) -> Self {
        TailTable {
            table,
            schema: table.schema(),
            tables,
        }
    }
}

#[async_trait]
impl TableProvider for TailTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Every filter goes to the Parquet scan for pruning; DataFusion still
    /// applies it to the rows (the tail's are not filtered by the scan).
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (batches, archive) = {
            let tables = self
                .tables
                .lock()
                .map_err(|_| DataFusionError::Internal("the tail's lock is poisoned".into()))?;
            (tables.snapshot(self.table), tables.archive())
        };
        let tail = MemorySourceConfig::try_new_exec(&[batches], self.schema.clone(), projection.cloned())?;
        let files = archive.files(self.table);
        if files.is_empty() {
            return Ok(tail);
        }
        let predicate = match conjunction(filters.iter().cloned()) {
            Some(expr) => {
                let schema = DFSchema::try_from(self.schema.as_ref().clone())?;
                Some(state.create_physical_expr(expr, &schema)?)
            }
            None => None,
        };
        let partitions = state.config().target_partitions();
        let archived = archive_parquet::scan(self.table, files, projection, predicate, partitions)?;
        UnionExec::try_new(vec![archived, tail])
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::*;

    #[tokio::test]
    async fn sql_reads_what_the_tail_holds() {
        let tables = Arc::new(Mutex::new(TailTables::new(4, 100)));
        let claim = br#"{"type":"backbeat.statusclaim.v1","agent_id":"a","beat_index":9,"state":"idle","beats_left":0,"progress":0,"hlc":"1:0000:0001"}"#;
        for seq in 1..=3 {
            tables.lock().unwrap().apply_event(seq, 0, "backbeat.c.claim", claim);
        }
        let context = SessionContext::new();
        context
            .register_table("claims", Arc::new(TailTable::new(Table::Claims, tables.clone())))
            .unwrap();
        let batches = context
            .sql("SELECT count(*) AS n, max(window_index) AS w FROM claims")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string();
        assert!(text.contains("| 3 | 2 |"), "{text}");
    }
}
