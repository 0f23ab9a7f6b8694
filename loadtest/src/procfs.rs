//! Reading a process's resident memory, CPU time and open-file limit from
//! `/proc` (Linux), for the server under test (`--server-pid`, or the
//! baseline child) and for the tool itself.

/// Clock ticks per second of `/proc/<pid>/stat` times. Linux reports them in
/// USER_HZ, which is 100 on every architecture it supports for user space.
const USER_HZ: f64 = 100.0;

/// Resident set size in KiB (`VmRSS`), or `None` if the process is gone.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User plus system CPU seconds used so far.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu(&stat)
}

fn parse_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces; fields after its ')'
    // start with field 3, so utime (14) and stime (15) are at 11 and 12.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// The soft limit on open files of a process (`None`: unknown or unlimited).
pub(crate) fn open_files_limit(pid: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A process to watch: memory and CPU at two points of a run.
pub(crate) struct Watched {
    pid: u32,
}

/// Memory and CPU of a watched process at one instant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) rss_kib: Option<u64>,
    pub(crate) cpu_s: Option<f64>,
}

impl Watched {
    pub(crate) fn new(pid: u32) -> Self {
        Watched { pid }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn sample(&self) -> Sample {
        Sample {
            rss_kib: rss_kib(self.pid),
            cpu_s: cpu_seconds(self.pid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let status = "Name:\tswitchboard\nVmPeak:\t  9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(parse_cpu(stat), Some(3.0));
        // This very process is readable.
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        assert!(cpu_seconds(std::process::id()).is_some());
        assert!(open_files_limit("self").is_some());
    }
}
