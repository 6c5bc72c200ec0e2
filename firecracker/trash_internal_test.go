package firecracker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/mvm-dev/microvm/internal/registry"
)

// TestTrashSweepSparesInFlightRemoval: Open removes a VM directory left
// half-deleted, but not while the VM's lock is held (a Destroy of another
// process removing it right now).
func TestTrashSweepSparesInFlightRemoval(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	bin := filepath.Join(t.TempDir(), "firecracker")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	rt, err := Open(ctx, Config{StateDir: state, FirecrackerBin: bin})
	if err != nil {
		t.Fatal(err)
	}
	rt.Close()
	trash := filepath.Join(state, "vms", trashPrefix+"web-1-abc123")
	if err := os.MkdirAll(filepath.Join(trash, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	reg, err := registry.Open(filepath.Join(state, "registry"))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	unlock, err := reg.Lock(ctx, "vm-web-1") // the remover's lock
	if err != nil {
		t.Fatal(err)
	}
	rt, err = Open(ctx, Config{StateDir: state, FirecrackerBin: bin})
	if err != nil {
		t.Fatal(err)
	}
	rt.Close()
	if _, err := os.Stat(trash); err != nil {
		t.Fatalf("the sweep removed a directory whose removal another process holds the lock of: %v", err)
	}
	unlock()
	rt, err = Open(ctx, Config{StateDir: state, FirecrackerBin: bin})
	if err != nil {
		t.Fatal(err)
	}
	rt.Close()
	if _, err := os.Stat(trash); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a half-deleted directory whose lock is free was kept: %v", err)
	}
}
