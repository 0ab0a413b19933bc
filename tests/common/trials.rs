//! For test targets with `harness = false` (libtest-mimic): trials that depend on something
//! outside the repository (a `redis-server` binary, an opt-in variable) and decide at run time
//! whether they can run. A trial that cannot is reported as *ignored* with its reason, and
//! counted as ignored in cargo's summary — never as passed.
//!
//! `--ignored` and `--include-ignored` ask to run ignored trials: then a gated trial runs
//! anyway, and fails if its prerequisite really is missing.

use std::future::Future;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// Whether the trials behind a prerequisite run.
#[derive(Debug, Clone)]
pub enum Gate {
    /// They run (a missing prerequisite, when required, then fails them).
    Open,
    /// They are ignored, for this reason.
    Closed(String),
}

/// The Tokio runtime a trial runs on; each trial gets its own, as `#[tokio::test]` does.
#[derive(Debug, Clone, Copy)]
pub enum Runtime {
    /// `#[tokio::test]`.
    CurrentThread,
    /// `#[tokio::test(flavor = "multi_thread", worker_threads = N)]`.
    MultiThread(usize),
}

fn gated(
    args: &Arguments,
    name: &str,
    gate: &Gate,
    run: impl FnOnce() -> Result<(), Failed> + Send + 'static,
) -> Trial {
    let asked_for_ignored = args.ignored || args.include_ignored;
    match gate {
        Gate::Open => Trial::test(name, run),
        // Flagged, so `--ignored` selects it, and run.
        Gate::Closed(_) if asked_for_ignored => Trial::test(name, run).with_ignored_flag(true),
        Gate::Closed(reason) => {
            let reason = reason.clone();
            Trial::ignorable_test(name, move || Ok(Completion::ignored_with(reason)))
        }
    }
}

/// A synchronous trial behind `gate`.
pub fn sync_trial(
    args: &Arguments,
    name: &str,
    gate: &Gate,
    test: impl FnOnce() + Send + 'static,
) -> Trial {
    gated(args, name, gate, move || {
        test();
        Ok(())
    })
}

/// An async trial behind `gate`, on its own runtime (a panic fails the trial, as in libtest).
pub fn async_trial<F, Fut>(
    args: &Arguments,
    name: &str,
    gate: &Gate,
    runtime: Runtime,
    test: F,
) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    gated(args, name, gate, move || {
        let mut builder = match runtime {
            Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
            Runtime::MultiThread(workers) => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(workers);
                b
            }
        };
        let rt = builder
            .enable_all()
            .build()
            .map_err(|e| format!("cannot build the Tokio runtime: {e}"))?;
        rt.block_on(test());
        Ok(())
    })
}
