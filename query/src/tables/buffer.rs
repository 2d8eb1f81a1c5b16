//! The in-memory tail of one table of one cluster: rows as they arrive,
//! sealed into Arrow batches of [`BATCH_ROWS`], in stream order. Rows the
//! archive took over are dropped from the front ([`RowBuffer::drop_through`]);
//! the oldest batch can be let go when the table is over its limit
//! ([`RowBuffer::evict_oldest`]). [`ClusterRows`] holds one per cluster.

use std::collections::{BTreeMap, VecDeque};

use datafusion::arrow::array::{Array, Int64Array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

/// Rows per sealed batch: large enough for vectorised execution, small enough
/// that the rows not yet sealed cost little to convert at query time.
pub const BATCH_ROWS: usize = 4096;

/// A row type of a table: its Arrow schema, and how rows become a batch.
/// Column 0 of the schema is `stream_seq` (Int64).
pub trait TableRow: Sized {
    /// The table's schema (the same value every time).
    fn schema() -> SchemaRef;
    /// The rows as one batch of [`TableRow::schema`].
    fn to_batch(rows: &[Self]) -> RecordBatch;
    /// The row's sequence in its stream.
    fn stream_seq(&self) -> i64;
}

/// The tail of one table of one cluster.
#[derive(Debug)]
pub struct RowBuffer<R> {
    /// Full batches, oldest first.
    sealed: VecDeque<RecordBatch>,
    /// Rows not yet in a batch (fewer than [`BATCH_ROWS`]).
    pending: Vec<R>,
    /// Rows in `sealed` and `pending`.
    rows_held: usize,
}

impl<R: TableRow> Default for RowBuffer<R> {
    fn default() -> Self {
        RowBuffer {
            sealed: VecDeque::new(),
            pending: Vec::new(),
            rows_held: 0,
        }
    }
}

/// The `stream_seq` column of a batch.
fn seqs(batch: &RecordBatch) -> &Int64Array {
    batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("column 0 of a tail table is stream_seq, Int64")
}

/// How many rows at the front of `batch` have a sequence at or below `seq` (rows are in stream order).
fn rows_through(batch: &RecordBatch, seq: i64) -> usize {
    seqs(batch).values().partition_point(|&s| s <= seq)
}

impl<R: TableRow> RowBuffer<R> {
    pub fn push(&mut self, row: R) {
        self.pending.push(row);
        self.rows_held += 1;
        if self.pending.len() >= BATCH_ROWS {
            let rows = std::mem::take(&mut self.pending);
            self.sealed.push_back(R::to_batch(&rows));
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

    /// The rows with a sequence at or below `seq`, as batches (slices of the held ones).
    pub fn batches_through(&self, seq: i64) -> Vec<RecordBatch> {
        let mut batches = Vec::new();
        for batch in &self.sealed {
            let n = rows_through(batch, seq);
            if n > 0 {
                batches.push(batch.slice(0, n));
            }
            if n < batch.num_rows() {
                return batches;
            }
        }
        let n = self.pending.partition_point(|r| r.stream_seq() <= seq);
        if n > 0 {
            batches.push(R::to_batch(&self.pending[..n]));
        }
        batches
    }

    /// Lets go of the rows with a sequence at or below `seq`; how many went.
    pub fn drop_through(&mut self, seq: i64) -> usize {
        let mut dropped = 0;
        while let Some(front) = self.sealed.front_mut() {
            let n = rows_through(front, seq);
            dropped += n;
            if n < front.num_rows() {
                *front = front.slice(n, front.num_rows() - n);
                self.rows_held -= dropped;
                return dropped;
            }
            self.sealed.pop_front();
        }
        let n = self.pending.partition_point(|r| r.stream_seq() <= seq);
        self.pending.drain(..n);
        dropped += n;
        self.rows_held -= dropped;
        dropped
    }

    /// The sequence of the oldest row held.
    pub fn first_seq(&self) -> Option<i64> {
        match self.sealed.front() {
            Some(batch) => Some(seqs(batch).value(0)),
            None => self.pending.first().map(R::stream_seq),
        }
    }

    /// Lets go of the oldest sealed batch; the rows that went (0 when none is sealed).
    pub fn evict_oldest(&mut self) -> usize {
        let rows = self.sealed.pop_front().map_or(0, |b| b.num_rows());
        self.rows_held -= rows;
        rows
    }

    pub fn rows_held(&self) -> usize {
        self.rows_held
    }
}

/// One table's tail, per cluster, bounded: past `rows_max` rows the oldest
/// sealed batch goes (counted) when eviction is allowed. The archive's
/// writer does not evict (its rows must reach the archive): the tail waits
/// for a seal instead ([`ClusterRows::over_limit`]).
#[derive(Debug)]
pub struct ClusterRows<R> {
    clusters: BTreeMap<String, RowBuffer<R>>,
    rows_held: usize,
    rows_max: usize,
    rows_evicted: u64,
}

impl<R: TableRow> ClusterRows<R> {
    /// A table that holds at most about `rows_max` rows (at least one batch).
    pub fn new(rows_max: usize) -> Self {
        ClusterRows {
            clusters: BTreeMap::new(),
            rows_held: 0,
            rows_max: rows_max.max(BATCH_ROWS),
            rows_evicted: 0,
        }
    }

    pub fn push(&mut self, cluster: &str, row: R, evict: bool) {
        match self.clusters.get_mut(cluster) {
            Some(buffer) => buffer.push(row),
            None => {
                let mut buffer = RowBuffer::default();
                buffer.push(row);
                self.clusters.insert(cluster.to_string(), buffer);
            }
        }
        self.rows_held += 1;
        while evict && self.rows_held > self.rows_max {
            // The cluster holding the oldest row gives its oldest batch.
            let oldest = self
                .clusters
                .values_mut()
                .filter(|b| !b.sealed.is_empty())
                .min_by_key(|b| b.first_seq());
            let Some(buffer) = oldest else {
                break;
            };
            let rows = buffer.evict_oldest();
            self.rows_held -= rows;
            self.rows_evicted += rows as u64;
        }
    }

    /// Every row held, as batches, cluster by cluster.
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        self.clusters.values().flat_map(RowBuffer::snapshot).collect()
    }

    pub fn cluster(&self, cluster: &str) -> Option<&RowBuffer<R>> {
        self.clusters.get(cluster)
    }

    pub fn clusters(&self) -> impl Iterator<Item = (&String, &RowBuffer<R>)> {
        self.clusters.iter()
    }

    /// Lets go of the rows of `cluster` at or below `seq` (the archive holds them).
    pub fn drop_through(&mut self, cluster: &str, seq: i64) {
        if let Some(buffer) = self.clusters.get_mut(cluster) {
            self.rows_held -= buffer.drop_through(seq);
            if buffer.rows_held() == 0 {
                self.clusters.remove(cluster);
            }
        }
    }

    /// The sequence of the oldest row held of any cluster.
    pub fn first_seq(&self) -> Option<i64> {
        self.clusters.values().filter_map(RowBuffer::first_seq).min()
    }

    pub fn over_limit(&self) -> bool {
        self.rows_held > self.rows_max
    }

    pub fn rows_held(&self) -> usize {
        self.rows_held
    }

    pub fn rows_max(&self) -> usize {
        self.rows_max
    }

    pub fn rows_evicted(&self) -> u64 {
        self.rows_evicted
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    struct Number(i64);

    impl TableRow for Number {
        fn schema() -> SchemaRef {
            Arc::new(Schema::new(vec![Field::new("stream_seq", DataType::Int64, false)]))
        }
        fn to_batch(rows: &[Self]) -> RecordBatch {
            let array = Int64Array::from_iter_values(rows.iter().map(|r| r.0));
            RecordBatch::try_new(Self::schema(), vec![Arc::new(array)]).expect("schema fits")
        }
        fn stream_seq(&self) -> i64 {
            self.0
        }
    }

    fn values(batches: &[RecordBatch]) -> Vec<i64> {
        batches.iter().flat_map(|b| seqs(b).values().to_vec()).collect()
    }

    #[test]
    fn holds_the_newest_rows_within_the_limit() {
        let mut table = ClusterRows::<Number>::new(2 * BATCH_ROWS);
        let total = 3 * BATCH_ROWS + 10;
        for n in 1..=total {
            let cluster = if n % 2 == 0 { "a" } else { "b" };
            table.push(cluster, Number(n as i64), true);
        }
        let rows = values(&table.snapshot());
        assert_eq!(rows.len(), table.rows_held());
        assert!(rows.len() <= 2 * BATCH_ROWS, "{}", rows.len());
        assert_eq!(table.rows_evicted() as usize + rows.len(), total);
        assert!(rows.contains(&(total as i64)));
        let mut writer = ClusterRows::<Number>::new(BATCH_ROWS);
        for n in 1..=(2 * BATCH_ROWS) {
            writer.push("a", Number(n as i64), false);
        }
        assert!(writer.over_limit());
        assert_eq!(writer.rows_evicted(), 0);
    }

    #[test]
    fn rows_through_a_sequence_are_taken_then_dropped() {
        let mut buffer = RowBuffer::<Number>::default();
        for n in 1..=(BATCH_ROWS as i64 + 100) {
            buffer.push(Number(2 * n));
        }
        let cut = 2 * (BATCH_ROWS as i64 + 10) + 1;
        let taken = values(&buffer.batches_through(cut));
        assert_eq!(taken.len(), BATCH_ROWS + 10);
        assert_eq!(*taken.last().unwrap(), cut - 1);
        assert_eq!(buffer.drop_through(cut), BATCH_ROWS + 10);
        assert_eq!(buffer.first_seq(), Some(cut + 1));
        assert_eq!(values(&buffer.snapshot()).len(), 90);
        assert_eq!(buffer.rows_held(), 90);
        let mut buffer = RowBuffer::<Number>::default();
        for n in 1..=(2 * BATCH_ROWS as i64) {
            buffer.push(Number(n));
        }
        assert_eq!(buffer.drop_through(10), 10);
        assert_eq!(values(&buffer.batches_through(20)), (11..=20).collect::<Vec<_>>());
        assert_eq!(buffer.first_seq(), Some(11));
    }
}
