//! `pg_catalog`'s vector columns as the arrays Postgres clients treat them as.
//!
//! datafusion-postgres's `pg_catalog` stores `pg_index.indkey` (an `int2vector`) as the text
//! `1 2` and `pg_constraint.conkey` (a `smallint[]`) as `[1, 2]`. SQLAlchemy's inspector (and
//! any tool listing primary keys or indexes) reads them with `unnest(indkey)` and
//! `generate_subscripts(indkey, 1)`, which need arrays. This schema serves those tables as
//! views over the crate's, each such column parsed into a list of integers; every other table
//! is the crate's own.

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, ListBuilder, PrimitiveBuilder, StringArray,
};
use datafusion::arrow::datatypes::{ArrowPrimitiveType, Int16Type, Int32Type};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::common::Column;
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::datasource::provider_as_source;
use datafusion::datasource::view::ViewTable;
use datafusion::logical_expr::{
    cast, col, lit, ColumnarValue, Expr, JoinType, LogicalPlanBuilder, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use std::sync::Arc;

/// The vector columns served as arrays: table, column, element type (`int2vector` and
/// attribute numbers are `smallint`; `oidvector` and operator lists are oids).
const VECTOR_COLUMNS: &[(&str, &str, Element)] = &[
    ("pg_index", "indkey", Element::Int16),
    ("pg_index", "indoption", Element::Int16),
    ("pg_index", "indclass", Element::Oid),
    ("pg_index", "indcollation", Element::Oid),
    ("pg_constraint", "conkey", Element::Int16),
    ("pg_constraint", "confkey", Element::Int16),
    ("pg_constraint", "confdelsetcols", Element::Int16),
    ("pg_constraint", "conpfeqop", Element::Oid),
    ("pg_constraint", "conppeqop", Element::Oid),
    ("pg_constraint", "conffeqop", Element::Oid),
    ("pg_constraint", "conexclop", Element::Oid),
];

/// Array columns Postgres has and the crate's tables lack, served as NULL `text[]` (no lake
/// table has storage options or ACLs): SQLAlchemy's `get_indexes` selects `reloptions`.
const MISSING_TEXT_ARRAYS: &[(&str, &str)] = &[("pg_class", "reloptions"), ("pg_class", "relacl")];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Element {
    Int16,
    /// Oids are `Int32` throughout the crate's `pg_catalog`.
    Oid,
}

impl Element {
    fn data_type(self) -> DataType {
        match self {
            Element::Int16 => DataType::Int16,
            Element::Oid => DataType::Int32,
        }
    }
}

/// The crate's `pg_catalog`, with [`VECTOR_COLUMNS`] as arrays and `pg_attribute.atttypmod`
/// carrying decimals' precision and scale.
#[derive(Debug)]
pub(super) struct PgCatalogArrays {
    inner: Arc<dyn SchemaProvider>,
    information_schema: Arc<dyn SchemaProvider>,
}

impl PgCatalogArrays {
    pub(super) fn new(
        inner: Arc<dyn SchemaProvider>,
        information_schema: Arc<dyn SchemaProvider>,
    ) -> Self {
        Self {
            inner,
            information_schema,
        }
    }

    /// `pg_attribute` with `atttypmod` = `((precision << 16) | scale) + 4` for `numeric`
    /// columns, as Postgres stores `numeric(p,s)`: `format_type` then answers
    /// `numeric(18,2)` (psql `\d`, SQLAlchemy's `NUMERIC(18, 2)`). The crate writes -1 for
    /// every column; precision and scale come from `information_schema.columns`.
    async fn attributes_with_typmod(
        &self,
        attribute: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        let (Some(class), Some(namespace), Some(columns)) = (
            self.inner.table("pg_class").await?,
            self.inner.table("pg_namespace").await?,
            self.information_schema.table("columns").await?,
        ) else {
            return Ok(Some(attribute));
        };
        let schema = attribute.schema();
        let class = LogicalPlanBuilder::scan("r", provider_as_source(class), None)?
            .project(vec![
                col("r.oid").alias("tally_rel_oid"),
                col("r.relname").alias("tally_rel_name"),
                col("r.relnamespace").alias("tally_rel_ns"),
            ])?
            .build()?;
        let namespace = LogicalPlanBuilder::scan("n", provider_as_source(namespace), None)?
            .project(vec![
                col("n.oid").alias("tally_ns_oid"),
                col("n.nspname").alias("tally_ns_name"),
            ])?
            .build()?;
        let columns = LogicalPlanBuilder::scan("c", provider_as_source(columns), None)?
            .filter(col("c.numeric_scale").is_not_null())?
            .project(vec![
                col("c.table_schema").alias("tally_c_schema"),
                col("c.table_name").alias("tally_c_table"),
                col("c.column_name").alias("tally_c_column"),
                col("c.numeric_precision").alias("tally_c_precision"),
                col("c.numeric_scale").alias("tally_c_scale"),
            ])?
            .build()?;
        let typmod = Expr::Case(datafusion::logical_expr::expr::Case::new(
            None,
            vec![(
                Box::new(
                    col("a.atttypid")
                        .eq(lit(1700))
                        .and(col("tally_c_precision").is_not_null()),
                ),
                Box::new(cast(
                    col("tally_c_precision") * lit(65536u64) + col("tally_c_scale") + lit(4u64),
                    DataType::Int32,
                )),
            )],
            Some(Box::new(col("a.atttypmod"))),
        ));
        let projection: Vec<Expr> = schema
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "atttypmod" => typmod.clone().alias("atttypmod"),
                name => Expr::Column(Column::new(Some("a"), name)),
            })
            .collect();
        let plan = LogicalPlanBuilder::scan("a", provider_as_source(attribute), None)?
            .join(
                class,
                JoinType::Left,
                (vec!["a.attrelid"], vec!["tally_rel_oid"]),
                None,
            )?
            .join(
                namespace,
                JoinType::Left,
                (vec!["tally_rel_ns"], vec!["tally_ns_oid"]),
                None,
            )?
            .join(
                columns,
                JoinType::Left,
                (
                    vec!["tally_ns_name", "tally_rel_name", "a.attname"],
                    vec!["tally_c_schema", "tally_c_table", "tally_c_column"],
                ),
                None,
            )?
            .project(projection)?
            .build()?;
        Ok(Some(Arc::new(ViewTable::new(plan, None))))
    }
}

