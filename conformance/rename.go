package conformance

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mvm-dev/microvm"
)

// eventWait bounds the wait for one event.
const eventWait = 10 * time.Second

// testRenameEvents checks, for a runtime that is both a [microvm.Renamer]
// and a [microvm.EventSource], that a rename records exactly one renamed
// event (the new id in VM, the old in From, the VM's status), that a
// refused rename records none, and that the VM's events after it are under
// the new id. A runtime that refuses the rename of a created VM with
// [microvm.ErrUnsupported] (e.g. jailed) skips it.
func (s *suite) testRenameEvents(t *testing.T) {
	e := s.env(t)
	rn, ok := e.rt.(microvm.Renamer)
	es, ok2 := e.rt.(microvm.EventSource)
	if !ok || !ok2 {
		t.Skip("the runtime is not both a microvm.Renamer and a microvm.EventSource")
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, err := es.Events(ctx, nil)
	if err != nil {
		t.Fatalf("Events: %v", err)
	}
	e.create(t, "ren-a")
	e.create(t, "ren-taken")
	switch _, err := rn.Rename(ctx, "ren-a", "ren-taken"); {
	case errors.Is(err, microvm.ErrUnsupported):
		t.Skipf("Rename of a created VM: %v", err)
	case !errors.Is(err, microvm.ErrAlreadyExists):
		t.Fatalf("Rename onto a taken id: %v, want ErrAlreadyExists", err)
	}
	if _, err := rn.Rename(ctx, "ren-a", "ren-b"); err != nil {
		t.Fatalf("Rename: %v", err)
	}
	if _, err := e.rt.Destroy(ctx, "ren-b"); err != nil {
		t.Fatalf("Destroy(ren-b): %v", err)
	}
	renamed := 0
	for {
		var ev microvm.Event
		select {
		case got, ok := <-ch:
			if !ok {
				t.Fatal("the event stream ended")
			}
			ev = got
		case <-time.After(eventWait):
			t.Fatalf("no destroyed event of ren-b in %s", eventWait)
		}
		switch {
		case ev.Type == microvm.EventRenamed:
			renamed++
			if ev.VM != "ren-b" || ev.From != "ren-a" || ev.Status != microvm.StatusCreated {
				t.Errorf("renamed event %+v, want VM ren-b, From ren-a, status created", ev)
			}
		case ev.VM == "ren-b" && renamed == 0:
			t.Errorf("event %+v of the new id before the renamed event", ev)
		case ev.VM == "ren-a" && renamed > 0:
			t.Errorf("event %+v of the old id after the renamed event", ev)
		}
		if ev.VM == "ren-b" && ev.Type == microvm.EventDestroyed {
			break
		}
	}
	if renamed != 1 {
		t.Errorf("%d renamed events, want 1", renamed)
	}
}
