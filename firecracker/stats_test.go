package firecracker_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/fcapi"
	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/internal/fcstandin"
	"github.com/mvm-dev/microvm/internal/realfc"
)

func withMetrics(c *firecracker.Config) { c.Metrics = true }

func stats(t *testing.T, rt microvm.StatsReader, id string, flush bool) microvm.VMStats {
	t.Helper()
	st, err := rt.Stats(context.Background(), id, &microvm.StatsOptions{Flush: flush})
	if err != nil {
		t.Fatalf("Stats(%q): %v", id, err)
	}
	return st
}

// checkIO checks the stand-in's deterministic guest I/O: one read of
// GuestReadBytes and one write per flush of a booted VM.
func checkIO(t *testing.T, st microvm.VMStats, wantFlushes uint64) {
	t.Helper()
	h := st.Hypervisor
	if h == nil {
		t.Fatalf("no hypervisor stats: %v", st.Warnings)
	}
	d := h.Drives["rootfs"]
	if h.Flushes != wantFlushes || d.ReadBytes != wantFlushes*fcstandin.GuestReadBytes || d.ReadOps != wantFlushes ||
		d.WriteBytes != wantFlushes*fcstandin.GuestWriteBytes {
		t.Fatalf("flushes %d (want %d), rootfs %+v", h.Flushes, wantFlushes, d)
	}
}

