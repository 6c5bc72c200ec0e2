// Package conformance checks that a [microvm.Runtime] obeys the contract of
// package microvm, in the spirit of testing/fstest.TestFS. It is for
// authors of a runtime, or of a wrapper around one (the firecracker and
// memory runtimes run it). A backend's tests call [Run] with a [Harness]:
//
//	func TestConformance(t *testing.T) {
//		conformance.Run(t, conformance.Harness{
//			New:  func(t *testing.T) microvm.Runtime { return memory.New(nil) },
//			Spec: func(t *testing.T) microvm.Spec { return validSpec },
//		})
//	}
//
// The suite checks the transition table from every status, the errors for
// duplicate, unknown and invalid ids, invalid specs and options, copies in
// and out, listing order, Destroy, snapshots and restores, logs, failure
// handling (with [Harness.Crash] and [Harness.Shutdown]), concurrency, durability (with
// [Harness.Reopen]) and Close, and the renamed event of a runtime that is
// both a [microvm.Renamer] and a [microvm.EventSource]. Every top-level group gets its own runtime
// from [Harness.New]; the suite destroys the VMs and deletes the snapshots
// it made, then closes the runtime.
//
// Two readings of the contract the suite relies on: Destroy removes the
// record, so every operation on a destroyed VM gives [microvm.ErrNotFound]
// (the table's "destroyed" row refuses everything); and Snapshots(vmID) of
// an unknown VM is an empty list, not an error (snapshots outlive VMs).
//
// A backend that cannot boot a guest here (a real Firecracker on a host
// without KVM) sets [Harness.NoBoot]: the suite then runs everything that
// needs no Start on created VMs, skips what needs a booted guest
// (snapshots, restores, running and paused VMs), and checks that Start
// fails cleanly (see NoBoot).
//
// The suite is fast for an in-memory runtime (about 10 ms) and bounded for
// a process-backed one: it makes about 120 VMs, at most 20 of them at a
// time, runs at most [Harness.Parallelism] operations at once outside the
// races it stages, and stops VMs with a two-second timeout. With every call
// taking 30 ms it runs in about 13 s.
package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mvm-dev/microvm"
)

// Harness tells [Run] how to make and drive the runtime under test.
type Harness struct {
	// New returns a fresh, empty runtime; the suite closes it.
	New func(t *testing.T) microvm.Runtime
	// Spec returns a valid spec for this runtime (real kernel/rootfs paths
	// where the runtime checks files).
	Spec func(t *testing.T) microvm.Spec
	// Reopen, if set, closes rt and returns a new runtime over the same
	// state (durable runtimes); the suite then checks that VMs and
	// snapshots survive.
	Reopen func(t *testing.T, rt microvm.Runtime) microvm.Runtime
	// Crash, if set, makes the VM's process die unasked (e.g. kill it);
	// the suite then checks the VM turns failed within a bounded wait (poll
	// Get up to 5s) with LastError set, and that Start and Destroy work
	// from failed.
	Crash func(t *testing.T, rt microvm.Runtime, id string)
	// Shutdown, if set, makes the guest of the running VM shut itself down
	// cleanly (power off or reset; the process then exits with status 0);
	// the suite then checks the VM turns stopped within a bounded wait,
	// with no LastError, and that Start and Destroy work from there.
	Shutdown func(t *testing.T, rt microvm.Runtime, id string)
	// Parallelism bounds the concurrency subtests (default 8).
	Parallelism int
	// NoBoot says the backend cannot boot a guest on this host (e.g. real
	// Firecracker without /dev/kvm, where InstanceStart fails). The suite
	// then uses created VMs wherever it needs a VM, skips the groups and
	// subtests that need a running or paused VM, and checks instead that
	// Start of a created VM fails with a *microvm.BackendError (matching
	// ErrBackend), leaves the VM created (or failed) with LastError set,
	// fails the same way when tried again, and that the VM can still be
	// destroyed. Crash is then tried on a created VM: it must stay
	// readable, say why in LastError, and be destroyable.
	NoBoot bool
}

