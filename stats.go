package microvm

import (
	"context"
	"time"
)

// StatsReader is an optional capability of a [Runtime]: what each VM uses.
// Check for it with a type assertion:
//
//	if sr, ok := rt.(microvm.StatsReader); ok { st, err := sr.Stats(ctx, id, nil) }
//
// Stats takes no lock on the VM: it never waits for an operation in
// flight, and the figures are a snapshot that may be a moment old.
type StatsReader interface {
	// Stats returns the VM's statistics. Unknown ids give [ErrNotFound].
	// A nil opts is the zero StatsOptions.
	Stats(ctx context.Context, id string, opts *StatsOptions) (VMStats, error)
}

// StatsOptions tunes Stats.
type StatsOptions struct {
	// Flush asks the hypervisor to write its metrics now (Firecracker's
	// FlushMetrics action, only possible once the VM has booted) so the
	// counters are current; without it they are as of the last periodic
	// flush (every 60 s in Firecracker). A failed flush is not an error:
	// the figures are then as of the last flush, and VMStats.Warnings says
	// why.
	Flush bool
}

// VMStats is what a VM uses. Fields a runtime cannot know are nil.
type VMStats struct {
	// ID is the VM's id; Status its status when read.
	ID     string `json:"id"`
	Status Status `json:"status"`
	// Time is when the figures were read.
	Time time.Time `json:"time"`
	// Process is the host side of the VM's hypervisor process (nil when
	// none runs).
	Process *ProcessStats `json:"process,omitempty"`
	// Cgroup holds the counters of the VM's own cgroup, when it has one.
	Cgroup *CgroupStats `json:"cgroup,omitempty"`
	// Hypervisor holds the hypervisor's own counters, cumulative over the
	// VM's life (all flushes, all processes of the VM); nil when the
	// runtime does not collect them (firecracker: Config.Metrics off).
	Hypervisor *HypervisorStats `json:"hypervisor,omitempty"`
	// Warnings lists what could not be read, e.g. a refused flush.
	Warnings []string `json:"warnings,omitempty"`
}

// ProcessStats is what the host's process table says of the VM's process.
type ProcessStats struct {
	// PID is the process.
	PID int `json:"pid"`
	// UserTime and SystemTime are the CPU time the process (all its
	// threads, vCPUs included) has used so far.
	UserTime   time.Duration `json:"user_time"`
	SystemTime time.Duration `json:"system_time"`
	// RSSBytes is the resident set: guest memory touched plus the VMM's own.
	RSSBytes uint64 `json:"rss_bytes"`
	// Threads is the number of threads.
	Threads int `json:"threads"`
}

// CPUTime is user plus system time.
func (p ProcessStats) CPUTime() time.Duration { return p.UserTime + p.SystemTime }

// CgroupStats is what the VM's cgroup (v2) says of it.
type CgroupStats struct {
	// Path is the cgroup's directory.
	Path string `json:"path"`
	// CPUUsage, CPUUser and CPUSystem are cpu.stat's usage_usec,
	// user_usec and system_usec.
	CPUUsage  time.Duration `json:"cpu_usage"`
	CPUUser   time.Duration `json:"cpu_user"`
	CPUSystem time.Duration `json:"cpu_system"`
	// CPUThrottled is cpu.stat's throttled_usec (time held back by the
	// cpu.max quota).
	CPUThrottled time.Duration `json:"cpu_throttled"`
	// MemoryCurrent and MemoryPeak are memory.current and memory.peak
	// (0 where the kernel lacks it).
	MemoryCurrent uint64 `json:"memory_current"`
	MemoryPeak    uint64 `json:"memory_peak,omitempty"`
}

// HypervisorStats holds the hypervisor's counters. Counters are totals
// since the VM was created; gauges are the last reported values.
type HypervisorStats struct {
	// Flushes is how many metrics reports were read; LastFlush is the
	// time of the newest (zero before the first).
	Flushes   uint64    `json:"flushes"`
	LastFlush time.Time `json:"last_flush,omitzero"`
	// Processes is how many hypervisor processes reported (a restart of
	// the VM starts a new one).
	Processes uint64 `json:"processes"`
	// Drives holds block device counters by drive id.
	Drives map[string]BlockStats `json:"drives,omitempty"`
	// Interfaces holds network counters by interface id.
	Interfaces map[string]NetStats `json:"interfaces,omitempty"`
	// Vsock holds the vsock device's counters.
	Vsock VsockStats `json:"vsock"`
	// MMDS holds the metadata service's counters.
	MMDS MMDSStats `json:"mmds"`
	// APIRequests and APIFailures count requests to the hypervisor's API.
	APIRequests uint64 `json:"api_requests"`
	APIFailures uint64 `json:"api_failures"`
	// Latencies holds the last measured latency of snapshot and
	// pause/resume operations, by name (e.g. "full_create_snapshot",
	// "load_snapshot", "pause_vm").
	Latencies map[string]time.Duration `json:"latencies,omitempty"`
	// MissedReports counts metrics reports the hypervisor could not write.
	MissedReports uint64 `json:"missed_reports"`
	// Counters holds every cumulative counter by "group.field" (e.g.
	// "block_rootfs.read_bytes"), Gauges every absolute value.
	Counters map[string]uint64 `json:"counters,omitempty"`
	Gauges   map[string]uint64 `json:"gauges,omitempty"`
}

// BlockStats counts one drive's I/O.
type BlockStats struct {
	ReadBytes  uint64 `json:"read_bytes"`
	WriteBytes uint64 `json:"write_bytes"`
	ReadOps    uint64 `json:"read_ops"`
	WriteOps   uint64 `json:"write_ops"`
	FlushOps   uint64 `json:"flush_ops"`
	// Throttled counts requests held back by the drive's rate limiter.
	Throttled uint64 `json:"throttled"`
}

// NetStats counts one interface's traffic, from the guest's side (rx is
// what the guest received).
type NetStats struct {
	RxBytes   uint64 `json:"rx_bytes"`
	TxBytes   uint64 `json:"tx_bytes"`
	RxPackets uint64 `json:"rx_packets"`
	TxPackets uint64 `json:"tx_packets"`
	// RxDropped counts frames the guest had no buffer for; TxDropped
	// malformed frames the guest sent.
	RxDropped uint64 `json:"rx_dropped"`
	TxDropped uint64 `json:"tx_dropped"`
	// RxErrors and TxErrors count failed receives and sends.
	RxErrors uint64 `json:"rx_errors"`
	TxErrors uint64 `json:"tx_errors"`
	// RxThrottled and TxThrottled count rate limiter hold-backs.
	RxThrottled uint64 `json:"rx_throttled"`
	TxThrottled uint64 `json:"tx_throttled"`
}

// VsockStats counts the vsock device's traffic.
type VsockStats struct {
	RxBytes     uint64 `json:"rx_bytes"`
	TxBytes     uint64 `json:"tx_bytes"`
	RxPackets   uint64 `json:"rx_packets"`
	TxPackets   uint64 `json:"tx_packets"`
	Connections uint64 `json:"connections"`
}

// MMDSStats counts the metadata service's requests.
type MMDSStats struct {
	Requests    uint64 `json:"requests"`
	RequestsBad uint64 `json:"requests_bad"`
	TxBytes     uint64 `json:"tx_bytes"`
	TxErrors    uint64 `json:"tx_errors"`
	Connections uint64 `json:"connections"`
}
