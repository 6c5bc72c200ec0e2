package firecracker

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

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

// readCgroupStats reads real cgroups (v2, and v1 where the host has the
// controllers mounted) holding a child that burns CPU.
func TestReadCgroupStats(t *testing.T) {
	mk := func(root string) string {
		if _, err := os.Stat(root); err != nil {
			return ""
		}
		dir := filepath.Join(root, fmt.Sprintf("mvm-test-%d", os.Getpid()))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Logf("cannot make a cgroup under %s: %v", root, err)
			return ""
		}
		t.Cleanup(func() { os.Remove(dir) })
		return dir
	}
	v2 := "/sys/fs/cgroup"
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
		v2 = "/sys/fs/cgroup/unified" // hybrid host
	}
	cases := map[string]cgroupPaths{
		"v2": {V2: mk(v2)},
		"v1": {CPUAcct: mk("/sys/fs/cgroup/cpuacct"), CPU: mk("/sys/fs/cgroup/cpu"), Memory: mk("/sys/fs/cgroup/memory")},
	}
	ran := 0
	for name, cg := range cases {
		if cg.V2 == "" && (cg.CPUAcct == "" || cg.Memory == "") {
			t.Logf("%s: not available here", name)
			continue
		}
		ran++
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command("sh", "-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; exec sleep 100")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			for _, d := range []string{cg.V2, cg.CPUAcct, cg.CPU, cg.Memory} {
				if d != "" {
					if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(fmt.Sprint(cmd.Process.Pid)), 0); err != nil {
						t.Fatalf("move child into %s: %v", d, err)
					}
				}
			}
			deadline := time.Now().Add(20 * time.Second)
			for {
				cs, err := readCgroupStats(cg)
				if err != nil {
					t.Fatal(err)
				}
				if cs.CPUUsage > 0 && cs.CPUUser+cs.CPUSystem > 0 && (cg.Memory == "" || cs.MemoryCurrent > 0) {
					t.Logf("%+v", cs)
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no CPU charged after 20s: %+v", cs)
				}
				time.Sleep(20 * time.Millisecond)
			}
			cmd.Process.Kill()
			cmd.Wait()
		})
	}
	if ran == 0 {
		t.Skip("no writable cgroup hierarchy")
	}
	if _, err := readCgroupStats(cgroupPaths{V2: t.TempDir()}); err == nil {
		t.Error("a directory that is not a cgroup read without error")
	}
	if _, err := readCgroupStats(cgroupPaths{CPUAcct: t.TempDir()}); err == nil {
		t.Error("a v1 directory that is not a cgroup read without error")
	}
}
