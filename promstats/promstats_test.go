package promstats_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/memory"
	"github.com/mvm-dev/microvm/promstats"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// full is a VMStats with every part present.
func full(id string) microvm.VMStats {
	return microvm.VMStats{
		Process: &microvm.ProcessStats{PID: 1, UserTime: 1500 * time.Millisecond, SystemTime: 500 * time.Millisecond, RSSBytes: 64 << 20, Threads: 3},
		Cgroup:  &microvm.CgroupStats{Path: "/sys/fs/cgroup/x", CPUUsage: 2 * time.Second, MemoryCurrent: 70 << 20},
		Hypervisor: &microvm.HypervisorStats{
			Flushes: 4, Processes: 1, APIRequests: 9,
			Drives:     map[string]microvm.BlockStats{"rootfs": {ReadBytes: 4096, ReadOps: 1}, "data": {WriteBytes: 512, WriteOps: 1}},
			Interfaces: map[string]microvm.NetStats{"eth0": {RxBytes: 98, TxBytes: 42, RxPackets: 1, TxPackets: 1}},
			Vsock:      microvm.VsockStats{Connections: 2},
			MMDS:       microvm.MMDSStats{Requests: 5},
			Latencies:  map[string]time.Duration{"load_snapshot": 1500 * time.Microsecond},
		},
	}
}

func newRuntime(t testing.TB, n int) *memory.Runtime {
	rt := memory.New(&memory.Options{Stats: full})
	ctx := context.Background()
	for i := range n {
		spec := microvm.Spec{Kernel: "/k", RootDrive: microvm.Drive{Path: fmt.Sprintf("/r%d", i)}, VCPUs: 1, MemoryMiB: 64}
		if _, err := rt.Create(ctx, fmt.Sprintf("vm%d", i), spec); err != nil {
			t.Fatal(err)
		}
	}
	return rt
}

func TestCollectorLintAndValues(t *testing.T) {
	rt := newRuntime(t, 2)
	c, err := promstats.New(rt, nil)
	if err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP mvm_vm_block_read_bytes_total Bytes the guest read from the drive.
# TYPE mvm_vm_block_read_bytes_total counter
mvm_vm_block_read_bytes_total{drive="data",vm="vm0"} 0
mvm_vm_block_read_bytes_total{drive="data",vm="vm1"} 0
mvm_vm_block_read_bytes_total{drive="rootfs",vm="vm0"} 4096
mvm_vm_block_read_bytes_total{drive="rootfs",vm="vm1"} 4096
# HELP mvm_vm_cpu_seconds_total CPU time of the VM's hypervisor process (vCPUs included).
# TYPE mvm_vm_cpu_seconds_total counter
mvm_vm_cpu_seconds_total{mode="system",vm="vm0"} 0.5
mvm_vm_cpu_seconds_total{mode="system",vm="vm1"} 0.5
mvm_vm_cpu_seconds_total{mode="user",vm="vm0"} 1.5
mvm_vm_cpu_seconds_total{mode="user",vm="vm1"} 1.5
# HELP mvm_vm_info VM status (always 1).
# TYPE mvm_vm_info gauge
mvm_vm_info{status="created",vm="vm0"} 1
mvm_vm_info{status="created",vm="vm1"} 1
# HELP mvm_vm_operation_latency_seconds Last measured latency of a hypervisor operation.
# TYPE mvm_vm_operation_latency_seconds gauge
mvm_vm_operation_latency_seconds{operation="load_snapshot",vm="vm0"} 0.0015
mvm_vm_operation_latency_seconds{operation="load_snapshot",vm="vm1"} 0.0015
# HELP mvm_stats_up 1 if the last scrape listed the VMs, 0 if listing failed.
# TYPE mvm_stats_up gauge
mvm_stats_up 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "mvm_vm_block_read_bytes_total",
		"mvm_vm_cpu_seconds_total", "mvm_vm_info", "mvm_vm_operation_latency_seconds", "mvm_stats_up"); err != nil {
		t.Error(err)
	}
	// A closed runtime: listing fails, the scrape says so.
	rt.Close()
	if err := testutil.GatherAndCompare(reg, strings.NewReader("# HELP mvm_stats_up 1 if the last scrape listed the VMs, 0 if listing failed.\n# TYPE mvm_stats_up gauge\nmvm_stats_up 0\n"), "mvm_stats_up"); err != nil {
		t.Error(err)
	}
}

type noStats struct{ microvm.Runtime }

func TestCollectorNeedsStats(t *testing.T) {
	if _, err := promstats.New(noStats{memory.New(nil)}, nil); !errors.Is(err, microvm.ErrUnsupported) {
		t.Fatalf("runtime without stats: %v", err)
	}
	if _, err := promstats.New(memory.New(nil), &promstats.Options{Timeout: -1}); !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Fatalf("negative timeout: %v", err)
	}
}

// BenchmarkScrape1000 gathers the collector over 1,000 VMs (memory runtime:
// the collector's own cost, without /proc or metrics files).
func BenchmarkScrape1000(b *testing.B) {
	rt := newRuntime(b, 1000)
	c, _ := promstats.New(rt, nil)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	cpu0 := cpuTime()
	for b.Loop() {
		if _, err := reg.Gather(); err != nil {
			b.Fatal(err)
		}
	}
	// The process's CPU time per scrape: the wall time also counts waits
	// for a CPU on a loaded host.
	b.ReportMetric(float64((cpuTime()-cpu0).Milliseconds())/float64(b.N), "cpu-ms/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
