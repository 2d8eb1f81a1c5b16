//! A seal's rows as one Parquet file (sorted, with row-group and page
//! statistics and the page index), and a scan of archived files for the
//! query engine that prunes files (their names' statistics), row groups and
//! pages (the files' statistics) and rows (filters pushed into the reader).

use std::sync::Arc;

use datafusion::arrow::array::{AsArray as _, RecordBatch};
use datafusion::arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn};
use datafusion::arrow::datatypes::{Int64Type, SchemaRef, TimestampMicrosecondType};
use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, ScalarValue, Statistics};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result as DfResult;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::metadata::SortingColumn;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};

use super::location::Archive;
use super::view::ArchivedFile;
use crate::tables::Table;

/// Rows per page: the page index prunes within a row group at this grain.
const PAGE_ROWS: usize = 8192;

/// A seal's rows, encoded.
#[derive(Debug)]
pub struct EncodedFile {
    pub bytes: Vec<u8>,
    pub rows: usize,
    pub window_min: u64,
    pub window_max: u64,
    /// `YYYY-MM-DD` of the earliest row time (1970-01-01 when none).
    pub date: String,
}

/// The columns a table's files are sorted by (beat index, or window, then stream order).
fn sort_columns(table: Table) -> &'static [&'static str] {
    match table {
        Table::Claims | Table::Beats => &["beat_index", "stream_seq"],
        Table::BarReports => &["window_index"],
        Table::Rejects => &["stream_seq"],
    }
}

/// The time column a file's date comes from.
fn time_column(table: Table) -> &'static str {
    match table {
        Table::Claims | Table::Beats => "hlc_time",
        Table::BarReports => "published_at",
        Table::Rejects => "stored_at",
    }
}

/// Sorts `batches` of `table` and writes them as one Parquet file, `row_group_rows` rows a row group.
pub fn encode(table: Table, batches: &[RecordBatch], row_group_rows: usize) -> anyhow::Result<EncodedFile> {
    let schema = table.schema();
    let all = concat_batches(&schema, batches)?;
    let keys: Vec<SortColumn> = sort_columns(table)
        .iter()
        .map(|name| SortColumn {
            values: all
                .column(schema.index_of(name).expect("a sort column of the table"))
                .clone(),
            options: None,
        })
        .collect();
    let sorted = take_record_batch(&all, &lexsort_to_indices(&keys, None)?)?;
    let (window_min, window_max) = match schema.index_of("window_index") {
        Ok(index) => {
            let windows = sorted.column(index).as_primitive::<Int64Type>();
            let min = datafusion::arrow::compute::min(windows).unwrap_or(0);
            let max = datafusion::arrow::compute::max(windows).unwrap_or(0);
            (min.max(0) as u64, max.max(0) as u64)
        }
        Err(_) => (0, 0),
    };
    let times = sorted
        .column(schema.index_of(time_column(table)).expect("the table's time column"))
        .as_primitive::<TimestampMicrosecondType>();
    let earliest_ms = datafusion::arrow::compute::min(times).unwrap_or(0).max(0) / 1000;
    let date = backbeat_schemas::timestamp::format_utc_ms(earliest_ms)[..10].to_string();
    let sorting = sort_columns(table)
        .iter()
        .map(|name| SortingColumn {
            column_idx: schema.index_of(name).expect("a sort column") as i32,
            descending: false,
            nulls_first: false,
        })
        .collect();
    let properties = WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_data_page_row_count_limit(PAGE_ROWS.min(row_group_rows.max(1)))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_sorting_columns(Some(sorting))
        .build();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, schema, Some(properties))?;
    writer.write(&sorted)?;
    writer.close()?;
    Ok(EncodedFile {
        bytes,
        rows: sorted.num_rows(),
        window_min,
        window_max,
        date,
    })
}

/// What a file's name tells of its columns, for pruning whole files: its
/// cluster and its windows, both exact (DataFusion may answer `min`/`max`
/// from them). Its sequence range is not the rows' exact bounds, so it is
/// left out.
fn file_statistics(schema: &SchemaRef, file: &ArchivedFile) -> Statistics {
    let mut columns = Statistics::unknown_column(schema);
    let mut set = |name: &str, min: ScalarValue, max: ScalarValue| {
        if let Ok(index) = schema.index_of(name) {
            columns[index] = ColumnStatistics::new_unknown()
                .with_min_value(Precision::Exact(min))
                .with_max_value(Precision::Exact(max));
        }
    };
    let text = |s: &str| ScalarValue::Utf8(Some(s.to_string()));
    let int = |n: u64| ScalarValue::Int64(Some(i64::try_from(n).unwrap_or(i64::MAX)));
    set("cluster_id", text(&file.cluster), text(&file.cluster));
    if file.table != Table::Rejects {
        set("window_index", int(file.window_min), int(file.window_max));
    }
    Statistics {
        num_rows: Precision::Absent,
        total_byte_size: Precision::Absent,
        column_statistics: columns,
    }
}

/// A scan of `files` of `table`, `predicate` (the query's filters) pushed
/// into the reader: files, row groups and pages whose statistics rule it out
/// are skipped, and rows are filtered while decoding.
pub fn scan(
    table: Table,
    files: &[ArchivedFile],
    projection: Option<&Vec<usize>>,
    predicate: Option<Arc<dyn PhysicalExpr>>,
    partitions: usize,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let schema = table.schema();
    let mut source = ParquetSource::new(schema.clone())
        .with_pushdown_filters(true)
        .with_reorder_filters(true)
        .with_enable_page_index(true);
    if let Some(predicate) = predicate {
        source = source.with_predicate(predicate);
    }
    let partitions = partitions.clamp(1, files.len().max(1));
    let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions];
    for (index, file) in files.iter().enumerate() {
        let partitioned = PartitionedFile::new(file.path.to_string(), file.size)
            .with_statistics(Arc::new(file_statistics(&schema, file)));
        groups[index % partitions].push(partitioned);
    }
    let config = FileScanConfigBuilder::new(Archive::store_url(), Arc::new(source))
        .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
        .with_projection_indices(projection.cloned())?
        .build();
    Ok(DataSourceExec::from_data_source(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::TailTables;

    #[test]
    fn rows_are_sorted_by_beat_with_statistics() {
        let mut tables = TailTables::new(4, 100);
        for (seq, beat) in [(1u64, 9u64), (2, 3), (3, 5)] {
            let claim = format!(
                r#"{{"type":"backbeat.statusclaim.v1","agent_id":"a","beat_index":{beat},"state":"idle","beats_left":0,"progress":0,"hlc":"5265c00:0000:0001"}}"#
            );
            tables.apply_event(seq, 0, "backbeat.c.claim", claim.as_bytes());
        }
        let batches = tables.snapshot(Table::Claims);
        let file = encode(Table::Claims, &batches, 2).unwrap();
        assert_eq!((file.rows, file.window_min, file.window_max), (3, 0, 2));
        assert_eq!(file.date, "1970-01-02", "0x5265c00 ms is a day");
        let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(file.bytes),
        )
        .unwrap();
        assert_eq!(reader.metadata().num_row_groups(), 2);
        let batch = reader.build().unwrap().next().unwrap().unwrap();
        let beats = batch.column(5).as_primitive::<Int64Type>();
        assert_eq!(beats.values().to_vec(), [3, 5, 9], "sorted by beat index");
    }
}
