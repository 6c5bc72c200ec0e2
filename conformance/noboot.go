package conformance

import (
	"errors"
	"testing"
	"time"

	"github.com/mvm-dev/microvm"
)

// ---------------------------------------------------------------------------
// NoBoot: a backend that cannot boot a guest on this host.

// testNoBoot checks, for a NoBoot backend, that Start fails cleanly on a
// created VM, and that such VMs stay manageable.
func (s *suite) testNoBoot(t *testing.T) {
	if !s.h.NoBoot {
		t.Skip("the backend boots (Harness.NoBoot is not set)")
	}
	e := s.env(t)
	e.create(t, "nb-a")
	e.create(t, "nb-b")
	e.checkStartFails(t, "nb-a")
	// The other VM is untouched by its neighbour's failure.
	if vm := e.get(t, "nb-b"); vm.Status != microvm.StatusCreated || vm.LastError != "" {
		t.Errorf("VM %q after another VM's failed Start: %s, LastError %q; want created, no error", "nb-b", vm.Status, vm.LastError)
	}
	if ids := e.listIDs(t); len(ids) != 2 {
		t.Errorf("List after a failed Start = %q, want both VMs", ids)
	}
	for _, id := range []string{"nb-a", "nb-b"} {
		vm, err := e.rt.Destroy(t.Context(), id)
		if err != nil {
			t.Fatalf("Destroy(%q): %v", id, err)
		}
		if vm.Status != microvm.StatusDestroyed {
			t.Errorf("Destroy(%q) returned status %s", id, vm.Status)
		}
		e.wantGone(t, id)
	}
}

// checkStartFails starts the created VM id of a NoBoot backend: Start must
// fail with a *microvm.BackendError matching ErrBackend, leave the VM
// created or failed with LastError set, and fail the same way again.
func (e *env) checkStartFails(t *testing.T, id string) {
	t.Helper()
	for try := 1; try <= 2; try++ {
		vm, err := e.rt.Start(t.Context(), id)
		if err == nil {
			t.Fatalf("Start %d of %q succeeded (status %s), but the backend cannot boot (Harness.NoBoot)", try, id, vm.Status)
		}
		var be *microvm.BackendError
		if !errors.As(err, &be) || !errors.Is(err, microvm.ErrBackend) {
			t.Errorf("Start %d of %q: %v, want a *microvm.BackendError matching ErrBackend", try, id, err)
		}
		got := e.get(t, id)
		if got.Status != microvm.StatusCreated && got.Status != microvm.StatusFailed {
			t.Errorf("after failed Start %d: VM %q is %s, want created or failed", try, id, got.Status)
		}
		if got.LastError == "" {
			t.Errorf("after failed Start %d: VM %q has no LastError; it must say why", try, id)
		}
	}
}

// crashCreated makes a created VM's process die through Harness.Crash
// (NoBoot backends): the VM must stay readable, created or failed, report
// why in LastError within crashWait, and be destroyable.
func (e *env) crashCreated(t *testing.T, id string) {
	t.Helper()
	e.create(t, id)
	e.s.h.Crash(t, e.rt, id)
	deadline := time.Now().Add(crashWait)
	for {
		vm := e.get(t, id)
		if vm.Status != microvm.StatusCreated && vm.Status != microvm.StatusFailed {
			t.Fatalf("VM %q went to %s after Crash, want created or failed", id, vm.Status)
		}
		if vm.LastError != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM %q shows no LastError %s after its process was crashed", id, crashWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.checkStartFails(t, id)
	if _, err := e.rt.Destroy(t.Context(), id); err != nil {
		t.Fatalf("Destroy after Crash: %v", err)
	}
	e.wantGone(t, id)
}
