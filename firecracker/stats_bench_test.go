package firecracker

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	microvm "github.com/mvm-dev/microvm"
)

// BenchmarkStats1000 reads the statistics of 1,000 VMs, one Stats call
// each, as `mvm stats` does. The VMs are records of running VMs whose
// processes are 4 sleeping children (so /proc is read for real and the
// crash watchers are real), each with a metrics.json of 20 reports already
// collected once (the steady state: nothing new since the last read).
func BenchmarkStats1000(b *testing.B) {
	const n = 1000
	ctx := context.Background()
	state := b.TempDir()
	r, err := Open(ctx, Config{StateDir: state, FirecrackerBin: "/bin/true", Metrics: true})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	var procs []*procRecord
	for range 4 {
		cmd := exec.Command("sleep", "1000")
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		st, err := readProcStat(cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		procs = append(procs, &procRecord{PID: cmd.Process.Pid, StartTime: st.startTime, BootID: bootID()})
	}
	line := `{"utc_timestamp_ms":1,"block_rootfs":{"read_bytes":4096,"write_bytes":512,"read_count":1,"write_count":1},` +
		`"net_eth0":{"rx_bytes_count":98,"tx_bytes_count":42,"rx_packets_count":1,"tx_packets_count":1},` +
		`"latencies_us":{"load_snapshot":0},"put_api_requests":{"actions_count":1},"vcpu":{"exit_io_out":10}}` + "\n"
	ids := make([]string, n)
	for i := range ids {
		id := fmt.Sprintf("vm%04d", i)
		ids[i] = id
		p := r.paths(id)
		if err := os.MkdirAll(p.dir, 0o700); err != nil {
			b.Fatal(err)
		}
		os.WriteFile(p.metrics, []byte(strings.Repeat(line, 20)), 0o600)
		rec := &vmRecord{ID: id, Status: microvm.StatusRunning, Process: procs[i%len(procs)],
			Spec: microvm.Spec{Kernel: "/k", RootDrive: microvm.Drive{ID: "rootfs", Path: "/r"}, VCPUs: 1, MemoryMiB: 64}}
		if err := r.save(rec); err != nil {
			b.Fatal(err)
		}
	}
	all := func() {
		for _, id := range ids {
			st, err := r.Stats(ctx, id, nil)
			if err != nil {
				b.Fatal(err)
			}
			if st.Process == nil || st.Hypervisor.Drives["rootfs"].ReadBytes != 20*4096 {
				b.Fatalf("%s: %+v", id, st)
			}
		}
	}
	all() // first read: adopts and collects every VM
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	for b.Loop() {
		all()
	}
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	// The process's CPU time per pass (background watchers included):
	// the wall time also counts waits for a CPU on a loaded host.
	cpu := (ru1.Utime.Nano() + ru1.Stime.Nano()) - (ru0.Utime.Nano() + ru0.Stime.Nano())
	b.ReportMetric(float64(cpu)/1e6/float64(b.N), "cpu-ms/op")
}
