//! A query's answer as PostgreSQL rows: each column's type by its Arrow type
//! (`arrow-pg`: `int8`, `int4`, `float8`, `text`, `bool`, `timestamptz`,
//! arrays of those), encoded in the text or binary format the client asked
//! for, column by column. A column PostgreSQL has no array type for (a struct,
//! or a list of structs or of lists: `bar_reports.issues`) goes as `json`,
//! its JSON text (the same text as the HTTP API's), so a client decodes it
//! without a composite type it does not know.

use std::sync::Arc;

use arrow_pg::datatypes::{encode_recordbatch, field_into_pg_type};
use datafusion::arrow::datatypes::{DataType, Schema};
use futures::StreamExt as _;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldInfo, QueryResponse};
use pgwire::api::Type;
use pgwire::error::PgWireResult;

use super::errors::to_pg_error;
use crate::encode::nested_as_json;
use crate::engine::QueryOutput;
use crate::error::QueryError;

/// Whether a column of `data_type` goes as `json`.
pub fn is_json(data_type: &DataType) -> bool {
    match data_type {
        DataType::Struct(_) | DataType::Map(..) | DataType::Union(..) => true,
        DataType::List(item)
        | DataType::LargeList(item)
        | DataType::FixedSizeList(item, _)
        | DataType::ListView(item)
        | DataType::LargeListView(item) => item.data_type().is_nested(),
        _ => false,
    }
}

/// The row description of `schema`, each column in its format of `format`.
pub fn fields(schema: &Schema, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(index, field)| {
            let pg_type = if is_json(field.data_type()) {
                Type::JSON
            } else {
                field_into_pg_type(field)?
            };
            Ok(FieldInfo::new(
                field.name().clone(),
                None,
                None,
                pg_type,
                format.format_for(index),
            ))
        })
        .collect()
}

/// `output` as PostgreSQL rows, encoded batch by batch as they are sent.
pub fn query_response(output: QueryOutput, format: &Format) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(fields(&output.schema, format)?);
    let row_fields = fields.clone();
    let rows = futures::stream::iter(output.batches).flat_map(move |batch| {
        let rows: Box<dyn Iterator<Item = PgWireResult<_>> + Send> = match nested_as_json(&batch, is_json) {
            Ok(batch) => encode_recordbatch(row_fields.clone(), batch),
            Err(e) => Box::new(std::iter::once(Err(to_pg_error(&QueryError::internal(format!(
                "encoding the result: {e}"
            )))))),
        };
        futures::stream::iter(rows)
    });
    Ok(QueryResponse::new(fields, rows))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::{Field, Fields, TimeUnit};

    use super::*;

    #[test]
    fn scalars_map_to_their_types_lists_to_arrays_and_structs_to_json() {
        let issue = DataType::Struct(Fields::from(vec![Field::new("code", DataType::Utf8, false)]));
        let schema = Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("x", DataType::Float64, false),
            Field::new("b", DataType::Boolean, false),
            Field::new("s", DataType::Utf8, false),
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("l", DataType::new_list(DataType::Utf8, true), false),
            Field::new("issues", DataType::new_list(issue, true), false),
        ]);
        let types: Vec<Type> = fields(&schema, &Format::UnifiedBinary)
            .unwrap()
            .iter()
            .map(|f| f.datatype().clone())
            .collect();
        assert_eq!(
            types,
            vec![
                Type::INT8,
                Type::FLOAT8,
                Type::BOOL,
                Type::TEXT,
                Type::TIMESTAMPTZ,
                Type::TEXT_ARRAY,
                Type::JSON
            ]
        );
    }
}
