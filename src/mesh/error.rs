//! Why a service could not start or stopped with an error (not how an RPC fails: that is each
//! service's own `error.rs`).

/// A failure to start or run a service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened or reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The embedded migrations could not be applied.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The gRPC server failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A setting is unusable (a bad URL, an unwritable data directory).
    #[error("configuration: {0}")]
    Config(String),
    /// Binding or reading a socket or file failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
