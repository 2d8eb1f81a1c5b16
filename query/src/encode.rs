//! A query's answer in each format the HTTP API speaks: JSON
//! (`{"columns":[{"name","type"}],"rows":[[…]]}`), CSV (header line, nested
//! values as JSON text) and an Arrow IPC stream.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::error::ArrowError;

use crate::engine::QueryOutput;

/// The answer's formats, chosen by the request's `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    ArrowStream,
}

pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_TYPE_CSV: &str = "text/csv";
pub const CONTENT_TYPE_ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

impl Format {
    /// The first format `accept` names that we speak; JSON when none is named.
    pub fn from_accept(accept: Option<&str>) -> Format {
        for wanted in accept.unwrap_or("").split(',') {
            let media = wanted.split(';').next().unwrap_or("").trim();
            match media {
                CONTENT_TYPE_CSV => return Format::Csv,
                CONTENT_TYPE_ARROW_STREAM => return Format::ArrowStream,
                CONTENT_TYPE_JSON => return Format::Json,
                _ => {}
            }
        }
        Format::Json
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => CONTENT_TYPE_JSON,
            Format::Csv => CONTENT_TYPE_CSV,
            Format::ArrowStream => CONTENT_TYPE_ARROW_STREAM,
        }
    }
}

/// Encodes `output` in `format`.
pub fn encode(output: &QueryOutput, format: Format) -> Result<Vec<u8>, ArrowError> {
    match format {
        Format::Json => to_json(output),
        Format::Csv => to_csv(output),
        Format::ArrowStream => to_arrow_stream(output),
    }
}

fn to_json(output: &QueryOutput) -> Result<Vec<u8>, ArrowError> {
    let columns: Vec<serde_json::Value> = output
        .schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect();
    let mut rows: Vec<Vec<serde_json::Value>> = Vec::with_capacity(output.rows());
    for batch in &output.batches {
        let cells: Vec<Vec<serde_json::Value>> = batch.columns().iter().map(json_values).collect::<Result<_, _>>()?;
        for row in 0..batch.num_rows() {
            rows.push(cells.iter().map(|column| column[row].clone()).collect());
        }
    }
    let body = serde_json::json!({"columns": columns, "rows": rows});
    serde_json::to_vec(&body).map_err(|e| ArrowError::JsonError(e.to_string()))
}

/// Each value of `column` as JSON, as Arrow's JSON writer writes it (times
/// as RFC 3339 text, lists as arrays, structs as objects).
fn json_values(column: &ArrayRef) -> Result<Vec<serde_json::Value>, ArrowError> {
    let schema = Arc::new(Schema::new(vec![Field::new("v", column.data_type().clone(), true)]));
    let batch = RecordBatch::try_new(schema, vec![column.clone()])?;
    let mut lines = Vec::new();
    {
        let mut writer = datafusion::arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, datafusion::arrow::json::writer::LineDelimited>(&mut lines);
        writer.write(&batch)?;
        writer.finish()?;
    }
    lines
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let mut object: serde_json::Value =
                serde_json::from_slice(line).map_err(|e| ArrowError::JsonError(e.to_string()))?;
            Ok(object.get_mut("v").map(serde_json::Value::take).unwrap_or_default())
        })
        .collect()
}

fn to_csv(output: &QueryOutput) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::new();
    {
        let mut writer = datafusion::arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut out);
        if output.batches.is_empty() {
            // The header alone, from an empty batch.
            writer.write(&nested_as_json(
                &RecordBatch::new_empty(output.schema.clone()),
                DataType::is_nested,
            )?)?;
        }
        for batch in &output.batches {
            writer.write(&nested_as_json(batch, DataType::is_nested)?)?;
        }
    }
    Ok(out)
}

/// The columns of a type `nested` picks become their JSON text (CSV has no
/// lists or structs; PostgreSQL has no lists of structs).
pub fn nested_as_json(batch: &RecordBatch, nested: impl Fn(&DataType) -> bool) -> Result<RecordBatch, ArrowError> {
    if !batch.schema().fields().iter().any(|f| nested(f.data_type())) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if nested(field.data_type()) {
            let texts: Vec<Option<String>> = json_values(column)?
                .into_iter()
                .enumerate()
                .map(|(row, value)| (!column.is_null(row)).then(|| value.to_string()))
                .collect();
            fields.push(Field::new(field.name(), DataType::Utf8, true));
            columns.push(Arc::new(StringArray::from(texts)));
        } else {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

fn to_arrow_stream(output: &QueryOutput) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::new();
    {
        let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, &output.schema)?;
        for batch in &output.batches {
            writer.write(batch)?;
        }
        writer.finish()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, ListBuilder, StringBuilder};

    use super::*;

    fn output() -> QueryOutput {
        let mut list = ListBuilder::new(StringBuilder::new());
        list.values().append_value("a");
        list.append(true);
        list.append(false);
        let batch = RecordBatch::try_from_iter(vec![
            ("n", Arc::new(Int64Array::from(vec![Some(1), None])) as ArrayRef),
            ("l", Arc::new(list.finish()) as ArrayRef),
        ])
        .unwrap();
        QueryOutput {
            schema: batch.schema(),
            batches: vec![batch],
        }
    }

    #[test]
    fn json_rows_are_arrays_in_column_order() {
        let body: serde_json::Value = serde_json::from_slice(&encode(&output(), Format::Json).unwrap()).unwrap();
        assert_eq!(body["columns"][0], serde_json::json!({"name": "n", "type": "Int64"}));
        assert_eq!(body["rows"], serde_json::json!([[1, ["a"]], [null, null]]));
    }

    #[test]
    fn csv_has_a_header_and_lists_as_json() {
        let text = String::from_utf8(encode(&output(), Format::Csv).unwrap()).unwrap();
        assert_eq!(text, "n,l\n1,\"[\"\"a\"\"]\"\n,\n");
    }

    #[test]
    fn arrow_stream_reads_back() {
        let bytes = encode(&output(), Format::ArrowStream).unwrap();
        let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None).unwrap();
        let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 2);
    }

    #[test]
    fn accept_picks_the_format() {
        assert_eq!(Format::from_accept(Some("text/csv")), Format::Csv);
        assert_eq!(
            Format::from_accept(Some("application/vnd.apache.arrow.stream")),
            Format::ArrowStream
        );
        assert_eq!(Format::from_accept(Some("*/*")), Format::Json);
        assert_eq!(Format::from_accept(None), Format::Json);
    }
}
