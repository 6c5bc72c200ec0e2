package firecracker_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
)

// TestImageInUse: a writable drive image belongs to one live VM. Create
// and Start of a second VM that attaches it (by any path of the same file,
// writable or read-only) are refused naming the VM that holds it, and
// leave nothing behind; read-only sharing is allowed; the image is free
// again once the holder's process ends (Stop, a crash).
func TestImageInUse(t *testing.T) {
	rt, state := newRuntime(t)
	ctx := context.Background()
	base := testSpec(t)
	img := base.RootDrive.Path
	link := filepath.Join(t.TempDir(), "link.ext4")
	if err := os.Symlink(img, link); err != nil {
		t.Fatal(err)
	}
	with := func(d microvm.Drive) microvm.Spec {
		s := base.Clone()
		s.RootDrive = d
		return s
	}
	refused := func(what string, err error, holder string) {
		t.Helper()
		if !errors.Is(err, firecracker.ErrImageInUse) || !strings.Contains(err.Error(), `vm "`+holder+`" (root_drive) has it attached writable`) {
			t.Errorf("%s: %v; want ErrImageInUse naming vm %q", what, err, holder)
		}
	}
	if _, err := rt.Create(ctx, "a", with(microvm.Drive{Path: img})); err != nil {
		t.Fatal(err)
	}
	for name, d := range map[string]microvm.Drive{
		"same path": {Path: img}, "symlink": {Path: link}, "read-only": {Path: img, ReadOnly: true},
	} {
		_, err := rt.Create(ctx, "b", with(d))
		refused("Create of a second VM, "+name, err, "a")
		if _, err := rt.Get(ctx, "b"); !errors.Is(err, microvm.ErrNotFound) {
			t.Errorf("refused Create left vm b: %v", err)
		}
		if _, err := os.Stat(filepath.Join(state, "vms", "b")); err == nil {
			t.Errorf("refused Create left its VM directory")
		}
	}

	// Read-only sharing between live VMs.
	ro := testSpec(t)
	ro.RootDrive.ReadOnly = true
	for _, id := range []string{"ro1", "ro2"} {
		if _, err := rt.Create(ctx, id, ro); err != nil {
			t.Fatalf("Create %s sharing a read-only image: %v", id, err)
		}
		if _, err := rt.Start(ctx, id); err != nil {
			t.Fatalf("Start %s sharing a read-only image: %v", id, err)
		}
	}

	// Stopped, a holds nothing: b may take the image, and then a's Start
	// is refused naming b.
	if _, err := rt.Start(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Stop(ctx, "a", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Create(ctx, "b", with(microvm.Drive{Path: link})); err != nil {
		t.Fatalf("Create of b once a stopped: %v", err)
	}
	_, err := rt.Start(ctx, "a")
	refused("Start of a while b holds its image", err, "b")
	if vm, err := rt.Get(ctx, "a"); err != nil || vm.Status != microvm.StatusStopped || vm.Backend.PID != 0 {
		t.Errorf("a after the refused Start: %s pid %d, %v; want stopped, no process", vm.Status, vm.Backend.PID, err)
	}

	// A crash of the holder frees the image.
	if _, err := rt.Start(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	kill(t, rt, "b")
	waitStatus(t, rt, "b", microvm.StatusFailed)
	if _, err := rt.Start(ctx, "a"); err != nil {
		t.Fatalf("Start of a once b crashed: %v", err)
	}
}
