//! The engine's one public error type.
//!
//! Every variant says whose fault it is ([`ErrorKind`]): the user's (bad arguments, bad input
//! data, a refused statement), an external system's (S3 unreachable, a commit conflict), or a
//! bug. The CLI maps kinds to exit codes and prints the message on one line; a scheduler can
//! retry external failures and never retry user ones.

use std::fmt;

/// Whose fault an error is, so callers can decide to retry, fix input, or file a bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Fix the command, the config or the input data; retrying will not help.
    User,
    /// A system outside tally failed (object store, network); retrying may help.
    External,
    /// A bug in tally or a library under it.
    Internal,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::User => "user",
            ErrorKind::External => "external",
            ErrorKind::Internal => "internal",
        })
    }
}

/// Errors from the tally engine. Messages name the file, column, table or day at fault.
#[derive(Debug, thiserror::Error)]
pub enum TallyError {
    /// `tally.toml` (or an override) is not valid.
    #[error("invalid configuration: {message}")]
    Config { message: String },

    /// A lake location that cannot be understood or reached.
    #[error("lake {location}: {message}")]
    Lake { location: String, message: String },

    /// A name that is not a registered table.
    #[error("table not found: {name}")]
    TableNotFound { name: String },

    /// A table configured in `tally.toml` that cannot be opened.
    #[error("table {name} at {location}: {message}")]
    TableOpen {
        name: String,
        location: String,
        message: String,
    },

    /// A lake table a server could not open; only queries naming it fail.
    #[error("table {name} cannot be read: {message}")]
    Unreadable { name: String, message: String },

    /// A statement refused because the session is read-only.
    #[error("{statement} is not allowed: tally sql is read-only (pass --allow-write to change tables; raw data is never writable)")]
    ReadOnly { statement: String },

    /// A write under the lake's `raw/` folder, refused even with `--allow-write`.
    #[error("{statement} {target} is not allowed: it is under the lake's raw/ folder, and raw data is never modified")]
    RawWrite { statement: String, target: String },

    /// A statement refused by `tally serve`, which never changes a table.
    #[error("{statement} is not allowed: tally serve is read-only (change tables with tally sql --allow-write or the jobs; raw data is never writable)")]
    ServeReadOnly { statement: String },

    /// A served query that ran past `--query-timeout` and was stopped.
    #[error("query stopped after {seconds} s (--query-timeout)")]
    QueryTimeout { seconds: u64 },

    /// A command line that cannot run as given (the CLI exits 2, as for a bad flag).
    #[error("{message}")]
    Usage { message: String },

    /// A raw file that cannot be read or does not match the raw schema.
    #[error("bad raw file {file}: {message}")]
    BadRawFile { file: String, message: String },

    /// A value in the input that breaks the contract (e.g. a null `txn_id`).
    #[error("bad input: {message}")]
    BadInput { message: String },

    /// A bad argument value (a date, an interval, a count).
    #[error("invalid {what}: {message}")]
    InvalidArgument { what: String, message: String },

    /// A run that would damage a committed table (replace a day with an empty one, or lose
    /// rows beyond the allowed shrink) and refused; the message names the flag that allows it.
    #[error("{message}")]
    Refused { message: String },

    /// Another run holds what this one needs (e.g. the same ledger day); retry later.
    #[error("{message}")]
    Busy { message: String },

    /// Scale-out workers could not be reached, or were all lost during a run.
    #[error("cluster: {message}")]
    Cluster { message: String },

    /// The object store (local disk or S3) failed.
    #[error("storage: {0}")]
    Storage(#[from] object_store::Error),

    /// The query engine reported an error; planning errors are usually the user's SQL.
    #[error("{0}")]
    Query(#[from] datafusion::error::DataFusionError),

    /// A Delta table operation failed.
    #[error("delta: {0}")]
    Delta(#[from] deltalake::DeltaTableError),

    /// Writing or reading Parquet failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),

    /// Arrow kernels or encoders failed.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    /// Local I/O failed (e.g. writing to stdout or a local file).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),

    /// A broken invariant: a bug.
    #[error("internal error: {0}")]
    Internal(String),

    /// An error shared by every caller waiting on the same work (a server's catalog refresh).
    #[error("{0}")]
    Shared(std::sync::Arc<TallyError>),
}

impl TallyError {
    /// Whose fault this error is.
    pub fn kind(&self) -> ErrorKind {
        use datafusion::error::DataFusionError as D;
        match self {
            TallyError::Config { .. }
            | TallyError::TableNotFound { .. }
            | TallyError::TableOpen { .. }
            | TallyError::ReadOnly { .. }
            | TallyError::ServeReadOnly { .. }
            | TallyError::RawWrite { .. }
            | TallyError::QueryTimeout { .. }
            | TallyError::Usage { .. }
            | TallyError::BadRawFile { .. }
            | TallyError::BadInput { .. }
            | TallyError::Refused { .. }
            | TallyError::InvalidArgument { .. } => ErrorKind::User,
            TallyError::Lake { .. }
            | TallyError::Unreadable { .. }
            | TallyError::Busy { .. }
            | TallyError::Cluster { .. }
            | TallyError::Storage(_)
            | TallyError::Io(_) => ErrorKind::External,
            TallyError::Query(e) => match e.find_root() {
                D::SQL(..) | D::Plan(_) | D::SchemaError(..) | D::NotImplemented(_) => {
                    ErrorKind::User
                }
                D::ObjectStore(_) | D::IoError(_) => ErrorKind::External,
                D::ResourcesExhausted(_) => ErrorKind::External,
                _ => ErrorKind::Internal,
            },
            TallyError::Delta(_) => ErrorKind::External,
            TallyError::Parquet(_) | TallyError::Arrow(_) => ErrorKind::User,
            TallyError::Internal(_) => ErrorKind::Internal,
            TallyError::Shared(e) => e.kind(),
        }
    }

    /// True when the error is a closed stdout (e.g. `tally sql … | head`): not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        fn io_broken(e: &std::io::Error) -> bool {
            e.kind() == std::io::ErrorKind::BrokenPipe
        }
        match self {
            TallyError::Io(e) => io_broken(e),
            TallyError::Arrow(arrow::error::ArrowError::IoError(_, e)) => io_broken(e),
            TallyError::Query(datafusion::error::DataFusionError::IoError(e)) => io_broken(e),
            _ => false,
        }
    }
}

/// Result with [`TallyError`].
pub type Result<T, E = TallyError> = std::result::Result<T, E>;
