package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
)

// BenchmarkCLIScale measures what one mvm command about one VM costs when
// the state directory holds many VMs: every mvm command is a process that
// opens the runtime, and it must not pay for VMs it does not touch.
//
// Two state directories are prepared (untimed): "1" holds only the VMs the
// commands use; "1000" holds them plus 1,000 others: 990 records of
// stopped VMs (copies of the record of a VM created, started and stopped
// through the runtime, under other ids) and 10 live created VMs, each a
// running firecracker process. The firecracker is the stand-in
// (internal/fcstandin): the commands measured spawn one at most (start),
// the same in both directories. Each round runs the command once against
// each directory, in alternating order; reported per directory n: the
// median wall time of the process (n-ms), its CPU time (user+sys,
// n-cpu-ms), and the median over rounds of the ratio 1000/1.
//
//	go test -run '^$' -bench CLIScale -benchtime 20x ./cmd/mvm/
func BenchmarkCLIScale(b *testing.B) {
	bin := mvmBinary(b)
	fc := standinWrapper(b) // firecracker gets none of mvm's environment
	env := append(os.Environ(), "MVM_RUNTIME=", "MVM_STATE_DIR=")
	files := b.TempDir()
	kernel, rootfs := filepath.Join(files, "vmlinux"), filepath.Join(files, "rootfs.ext4")
	for _, f := range []string{kernel, rootfs} {
		if err := os.WriteFile(f, []byte("image"), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	// Read-only: the fixture's live VMs share it.
	spec := microvm.Spec{Kernel: kernel, RootDrive: microvm.Drive{Path: rootfs, ReadOnly: true}, VCPUs: 1, MemoryMiB: 32}
	dirs := map[int]string{1: scaleState(b, fc, spec, 0), 1000: scaleState(b, fc, spec, 1000)}
	run := func(state string, args ...string) (time.Duration, time.Duration) {
		cmd := exec.Command(bin, append([]string{"--state-dir", state, "--firecracker-bin", fc}, args...)...)
		cmd.Env = env
		t0 := time.Now()
		out, err := cmd.CombinedOutput()
		wall := time.Since(t0)
		if err != nil {
			b.Fatalf("mvm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return wall, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	create := []string{"create", "rmme", "--kernel", kernel, "--rootfs", rootfs, "--rootfs-ro", "--memory", "32"}
	cases := []struct {
		name        string
		before, cmd []string // before: untimed
		after       []string // untimed
	}{
		{name: "inspect", cmd: []string{"inspect", "x"}},
		{name: "start", cmd: []string{"start", "down"}, after: []string{"stop", "down"}},
		{name: "rm", before: create, cmd: []string{"rm", "rmme"}},
		{name: "ls", cmd: []string{"ls"}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			ns := []int{1, 1000}
			walls := map[int][]float64{}
			cpus := map[int]time.Duration{}
			var ratios []float64
			for round := range b.N {
				got := map[int]time.Duration{}
				for k := range ns {
					n := ns[(round+k)%len(ns)]
					if c.before != nil {
						run(dirs[n], c.before...)
					}
					w, cpu := run(dirs[n], c.cmd...)
					if c.after != nil {
						run(dirs[n], c.after...)
					}
					got[n] = w
					walls[n] = append(walls[n], ms(w))
					cpus[n] += cpu
				}
				ratios = append(ratios, float64(got[1000])/float64(got[1]))
			}
			for _, n := range ns {
				b.ReportMetric(median(walls[n]), fmt.Sprintf("%d-ms", n))
				b.ReportMetric(ms(cpus[n])/float64(b.N), fmt.Sprintf("%d-cpu-ms", n))
			}
			b.ReportMetric(median(ratios), "1000/1")
			b.ReportMetric(0, "ns/op")
		})
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// scaleState prepares a state directory with the VMs the commands use (x:
// created, live; down: stopped) and, with others > 0, 10 more live
// created VMs and others-10 stopped ones (copies of a stopped VM's
// record). Everything left running is destroyed at cleanup.
func scaleState(b *testing.B, fc string, spec microvm.Spec, others int) string {
	ctx := context.Background()
	state := b.TempDir()
	rt, err := firecracker.Open(ctx, firecracker.Config{StateDir: state, FirecrackerBin: fc})
	if err != nil {
		b.Fatal(err)
	}
	defer rt.Close()
	live := []string{"x"}
	if others > 0 {
		for i := range 10 {
			live = append(live, fmt.Sprintf("live-%d", i))
		}
	}
	for _, id := range live {
		if _, err := rt.Create(ctx, id, spec); err != nil {
			b.Fatal(err)
		}
	}
	b.Cleanup(func() {
		rt, err := firecracker.Open(ctx, firecracker.Config{StateDir: state, FirecrackerBin: fc})
		if err != nil {
			b.Error(err)
			return
		}
		defer rt.Close()
		for _, id := range append(live, "down", "rmme") {
			rt.Destroy(ctx, id)
		}
	})
	if _, err := rt.Create(ctx, "down", spec); err != nil {
		b.Fatal(err)
	}
	if _, err := rt.Start(ctx, "down"); err != nil {
		b.Fatal(err)
	}
	if _, err := rt.Stop(ctx, "down", nil); err != nil {
		b.Fatal(err)
	}
	if others == 0 {
		return state
	}
	recDir := filepath.Join(state, "registry", "vm")
	tmpl, err := os.ReadFile(filepath.Join(recDir, "down.json"))
	if err != nil {
		b.Fatal(err)
	}
	for i := range others - 10 {
		id := fmt.Sprintf("s-%04d", i)
		rec := strings.ReplaceAll(string(tmpl), `"down"`, `"`+id+`"`)
		if err := os.WriteFile(filepath.Join(recDir, id+".json"), []byte(rec), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	vms, err := rt.List(ctx)
	if err != nil || len(vms) != others+2 {
		b.Fatalf("state holds %d VMs (%v), want %d", len(vms), err, others+2)
	}
	return state
}
