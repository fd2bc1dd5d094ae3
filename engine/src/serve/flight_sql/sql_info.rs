//! What the server tells BI tools about itself: SqlInfo and the XDBC type table.

use super::*;

pub(super) static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "tally");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::FlightSqlServerStatementTimeout, 0i32);
    b.append(SqlInfo::FlightSqlServerTransactionTimeout, 0i32);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlTransactionsSupported, false);
    // A fixed set of scalar entries; building it cannot fail.
    b.build().unwrap_or_else(|_| {
        SqlInfoDataBuilder::new()
            .build()
            .unwrap_or_else(|_| unreachable!())
    })
});

pub(super) fn xdbc(
    name: &str,
    t: XdbcDataType,
    size: Option<i32>,
    scale: Option<i32>,
) -> XdbcTypeInfo {
    XdbcTypeInfo {
        type_name: name.into(),
        data_type: t,
        column_size: size,
        literal_prefix: None,
        literal_suffix: None,
        create_params: None,
        nullable: Nullable::NullabilityNullable,
        case_sensitive: matches!(t, XdbcDataType::XdbcVarchar),
        searchable: Searchable::Full,
        unsigned_attribute: Some(false),
        fixed_prec_scale: matches!(t, XdbcDataType::XdbcDecimal),
        auto_increment: Some(false),
        local_type_name: Some(name.into()),
        minimum_scale: scale,
        maximum_scale: scale,
        sql_data_type: t,
        datetime_subcode: None,
        num_prec_radix: Some(10),
        interval_precision: None,
    }
}

pub(super) static XDBC_INFO: LazyLock<XdbcTypeInfoData> = LazyLock::new(|| {
    let mut b = XdbcTypeInfoDataBuilder::new();
    b.append(xdbc("BIGINT", XdbcDataType::XdbcBigint, Some(19), None));
    b.append(xdbc("INTEGER", XdbcDataType::XdbcInteger, Some(10), None));
    b.append(xdbc(
        "DECIMAL",
        XdbcDataType::XdbcDecimal,
        Some(38),
        Some(2),
    ));
    b.append(xdbc("DOUBLE", XdbcDataType::XdbcDouble, Some(15), None));
    b.append(xdbc("VARCHAR", XdbcDataType::XdbcVarchar, None, None));
    b.append(xdbc("BOOLEAN", XdbcDataType::XdbcBit, Some(1), None));
    b.append(xdbc("DATE", XdbcDataType::XdbcDate, Some(10), None));
    b.append(xdbc(
        "TIMESTAMP",
        XdbcDataType::XdbcTimestamp,
        Some(26),
        None,
    ));
    b.build().unwrap_or_else(|_| unreachable!())
});
