//! What the report says of the machine: its compute threads, its CPU, other work competing for
//! the cores, this process's peak memory, and the date.

use time::macros::format_description;
use time::OffsetDateTime;

/// The compute threads: RAYON_NUM_THREADS, which `ood` sets at start-up.
pub(crate) fn thread_count() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Starts a new peak-memory window: freed heap memory goes back to the system first (the
/// allocator is tuned to keep it), then the kernel's high-water mark is reset to the current
/// resident size. Linux only; elsewhere nothing happens.
pub(crate) fn reset_peak_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory (VmHWM) in MiB, where /proc tells it.
pub(crate) fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Threads of other processes ready to run now (the least of a few looks at `procs_running`
/// in /proc/stat, less this one), where /proc tells it.
pub(crate) fn other_runnable_threads() -> Option<usize> {
    let mut least: Option<usize> = None;
    for i in 0..5 {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let running: usize = stat
            .lines()
            .find_map(|l| l.strip_prefix("procs_running"))?
            .trim()
            .parse()
            .ok()?;
        let others = running.saturating_sub(1);
        least = Some(least.map_or(others, |l| l.min(others)));
    }
    least
}

/// The first "model name" of /proc/cpuinfo.
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| format!("unknown ({})", std::env::consts::ARCH))
}

/// "YYYY-MM-DD HH:MM UTC" now.
pub(crate) fn utc_now() -> String {
    utc_string(OffsetDateTime::now_utc())
}

/// "YYYY-MM-DD HH:MM UTC" of `t`.
pub(crate) fn utc_string(t: OffsetDateTime) -> String {
    let format = format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    t.to_offset(time::UtcOffset::UTC)
        .format(format)
        .expect("a date and time has every field of the format")
}
