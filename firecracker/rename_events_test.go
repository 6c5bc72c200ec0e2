package firecracker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
)

// renameEvents replays rt's events since from up to the created event of
// a sentinel VM it creates, and returns the renamed ones; it fails the
// test on a destroyed event of a or b (neither is destroyed before).
func renameEvents(t *testing.T, rt *firecracker.Runtime, from time.Time, sentinel string) []microvm.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, err := rt.Events(ctx, &microvm.EventOptions{Since: from})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Create(ctx, sentinel, testSpec(t)); err != nil {
		t.Fatal(err)
	}
	defer rt.Destroy(context.Background(), sentinel)
	var out []microvm.Event
	for {
		select {
		case e, ok := <-ch:
			if !ok {
				t.Fatal("events ended")
			}
			switch {
			case e.VM == sentinel && e.Type == microvm.EventCreated:
				return out
			case e.Type == microvm.EventRenamed:
				out = append(out, e)
			case e.Type == microvm.EventDestroyed && (e.VM == "a" || e.VM == "b"):
				t.Errorf("destroyed event: %+v", e)
			case e.From != "":
				t.Errorf("event %+v carries From", e)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no sentinel event in 10s")
		}
	}
}

// TestRenameEvents: a committed rename records exactly one renamed event
// (new id in VM, old in From); a refused or failed (undone) one records
// none.
func TestRenameEvents(t *testing.T) {
	bin := standin(t)
	state := t.TempDir()
	rt := open(t, state, bin)
	t.Cleanup(func() { destroyAll(t, rt); rt.Close() })
	ctx := context.Background()
	start := time.Now()
	for _, id := range []string{"a", "taken"} {
		if _, err := rt.Create(ctx, id, testSpec(t)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := rt.Rename(ctx, "a", "taken"); !errors.Is(err, microvm.ErrAlreadyExists) {
		t.Fatalf("Rename onto a taken id: %v", err)
	}
	boom := errors.New("injected failure")
	restore := firecracker.SetRenameStepHook(func(s string) error {
		if s == "directory" {
			return boom
		}
		return nil
	})
	_, err := rt.Rename(ctx, "a", "b")
	restore()
	if !errors.Is(err, boom) {
		t.Fatalf("Rename failing at its directory step: %v", err)
	}
	if got := renameEvents(t, rt, start, "z1"); len(got) != 0 {
		t.Fatalf("renamed events of refused and undone renames: %+v", got)
	}
	if _, err := rt.Rename(ctx, "a", "b"); err != nil {
		t.Fatal(err)
	}
	got := renameEvents(t, rt, start, "z2")
	if len(got) != 1 || got[0].VM != "b" || got[0].From != "a" || got[0].Status != microvm.StatusCreated {
		t.Fatalf("renamed events %+v, want one of b from a, created", got)
	}
	for _, id := range []string{"b", "taken"} {
		if _, err := rt.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRenameEventsRecovery: a rename whose process died is recorded as
// renamed exactly once when the recovery finishes it (it had committed:
// its directory moved), whichever id is touched first and however many
// runtimes look at it after; one the recovery undoes records none (and no
// destroyed event for the half-written record it removes).
func TestRenameEventsRecovery(t *testing.T) {
	bin := standin(t)
	ctx := context.Background()
	for _, c := range []struct {
		step      string
		touch     string // the id touched first
		committed bool
	}{
		{"network", "a", false},
		{"directory", "b", false},
		{"committed", "a", true},
		{"committed", "b", true},
		{"old record removed", "b", true},
	} {
		t.Run(c.step+", touch "+c.touch, func(t *testing.T) {
			state := t.TempDir()
			// Whatever a failure leaves is ended by a runtime of its own.
			t.Cleanup(func() { r := open(t, state, bin); destroyAll(t, r); r.Close() })
			rt := open(t, state, bin)
			start := time.Now()
			if _, err := rt.Create(ctx, "a", testSpec(t)); err != nil {
				t.Fatal(err)
			}
			renameDiesAt(t, ctx, rt, c.step, "a", "b")
			rt.Close()

			rt = open(t, state, bin)
			other := map[string]string{"a": "b", "b": "a"}[c.touch]
			rt.Get(ctx, c.touch)
			rt.Get(ctx, other)
			if _, err := rt.List(ctx); err != nil {
				t.Fatal(err)
			}
			rt.Close()
			// Another runtime over the state finds nothing left to do.
			rt = open(t, state, bin)
			defer rt.Close()
			want := "a"
			if c.committed {
				want = "b"
			}
			vms, err := rt.List(ctx)
			if err != nil || len(vms) != 1 || vms[0].ID != want {
				t.Fatalf("List: %+v, %v; want only %s", vms, err, want)
			}
			got := renameEvents(t, rt, start, "z")
			switch {
			case c.committed && (len(got) != 1 || got[0].VM != "b" || got[0].From != "a" || got[0].Status != microvm.StatusCreated):
				t.Fatalf("renamed events %+v, want one of b from a, created", got)
			case !c.committed && len(got) != 0:
				t.Fatalf("renamed events of an undone rename: %+v", got)
			}
			if _, err := rt.Destroy(ctx, want); err != nil {
				t.Fatal(err)
			}
		})
	}
}
