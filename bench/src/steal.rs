//! CPU time the hypervisor took from this machine's CPUs (*steal*), from `/proc/stat`. On
//! a virtual machine a vCPU the host deschedules stalls whatever runs on it for that long,
//! with no context switch the guest could see, so a run's tails are read beside it.

use std::collections::BTreeMap;

/// Per-CPU counters of `/proc/stat`, in clock ticks: CPU number to (every state, steal).
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTimes(BTreeMap<usize, (u64, u64)>);

impl CpuTimes {
    pub fn now() -> std::io::Result<CpuTimes> {
        Ok(CpuTimes::parse(&std::fs::read_to_string("/proc/stat")?))
    }

    /// The `cpuN` lines of a `/proc/stat`; others, and lines too short to have a steal
    /// column (kernels before 2.6.11), are skipped.
    pub fn parse(stat: &str) -> CpuTimes {
        let mut cpus = BTreeMap::new();
        for line in stat.lines() {
            let mut fields = line.split_whitespace();
            let Some(cpu) = fields
                .next()
                .and_then(|name| name.strip_prefix("cpu"))
                .and_then(|n| n.parse::<usize>().ok())
            else {
                continue;
            };
            // user nice system idle iowait irq softirq steal; guest time is in user's.
            let ticks: Vec<u64> = fields.take(8).filter_map(|f| f.parse().ok()).collect();
            if ticks.len() == 8 {
                cpus.insert(cpu, (ticks.iter().sum(), ticks[7]));
            }
        }
        CpuTimes(cpus)
    }

    /// The share of `cpus`' time (every CPU's when empty) stolen since `earlier`, in
    /// percent; `None` when no time passed on them.
    pub fn steal_percent_since(&self, earlier: &CpuTimes, cpus: &[usize]) -> Option<f64> {
        let (mut total, mut steal) = (0, 0);
        for (cpu, (now_total, now_steal)) in &self.0 {
            if !cpus.is_empty() && !cpus.contains(cpu) {
                continue;
            }
            if let Some((then_total, then_steal)) = earlier.0.get(cpu) {
                total += now_total.saturating_sub(*then_total);
                steal += now_steal.saturating_sub(*then_steal);
            }
        }
        (total > 0).then(|| steal as f64 * 100.0 / total as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "cpu  1838217 0 542401 1133691 1200865 0 75852 47208 0 0
cpu0 957021 0 254247 694948 455524 0 27864 20851 0 0
cpu1 881195 0 288153 438743 745341 0 47988 26356 0 0
intr 123 4 5
";
    // Two seconds later: CPU 0 idle, CPU 1 busy with 30 of its 200 ticks stolen.
    const AFTER: &str = "cpu  1838387 0 542431 1135691 1200865 0 75852 47238 0 0
cpu0 957021 0 254247 695148 455524 0 27864 20851 0 0
cpu1 881335 0 288183 438743 745341 0 47988 26386 0 0
intr 456 4 5
";

    #[test]
    fn steal_is_the_stolen_share_of_the_cpus_asked_for() {
        let (before, after) = (CpuTimes::parse(BEFORE), CpuTimes::parse(AFTER));
        assert_eq!(after.steal_percent_since(&before, &[1]), Some(15.0));
        assert_eq!(after.steal_percent_since(&before, &[0]), Some(0.0));
        assert_eq!(after.steal_percent_since(&before, &[]), Some(7.5));
        assert_eq!(after.steal_percent_since(&before, &[7]), None);
        assert_eq!(before.steal_percent_since(&before, &[1]), None);
    }

    #[test]
    fn lines_without_a_steal_column_are_skipped() {
        let old = CpuTimes::parse("cpu0 1 2 3 4 5 6 7\ncpu1 1 2 3 4 5 6 7 8\n");
        assert_eq!(old, CpuTimes(BTreeMap::from([(1, (36, 8))])));
    }
}
