package firecracker_test

import (
	"errors"
	"os"
	"path/filepath"

	"context"
	"github.com/mvm-dev/microvm/internal/realfc"
	"strings"
	"testing"

	microvm "github.com/mvm-dev/microvm"
)

// TestVMKeepsItsBinary: a VM records the firecracker binary (path and
// version) it was created with, and every later process of it runs that
// binary, even from a runtime opened with another one; new VMs get the
// runtime's binary.
func TestVMKeepsItsBinary(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	old := standin(t, "FCSTANDIN_API=v1.0") // reports v1.0
	cur := standin(t)                       // reports the newest version
	rt := open(t, state, old)
	vm, err := rt.Create(ctx, "kb", testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	oldVersion := vm.Backend.Version
	if vm.Backend.Binary != old || !strings.HasPrefix(oldVersion, "1.0") {
		t.Fatalf("created: binary %q version %q, want %q and 1.0.x", vm.Backend.Binary, oldVersion, old)
	}
	rt.Close()

	rt2 := open(t, state, cur)
	t.Cleanup(func() { destroyAll(t, rt2); rt2.Close() })
	if _, err := rt2.Start(ctx, "kb"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt2.Stop(ctx, "kb", nil); err != nil {
		t.Fatal(err)
	}
	vm, err = rt2.Start(ctx, "kb") // a fresh process
	if err != nil {
		t.Fatal(err)
	}
	if vm.Backend.Binary != old || vm.Backend.Version != oldVersion {
		t.Errorf("restarted by a runtime of another binary: binary %q version %q, want %q %q", vm.Backend.Binary, vm.Backend.Version, old, oldVersion)
	}
	vm2, err := rt2.Create(ctx, "kb2", testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	if vm2.Backend.Binary != cur || vm2.Backend.Version == oldVersion {
		t.Errorf("new VM: binary %q version %q, want %q and not %q", vm2.Backend.Binary, vm2.Backend.Version, cur, oldVersion)
	}
	if st := vm2.Status; st != microvm.StatusCreated {
		t.Errorf("new VM is %s", st)
	}
}

// TestExitCodeMeaning: a real firecracker that exits with one of its own
// exit codes (153: it refused its command line) fails Create with an
// *microvm.ExitError that says what the code means, on one line.
func TestExitCodeMeaning(t *testing.T) {
	for _, b := range realfc.Ends(t) {
		t.Run(b.Name(), func(t *testing.T) {
			wrapper := filepath.Join(t.TempDir(), "firecracker")
			if err := os.WriteFile(wrapper, []byte("#!/bin/sh\nexec "+b.Path+" --no-such-option \"$@\"\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			rt := open(t, t.TempDir(), wrapper)
			defer rt.Close()
			_, err := rt.Create(context.Background(), "x", testSpec(t))
			var xe *microvm.ExitError
			var oe *microvm.OpError
			if !errors.As(err, &xe) || !errors.As(err, &oe) || xe.ExitCode != 153 || !strings.Contains(xe.Reason, "command line") {
				t.Fatalf("Create: %v (%+v), want an OpError with exit status 153 and its meaning", err, xe)
			}
			if msg := err.Error(); !strings.Contains(msg, "exit status 153 (firecracker refused its command line)") || len(msg) >= 300 || strings.Contains(msg, "\n") {
				t.Errorf("message %q", msg)
			}
			t.Logf("%v", err)
		})
	}
}
