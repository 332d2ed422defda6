//! Callbacks the log runs on its writer thread.

use std::sync::Arc;

/// A callback run on the log writer thread (see [`LogConfig::durable_hook`],
/// [`LogConfig::writer_start_hook`]).
///
/// [`LogConfig::durable_hook`]: crate::LogConfig::durable_hook
/// [`LogConfig::writer_start_hook`]: crate::LogConfig::writer_start_hook
#[derive(Clone)]
pub struct WriterHook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for WriterHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriterHook")
    }
}