// Totals stay right across many flushes, a runtime (mvm) restart, a
// firecracker restart (Stop/Start) and a crash (SIGKILL, Start).
func TestStatsTotals(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	bin := standin(t)
	rt := open(t, state, bin, withMetrics)
	t.Cleanup(func() { destroyAll(t, rt); rt.Close() })
	vm, err := rt.Create(ctx, "s1", testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	// Created: a process, no boot, so no flush is asked for.
	st := stats(t, rt, "s1", true)
	if st.Process == nil || st.Process.PID != vm.Backend.PID || st.Process.Threads < 1 || st.Process.RSSBytes == 0 {
		t.Fatalf("created: process %+v, warnings %v", st.Process, st.Warnings)
	}
	if len(st.Warnings) != 0 || st.Hypervisor == nil || st.Hypervisor.Flushes != 0 || st.Hypervisor.Processes != 1 {
		t.Fatalf("created: hypervisor %+v, warnings %v", st.Hypervisor, st.Warnings)
	}
	if _, err := rt.Start(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		st = stats(t, rt, "s1", true)
		checkIO(t, st, uint64(i+1))
	}
	if st.Hypervisor.APIRequests == 0 || st.Status != microvm.StatusRunning {
		t.Errorf("api requests %d, status %s", st.Hypervisor.APIRequests, st.Status)
	}
	// Without Flush the figures are as of the last flush.
	checkIO(t, stats(t, rt, "s1", false), 20)

	// mvm restart: a new runtime over the same state continues the totals.
	rt.Close()
	rt = open(t, state, bin, withMetrics)
	checkIO(t, stats(t, rt, "s1", true), 21)

	// firecracker restart: Stop (the stand-in flushes as it stops), Start.
	if _, err := rt.Stop(ctx, "s1", nil); err != nil {
		t.Fatal(err)
	}
	st = stats(t, rt, "s1", true) // stopped: no process, no flush asked
	if st.Process != nil {
		t.Errorf("stopped VM has process stats %+v", st.Process)
	}
	base := st.Hypervisor.Flushes
	if base < 21 {
		t.Fatalf("flushes after stop = %d", base)
	}
	if _, err := rt.Start(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	st = stats(t, rt, "s1", true)
	checkIO(t, st, base+1)
	if st.Hypervisor.Processes != 2 {
		t.Errorf("processes = %d, want 2", st.Hypervisor.Processes)
	}
	// A crash: the reports the dead process wrote and nobody read yet are
	// taken when the VM starts again.
	for range 3 {
		stats(t, rt, "s1", true)
	}
	kill(t, rt, "s1")
	waitStatus(t, rt, "s1", microvm.StatusFailed)
	if _, err := rt.Start(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	st = stats(t, rt, "s1", true)
	checkIO(t, st, base+5)
	if st.Hypervisor.Processes != 3 {
		t.Errorf("processes = %d, want 3", st.Hypervisor.Processes)
	}
	if _, err := rt.Stats(ctx, "nope", nil); !errors.Is(err, microvm.ErrNotFound) {
		t.Errorf("unknown VM: %v", err)
	}
	if _, err := rt.Stats(ctx, "../x", nil); !errors.Is(err, microvm.ErrInvalidID) {
		t.Errorf("bad id: %v", err)
	}
}

// The trimmer bounds metrics.json (here to 16 KiB, a few reports) and
// collects before each cut: no report is lost.
func TestStatsAcrossTrims(t *testing.T) {
	ctx := context.Background()
	rt := open(t, t.TempDir(), standin(t), withMetrics, func(c *firecracker.Config) { c.ConsoleMaxBytes = 16 << 10 })
	t.Cleanup(func() { destroyAll(t, rt); rt.Close() })
	vm, err := rt.Create(ctx, "t1", testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "t1"); err != nil {
		t.Fatal(err)
	}
	c := fcapi.New(vm.Backend.APISocket, nil)
	defer c.Close()
	mf := filepath.Join(vm.Backend.Dir, "metrics.json")
	for i := range 60 {
		if err := c.FlushMetrics(ctx); err != nil { // behind the runtime's back
			t.Fatal(err)
		}
		if i%4 == 3 {
			if _, err := rt.Logs(ctx, "t1", 1); err != nil { // Logs trims
				t.Fatal(err)
			}
		}
	}
	var fi syscall.Stat_t
	if err := syscall.Stat(mf, &fi); err != nil {
		t.Fatal(err)
	}
	if used := fi.Blocks * 512; used > 64<<10 {
		t.Errorf("metrics.json holds %d bytes on disk, want it bounded near 16 KiB", used)
	}
	checkIO(t, stats(t, rt, "t1", false), 60)
}

// The stand-in flushes periodically like Firecracker (every 60 s; here
// FCSTANDIN_METRICS_PERIOD): Stats without Flush sees those reports.
func TestStatsPeriodicFlush(t *testing.T) {
	ctx := context.Background()
	rt := open(t, t.TempDir(), standin(t, "FCSTANDIN_METRICS_PERIOD=20ms"), withMetrics)
	t.Cleanup(func() { destroyAll(t, rt); rt.Close() })
	if _, err := rt.Create(ctx, "p1", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := stats(t, rt, "p1", false)
		if h := st.Hypervisor; h != nil && h.Flushes >= 3 {
			checkIO(t, st, h.Flushes)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no periodic reports after 10s: %+v", st.Hypervisor)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Without Config.Metrics: host figures only, a warning, no files.
func TestStatsMetricsOff(t *testing.T) {
	ctx := context.Background()
	rt, _ := newRuntime(t)
	vm, err := rt.Create(ctx, "m0", testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "m0"); err != nil {
		t.Fatal(err)
	}
	st := stats(t, rt, "m0", true)
	if st.Hypervisor != nil || st.Process == nil || len(st.Warnings) != 1 || !strings.Contains(st.Warnings[0], "Config.Metrics") {
		t.Fatalf("metrics off: %+v", st)
	}
	for _, f := range []string{"metrics.json", "metrics.state", "metrics.state.lock"} {
		if _, err := os.Stat(filepath.Join(vm.Backend.Dir, f)); err == nil {
			t.Errorf("%s made with metrics off", f)
		}
	}
}

// Real binaries accept the metrics configuration and refuse FlushMetrics
// before boot with their own message; Stats does not ask before boot.
func TestRealMetricsConfig(t *testing.T) {
	eachReal(t, func(t *testing.T, b realfc.Binary) {
		ctx := context.Background()
		rt, _ := realRuntime(t, b, withMetrics)
		vm, err := rt.Create(ctx, "rm", realSpec(t))
		if err != nil {
			t.Fatalf("Create with metrics: %v", err)
		}
		c := fcapi.New(vm.Backend.APISocket, nil)
		defer c.Close()
		err = c.FlushMetrics(ctx)
		if err == nil || !strings.Contains(err.Error(), fcstandin.MsgPreBoot) {
			t.Fatalf("FlushMetrics before boot: %v, want %q", err, fcstandin.MsgPreBoot)
		}
		st := stats(t, rt, "rm", true)
		if len(st.Warnings) != 0 || st.Hypervisor == nil || st.Process == nil || st.Process.RSSBytes == 0 {
			t.Fatalf("Stats of a created real VM: %+v", st)
		}
	})
}
