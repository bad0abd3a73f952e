//! The CPU time the servers under load spent in the measured period (`--server-pids`).
//!
//! Throughput on a machine whose cores the servers share with the load generator moves
//! by tens of percent from run to run; the CPU time the servers spend per operation moves
//! far less, so it is what shows a change to a request's cost. It is read from
//! `/proc/PID/stat` (user plus system time of every thread, in clock ticks) at the end of
//! the warm-up and after the last answer, so it includes whatever else the servers did
//! meanwhile (replication, probes), as it should.

use std::time::Duration;

use super::BenchError;

/// The user and system CPU time the processes `pids` have used so far, all threads.
pub fn used_by(pids: &[u32]) -> Result<Duration, BenchError> {
    let tick = clock_tick()?;
    let mut ticks = 0u64;
    for pid in pids {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path)
            .map_err(|e| BenchError::Setup(format!("cannot read {path}: {e}")))?;
        ticks += ticks_of(&stat)
            .ok_or_else(|| BenchError::Setup(format!("{path}: no CPU times in {stat:?}")))?;
    }
    Ok(tick * u32::try_from(ticks).unwrap_or(u32::MAX))
}

/// The user plus system time of a `/proc/PID/stat` line, in clock ticks: the 14th and
/// 15th fields, counted after the command name (which may hold spaces and parentheses).
fn ticks_of(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

fn clock_tick() -> Result<Duration, BenchError> {
    use nix::unistd::{SysconfVar, sysconf};
    let per_second = sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| BenchError::Setup("cannot read the clock tick (CLK_TCK)".into()))?;
    Ok(Duration::from_secs(1) / u32::try_from(per_second).unwrap_or(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (causalkv (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    1234 56 0 0 20 0 3 0 999 1000000 500 18446744073709551615";
        assert_eq!(ticks_of(stat), Some(1234 + 56));
        assert_eq!(ticks_of("4242 (cut"), None);
        assert_eq!(ticks_of("4242 (x) S 1 2"), None);
    }

    #[test]
    fn a_busy_process_is_seen_to_use_cpu_time() {
        let me = std::process::id();
        let before = used_by(&[me]).unwrap();
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while used_by(&[me]).unwrap() == before {
            x = std::hint::black_box(x.wrapping_add(1));
            assert!(
                spin.elapsed() < Duration::from_secs(10),
                "no CPU time counted"
            );
        }
        assert!(used_by(&[me, me]).unwrap() >= used_by(&[me]).unwrap());
        assert!(used_by(&[u32::MAX]).is_err());
    }
}
