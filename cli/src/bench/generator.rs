//! The load generator's own thread: a single-threaded Tokio runtime on an
//! OS thread named [`LOADGEN_THREAD`], where the bench's gateways run (the
//! schedule, building messages, the sidecar path's gRPC clients), apart
//! from the runtime the routers and sidecars run on. The process's CPU
//! minus these threads' CPU is what switchyard itself spent.

use std::future::Future;
use std::time::Duration;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

use super::schedule::LOADGEN_THREAD;
use super::{process, BenchError};
use switchyard::cause::Cause;

/// A running load-generator thread; stopped when dropped.
pub(crate) struct Generator {
    handle: Handle,
    /// Dropping it ends the thread's `block_on`.
    _stop: oneshot::Sender<()>,
}

impl Generator {
    /// Starts the thread.
    pub(crate) fn start() -> std::io::Result<Self> {
        let runtime = Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(LOADGEN_THREAD.into())
            .spawn(move || {
                // Spawned tasks run while this thread waits here.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }

    /// Runs `task` on the generator thread and waits for its output.
    pub(crate) async fn run<F>(&self, task: F) -> Result<F::Output, BenchError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.handle.spawn(task).await {
            Ok(output) => Ok(output),
            // A panic in the bench's own code: carry it to the caller.
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(err) => Err(BenchError::Generator(Cause::new(err))),
        }
    }

    /// The runtime handle, to spawn on the generator thread.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// CPU time of every load-generator thread so far (this one, and the
    /// open-loop timers).
    pub(crate) fn cpu_time() -> Duration {
        process::threads_cpu_time(LOADGEN_THREAD)
    }
}
