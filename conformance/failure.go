package conformance

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mvm-dev/microvm"
)

// ---------------------------------------------------------------------------
// Crash

func (s *suite) testCrash(t *testing.T) {
	if s.h.Crash == nil {
		t.Skip("Harness.Crash is not set")
	}
	e := s.env(t)

	t.Run("Created", func(t *testing.T) {
		if !s.h.NoBoot {
			t.Skip("a backend that boots is crashed while running")
		}
		e.crashCreated(t, "crash-created")
	})

	t.Run("Running", func(t *testing.T) {
		s.needBoot(t)
		e.make(t, "crash-run", microvm.StatusRunning)
		before := e.get(t, "crash-run")
		vm := e.crash(t, "crash-run")
		if vm.UpdatedAt.Before(before.UpdatedAt) {
			t.Errorf("UpdatedAt went back when the VM failed: %v, was %v", vm.UpdatedAt, before.UpdatedAt)
		}
		if _, err := e.rt.Logs(t.Context(), "crash-run", 0); err != nil {
			t.Errorf("Logs of a failed VM: %v", err)
		}
		if ids := e.listIDs(t); !slices.Contains(ids, "crash-run") {
			t.Errorf("List = %q, want it to show the failed VM", ids)
		}
		got, err := e.rt.Start(t.Context(), "crash-run")
		if err != nil {
			t.Fatalf("Start from failed: %v", err)
		}
		if got.Status != microvm.StatusRunning {
			t.Errorf("Start from failed returned status %s, want running", got.Status)
		}
		e.crash(t, "crash-run")
		vm, err = e.rt.Destroy(t.Context(), "crash-run")
		if err != nil {
			t.Fatalf("Destroy from failed: %v", err)
		}
		if vm.Status != microvm.StatusDestroyed {
			t.Errorf("Destroy from failed returned status %s, want destroyed", vm.Status)
		}
		e.wantGone(t, "crash-run")
	})

	t.Run("Paused", func(t *testing.T) {
		s.needBoot(t)
		e.make(t, "crash-paused", microvm.StatusPaused)
		e.crash(t, "crash-paused")
		if _, err := e.rt.Start(t.Context(), "crash-paused"); err != nil {
			t.Fatalf("Start from failed: %v", err)
		}
		e.wantStatus(t, "crash-paused", microvm.StatusRunning)
	})

	t.Run("SnapshotsSurvive", func(t *testing.T) {
		s.needBoot(t)
		e.make(t, "crash-snap", microvm.StatusRunning)
		e.snapshot(t, "crash-snap", "crash-snap-1")
		e.crash(t, "crash-snap")
		if got := e.get(t, "crash-snap").Snapshots; !slices.Equal(got, []string{"crash-snap-1"}) {
			t.Errorf("failed VM's Snapshots = %q, want [%q]", got, "crash-snap-1")
		}
		vm, err := e.rt.Restore(t.Context(), "crash-snap-r", "crash-snap-1", nil)
		if err != nil {
			t.Fatalf("Restore from a snapshot of a failed VM: %v", err)
		}
		if vm.Status != microvm.StatusRunning {
			t.Errorf("restored VM is %s, want running", vm.Status)
		}
	})
}

// ---------------------------------------------------------------------------
// Shutdown

