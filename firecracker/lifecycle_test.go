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

func TestLifecycleSmoke(t *testing.T) {
	for _, api := range []string{"v1.0", "latest"} {
		t.Run(api, func(t *testing.T) {
			rt, state := newRuntime(t, "FCSTANDIN_API="+api)
			ctx := context.Background()
			spec := testSpec(t)
			spec.Vsock = &microvm.Vsock{}
			vm, err := rt.Create(ctx, "smoke", spec)
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			if vm.Backend.PID == 0 || vm.Backend.Version == "" {
				t.Errorf("created VM: pid %d version %q", vm.Backend.PID, vm.Backend.Version)
			}
			for _, step := range []struct {
				name string
				do   func() (microvm.VM, error)
				want microvm.Status
			}{
				{"start", func() (microvm.VM, error) { return rt.Start(ctx, "smoke") }, microvm.StatusRunning},
				{"pause", func() (microvm.VM, error) { return rt.Pause(ctx, "smoke") }, microvm.StatusPaused},
				{"resume", func() (microvm.VM, error) { return rt.Resume(ctx, "smoke") }, microvm.StatusRunning},
				{"stop", func() (microvm.VM, error) { return rt.Stop(ctx, "smoke", nil) }, microvm.StatusStopped},
				{"start again", func() (microvm.VM, error) { return rt.Start(ctx, "smoke") }, microvm.StatusRunning},
			} {
				vm, err := step.do()
				if err != nil {
					t.Fatalf("%s: %v", step.name, err)
				}
				if vm.Status != step.want {
					t.Fatalf("%s: status %s, want %s", step.name, vm.Status, step.want)
				}
			}
			if _, err := os.Stat(filepath.Join(state, "vms", "smoke", "vsock.sock")); err != nil {
				t.Errorf("vsock socket: %v", err)
			}
			snap, err := rt.Snapshot(ctx, "smoke", "smoke-snap", nil)
			if err != nil {
				t.Fatalf("Snapshot: %v", err)
			}
			if snap.HypervisorVersion == "" {
				t.Errorf("snapshot has no hypervisor version")
			}
			r, err := rt.Restore(ctx, "smoke-r", "smoke-snap", nil)
			if err != nil {
				t.Fatalf("Restore: %v", err)
			}
			if r.Status != microvm.StatusRunning || r.Backend.VsockPath != filepath.Join(state, "vms", "smoke-r", "vsock.sock") {
				t.Errorf("restored: %s vsock %q", r.Status, r.Backend.VsockPath)
			}
			lines, err := rt.Logs(ctx, "smoke", 0)
			if err != nil {
				t.Fatalf("Logs: %v", err)
			}
			if len(lines) == 0 {
				t.Errorf("Logs: no lines")
			}
			t.Logf("logs: %d lines; first %q", len(lines), strings.Join(lines[:min(3, len(lines))], " | "))
			for _, id := range []string{"smoke", "smoke-r"} {
				if _, err := rt.Destroy(ctx, id); err != nil {
					t.Fatalf("Destroy(%s): %v", id, err)
				}
			}
			assertClean(t, state, "smoke")
			assertClean(t, state, "smoke-r")
		})
	}
}

// TestRestoreUffd restores with the uffd memory backend: a page server
// (cmd/mvm-uffd) serves the memory; it is ended with the VM.
func TestRestoreUffd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("userfaultfd needs root here (vm.unprivileged_userfaultfd=0)")
	}
	state := t.TempDir()
	rt := open(t, state, standin(t), func(c *firecracker.Config) { c.UffdBin = uffdBin(t) })
	defer rt.Close()
	ctx := context.Background()
	if _, err := rt.Create(ctx, "us", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "us"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Snapshot(ctx, "us", "us-snap", nil); err != nil {
		t.Fatal(err)
	}
	vm, err := rt.Restore(ctx, "ur", "us-snap", &microvm.RestoreOptions{MemoryBackend: microvm.MemoryBackendUffd})
	if err != nil {
		t.Fatalf("Restore with uffd: %v", err)
	}
	if vm.Status != microvm.StatusRunning {
		t.Fatalf("restored VM is %s", vm.Status)
	}
	if _, err := rt.Pause(ctx, "ur"); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if _, err := rt.Resume(ctx, "ur"); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	err = rt.DeleteSnapshot(ctx, "us-snap", nil)
	if !errors.Is(err, microvm.ErrSnapshotInUse) {
		t.Errorf("DeleteSnapshot while a VM maps it: %v, want ErrSnapshotInUse", err)
	}
	for _, id := range []string{"ur", "us"} {
		if _, err := rt.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := rt.DeleteSnapshot(ctx, "us-snap", nil); err != nil {
		t.Errorf("DeleteSnapshot after the VMs are gone: %v", err)
	}
	assertClean(t, state, "ur")
	if pids := procsUnder(uffdBin(t)); len(pids) > 0 {
		t.Errorf("page servers left: %v", pids)
	}
}

// TestDestroyRemovesLockFile: a destroyed VM leaves no lock file behind.
func TestDestroyRemovesLockFile(t *testing.T) {
	rt, state := newRuntime(t)
	ctx := context.Background()
	if _, err := rt.Create(ctx, "gone", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Destroy(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(state, "registry", "locks", "vm-gone.lock")); !os.IsNotExist(err) {
		t.Fatalf("lock file of a destroyed VM: %v, want it removed", err)
	}
}
