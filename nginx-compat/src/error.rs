//! The crate's error type: configuration mistakes, scripts that fail to load
//! (so a reload can keep the old VM), and Lua errors raised while running.

/// Errors returned to the host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad node configuration (dict declarations, paths).
    #[error("nginx-compat configuration: {0}")]
    Config(String),
    /// A chunk failed to compile, or the `init`/`init_worker` chunk raised.
    #[error("failed to load the {phase} chunk: {source}")]
    Load {
        /// Which chunk: `init`, `init_worker`, `access` or `log`.
        phase: &'static str,
        /// The Lua error.
        source: mlua::Error,
    },
    /// A chunk raised a Lua error while handling a request.
    #[error("lua error in the {phase} phase: {source}")]
    Runtime {
        /// `access` or `log`.
        phase: &'static str,
        /// The Lua error.
        source: mlua::Error,
    },
    /// The Lua state could not be set up.
    #[error("lua state setup: {0}")]
    Setup(#[from] mlua::Error),
}
