package firecracker_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	microvm "github.com/mvm-dev/microvm"
)

// TestRename: a created VM is renamed with its live process (the next
// Start boots that same process through its moved API socket), a paused
// one too; the old id is gone, a running VM and a taken id are refused,
// and a runtime opened later sees the VM under its new id only.
func TestRename(t *testing.T) {
	rt, state := newRuntime(t)
	ctx := context.Background()
	spec := testSpec(t)
	spec.Vsock = &microvm.Vsock{CID: 3}
	vm, err := rt.Create(ctx, "pool-1", spec)
	if err != nil {
		t.Fatal(err)
	}
	pid := vm.Backend.PID
	var ren microvm.Renamer = rt
	got, err := ren.Rename(ctx, "pool-1", "alice")
	if err != nil {
		t.Fatalf("Rename: %v", err)
	}
	if got.ID != "alice" || got.Status != microvm.StatusCreated || got.Backend.PID != pid ||
		got.Backend.Dir != filepath.Join(state, "vms", "alice") || got.Backend.VsockPath != filepath.Join(got.Backend.Dir, "vsock.sock") {
		t.Errorf("renamed VM: %+v", got)
	}
	if _, err := os.Stat(filepath.Join(state, "vms", "pool-1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("old directory still there: %v", err)
	}
	if _, err := rt.Get(ctx, "pool-1"); !errors.Is(err, microvm.ErrNotFound) {
		t.Errorf("Get(old id): %v, want ErrNotFound", err)
	}
	vm, err = rt.Start(ctx, "alice")
	if err != nil || vm.Backend.PID != pid {
		t.Fatalf("Start after rename: %v, pid %d want %d (the same process)", err, vm.Backend.PID, pid)
	}
	if _, err := rt.Rename(ctx, "alice", "bob"); !errors.Is(err, microvm.ErrInvalidTransition) {
		t.Errorf("Rename of a running VM: %v, want ErrInvalidTransition", err)
	}
	if _, err := rt.Pause(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	other := testSpec(t)
	other.RootDrive.ReadOnly = true
	other.Drives = nil
	if _, err := rt.Create(ctx, "carol", other); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Rename(ctx, "alice", "carol"); !errors.Is(err, microvm.ErrAlreadyExists) {
		t.Errorf("Rename onto an existing VM: %v, want ErrAlreadyExists", err)
	}
	var oe *microvm.OpError
	if _, err := rt.Rename(ctx, "alice", "bad/id"); !errors.Is(err, microvm.ErrInvalidID) || !errors.As(err, &oe) {
		t.Errorf("Rename to a bad id: %v, want an OpError matching ErrInvalidID", err)
	}
	if _, err := rt.Snapshot(ctx, "alice", "snap-alice", nil); err != nil {
		t.Fatal(err)
	}
	if vm, err := rt.Rename(ctx, "alice", "bob"); err != nil || len(vm.Snapshots) != 0 {
		t.Fatalf("Rename of a paused VM: %v, snapshots %v (those taken before stay the old id's)", err, vm.Snapshots)
	}
	if ss, err := rt.Snapshots(ctx, "alice"); err != nil || len(ss) != 1 || ss[0].ID != "snap-alice" || ss[0].VMID != "alice" {
		t.Errorf("Snapshots(old id) after rename: %+v, %v", ss, err)
	}
	if vm, err = rt.Resume(ctx, "bob"); err != nil || vm.Backend.PID != pid || vm.Status != microvm.StatusRunning {
		t.Fatalf("Resume after rename: %v %+v", err, vm)
	}
	rt2 := open(t, state, standin(t))
	defer rt2.Close()
	vms, err := rt2.List(ctx)
	if err != nil || len(vms) != 2 || vms[0].ID != "bob" || vms[0].Backend.PID != pid || vms[0].Status != microvm.StatusRunning {
		t.Fatalf("List from another runtime: %v %+v", err, vms)
	}
}
