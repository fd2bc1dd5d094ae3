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

/// A function that always answers the same value, whatever its arguments:
/// `version()` (what the server says it is), `pg_get_serial_sequence(table, column)`
/// (NULL: no column of a lake table draws from a sequence) and
/// `pg_collation_is_visible(oid)` (true: there is one schema search path, and it has them).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct Constant {
    name: &'static str,
    value: ScalarValue,
    signature: Signature,
}

impl Constant {
    /// `name` of `args` arguments of any type, answering `value`.
    pub(super) fn udf(name: &'static str, args: usize, value: ScalarValue) -> ScalarUDF {
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

impl ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(self.value.data_type())
    }

    fn invoke_with_args(
        &self,
        _args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

/// `json_build_object(k1, v1, k2, v2, …)`: a JSON object of the pairs, as text (SQLAlchemy's
/// inspector builds a column's identity and collation details with it).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct JsonBuildObject {
    signature: Signature,
}

impl JsonBuildObject {
    pub(super) fn udf() -> ScalarUDF {
        ScalarUDF::from(Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        })
    }
}

/// One SQL value as JSON text, as Postgres' `to_json` writes it: integers and decimals as
/// their exact digits, finite floats and booleans as themselves, everything else as a string.
fn json_value(value: &ScalarValue) -> String {
    let text = || serde_json::Value::String(value.to_string()).to_string();
    match value {
        v if v.is_null() => "null".to_string(),
        ScalarValue::Boolean(Some(b)) => b.to_string(),
        ScalarValue::Int8(_)
        | ScalarValue::Int16(_)
        | ScalarValue::Int32(_)
        | ScalarValue::Int64(_)
        | ScalarValue::UInt8(_)
        | ScalarValue::UInt16(_)
        | ScalarValue::UInt32(_)
        | ScalarValue::UInt64(_)
        | ScalarValue::Decimal128(..) => value.to_string(),
        ScalarValue::Float32(Some(f)) if f.is_finite() => value.to_string(),
        ScalarValue::Float64(Some(f)) if f.is_finite() => value.to_string(),
        _ => text(),
    }
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return exec_err!(
                "json_build_object takes an even number of arguments (key, value pairs)"
            );
        }
        let rows = args.number_rows;
        let columns = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        let mut out = datafusion::arrow::array::StringBuilder::new();
        for row in 0..rows {
            let mut fields = Vec::with_capacity(columns.len() / 2);
            for pair in columns.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                if key.is_null() {
                    return exec_err!("json_build_object: a key is NULL");
                }
                let value = ScalarValue::try_from_array(&pair[1], row)?;
                let key = serde_json::Value::String(key.to_string()).to_string();
                fields.push(format!("{key} : {}", json_value(&value)));
            }
            out.append_value(format!("{{{}}}", fields.join(", ")));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `current_setting(name [, missing_ok])`: the settings clients read with it, as a fresh
/// session of tally's server has them (a session's own `SET search_path` is answered by
/// `SHOW`, not here), and DataFusion's options by their full name.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct CurrentSetting {
    signature: Signature,
}

impl CurrentSetting {
    pub(super) fn udf() -> ScalarUDF {
        ScalarUDF::from(Self {
            signature: Signature::one_of(
                vec![
                    datafusion::logical_expr::TypeSignature::String(1),
                    datafusion::logical_expr::TypeSignature::Any(2),
                ],
                Volatility::Stable,
            ),
        })
    }
}

/// The server's own value of Postgres setting `name`.
fn pg_setting(name: &str) -> Option<String> {
    Some(match name {
        "search_path" => "\"$user\", public".into(),
        "server_version" => super::server_identity::server_version(),
        "server_version_num" => super::server_identity::server_version_num(),
        "server_encoding" | "client_encoding" => "UTF8".into(),
        "datestyle" => "ISO, MDY".into(),
        "intervalstyle" => "postgres".into(),
        "standard_conforming_strings" | "integer_datetimes" => "on".into(),
        "default_transaction_read_only" | "transaction_read_only" => "on".into(),
        "is_superuser" => "off".into(),
        "max_identifier_length" => "63".into(),
        "max_index_keys" => "32".into(),
        "transaction_isolation" | "default_transaction_isolation" => "read committed".into(),
        _ => return None,
    })
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        let rows = args.number_rows;
        let names = match args.args.first() {
            Some(a) => datafusion::arrow::compute::cast(&a.to_array(rows)?, &DataType::Utf8)?,
            None => return exec_err!("current_setting takes a setting name"),
        };
        let missing_ok = match args.args.get(1) {
            Some(a) => Some(datafusion::arrow::compute::cast(
                &a.to_array(rows)?,
                &DataType::Boolean,
            )?),
            None => None,
        };
        let names = names.as_string::<i32>();
        let options = args.config_options.entries();
        let mut out = datafusion::arrow::array::StringBuilder::new();
        for row in 0..rows {
            if names.is_null(row) {
                out.append_null();
                continue;
            }
            let name = names.value(row).to_ascii_lowercase();
            let value = pg_setting(&name).or_else(|| {
                options
                    .iter()
                    .find(|e| e.key == name)
                    .map(|e| e.value.clone().unwrap_or_default())
            });
            match value {
                Some(v) => out.append_value(v),
                None if missing_ok.as_ref().is_some_and(|m| {
                    let m = m.as_boolean();
                    m.is_valid(row) && m.value(row)
                }) =>
                {
                    out.append_null()
                }
                None => {
                    return exec_err!("unrecognized configuration parameter \"{name}\"");
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[cfg(test)]
mod tests {
    use super::{json_value, regtype};
    use datafusion::common::ScalarValue;

    #[test]
    fn json_values_keep_decimals_exact_and_write_text_as_strings() {
        let cents = ScalarValue::Decimal128(Some(1_234_567_890_123_456_789), 38, 2);
        assert_eq!(json_value(&cents), "12345678901234567.89");
        assert_eq!(json_value(&ScalarValue::Boolean(Some(true))), "true");
        assert_eq!(
            json_value(&ScalarValue::Utf8(Some("a\"b".into()))),
            "\"a\\\"b\""
        );
        assert_eq!(json_value(&ScalarValue::Int64(None)), "null");
        assert_eq!(json_value(&ScalarValue::Float64(Some(f64::NAN))), "\"NaN\"");
    }

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
