package firecracker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
)

// childEnv makes the test binary run childMain instead of the tests: the
// re-adoption tests drive a runtime in another process, the way each mvm
// command is a process of its own.
const childEnv = "MVM_FIRECRACKER_TEST_CHILD"

// childJob is what a child process does.
type childJob struct {
	State string       `json:"state"`
	Bin   string       `json:"bin"`
	ID    string       `json:"id"`
	Spec  microvm.Spec `json:"spec"`
	Ops   []string     `json:"ops"` // "create", "start", "pause", "resume", "stop", "snapshot", "get", "exit-without-close"
	// Jailer, when set, runs the child's runtime jailed.
	Jailer *firecracker.JailerConfig `json:"jailer,omitempty"`
}

// childMain opens a runtime, runs the job's operations, prints the VM as
// JSON and exits (closing the runtime unless the job ends in
// "exit-without-close").
func childMain(job string) int {
	var j childJob
	if err := json.Unmarshal([]byte(job), &j); err != nil {
		fmt.Fprintln(os.Stderr, "child: bad job:", err)
		return 2
	}
	ctx := context.Background()
	rt, err := firecracker.Open(ctx, firecracker.Config{StateDir: j.State, FirecrackerBin: j.Bin, Jailer: j.Jailer})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: open:", err)
		return 1
	}
	var vm microvm.VM
	for _, op := range j.Ops {
		switch op {
		case "create":
			vm, err = rt.Create(ctx, j.ID, j.Spec)
		case "start":
			vm, err = rt.Start(ctx, j.ID)
		case "pause":
			vm, err = rt.Pause(ctx, j.ID)
		case "resume":
			vm, err = rt.Resume(ctx, j.ID)
		case "stop":
			vm, err = rt.Stop(ctx, j.ID, nil)
		case "snapshot":
			_, err = rt.Snapshot(ctx, j.ID, j.ID+"-snap", nil)
		case "get":
			vm, err = rt.Get(ctx, j.ID)
		case "exit-without-close":
			json.NewEncoder(os.Stdout).Encode(vm)
			os.Exit(0)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "child: %s: %v\n", op, err)
			return 1
		}
	}
	json.NewEncoder(os.Stdout).Encode(vm)
	if err := rt.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "child: close:", err)
		return 1
	}
	return 0
}

// execChild returns the command of a child process running job.
func execChild(job []byte) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(job))
	cmd.Stderr = os.Stderr
	return cmd
}

// runChild runs a job in a child process and returns the VM it printed.
func runChild(t *testing.T, j childJob) microvm.VM {
	t.Helper()
	raw, _ := json.Marshal(j)
	cmd := execChild(raw)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child %v: %v", j.Ops, err)
	}
	var vm microvm.VM
	if err := json.Unmarshal(out, &vm); err != nil {
		t.Fatalf("child %v printed %q: %v", j.Ops, out, err)
	}
	return vm
}

// TestAdoptAcrossProcesses: a VM created and started by another process
// (which then exits) is adopted running with the same pid; a pause made
// by a third process is seen after reopening; a firecracker killed while
// no runtime runs is found failed.
func TestAdoptAcrossProcesses(t *testing.T) {
	state := t.TempDir()
	bin := standin(t)
	spec := testSpec(t)
	ctx := context.Background()

	born := runChild(t, childJob{State: state, Bin: bin, ID: "adopted", Spec: spec, Ops: []string{"create", "start"}})
	if born.Status != microvm.StatusRunning || born.Backend.PID == 0 {
		t.Fatalf("child made VM %s with pid %d, want running", born.Status, born.Backend.PID)
	}

	rt := open(t, state, bin)
	vm, err := rt.Get(ctx, "adopted")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if vm.Status != microvm.StatusRunning || vm.Backend.PID != born.Backend.PID {
		t.Fatalf("adopted VM: %s pid %d, want running pid %d", vm.Status, vm.Backend.PID, born.Backend.PID)
	}
	if err := rt.Close(); err != nil {
		t.Fatal(err)
	}

	// Paused in one process, reopened in another.
	runChild(t, childJob{State: state, Bin: bin, ID: "adopted", Ops: []string{"pause"}})
	rt = open(t, state, bin)
	if vm, _ := rt.Get(ctx, "adopted"); vm.Status != microvm.StatusPaused || vm.Backend.PID != born.Backend.PID {
		t.Fatalf("after pause in another process: %s pid %d, want paused pid %d", vm.Status, vm.Backend.PID, born.Backend.PID)
	}
	if _, err := rt.Resume(ctx, "adopted"); err != nil {
		t.Fatalf("Resume of an adopted VM: %v", err)
	}
	rt.Close()

	// Killed while no runtime runs.
	if err := syscall.Kill(born.Backend.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, born.Backend.PID)
	rt = open(t, state, bin)
	defer rt.Close()
	vm, err = rt.Get(ctx, "adopted")
	if err != nil {
		t.Fatal(err)
	}
	if vm.Status != microvm.StatusFailed || vm.LastError == "" || vm.Backend.PID != 0 {
		t.Fatalf("VM killed while no runtime ran: %s pid %d LastError %q, want failed with a reason and no pid",
			vm.Status, vm.Backend.PID, vm.LastError)
	}
	if _, err := os.Stat(vm.Backend.APISocket); err == nil {
		t.Errorf("the dead VM's API socket %s was not cleaned up", vm.Backend.APISocket)
	}
	if _, err := rt.Start(ctx, "adopted"); err != nil {
		t.Fatalf("Start of the failed VM: %v", err)
	}
	if _, err := rt.Destroy(ctx, "adopted"); err != nil {
		t.Fatal(err)
	}
	assertClean(t, state, "adopted")
}

// waitGone waits until pid no longer exists (a killed child of another
// process is reaped by init).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && len(st) > 0 {
			// a zombie is gone for our purposes
			if i := lastParen(st); i > 0 && len(st) > i+2 && st[i+2] == 'Z' {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still exists", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func lastParen(b []byte) int {
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] == ')' {
			return i
		}
	}
	return -1
}
