package memory_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/memory"
)

func next(t *testing.T, ch <-chan microvm.Event) microvm.Event {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatal("events channel closed")
		}
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no event in 5s")
	}
	return microvm.Event{}
}

func TestEventsEveryOperation(t *testing.T) {
	ctx := context.Background()
	rt := memory.New(nil)
	sctx, cancel := context.WithCancel(ctx)
	ch, err := rt.Events(sctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec := microvm.Spec{Kernel: "/k", RootDrive: microvm.Drive{Path: "/r"}, VCPUs: 1, MemoryMiB: 64}
	steps := []struct {
		do   func() error
		want microvm.EventType
		st   microvm.Status
	}{
		{func() error { _, err := rt.Create(ctx, "a", spec); return err }, microvm.EventCreated, microvm.StatusCreated},
		{func() error { _, err := rt.Start(ctx, "a"); return err }, microvm.EventStarted, microvm.StatusRunning},
		{func() error { _, err := rt.Pause(ctx, "a"); return err }, microvm.EventPaused, microvm.StatusPaused},
		{func() error { _, err := rt.Resume(ctx, "a"); return err }, microvm.EventResumed, microvm.StatusRunning},
		{func() error { _, err := rt.Snapshot(ctx, "a", "s", nil); return err }, microvm.EventSnapshotted, microvm.StatusRunning},
		{func() error { _, err := rt.Restore(ctx, "b", "s", nil); return err }, microvm.EventRestored, microvm.StatusRunning},
		{func() error { return rt.Crash("a", "boom") }, microvm.EventCrashed, microvm.StatusFailed},
		{func() error { _, err := rt.Start(ctx, "a"); return err }, microvm.EventStarted, microvm.StatusRunning},
		{func() error { _, err := rt.Stop(ctx, "a", nil); return err }, microvm.EventStopped, microvm.StatusStopped},
		{func() error { _, err := rt.Destroy(ctx, "a"); return err }, microvm.EventDestroyed, microvm.StatusDestroyed},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatal(err)
		}
		e := next(t, ch)
		if e.Type != s.want || e.Status != s.st || e.Time.IsZero() {
			t.Fatalf("event %+v, want %s/%s", e, s.want, s.st)
		}
		if e.Type == microvm.EventCrashed && e.Reason != "boom" {
			t.Errorf("crash reason %q", e.Reason)
		}
		if (e.Type == microvm.EventRestored || e.Type == microvm.EventSnapshotted) && e.Snapshot != "s" {
			t.Errorf("%s snapshot %q", e.Type, e.Snapshot)
		}
	}
	// A refused operation makes no event.
	if _, err := rt.Pause(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Pause(ctx, "b"); err == nil {
		t.Fatal("second pause accepted")
	}
	if _, err := rt.Destroy(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if e := next(t, ch); e.Type != microvm.EventPaused {
		t.Fatal(e)
	}
	if e := next(t, ch); e.Type != microvm.EventDestroyed || e.VM != "b" {
		t.Fatal(e)
	}
	// Replay from a time; cancel ends the stream.
	all, err := rt.Events(ctx, &microvm.EventOptions{Since: time.Unix(1, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if e := next(t, all); e.Type != microvm.EventCreated || e.VM != "a" {
		t.Fatalf("replay starts with %+v", e)
	}
	cancel()
	for range ch {
	}
	rt.Close()
	for range all {
	}
	if _, err := rt.Events(ctx, nil); err == nil {
		t.Error("Events after Close")
	}
}

func TestStatsFake(t *testing.T) {
	ctx := context.Background()
	rt := memory.New(&memory.Options{Stats: func(id string) microvm.VMStats {
		return microvm.VMStats{Process: &microvm.ProcessStats{PID: 7, RSSBytes: 1 << 20}}
	}})
	spec := microvm.Spec{Kernel: "/k", RootDrive: microvm.Drive{Path: "/r"}, VCPUs: 1, MemoryMiB: 64}
	rt.Create(ctx, "a", spec)
	st, err := rt.Stats(ctx, "a", nil)
	if err != nil || st.ID != "a" || st.Status != microvm.StatusCreated || st.Process.RSSBytes != 1<<20 {
		t.Fatalf("%+v %v", st, err)
	}
	if _, err := memory.New(nil).Stats(ctx, "x", nil); err == nil {
		t.Error("unknown VM")
	}
	plain := memory.New(nil)
	plain.Create(ctx, "a", spec)
	if st, _ := plain.Stats(ctx, "a", nil); st.Hypervisor == nil || len(st.Hypervisor.Drives) != 1 {
		t.Errorf("default fake: %+v", st)
	}
}

// TestEventsRename: a rename records one renamed event carrying both ids;
// refused renames record none, and the VM's later events are under the
// new id.
func TestEventsRename(t *testing.T) {
	ctx := context.Background()
	rt := memory.New(nil)
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := rt.Events(sctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec := microvm.Spec{Kernel: "/k", RootDrive: microvm.Drive{Path: "/r"}, VCPUs: 1, MemoryMiB: 64}
	for _, id := range []string{"a", "taken"} {
		if _, err := rt.Create(ctx, id, spec); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := rt.Rename(ctx, "a", "taken"); err == nil {
		t.Fatal("Rename onto a taken id succeeded")
	}
	if _, err := rt.Rename(ctx, "a", "a"); err == nil {
		t.Fatal("Rename to the same id succeeded")
	}
	if _, err := rt.Start(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Rename(ctx, "a", "b"); err == nil {
		t.Fatal("Rename of a running VM succeeded")
	}
	if _, err := rt.Stop(ctx, "a", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Rename(ctx, "a", "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Destroy(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	var got []string
	for len(got) == 0 || got[len(got)-1] != "b destroyed" {
		e := next(t, ch)
		s := e.VM + " " + string(e.Type)
		if e.Type == microvm.EventRenamed {
			s += " from " + e.From + " " + string(e.Status)
		} else if e.From != "" {
			t.Errorf("event %+v carries From", e)
		}
		got = append(got, s)
	}
	want := []string{"a created", "taken created", "a started", "a stopped", "b renamed from a stopped", "b destroyed"}
	if !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
	// A replay (Since) sees it too.
	rch, err := rt.Events(sctx, &microvm.EventOptions{Since: time.Unix(1, 0)})
	if err != nil {
		t.Fatal(err)
	}
	for {
		e := next(t, rch)
		if e.Type == microvm.EventRenamed {
			if e.VM != "b" || e.From != "a" {
				t.Errorf("replayed %+v", e)
			}
			break
		}
	}
}
