//! The allocator under `--memory-limit`.
//!
//! `--memory-limit` bounds what DataFusion accounts for; the process also holds memory it does
//! not count, and mimalloc keeps freed memory resident for a second (its purge delay) before
//! giving it back to the kernel. On the 10M-transaction ledger day with `--memory-limit 1GiB`
//! the peak was 1.3–1.45 GiB; a 100 ms delay brought it to 1.17–1.23 GiB for about 5% more
//! time (measured with `MIMALLOC_PURGE_DELAY` set by hand). mimalloc reads the delay
//! from the environment when the process starts, and changing it later is an unsafe FFI call
//! (tally forbids `unsafe`), so a run with a memory limit re-executes itself once with
//! `MIMALLOC_PURGE_DELAY` set, unless the caller already set it.

/// mimalloc's environment variable for the purge delay, in milliseconds.
pub const PURGE_DELAY_VAR: &str = "MIMALLOC_PURGE_DELAY";

/// The delay used under a memory limit.
const PURGE_DELAY_MS: &str = "100";

/// Under a memory limit, replaces this process with itself started with a short purge delay
/// (same pid, arguments, streams and exit code). Returns only when it did not: no limit, the
/// delay already set, or the re-exec failed (the error, which the caller logs and runs on).
#[cfg(unix)]
pub fn reexec_with_short_purge_delay(memory_limited: bool) -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    if !memory_limited || std::env::var_os(PURGE_DELAY_VAR).is_some() {
        return None;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return Some(e),
    };
    // `exec` returns only on failure.
    Some(
        std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(PURGE_DELAY_VAR, PURGE_DELAY_MS)
            .exec(),
    )
}

/// Elsewhere there is no `exec`: the run keeps mimalloc's default delay.
#[cfg(not(unix))]
pub fn reexec_with_short_purge_delay(_memory_limited: bool) -> Option<std::io::Error> {
    None
}
