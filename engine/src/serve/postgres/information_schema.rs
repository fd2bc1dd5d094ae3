//! `information_schema` in Postgres' type names, for tools that pick columns by type.
//!
//! DataFusion's `information_schema.columns.data_type` is the Arrow type (`Utf8View`,
//! `Timestamp(µs, "UTC")`, `Decimal128(18, 2)`); Grafana, Superset and Metabase look for
//! `timestamp with time zone`, `numeric`, `text` and see no time or number columns. On the
//! Postgres endpoint `information_schema` is this schema instead: DataFusion's tables, with
//! `columns.data_type` the SQL name of the Postgres type the wire sends for that column
//! (the same mapping as `pg_attribute.atttypid`), `udt_name` beside it, and
//! `datetime_precision` for timestamps. Flight SQL keeps DataFusion's own.

use datafusion::arrow::array::{Array, AsArray, StringBuilder, UInt64Builder};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::catalog::information_schema::InformationSchemaProvider;
use datafusion::catalog::{CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::common::{exec_err, Result};
use datafusion::datasource::provider_as_source;
use datafusion::datasource::view::ViewTable;
use datafusion::datasource::TableType;
use datafusion::logical_expr::{
    col, ColumnarValue, Expr, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, Volatility,
};
use datafusion_postgres::arrow_pg::datatypes::into_pg_type;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_postgres::pgwire::api::Type;
use std::str::FromStr;
use std::sync::Arc;

/// DataFusion's `information_schema`, with Postgres type names in `columns`.
#[derive(Debug)]
pub(super) struct PgInformationSchema {
    inner: InformationSchemaProvider,
}

impl PgInformationSchema {
    pub(super) fn new(catalogs: Arc<dyn CatalogProviderList>) -> Self {
        Self {
            inner: InformationSchemaProvider::new(catalogs),
        }
    }
}

#[async_trait::async_trait]
impl SchemaProvider for PgInformationSchema {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(
        &self,
        name: &str,
    ) -> Result<Option<Arc<dyn TableProvider>>, datafusion::error::DataFusionError> {
        let Some(table) = self.inner.table(name).await? else {
            return Ok(None);
        };
        if !name.eq_ignore_ascii_case("columns") {
            return Ok(Some(table));
        }
        let schema = table.schema();
        let arrow_type = || col("data_type");
        let mut projection: Vec<Expr> = schema
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "data_type" => PgTypeName::udf(Part::DataType)
                    .call(vec![arrow_type()])
                    .alias("data_type"),
                "datetime_precision" => PgTypeName::udf(Part::DatetimePrecision)
                    .call(vec![arrow_type()])
                    .alias("datetime_precision"),
                other => col(format!("\"{other}\"")),
            })
            .collect();
        projection.push(
            PgTypeName::udf(Part::UdtName)
                .call(vec![arrow_type()])
                .alias("udt_name"),
        );
        let plan = LogicalPlanBuilder::scan(name, provider_as_source(table), None)?
            .project(projection)?
            .build()?;
        Ok(Some(Arc::new(ViewTable::new(plan, None))))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

/// The lake's catalogs as `pg_catalog` enumerates them, without `information_schema`.
///
/// In Postgres `information_schema` is not on the search path, so its views are not
/// "visible"; the crate's `pg_table_is_visible` is true for every relation, and SQLAlchemy's
/// `get_view_names()` would list `information_schema.columns` as a view of `public`. Leaving
/// it out of `pg_class` keeps the browse lists to the lake's own tables (as before this
/// schema was registered).
#[derive(Debug, Clone)]
pub(super) struct WithoutInformationSchema(pub(super) Arc<dyn CatalogProviderList>);

#[async_trait::async_trait]
impl CatalogInfo for WithoutInformationSchema {
    async fn catalog_names(&self) -> Result<Vec<String>> {
        CatalogInfo::catalog_names(&self.0).await
    }

    async fn schema_names(&self, catalog: &str) -> Result<Option<Vec<String>>> {
        Ok(CatalogInfo::schema_names(&self.0, catalog)
            .await?
            .map(|names| {
                names
                    .into_iter()
                    .filter(|n| !n.eq_ignore_ascii_case("information_schema"))
                    .collect()
            }))
    }

    async fn table_names(&self, catalog: &str, schema: &str) -> Result<Option<Vec<String>>> {
        CatalogInfo::table_names(&self.0, catalog, schema).await
    }

    async fn table_schema(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<SchemaRef>> {
        CatalogInfo::table_schema(&self.0, catalog, schema, table).await
    }

    async fn table_type(
        &self,
        catalog: &str,
        schema: &str,
        table: &str,
    ) -> Result<Option<TableType>> {
        CatalogInfo::table_type(&self.0, catalog, schema, table).await
    }
}

/// Which Postgres description of an Arrow type (given as DataFusion writes it) to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Part {
    /// `columns.data_type`: the SQL name (`timestamp with time zone`, `ARRAY` for arrays).
    DataType,
    /// `columns.udt_name`: the type's `typname` (`timestamptz`, `_text`).
    UdtName,
    /// `columns.datetime_precision`: fractional-second digits of times and timestamps.
    DatetimePrecision,
}

/// The SQL-standard name `information_schema.columns.data_type` uses for `t`.
fn sql_name(t: &Type) -> String {
    let name = match *t {
        Type::TEXT => "text",
        Type::VARCHAR => "character varying",
        Type::BPCHAR => "character",
        Type::BOOL => "boolean",
        Type::INT2 => "smallint",
        Type::INT4 => "integer",
        Type::INT8 => "bigint",
        Type::FLOAT4 => "real",
        Type::FLOAT8 => "double precision",
        Type::NUMERIC => "numeric",
        Type::DATE => "date",
        Type::TIME => "time without time zone",
        Type::TIMETZ => "time with time zone",
        Type::TIMESTAMP => "timestamp without time zone",
        Type::TIMESTAMPTZ => "timestamp with time zone",
        Type::INTERVAL => "interval",
        Type::BYTEA => "bytea",
        Type::JSON => "json",
        Type::JSONB => "jsonb",
        // Array types are named after their element with a leading underscore.
        _ if t.name().starts_with('_') => "ARRAY",
        _ => return t.name().to_string(),
    };
    name.to_string()
}

fn describe(part: Part, arrow: &str) -> Result<Option<PgAnswer>> {
    // A type arrow cannot read back (e.g. nested fields with metadata) keeps its Arrow name.
    let Ok(data_type) = DataType::from_str(arrow) else {
        return Ok(match part {
            Part::DataType => Some(PgAnswer::Text(arrow.to_string())),
            Part::UdtName | Part::DatetimePrecision => None,
        });
    };
    let pg = into_pg_type(&data_type).unwrap_or(Type::TEXT);
    Ok(match part {
        Part::DataType => Some(PgAnswer::Text(sql_name(&pg))),
        Part::UdtName => Some(PgAnswer::Text(pg.name().to_string())),
        Part::DatetimePrecision => match data_type {
            DataType::Timestamp(unit, _) | DataType::Time64(unit) | DataType::Time32(unit) => {
                Some(PgAnswer::Number(match unit {
                    TimeUnit::Second => 0,
                    TimeUnit::Millisecond => 3,
                    // Postgres keeps microseconds at most; nanoseconds are sent as micros.
                    TimeUnit::Microsecond | TimeUnit::Nanosecond => 6,
                }))
            }
            DataType::Date32 | DataType::Date64 => Some(PgAnswer::Number(0)),
            _ => None,
        },
    })
}

enum PgAnswer {
    Text(String),
    Number(u64),
}

/// See [`Part`]; takes the Arrow type's text.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgTypeName {
    part: Part,
    signature: Signature,
}