// testShutdown: a guest that shuts itself down leaves its VM stopped, as
// Stop would, with no LastError (the (shutdown) row of the transition
// table).
func (s *suite) testShutdown(t *testing.T) {
	if s.h.Shutdown == nil {
		t.Skip("Harness.Shutdown is not set")
	}
	s.needBoot(t)
	e := s.env(t)
	e.make(t, "shut", microvm.StatusRunning)
	s.h.Shutdown(t, e.rt, "shut")
	deadline := time.Now().Add(crashWait)
	for {
		vm := e.get(t, "shut")
		if vm.Status == microvm.StatusStopped {
			if vm.LastError != "" {
				t.Errorf("VM stopped by its guest has LastError %q, want none", vm.LastError)
			}
			break
		}
		if vm.Status != microvm.StatusRunning {
			t.Fatalf("VM went to %s after its guest shut down, want stopped (LastError %q)", vm.Status, vm.LastError)
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM is still running %s after its guest shut down, want stopped", crashWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := e.rt.Stop(t.Context(), "shut", nil); !errors.Is(err, microvm.ErrInvalidTransition) {
		t.Errorf("Stop of a VM its guest stopped: %v, want ErrInvalidTransition", err)
	}
	if _, err := e.rt.Start(t.Context(), "shut"); err != nil {
		t.Fatalf("Start after the guest's shutdown: %v", err)
	}
	e.wantStatus(t, "shut", microvm.StatusRunning)
	if _, err := e.rt.Destroy(t.Context(), "shut"); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	e.wantGone(t, "shut")
}

// ---------------------------------------------------------------------------
// Concurrency

func (s *suite) testConcurrency(t *testing.T) {
	e := s.env(t)

	t.Run("CreateRace", func(t *testing.T) {
		n := max(s.h.Parallelism, 2)
		start := make(chan struct{})
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				<-start
				_, errs[i] = e.rt.Create(t.Context(), "cc-race", e.spec.Clone())
			})
		}
		close(start)
		wg.Wait()
		won := 0
		for _, err := range errs {
			switch {
			case err == nil:
				won++
			case errors.Is(err, microvm.ErrAlreadyExists):
			default:
				t.Errorf("racing Create: %v, want nil or ErrAlreadyExists", err)
			}
		}
		if won != 1 {
			t.Errorf("%d of %d racing Creates of one id succeeded, want exactly 1", won, n)
		}
		e.wantStatus(t, "cc-race", microvm.StatusCreated)
	})

	t.Run("MixedOpsOneVM", func(t *testing.T) {
		s.needBoot(t)
		e.make(t, "cc-mixed", microvm.StatusRunning)
		workers, rounds := s.h.Parallelism, 4
		ops := []microvm.Op{microvm.OpStart, microvm.OpPause, microvm.OpResume, microvm.OpSnapshot}
		var mu sync.Mutex
		var taken []string
		var wg sync.WaitGroup
		start := make(chan struct{})
		for w := range workers {
			wg.Go(func() {
				<-start
				for r := range rounds {
					op := ops[(w+r)%len(ops)]
					snapID := fmt.Sprintf("cc-mixed-%d-%d", w, r)
					_, err := e.do(t.Context(), "cc-mixed", op, snapID)
					var te *microvm.TransitionError
					switch {
					case err == nil:
						if op == microvm.OpSnapshot {
							mu.Lock()
							taken = append(taken, snapID)
							mu.Unlock()
						}
					case errors.As(err, &te) && errors.Is(err, microvm.ErrInvalidTransition):
						if te.From != microvm.StatusRunning && te.From != microvm.StatusPaused {
							t.Errorf("%s refused from %s; the VM should only ever be running or paused", op, te.From)
						}
					case errors.Is(err, microvm.ErrSnapshotExists):
					default:
						t.Errorf("concurrent %s: %v, want nil, a TransitionError or ErrSnapshotExists", op, err)
					}
				}
			})
		}
		close(start)
		wg.Wait()
		vm := e.get(t, "cc-mixed")
		if vm.Status != microvm.StatusRunning && vm.Status != microvm.StatusPaused {
			t.Errorf("status after concurrent operations: %s, want running or paused", vm.Status)
		}
		slices.Sort(taken)
		got := e.snapshotIDs(t, "cc-mixed")
		slices.Sort(got)
		if !slices.Equal(got, taken) {
			t.Errorf("Snapshots after concurrent operations = %q, want the %d that succeeded: %q", got, len(taken), taken)
		}
		listed := slices.Sorted(slices.Values(vm.Snapshots))
		if !slices.Equal(listed, taken) {
			t.Errorf("VM.Snapshots after concurrent operations = %q, want %q", listed, taken)
		}
	})

	t.Run("ManyVMs", func(t *testing.T) {
		ids := make([]string, manyVMs)
		for i := range ids {
			ids[i] = fmt.Sprintf("cc-many-%02d", i)
		}
		s.parallel(len(ids), func(i int) {
			if err := e.build(t.Context(), ids[i], s.live()); err != nil {
				t.Error(err)
				return
			}
			vm, err := e.rt.Destroy(t.Context(), ids[i])
			if err != nil {
				t.Errorf("Destroy(%q): %v", ids[i], err)
			} else if vm.Status != microvm.StatusDestroyed {
				t.Errorf("Destroy(%q) returned status %s", ids[i], vm.Status)
			}
		})
		for _, id := range e.listIDs(t) {
			if strings.HasPrefix(id, "cc-many-") {
				t.Errorf("List still shows destroyed VM %q", id)
			}
		}
	})
}

// ---------------------------------------------------------------------------
// Reopen

