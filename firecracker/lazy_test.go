package firecracker_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/firecracker"
)

// syncBuffer is a bytes.Buffer safe for the runtime's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestLazyAdoption: Open adopts nothing (a VM whose process dies after
// Open, untouched, is not noticed), AdoptAll adopts every VM (the dead one
// is recovered, the live one watched: its later death is recorded without
// any further call).
func TestLazyAdoption(t *testing.T) {
	state := t.TempDir()
	bin := standin(t)
	spec := testSpec(t)
	ctx := context.Background()
	spec.RootDrive.ReadOnly = true // two live VMs share it
	a := runChild(t, childJob{State: state, Bin: bin, ID: "a", Spec: spec, Ops: []string{"create"}})
	b := runChild(t, childJob{State: state, Bin: bin, ID: "b", Spec: spec, Ops: []string{"create"}})

	var logs syncBuffer
	rt := open(t, state, bin, func(c *firecracker.Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	defer rt.Close()
	const exited = "vm process exited unexpectedly"
	if err := syscall.Kill(a.Backend.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitGone(t, a.Backend.PID)
	time.Sleep(200 * time.Millisecond) // a watcher would have seen it by now
	if strings.Contains(logs.String(), exited) {
		t.Fatalf("a VM nobody touched was watched after Open:\n%s", logs.String())
	}

	if err := rt.AdoptAll(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "vm=a") {
		t.Fatalf("AdoptAll did not recover the VM whose process died:\n%s", logs.String())
	}
	if err := syscall.Kill(b.Backend.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), exited+`" vm=b`); {
		if time.Now().After(deadline) {
			t.Fatalf("the death of a VM adopted by AdoptAll was not noticed:\n%s", logs.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, id := range []string{"a", "b"} {
		vm, err := rt.Get(ctx, id)
		if err != nil || vm.Backend.PID != 0 || vm.LastError == "" {
			t.Fatalf("%s after its process died: %+v, %v; want no process and the reason", id, vm, err)
		}
		if _, err := rt.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	assertClean(t, state, "a")
}
