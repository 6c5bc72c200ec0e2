// Package metrics reads Firecracker's metrics reports into totals that
// survive many flushes, restarts of the reader and restarts of the
// firecracker process of the same VM. It is for programs that run
// firecracker with a metrics file themselves (the firecracker runtime is
// one); embedders of the runtime get the figures from
// [microvm.StatsReader] instead.
//
// Firecracker writes one JSON object per line (per flush: every 60 s, on the
// FlushMetrics action and on fatal signals). Most fields are
// SharedIncMetric counters, serialised as the change since the previous
// flush; a few are SharedStoreMetric values serialised as they are
// (api_server.process_startup_time*, every field of latencies_us, the
// min_us and max_us of latency aggregates, balloon.balloon_size_mb,
// seccomp.num_faults, the signals except sigpipe and the *_time_us of
// vhost-user devices). [Absolute] tells them apart; [Totals.Add] sums the
// counters and keeps the newest absolute values.
//
// [Collect] follows a metrics file (a regular file, never a FIFO, so the
// reader never blocks firecracker: a FIFO whose reader lags makes firecracker
// drop reports) from the offset it stopped at, and keeps its totals and
// offset in a small state file next to it, replaced atomically, under an
// flock so that several processes may collect at once. The metrics file is
// bounded by its owner trimming its head (punching a hole; see package
// firecracker): Collect before trimming so no report is lost, and skip
// the NUL bytes a trim leaves. [Relaunch] is for a new firecracker process
// about to write the same file: it reads what is left, then empties the
// file (the new process writes from offset 0).
package metrics