func (s *suite) testReopen(t *testing.T) {
	if s.h.Reopen == nil {
		t.Skip("Harness.Reopen is not set")
	}
	e := s.env(t)
	statuses := []microvm.Status{microvm.StatusCreated, microvm.StatusRunning, microvm.StatusPaused, microvm.StatusStopped}
	if s.h.NoBoot {
		statuses = statuses[:1]
	}
	for _, st := range statuses {
		e.make(t, "ro-"+string(st), st)
	}
	if !s.h.NoBoot {
		e.snapshot(t, "ro-running", "ro-snap-1")
		e.snapshot(t, "ro-paused", "ro-snap-2")
		if _, err := e.rt.Restore(t.Context(), "ro-restored", "ro-snap-1", &microvm.RestoreOptions{Paused: true}); err != nil {
			t.Fatalf("Restore: %v", err)
		}
	}
	beforeVMs, err := e.rt.List(t.Context())
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	beforeSnaps, err := e.rt.Snapshots(t.Context(), "")
	if err != nil {
		t.Fatalf("Snapshots: %v", err)
	}

	rt := s.h.Reopen(t, e.rt)
	if rt == nil {
		t.Fatal("Harness.Reopen returned nil")
	}
	e.rt = rt

	t.Run("VMs", func(t *testing.T) {
		vms, err := e.rt.List(t.Context())
		if err != nil {
			t.Fatalf("List after reopen: %v", err)
		}
		if len(vms) != len(beforeVMs) {
			t.Fatalf("List after reopen has %d VMs, want %d", len(vms), len(beforeVMs))
		}
		for i, b := range beforeVMs {
			a := vms[i]
			if a.ID != b.ID || a.Status != b.Status || a.RestoredFrom != b.RestoredFrom || !a.CreatedAt.Equal(b.CreatedAt) ||
				!slices.Equal(a.Snapshots, b.Snapshots) {
				t.Errorf("VM after reopen: {ID: %q, Status: %s, RestoredFrom: %q, CreatedAt: %v, Snapshots: %q}\nwant {%q, %s, %q, %v, %q}",
					a.ID, a.Status, a.RestoredFrom, a.CreatedAt, a.Snapshots, b.ID, b.Status, b.RestoredFrom, b.CreatedAt, b.Snapshots)
			}
			wantSpec(t, "spec of "+b.ID+" after reopen", a.Spec, b.Spec)
		}
	})

	t.Run("Snapshots", func(t *testing.T) {
		snaps, err := e.rt.Snapshots(t.Context(), "")
		if err != nil {
			t.Fatalf("Snapshots after reopen: %v", err)
		}
		if len(snaps) != len(beforeSnaps) {
			t.Fatalf("Snapshots after reopen: %d, want %d", len(snaps), len(beforeSnaps))
		}
		for i, b := range beforeSnaps {
			a := snaps[i]
			if a.ID != b.ID || a.VMID != b.VMID || a.Type != b.Type || a.Parent != b.Parent || !a.CreatedAt.Equal(b.CreatedAt) {
				t.Errorf("snapshot after reopen: %+v\nwant %+v", a, b)
			}
			wantSpec(t, "spec of snapshot "+b.ID+" after reopen", a.Spec, b.Spec)
		}
	})

	t.Run("Operable", func(t *testing.T) {
		if s.h.NoBoot {
			if _, err := e.rt.Create(t.Context(), "ro-created", e.spec.Clone()); !errors.Is(err, microvm.ErrAlreadyExists) {
				t.Errorf("Create of an id that existed before reopen: %v, want ErrAlreadyExists", err)
			}
			e.checkStartFails(t, "ro-created")
			return
		}
		for _, c := range []struct {
			id string
			op microvm.Op
		}{
			{"ro-created", microvm.OpStart}, {"ro-running", microvm.OpPause}, {"ro-paused", microvm.OpResume},
			{"ro-stopped", microvm.OpStart}, {"ro-restored", microvm.OpResume},
		} {
			if _, err := e.do(t.Context(), c.id, c.op, ""); err != nil {
				t.Errorf("%s of %q after reopen: %v", c.op, c.id, err)
			}
		}
		vm, err := e.rt.Restore(t.Context(), "ro-after", "ro-snap-2", nil)
		if err != nil {
			t.Fatalf("Restore after reopen: %v", err)
		}
		if vm.Status != microvm.StatusRunning {
			t.Errorf("VM restored after reopen is %s, want running", vm.Status)
		}
		if _, err := e.rt.Create(t.Context(), "ro-created", e.spec.Clone()); !errors.Is(err, microvm.ErrAlreadyExists) {
			t.Errorf("Create of an id that existed before reopen: %v, want ErrAlreadyExists", err)
		}
		if _, err := e.rt.Snapshot(t.Context(), "ro-running", "ro-snap-1", nil); !errors.Is(err, microvm.ErrSnapshotExists) {
			t.Errorf("Snapshot with an id that existed before reopen: %v, want ErrSnapshotExists", err)
		}
	})
}