impl PgTypeName {
    fn udf(part: Part) -> ScalarUDF {
        ScalarUDF::from(Self {
            part,
            signature: Signature::string(1, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for PgTypeName {
    fn name(&self) -> &str {
        match self.part {
            Part::DataType => "tally_pg_data_type",
            Part::UdtName => "tally_pg_udt_name",
            Part::DatetimePrecision => "tally_pg_datetime_precision",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(match self.part {
            Part::DatetimePrecision => DataType::UInt64,
            _ => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(arg) = args.args.first() else {
            return exec_err!("{} takes one argument", self.name());
        };
        let types = arg.to_array(args.number_rows)?;
        let types = datafusion::arrow::compute::cast(&types, &DataType::Utf8)?;
        let types = types.as_string::<i32>();
        let answers = (0..types.len())
            .map(|i| match types.is_null(i) {
                true => Ok(None),
                false => describe(self.part, types.value(i)),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ColumnarValue::Array(match self.part {
            Part::DatetimePrecision => {
                let mut b = UInt64Builder::new();
                for a in answers {
                    b.append_option(match a {
                        Some(PgAnswer::Number(n)) => Some(n),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
            _ => {
                let mut b = StringBuilder::new();
                for a in answers {
                    b.append_option(match a {
                        Some(PgAnswer::Text(t)) => Some(t),
                        _ => None,
                    });
                }
                Arc::new(b.finish())
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Field;

    fn text(part: Part, arrow: &DataType) -> String {
        match describe(part, &arrow.to_string()).unwrap() {
            Some(PgAnswer::Text(t)) => t,
            Some(PgAnswer::Number(n)) => n.to_string(),
            None => "NULL".into(),
        }
    }

    #[test]
    fn lake_column_types_answer_in_postgres_names() {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        assert_eq!(text(Part::DataType, &ts), "timestamp with time zone");
        assert_eq!(text(Part::UdtName, &ts), "timestamptz");
        assert_eq!(text(Part::DatetimePrecision, &ts), "6");
        assert_eq!(
            text(Part::DataType, &DataType::Decimal128(18, 2)),
            "numeric"
        );
        assert_eq!(text(Part::DataType, &DataType::Utf8View), "text");
        assert_eq!(text(Part::DataType, &DataType::Date32), "date");
        assert_eq!(text(Part::DataType, &DataType::Int64), "bigint");
        assert_eq!(text(Part::DatetimePrecision, &DataType::Int64), "NULL");
        let list = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
        assert_eq!(text(Part::DataType, &list), "ARRAY");
        assert_eq!(text(Part::UdtName, &list), "_text");
    }
}
