//! The DataFusion `TableProvider` of every tail table: a scan takes a snapshot
//! of the table's batches (sealed batches are shared, not copied) under the
//! tail's lock, and plans an in-memory scan of it. A query sees the table as
//! it was when the query was planned.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

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

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches = {
            let tables = self
                .tables
                .lock()
                .map_err(|_| DataFusionError::Internal("the tail's lock is poisoned".into()))?;
            tables.snapshot(self.table)
        };
        let plan = MemorySourceConfig::try_new_exec(&[batches], self.schema.clone(), projection.cloned())?;
        Ok(plan)
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
