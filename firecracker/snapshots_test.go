package firecracker_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	microvm "github.com/mvm-dev/microvm"
)

func TestDiffSnapshots(t *testing.T) {
	rt, _ := newRuntime(t)
	ctx := context.Background()
	spec := testSpec(t)
	spec.TrackDirtyPages = true
	if _, err := rt.Create(ctx, "d", spec); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	diff := &microvm.SnapshotOptions{Type: microvm.SnapshotDiff}
	if _, err := rt.Snapshot(ctx, "d", "d-diff0", diff); !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Errorf("diff snapshot without a full one first: %v, want ErrInvalidArgument", err)
	}
	if _, err := rt.Snapshot(ctx, "d", "d-full", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Pause(ctx, "d"); err != nil { // the guest writes pages meanwhile
		t.Fatal(err)
	}
	if _, err := rt.Resume(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	d1, err := rt.Snapshot(ctx, "d", "d-diff1", diff)
	if err != nil {
		t.Fatalf("diff snapshot: %v", err)
	}
	if d1.Type != microvm.SnapshotDiff || d1.Parent != "d-full" {
		t.Errorf("diff snapshot: type %s parent %q, want diff on d-full", d1.Type, d1.Parent)
	}
	_, err = rt.Snapshot(ctx, "d", "d-diff2", &microvm.SnapshotOptions{Type: microvm.SnapshotDiff, Parent: "d-full"})
	if !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Errorf("diff snapshot on an older parent: %v, want ErrInvalidArgument", err)
	}
	if _, err := rt.Snapshot(ctx, "d", "d-diff2", &microvm.SnapshotOptions{Type: microvm.SnapshotDiff, Parent: "d-diff1"}); err != nil {
		t.Errorf("diff snapshot on the latest parent: %v", err)
	}
	if err := rt.DeleteSnapshot(ctx, "d-full", nil); !errors.Is(err, microvm.ErrSnapshotInUse) {
		t.Errorf("DeleteSnapshot of a diff parent: %v, want ErrSnapshotInUse", err)
	}
	r, err := rt.Restore(ctx, "d-r", "d-diff2", nil)
	if err != nil {
		t.Fatalf("Restore from a diff snapshot: %v", err)
	}
	if r.Status != microvm.StatusRunning {
		t.Errorf("restored: %s", r.Status)
	}
	// The restored VM tracks dirty pages since its snapshot.
	d3, err := rt.Snapshot(ctx, "d-r", "d-diff3", diff)
	if err != nil || d3.Parent != "d-diff2" {
		t.Errorf("diff snapshot of the restored VM: parent %q, %v; want d-diff2", d3.Parent, err)
	}
	// After a cold restart there is no base.
	if _, err := rt.Stop(ctx, "d", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "d"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Snapshot(ctx, "d", "d-diff4", diff); !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Errorf("diff snapshot after a restart: %v, want ErrInvalidArgument", err)
	}
	// Without dirty page tracking.
	if _, err := rt.Create(ctx, "nd", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	rt.Start(ctx, "nd")
	if _, err := rt.Snapshot(ctx, "nd", "nd-diff", diff); !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Errorf("diff snapshot without track_dirty_pages: %v, want ErrInvalidArgument", err)
	}
}

// TestRestoreVsock: a clone gets its own vsock socket; on firecracker
// v1.0 (no vsock_override) an explicit socket path still used by the
// source VM is refused clearly.
func TestRestoreVsock(t *testing.T) {
	for _, api := range []string{"v1.0", "latest"} {
		t.Run(api, func(t *testing.T) {
			rt, state := newRuntime(t, "FCSTANDIN_API="+api)
			ctx := context.Background()
			sockDir := filepath.Join(t.TempDir(), "socks")
			spec := testSpec(t)
			spec.Vsock = &microvm.Vsock{Path: filepath.Join(sockDir, "v.sock")}
			if _, err := rt.Create(ctx, "v", spec); err != nil {
				t.Fatal(err)
			}
			if _, err := rt.Start(ctx, "v"); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(spec.Vsock.Path); err != nil {
				t.Fatalf("vsock socket: %v", err)
			}
			if _, err := rt.Snapshot(ctx, "v", "v-snap", nil); err != nil {
				t.Fatal(err)
			}
			r, err := rt.Restore(ctx, "v-r", "v-snap", nil)
			if api == "v1.0" {
				if !errors.Is(err, microvm.ErrUnsupported) {
					t.Fatalf("Restore on v1.0 while the source holds the socket: %v, want ErrUnsupported", err)
				}
				assertNoVM(t, rt, "v-r")
				// With the source gone its path is free again.
				if _, err := rt.Destroy(ctx, "v"); err != nil {
					t.Fatal(err)
				}
				os.Remove(spec.Vsock.Path)
				r, err = rt.Restore(ctx, "v-r", "v-snap", nil)
				if err != nil {
					t.Fatalf("Restore on v1.0 once the source is gone: %v", err)
				}
				if r.Backend.VsockPath != spec.Vsock.Path {
					t.Errorf("clone's vsock %q, want the snapshot's %q", r.Backend.VsockPath, spec.Vsock.Path)
				}
				return
			}
			if err != nil {
				t.Fatalf("Restore: %v", err)
			}
			if want := filepath.Join(state, "vms", "v-r", "vsock.sock"); r.Backend.VsockPath != want {
				t.Errorf("clone's vsock %q, want its own %q", r.Backend.VsockPath, want)
			}
			if _, err := os.Stat(r.Backend.VsockPath); err != nil {
				t.Errorf("clone's vsock socket: %v", err)
			}
		})
	}
}

func assertNoVM(t *testing.T, rt microvm.Runtime, id string) {
	t.Helper()
	if _, err := rt.Get(context.Background(), id); !errors.Is(err, microvm.ErrNotFound) {
		t.Errorf("Get(%q): %v, want ErrNotFound", id, err)
	}
}
