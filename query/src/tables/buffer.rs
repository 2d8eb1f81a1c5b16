//! The bounded in-memory tail of one table: rows as they arrive, sealed into
//! Arrow batches of [`BATCH_ROWS`], the oldest batches let go once the table
//! holds more than its row limit (counted, never a growing heap).

use std::collections::VecDeque;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

/// Rows per sealed batch: large enough for vectorised execution, small enough
/// that the rows not yet sealed cost little to convert at query time.
pub const BATCH_ROWS: usize = 4096;

/// A row type of a table: its Arrow schema, and how rows become a batch.
pub trait TableRow: Sized {
    /// The table's schema (the same value every time).
    fn schema() -> SchemaRef;
    /// The rows as one batch of [`TableRow::schema`].
    fn to_batch(rows: &[Self]) -> RecordBatch;
}

/// The tail of one table.
#[derive(Debug)]
pub struct RowBuffer<R> {
    /// Full batches, oldest first.
    sealed: VecDeque<RecordBatch>,
    /// Rows not yet in a batch (fewer than [`BATCH_ROWS`]).
    pending: Vec<R>,
    /// Rows in `sealed` and `pending`.
    rows_held: usize,
    /// The most rows held; past it the oldest sealed batch goes.
    rows_max: usize,
    /// Rows let go since start.
    rows_evicted: u64,
}

impl<R: TableRow> RowBuffer<R> {
    /// A buffer that holds at most about `rows_max` rows (at least one batch).
    pub fn new(rows_max: usize) -> Self {
        RowBuffer {
            sealed: VecDeque::new(),
            pending: Vec::new(),
            rows_held: 0,
            rows_max: rows_max.max(BATCH_ROWS),
            rows_evicted: 0,
        }
    }

    pub fn push(&mut self, row: R) {
        self.pending.push(row);
        self.rows_held += 1;
        if self.pending.len() >= BATCH_ROWS {
            let rows = std::mem::take(&mut self.pending);
            self.sealed.push_back(R::to_batch(&rows));
        }
        while self.rows_held > self.rows_max {
            let Some(oldest) = self.sealed.pop_front() else {
                break;
            };
            self.rows_held -= oldest.num_rows();
            self.rows_evicted += oldest.num_rows() as u64;
        }
    }

    /// Every row held, as batches (sealed ones are shared, not copied).
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        let mut batches: Vec<RecordBatch> = self.sealed.iter().cloned().collect();
        if !self.pending.is_empty() {
            batches.push(R::to_batch(&self.pending));
        }
        batches
    }

    pub fn rows_held(&self) -> usize {
        self.rows_held
    }

    pub fn rows_evicted(&self) -> u64 {
        self.rows_evicted
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    struct Number(i64);

    impl TableRow for Number {
        fn schema() -> SchemaRef {
            Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
        }
        fn to_batch(rows: &[Self]) -> RecordBatch {
            let array = Int64Array::from_iter_values(rows.iter().map(|r| r.0));
            RecordBatch::try_new(Self::schema(), vec![Arc::new(array)]).expect("schema fits")
        }
    }

    #[test]
    fn holds_the_newest_rows_within_the_limit() {
        let mut buffer = RowBuffer::<Number>::new(2 * BATCH_ROWS);
        let total = 3 * BATCH_ROWS + 10;
        for n in 0..total {
            buffer.push(Number(n as i64));
        }
        let batches = buffer.snapshot();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, buffer.rows_held());
        assert!(rows <= 2 * BATCH_ROWS, "{rows}");
        assert_eq!(buffer.rows_evicted() as usize + rows, total);
        let last = batches
            .last()
            .unwrap()
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .clone();
        assert_eq!(last.value(last.len() - 1), total as i64 - 1);
        let first = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .clone();
        assert_eq!(first.value(0) as usize, buffer.rows_evicted() as usize);
    }
}