const (
	// defaultParallelism is Harness.Parallelism when it is not set.
	defaultParallelism = 8
	// manyVMs is how many VMs the "many" subtests make.
	manyVMs = 20
	// stopTimeout is passed to every Stop.
	stopTimeout = 2 * time.Second
	// crashWait bounds the wait for a crashed VM to turn failed.
	crashWait = 5 * time.Second
	// cleanupTimeout bounds the suite's own cleanup of one runtime.
	cleanupTimeout = time.Minute
)

// lifecycleOps are the operations a caller can ask for, in table order.
var lifecycleOps = []microvm.Op{
	microvm.OpStart, microvm.OpStop, microvm.OpPause, microvm.OpResume, microvm.OpSnapshot, microvm.OpDestroy,
}

// Run runs the conformance suite against the runtime h makes. New and Spec
// are required.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.New == nil || h.Spec == nil {
		t.Fatal("conformance: Harness.New and Harness.Spec are required")
	}
	if h.Parallelism <= 0 {
		h.Parallelism = defaultParallelism
	}
	s := &suite{h: h}
	t.Run("Transitions", s.testTransitions)
	t.Run("Create", s.testCreate)
	t.Run("IDs", s.testIDs)
	t.Run("Options", s.testOptions)
	t.Run("List", s.testList)
	t.Run("Destroy", s.testDestroy)
	t.Run("Snapshots", s.testSnapshots)
	t.Run("Restore", s.testRestore)
	t.Run("Logs", s.testLogs)
	t.Run("Crash", s.testCrash)
	t.Run("Shutdown", s.testShutdown)
	t.Run("Concurrency", s.testConcurrency)
	t.Run("Reopen", s.testReopen)
	t.Run("Close", s.testClose)
	t.Run("NoBoot", s.testNoBoot)
	t.Run("RenameEvents", s.testRenameEvents)
}

type suite struct {
	h Harness
}

// noBootSkip is the reason given for what a NoBoot backend cannot run.
const noBootSkip = "needs a booted guest; the backend cannot boot here (Harness.NoBoot)"

// live is the status of "a VM" for subtests that need one in any status
// that holds a process: running, or created when the backend cannot boot.
func (s *suite) live() microvm.Status {
	if s.h.NoBoot {
		return microvm.StatusCreated
	}
	return microvm.StatusRunning
}

// needBoot skips t when the backend cannot boot.
func (s *suite) needBoot(t *testing.T) {
	t.Helper()
	if s.h.NoBoot {
		t.Skip(noBootSkip)
	}
}

// env is one runtime under test and a valid spec for it.
type env struct {
	s    *suite
	rt   microvm.Runtime // replaced by Reopen
	spec microvm.Spec
}

// env makes a runtime for one top-level group and registers its cleanup.
func (s *suite) env(t *testing.T) *env {
	t.Helper()
	spec := s.h.Spec(t)
	rt := s.h.New(t)
	if rt == nil {
		t.Fatal("conformance: Harness.New returned nil")
	}
	e := &env{s: s, rt: rt, spec: spec.Clone()}
	t.Cleanup(func() { e.cleanup(t) })
	return e
}

// cleanup destroys every VM, deletes every snapshot and closes the runtime.
func (e *env) cleanup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	vms, err := e.rt.List(ctx)
	if errors.Is(err, microvm.ErrClosed) {
		return // closed by the test
	}
	if err != nil {
		t.Errorf("cleanup: List: %v", err)
	}
	e.s.parallel(len(vms), func(i int) {
		if _, err := e.rt.Destroy(ctx, vms[i].ID); err != nil {
			t.Errorf("cleanup: Destroy(%q): %v", vms[i].ID, err)
		}
	})
	snaps, err := e.rt.Snapshots(ctx, "")
	if err != nil {
		t.Errorf("cleanup: Snapshots: %v", err)
	}
	for i := len(snaps) - 1; i >= 0; i-- { // newest first: children before parents
		err := e.rt.DeleteSnapshot(ctx, snaps[i].ID, &microvm.DeleteSnapshotOptions{Force: true})
		if err != nil && !errors.Is(err, microvm.ErrSnapshotNotFound) {
			t.Errorf("cleanup: DeleteSnapshot(%q): %v", snaps[i].ID, err)
		}
	}
	if err := e.rt.Close(); err != nil && !errors.Is(err, microvm.ErrClosed) {
		t.Errorf("cleanup: Close: %v", err)
	}
}

