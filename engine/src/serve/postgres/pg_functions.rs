//! Postgres catalog functions drivers call before their first query, missing from the
//! `pg_catalog` emulation tally serves.
//!
//! psycopg's `TypeInfo.fetch` (which SQLAlchemy runs on connect, for `hstore`) looks types up
//! with `WHERE t.oid = to_regtype(%(name)s)`; SQLAlchemy's inspector asks each column's
//! `pg_get_serial_sequence(table, column)` (tally's tables have no sequences: NULL), and
//! `version()` answers in the form their dialects parse ([`super::server_identity`]).

use datafusion::arrow::array::{Array, AsArray, Int32Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion_postgres::pgwire::api::Type;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

/// Built-in type names (`typname`, and the SQL spellings Postgres also accepts) to their oid.
static TYPE_OIDS: LazyLock<HashMap<String, u32>> = LazyLock::new(|| {
    let mut names: HashMap<String, u32> = (0..10_000u32)
        .filter_map(Type::from_oid)
        .map(|t| (t.name().to_string(), t.oid()))
        .collect();
    for (alias, name) in [
        ("integer", "int4"),
        ("int", "int4"),
        ("smallint", "int2"),
        ("bigint", "int8"),
        ("real", "float4"),
        ("double precision", "float8"),
        ("boolean", "bool"),
        ("character varying", "varchar"),
        ("character", "bpchar"),
        ("decimal", "numeric"),
        ("timestamp without time zone", "timestamp"),
        ("timestamp with time zone", "timestamptz"),
        ("time without time zone", "time"),
        ("time with time zone", "timetz"),
    ] {
        if let Some(oid) = names.get(name).copied() {
            names.insert(alias.to_string(), oid);
        }
    }
    names
});

/// The oid of type `name`, as `to_regtype` resolves it; `None` for a type that does not exist.
fn regtype(name: &str) -> Option<u32> {
    let name = name.trim().to_ascii_lowercase();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    let name = name.trim_matches('"');
    if let Some(element) = name.strip_suffix("[]") {
        return TYPE_OIDS.get(&format!("_{}", element.trim())).copied();
    }
    TYPE_OIDS.get(name).copied()
}

/// `to_regtype(text) -> oid`: the type's oid, or NULL when there is no such type (never an
/// error, which is why drivers use it).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct ToRegtype {
    signature: Signature,
}

impl ToRegtype {
    pub(super) fn udf() -> ScalarUDF {
        ScalarUDF::from(Self {
            signature: Signature::string(1, Volatility::Stable),
        })
    }
}

impl ScalarUDFImpl for ToRegtype {
    fn name(&self) -> &str {
        "to_regtype"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Int32)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let Some(arg) = args.args.first() else {
            return exec_err!("to_regtype takes one argument");
        };
        let oid = |s: Option<&str>| s.and_then(regtype).map(|o| o as i32);
        match arg {
            ColumnarValue::Scalar(s) => {
                let text = match s {
                    ScalarValue::Utf8(v) | ScalarValue::Utf8View(v) | ScalarValue::LargeUtf8(v) => {
                        v.as_deref()
                    }
                    other => return exec_err!("to_regtype takes text, got {}", other.data_type()),
                };
                Ok(ColumnarValue::Scalar(ScalarValue::Int32(oid(text))))
            }
            ColumnarValue::Array(a) => {
                let a = datafusion::arrow::compute::cast(a, &DataType::Utf8)?;
                let strings = a.as_string::<i32>();
                let out: Int32Array = (0..strings.len())
                    .map(|i| oid((!strings.is_null(i)).then(|| strings.value(i))))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
        }
    }
}

/// A function that always answers the same text, whatever its arguments:
/// `version()` (what the server says it is) and `pg_get_serial_sequence(table, column)`
/// (NULL: no column of a lake table draws from a sequence).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct ConstantText {
    name: &'static str,
    value: Option<String>,
    signature: Signature,
}

impl ConstantText {
    /// `name` of `args` arguments of any type, answering `value`.
    pub(super) fn udf(name: &'static str, args: usize, value: Option<String>) -> ScalarUDF {
        let signature = if args == 0 {
            Signature::exact(vec![], Volatility::Stable)
        } else {
            Signature::any(args, Volatility::Stable)
        };
        ScalarUDF::from(Self {
            name,
            value,
            signature,
        })
    }
}

impl ScalarUDFImpl for ConstantText {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        _args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(self.value.clone())))
    }
}

#[cfg(test)]
mod tests {
    use super::regtype;

    #[test]
    fn built_in_names_and_spellings_resolve_and_unknown_types_are_none() {
        assert_eq!(regtype("int4"), Some(23));
        assert_eq!(regtype("integer"), Some(23));
        assert_eq!(regtype("pg_catalog.numeric"), Some(1700));
        assert_eq!(regtype("timestamp with time zone"), Some(1184));
        assert_eq!(regtype("text[]"), Some(1009));
        assert_eq!(regtype("hstore"), None);
    }
}
