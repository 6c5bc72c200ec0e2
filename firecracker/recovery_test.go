package firecracker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/fcapi"
)

// alive reports whether pid is a live process (a zombie is dead).
func alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(st, ')')
	return i < 0 || len(st) <= i+2 || (st[i+2] != 'Z' && st[i+2] != 'X')
}

// fcState asks the firecracker behind sock what state its VM is in (GET
// /): what the process itself says, not what a record says.
func fcState(t testing.TB, sock string) fcapi.InstanceState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := fcapi.New(sock, nil)
	defer c.Close()
	info, err := c.InstanceInfo(ctx)
	if err != nil {
		t.Fatalf("GET / on %s: %v", sock, err)
	}
	return info.State
}

// ignoresSIGTERM reports whether pid has SIGTERM ignored (SigIgn in
// /proc/<pid>/status): such a process survives every SIGTERM.
func ignoresSIGTERM(t testing.TB, pid int) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "SigIgn:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return mask&(1<<(uint(syscall.SIGTERM)-1)) != 0
		}
	}
	t.Fatalf("no SigIgn in /proc/%d/status", pid)
	return false
}

// TestStopHungGuest: a guest that ignores Ctrl-Alt-Del in a firecracker
// that ignores SIGTERM is still stopped, by SIGKILL: after the stop
// timeout, and at once when Stop's context ends first. The VM ends
// stopped without a process, and Start boots it again.
func TestStopHungGuest(t *testing.T) {
	rt, state := newRuntime(t, "FCSTANDIN_IGNORE_STOP=1")
	ctx := context.Background()
	if _, err := rt.Create(ctx, "hung", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	for _, how := range []string{"timeout", "context"} {
		vm, err := rt.Start(ctx, "hung")
		if err != nil {
			t.Fatal(err)
		}
		pid := vm.Backend.PID
		if !ignoresSIGTERM(t, pid) {
			t.Fatalf("the stand-in (pid %d) does not ignore SIGTERM: FCSTANDIN_IGNORE_STOP has no effect", pid)
		}
		sctx, opts := ctx, &microvm.StopOptions{Timeout: 50 * time.Millisecond}
		if how == "context" {
			var cancel context.CancelFunc
			sctx, cancel = context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancel()
			opts.Timeout = time.Hour
		}
		vm, err = rt.Stop(sctx, "hung", opts)
		if err != nil {
			t.Fatalf("Stop (%s) of a VM that ignores Ctrl-Alt-Del and SIGTERM: %v", how, err)
		}
		if vm.Status != microvm.StatusStopped || vm.Backend.PID != 0 {
			t.Fatalf("after Stop (%s): %s pid %d, want stopped without a process", how, vm.Status, vm.Backend.PID)
		}
		if alive(pid) {
			t.Fatalf("Stop (%s) returned and firecracker %d still runs", how, pid)
		}
	}
	if pids := procsUnder(state); len(pids) > 0 {
		t.Errorf("processes left: %v", pids)
	}
}

// TestDriverKilledMidSnapshot: the driver is killed while firecracker
// writes a snapshot of a running VM it paused. Recovery resumes the VM,
// once firecracker answers again: GET / must say Running (not only the
// record), no snapshot is visible, and none is left half-written.
func TestDriverKilledMidSnapshot(t *testing.T) {
	state := t.TempDir()
	bin, set := standinCtl(t, "FCSTANDIN_SNAPSHOT_DELAY=1500ms")
	spec := testSpec(t)
	born := runChild(t, childJob{State: state, Bin: bin, ID: "k", Spec: spec, Ops: []string{"create", "start"}})
	set()
	raw, _ := json.Marshal(childJob{State: state, Bin: bin, ID: "k", Ops: []string{"snapshot"}})
	cmd := execChild(raw)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The stand-in logs each request to its stdout (console.log): the
	// driver has paused the VM and waits on PUT /snapshot/create.
	console := filepath.Join(state, "vms", "k", "console.log")
	for deadline := time.Now().Add(20 * time.Second); ; {
		if b, _ := os.ReadFile(console); bytes.Contains(b, []byte(`"/snapshot/create"`)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the driver never sent PUT /snapshot/create")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
	rt := open(t, state, bin)
	t.Cleanup(func() { destroyAll(t, rt); rt.Close() })
	ctx := context.Background()
	// While firecracker still writes, its API does not answer; recovery
	// keeps the operation's mark and finishes it at a later meeting.
	var vm microvm.VM
	for deadline := time.Now().Add(20 * time.Second); ; {
		var err error
		if vm, err = rt.Get(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		if vm.Status == microvm.StatusRunning && fcState(t, vm.Backend.APISocket) == fcapi.StateRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the interrupted snapshot: record %s, firecracker %q; want both running", vm.Status, fcState(t, vm.Backend.APISocket))
		}
		time.Sleep(50 * time.Millisecond)
	}
	if vm.Backend.PID != born.Backend.PID {
		t.Fatalf("pid %d after recovery, want the same process %d", vm.Backend.PID, born.Backend.PID)
	}
	if snaps, err := rt.Snapshots(ctx, ""); err != nil || len(snaps) != 0 {
		t.Fatalf("snapshots after the interrupted one: %v %v, want none", snaps, err)
	}
	// A new runtime meeting it adopts it running (it asks firecracker).
	rt2 := open(t, state, bin)
	defer rt2.Close()
	if vm, err := rt2.Get(ctx, "k"); err != nil || vm.Status != microvm.StatusRunning {
		t.Fatalf("a later runtime sees %s (%v), want running", vm.Status, err)
	}
	// The store is usable again: the same snapshot id can be taken.
	if _, err := rt.Snapshot(ctx, "k", "k-snap", nil); err != nil {
		t.Fatalf("Snapshot after recovery: %v", err)
	}
	if st := fcState(t, vm.Backend.APISocket); st != fcapi.StateRunning {
		t.Fatalf("after a snapshot firecracker reports %q, want Running", st)
	}
}

// TestAdoptionPidReuseGuard: a record whose pid now belongs to another
// process (same pid, another start time) is a dead VM: adoption turns it
// failed and never signals that process, nor does Destroy. With the start
// time matching, the same record is that process's and Destroy ends it:
// the start time alone told them apart.
func TestAdoptionPidReuseGuard(t *testing.T) {
	spec := testSpec(t)
	for _, match := range []bool{false, true} {
		state := t.TempDir()
		bin := standin(t)
		born := runChild(t, childJob{State: state, Bin: bin, ID: "r", Spec: spec, Ops: []string{"create", "start"}})
		if err := syscall.Kill(born.Backend.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitGone(t, born.Backend.PID)
		// A process that is not firecracker takes the pid's place.
		other := exec.Command("sleep", "60")
		if err := other.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { other.Process.Kill(); other.Wait() })
		otherStart := startTime(t, other.Process.Pid)
		file, rec := readRecord(t, state, "r")
		proc := rec["process"].(map[string]any)
		recorded := uint64(proc["start_time"].(float64))
		if !match && recorded == otherStart {
			t.Skip("the stand-in and sleep started in the same clock tick")
		}
		proc["pid"] = other.Process.Pid
		if match {
			proc["start_time"] = otherStart
		}
		writeRecord(t, state, "r", file)
		rt := open(t, state, bin)
		ctx := context.Background()
		vm, err := rt.Get(ctx, "r")
		if err != nil {
			t.Fatal(err)
		}
		if !match {
			if vm.Status != microvm.StatusFailed || vm.Backend.PID != 0 {
				t.Fatalf("record naming a reused pid: %s pid %d, want failed without a process", vm.Status, vm.Backend.PID)
			}
		}
		if _, err := rt.Destroy(ctx, "r"); err != nil {
			t.Fatal(err)
		}
		rt.Close()
		if got := alive(other.Process.Pid); got == match {
			t.Fatalf("start time matching %v: the process with the recorded pid alive=%v after adoption and Destroy", match, got)
		}
	}
}

// startTime reads field 22 of /proc/<pid>/stat.
func startTime(t testing.TB, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	v, err := strconv.ParseUint(f[22-3], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestRecoveryEndsUnrecordedPageServer: a restore with the uffd backend
// whose driver died after it started the page server and before it
// recorded it leaves a page server no record names; recovery finds it by
// its socket in the VM directory (it does not run there) and ends it with
// the VM, and leaves other VMs' processes alone.
func TestRecoveryEndsUnrecordedPageServer(t *testing.T) {
	state := t.TempDir()
	bin := standin(t)
	spec := testSpec(t)
	born := runChild(t, childJob{State: state, Bin: bin, ID: "u", Spec: spec, Ops: []string{"create"}})
	other := testSpec(t)
	kept := runChild(t, childJob{State: state, Bin: bin, ID: "u2", Spec: other, Ops: []string{"create"}})
	// Orphans of the children: whatever the test's outcome, none outlives it.
	t.Cleanup(func() {
		for _, pid := range []int{born.Backend.PID, kept.Backend.PID} {
			if alive(pid) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	// The restore as its driver left it: marked, the firecracker
	// recorded, the page server not.
	file, data := readRecord(t, state, "u")
	data["op"], data["memory_backend"] = "restore", string(microvm.MemoryBackendUffd)
	writeRecord(t, state, "u", file)
	mem := filepath.Join(t.TempDir(), "memory")
	if err := os.WriteFile(mem, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	ps := exec.Command(uffdBin(t), "--socket", filepath.Join(state, "vms", "u", "uffd.sock"), "--mem-file", mem,
		"--accept-timeout", "1h", "--peer-pid", strconv.Itoa(born.Backend.PID))
	if err := ps.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { ps.Wait(); close(done) }()
	t.Cleanup(func() { ps.Process.Kill(); <-done })

	rt := open(t, state, bin)
	defer rt.Close()
	if _, err := rt.Get(context.Background(), "u"); !errors.Is(err, microvm.ErrNotFound) {
		t.Fatalf("Get after an interrupted restore: %v, want ErrNotFound", err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the page server no record named still runs after recovery")
	}
	if alive(born.Backend.PID) {
		t.Errorf("the interrupted restore's firecracker %d still runs", born.Backend.PID)
	}
	if !alive(kept.Backend.PID) {
		t.Errorf("recovery of one VM ended another VM's firecracker %d", kept.Backend.PID)
	}
	if _, err := rt.Destroy(context.Background(), "u2"); err != nil {
		t.Fatal(err)
	}
	assertClean(t, state, "u")
}

// TestDriverKilledMidWarmOp: the driver of a warm Start, a Pause or a
// Resume is killed after firecracker acted and before the driver recorded
// it. A new runtime's List (which does not ask firecracker about VMs it
// can adopt as they are) must report what firecracker reports: the
// operation was marked before the call, so the VM is reconciled.
func TestDriverKilledMidWarmOp(t *testing.T) {
	spec := testSpec(t)
	for _, c := range []struct {
		op    string
		pre   []string
		delay string // the request whose answer is held back
		want  microvm.Status
		state fcapi.InstanceState
	}{
		{"start", []string{"create"}, "PUT /actions", microvm.StatusRunning, fcapi.StateRunning},
		{"pause", []string{"create", "start"}, "PATCH /vm", microvm.StatusPaused, fcapi.StatePaused},
		{"resume", []string{"create", "start", "pause"}, "PATCH /vm", microvm.StatusRunning, fcapi.StateRunning},
	} {
		t.Run(c.op, func(t *testing.T) {
			state := t.TempDir()
			bin, set := standinCtl(t, "FCSTANDIN_ANSWER_DELAY="+c.delay+"=3s")
			born := runChild(t, childJob{State: state, Bin: bin, ID: "w", Spec: spec, Ops: c.pre})
			set()
			// The stand-in logs each request on its stdout (console.log).
			console := filepath.Join(state, "vms", "w", "console.log")
			_, path, _ := strings.Cut(c.delay, " ")
			seen := func() int {
				b, _ := os.ReadFile(console)
				return bytes.Count(b, []byte(`request on "`+path+`"`))
			}
			before := seen()
			raw, _ := json.Marshal(childJob{State: state, Bin: bin, ID: "w", Ops: []string{c.op}})
			cmd := execChild(raw)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(20 * time.Second); seen() == before; time.Sleep(2 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the driver never sent %s", c.delay)
				}
			}
			cmd.Process.Kill()
			cmd.Wait()
			rt := open(t, state, bin)
			t.Cleanup(func() { destroyAll(t, rt); rt.Close() })
			vms, err := rt.List(context.Background())
			if err != nil || len(vms) != 1 {
				t.Fatalf("List: %v %v", vms, err)
			}
			if st := fcState(t, vms[0].Backend.APISocket); vms[0].Status != c.want || st != c.state || vms[0].Backend.PID != born.Backend.PID {
				t.Fatalf("after a %s killed mid-call: List says %s (pid %d), firecracker says %q; want %s, %q, pid %d",
					c.op, vms[0].Status, vms[0].Backend.PID, st, c.want, c.state, born.Backend.PID)
			}
		})
	}
}