// parallel runs fn(0..n-1) on at most Parallelism goroutines at once. fn
// must report with t.Errorf, never t.Fatal.
func (s *suite) parallel(n int, fn func(i int)) {
	sem := make(chan struct{}, s.h.Parallelism)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			fn(i)
		})
	}
	wg.Wait()
}

// ---------------------------------------------------------------------------
// Helpers

// create makes a VM from the env's spec, or fails the test.
func (e *env) create(t *testing.T, id string) microvm.VM {
	t.Helper()
	vm, err := e.rt.Create(t.Context(), id, e.spec.Clone())
	if err != nil {
		t.Fatalf("Create(%q): %v", id, err)
	}
	return vm
}

// make builds a VM in status st (created, running, paused or stopped), or
// fails the test.
func (e *env) make(t *testing.T, id string, st microvm.Status) microvm.VM {
	t.Helper()
	if err := e.build(t.Context(), id, st); err != nil {
		t.Fatal(err)
	}
	return e.get(t, id)
}

// build makes a VM in status st: created, running, paused, stopped or
// destroyed (created, then destroyed). It does not use t, so goroutines may
// call it.
func (e *env) build(ctx context.Context, id string, st microvm.Status) error {
	if _, err := e.rt.Create(ctx, id, e.spec.Clone()); err != nil {
		return fmt.Errorf("building %s VM %q: Create: %w", st, id, err)
	}
	var steps []microvm.Op
	switch st {
	case microvm.StatusCreated:
	case microvm.StatusRunning:
		steps = []microvm.Op{microvm.OpStart}
	case microvm.StatusPaused:
		steps = []microvm.Op{microvm.OpStart, microvm.OpPause}
	case microvm.StatusStopped:
		steps = []microvm.Op{microvm.OpStart, microvm.OpStop}
	case microvm.StatusDestroyed:
		steps = []microvm.Op{microvm.OpDestroy}
	default:
		return fmt.Errorf("building VM %q: the suite cannot build status %s directly", id, st)
	}
	for _, op := range steps {
		if _, err := e.do(ctx, id, op, ""); err != nil {
			return fmt.Errorf("building %s VM %q: %s: %w", st, id, op, err)
		}
	}
	vm, err := e.rt.Get(ctx, id)
	if st == microvm.StatusDestroyed {
		if !errors.Is(err, microvm.ErrNotFound) {
			return fmt.Errorf("building destroyed VM %q: Get after Destroy: got %v, want ErrNotFound", id, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("building %s VM %q: Get: %w", st, id, err)
	}
	if vm.Status != st {
		return fmt.Errorf("building VM %q: status is %s after %v, want %s", id, vm.Status, steps, st)
	}
	return nil
}

// do runs one lifecycle operation. For OpSnapshot it takes snapshot snapID
// and returns the VM's view after it.
func (e *env) do(ctx context.Context, id string, op microvm.Op, snapID string) (microvm.VM, error) {
	switch op {
	case microvm.OpStart:
		return e.rt.Start(ctx, id)
	case microvm.OpStop:
		return e.rt.Stop(ctx, id, &microvm.StopOptions{Timeout: stopTimeout})
	case microvm.OpPause:
		return e.rt.Pause(ctx, id)
	case microvm.OpResume:
		return e.rt.Resume(ctx, id)
	case microvm.OpSnapshot:
		snap, err := e.rt.Snapshot(ctx, id, snapID, nil)
		if err != nil {
			return microvm.VM{}, err
		}
		if snap.ID != snapID || snap.VMID != id {
			return microvm.VM{}, fmt.Errorf("Snapshot(%q, %q) returned snapshot %q of VM %q", id, snapID, snap.ID, snap.VMID)
		}
		return e.rt.Get(ctx, id)
	case microvm.OpDestroy:
		return e.rt.Destroy(ctx, id)
	}
	return microvm.VM{}, fmt.Errorf("the suite cannot request operation %s", op)
}

// get returns the VM's view, or fails the test.
func (e *env) get(t *testing.T, id string) microvm.VM {
	t.Helper()
	vm, err := e.rt.Get(t.Context(), id)
	if err != nil {
		t.Fatalf("Get(%q): %v", id, err)
	}
	if vm.ID != id {
		t.Fatalf("Get(%q) returned VM %q", id, vm.ID)
	}
	return vm
}

// wantStatus fails the test unless the VM has status st.
func (e *env) wantStatus(t *testing.T, id string, st microvm.Status) {
	t.Helper()
	if vm := e.get(t, id); vm.Status != st {
		t.Errorf("Get(%q).Status = %s, want %s", id, vm.Status, st)
	}
}

// wantGone fails the test unless Get reports ErrNotFound for id.
func (e *env) wantGone(t *testing.T, id string) {
	t.Helper()
	if vm, err := e.rt.Get(t.Context(), id); !errors.Is(err, microvm.ErrNotFound) {
		t.Errorf("Get(%q): got (%s, %v), want ErrNotFound", id, vm.Status, err)
	}
}

// snapshot takes a full snapshot, or fails the test.
func (e *env) snapshot(t *testing.T, id, snapID string) microvm.Snapshot {
	t.Helper()
	snap, err := e.rt.Snapshot(t.Context(), id, snapID, nil)
	if err != nil {
		t.Fatalf("Snapshot(%q, %q): %v", id, snapID, err)
	}
	return snap
}

// snapshotIDs returns the ids of the snapshots of vmID ("" for all), or
// fails the test.
func (e *env) snapshotIDs(t *testing.T, vmID string) []string {
	t.Helper()
	snaps, err := e.rt.Snapshots(t.Context(), vmID)
	if err != nil {
		t.Fatalf("Snapshots(%q): %v", vmID, err)
	}
	ids := make([]string, len(snaps))
	for i, s := range snaps {
		ids[i] = s.ID
	}
	return ids
}

// listIDs returns the ids List reports, or fails the test.
func (e *env) listIDs(t *testing.T) []string {
	t.Helper()
	vms, err := e.rt.List(t.Context())
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	ids := make([]string, len(vms))
	for i, vm := range vms {
		ids[i] = vm.ID
	}
	return ids
}

// waitFailed polls Get until the VM is failed, for up to crashWait.
func (e *env) waitFailed(t *testing.T, id string) microvm.VM {
	t.Helper()
	deadline := time.Now().Add(crashWait)
	var last microvm.VM
	for {
		vm, err := e.rt.Get(t.Context(), id)
		if err != nil {
			t.Fatalf("Get(%q) after Crash: %v", id, err)
		}
		last = vm
		if vm.Status == microvm.StatusFailed {
			if vm.LastError == "" {
				t.Errorf("VM %q is failed but LastError is empty; it must say why", id)
			}
			return vm
		}
		if vm.Status != microvm.StatusRunning && vm.Status != microvm.StatusPaused {
			t.Fatalf("VM %q went to %s after Crash, want failed", id, vm.Status)
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM %q is still %s %s after Crash, want failed", id, last.Status, crashWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// crash makes the running or paused VM fail through Harness.Crash and
// waits for it.
func (e *env) crash(t *testing.T, id string) microvm.VM {
	t.Helper()
	e.s.h.Crash(t, e.rt, id)
	return e.waitFailed(t, id)
}

// wantErr reports whether err matches target, and fails the test if not.
func wantErr(t *testing.T, what string, err, target error) bool {
	t.Helper()
	if !errors.Is(err, target) {
		t.Errorf("%s: got error %v, want %v", what, err, target)
		return false
	}
	return true
}

// specJSON is the canonical form used to compare specs: a durable runtime
// may turn an empty slice or map into nil.
func specJSON(s microvm.Spec) string {
	b, err := json.Marshal(s)
	if err != nil {
		return "unmarshalable spec: " + err.Error()
	}
	return string(b)
}

// wantSpec fails the test unless got and want are the same spec.
func wantSpec(t *testing.T, what string, got, want microvm.Spec) {
	t.Helper()
	if g, w := specJSON(got), specJSON(want); g != w {
		t.Errorf("%s: spec differs\n got: %s\nwant: %s", what, g, w)
	}
}