#[async_trait::async_trait]
impl SchemaProvider for PgCatalogArrays {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(
        &self,
        name: &str,
    ) -> datafusion::common::Result<
        Option<Arc<dyn TableProvider>>,
        datafusion::error::DataFusionError,
    > {
        let Some(table) = self.inner.table(name).await? else {
            return Ok(None);
        };
        if name.eq_ignore_ascii_case("pg_attribute") {
            return self.attributes_with_typmod(table).await;
        }
        let vectors: Vec<_> = VECTOR_COLUMNS
            .iter()
            .filter(|(t, _, _)| t.eq_ignore_ascii_case(name))
            .collect();
        let schema = table.schema();
        let missing: Vec<&str> = MISSING_TEXT_ARRAYS
            .iter()
            .filter(|(t, c)| t.eq_ignore_ascii_case(name) && schema.field_with_name(c).is_err())
            .map(|(_, c)| *c)
            .collect();
        if vectors.is_empty() && missing.is_empty() {
            return Ok(Some(table));
        }
        let text_array = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
        let null = ScalarValue::try_from(&text_array)?;
        let nulls = missing
            .iter()
            .map(|c| Expr::Literal(null.clone(), None).alias(*c));
        let projection: Vec<Expr> = schema
            .fields()
            .iter()
            .map(|field| {
                let column = col(format!("\"{}\"", field.name()));
                match vectors.iter().find(|(_, c, _)| c == field.name()) {
                    Some((_, _, element)) if field.data_type().is_string() => {
                        VectorToArray::udf(*element)
                            .call(vec![column])
                            .alias(field.name())
                    }
                    _ => column,
                }
            })
            .chain(nulls)
            .collect();
        let plan = LogicalPlanBuilder::scan(name, provider_as_source(table), None)?
            .project(projection)?
            .build()?;
        Ok(Some(Arc::new(ViewTable::new(plan, None))))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

/// Parses Postgres' vector text (`1 2`, `{1,2}` or `[1, 2]`) into a list of integers.
#[derive(Debug, PartialEq, Eq, Hash)]
struct VectorToArray {
    element: Element,
    signature: Signature,
}

impl VectorToArray {
    fn udf(element: Element) -> ScalarUDF {
        ScalarUDF::from(Self {
            element,
            signature: Signature::string(1, Volatility::Immutable),
        })
    }
}

impl ScalarUDFImpl for VectorToArray {
    fn name(&self) -> &str {
        match self.element {
            Element::Int16 => "tally_int2vector_to_array",
            Element::Oid => "tally_oidvector_to_array",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new_list_field(
            self.element.data_type(),
            true,
        ))))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(arg) = args.args.first() else {
            return exec_err!("{} takes one argument", self.name());
        };
        let texts = arg.to_array(args.number_rows)?;
        let texts = datafusion::arrow::compute::cast(&texts, &DataType::Utf8)?;
        let texts = texts.as_string::<i32>();
        let out = match self.element {
            Element::Int16 => parse_lists::<Int16Type>(texts)?,
            Element::Oid => parse_lists::<Int32Type>(texts)?,
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// Each vector text as a list of `T` (NULL stays NULL).
fn parse_lists<T: ArrowPrimitiveType>(texts: &StringArray) -> Result<ArrayRef>
where
    T::Native: std::str::FromStr,
{
    let mut b = ListBuilder::new(PrimitiveBuilder::<T>::new());
    for i in 0..texts.len() {
        if texts.is_null(i) {
            b.append_null();
            continue;
        }
        for n in numbers::<T::Native>(texts.value(i)) {
            b.values().append_value(n?);
        }
        b.append(true);
    }
    Ok(Arc::new(b.finish()))
}

/// The integers of one vector text, in order.
fn numbers<T: std::str::FromStr>(text: &str) -> impl Iterator<Item = Result<T>> + '_ {
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | '[' | ']' | '{' | '}'))
        .filter(|s| !s.is_empty())
        .map(move |s| match s.parse::<T>() {
            Ok(n) => Ok(n),
            Err(_) => exec_err!("pg_catalog vector {text:?} has a non-integer element {s:?}"),
        })
}

#[cfg(test)]
mod tests {
    use super::numbers;

    #[test]
    fn vector_texts_in_every_catalog_spelling_parse_in_order() {
        let parse = |t| numbers::<i16>(t).collect::<datafusion::common::Result<Vec<_>>>();
        assert_eq!(parse("1 2").unwrap(), vec![1, 2]);
        assert_eq!(parse("[2, 20, 3]").unwrap(), vec![2, 20, 3]);
        assert_eq!(parse("{4,5}").unwrap(), vec![4, 5]);
        assert_eq!(parse("").unwrap(), Vec::<i16>::new());
        assert!(parse("1 x").is_err());
    }
}
