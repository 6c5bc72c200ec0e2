package firecracker_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/fcapi"
)

// runningWithSnapshot creates and starts VM "src" and snapshots it as
// "snap"; it returns the snapshot's directory.
func runningWithSnapshot(t *testing.T, rt microvm.Runtime) string {
	t.Helper()
	ctx := context.Background()
	if _, err := rt.Create(ctx, "src", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	s, err := rt.Snapshot(ctx, "src", "snap", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Dir == "" {
		t.Fatal("snapshot has no directory")
	}
	return s.Dir
}

// assertNotRestored checks that a failed Restore registered nothing.
func assertNotRestored(t *testing.T, rt microvm.Runtime, state, id string) {
	t.Helper()
	if _, err := rt.Get(context.Background(), id); !errors.Is(err, microvm.ErrNotFound) {
		t.Errorf("after a failed Restore, Get(%q) = %v, want ErrNotFound", id, err)
	}
	assertCleanVM(t, state, id)
}

// assertCleanVM is assertClean without the process check (the source VM
// of the test is still running under the same state dir).
func assertCleanVM(t *testing.T, state, id string) {
	t.Helper()
	for _, p := range []string{filepath.Join(state, "vms", id), filepath.Join(state, "registry", "vm", id+".json")} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
}

// TestRestoreCorruptSnapshot damages each file of a snapshot in turn:
// Restore refuses with ErrSnapshotCorrupt naming the file, and registers
// nothing.
func TestRestoreCorruptSnapshot(t *testing.T) {
	rt, state := newRuntime(t)
	dir := runningWithSnapshot(t, rt)
	ctx := context.Background()
	files, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	damages := map[string]func(path string) error{
		"flipped byte": func(p string) error {
			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			b := make([]byte, 1)
			if _, err := f.ReadAt(b, 0); err != nil {
				return err
			}
			b[0] ^= 0xff
			_, err = f.WriteAt(b, 0)
			return err
		},
		"truncated": func(p string) error {
			st, err := os.Stat(p)
			if err != nil {
				return err
			}
			return os.Truncate(p, st.Size()/2)
		},
		"missing": os.Remove,
	}
	for _, fe := range files {
		if fe.Name() == "manifest.json" {
			continue
		}
		for how, damage := range damages {
			t.Run(fe.Name()+"/"+how, func(t *testing.T) {
				path := filepath.Join(dir, fe.Name())
				orig, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				st, _ := os.Stat(path)
				if err := os.Chmod(path, 0o600); err != nil {
					t.Fatal(err)
				}
				if err := damage(path); err != nil {
					t.Fatal(err)
				}
				defer func() {
					os.WriteFile(path, orig, 0o600)
					os.Chmod(path, st.Mode().Perm())
				}()
				_, err = rt.Restore(ctx, "clone", "snap", nil)
				if !errors.Is(err, microvm.ErrSnapshotCorrupt) {
					t.Fatalf("Restore from a snapshot with a %s %s: %v, want ErrSnapshotCorrupt", how, fe.Name(), err)
				}
				assertNotRestored(t, rt, state, "clone")
			})
		}
	}
	// Undamaged again, it restores.
	if _, err := rt.Restore(ctx, "clone", "snap", nil); err != nil {
		t.Fatalf("Restore of the repaired snapshot: %v", err)
	}
}

// TestRestoreSkipVerifyTruncatedState: with checksums skipped, a truncated
// state file is found by firecracker itself; its failed load kills it, and
// the clone is not registered.
func TestRestoreSkipVerifyTruncatedState(t *testing.T) {
	rt, state := newRuntime(t)
	dir := runningWithSnapshot(t, rt)
	st := filepath.Join(dir, "vmstate")
	if err := os.Chmod(st, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(st, 10); err != nil {
		t.Fatal(err)
	}
	_, err := rt.Restore(context.Background(), "clone", "snap", &microvm.RestoreOptions{SkipVerify: true})
	if err == nil {
		t.Fatal("Restore of a truncated state file succeeded")
	}
	if !errors.Is(err, microvm.ErrBackend) && !errors.Is(err, microvm.ErrSnapshotCorrupt) {
		t.Fatalf("Restore: %v, want a backend or corrupt-snapshot error", err)
	}
	assertNotRestored(t, rt, state, "clone")
}

// TestRestoreIncompatibleVersion makes a snapshot with the newest API and
// restores it with a v1.0 firecracker: refused before loading.
func TestRestoreIncompatibleVersion(t *testing.T) {
	rt, state := newRuntime(t)
	runningWithSnapshot(t, rt)
	destroyAll(t, rt)
	rt.Close()

	old := open(t, state, standin(t, "FCSTANDIN_API=v1.0"))
	defer old.Close()
	_, err := old.Restore(context.Background(), "clone", "snap", nil)
	if !errors.Is(err, microvm.ErrSnapshotCorrupt) && !errors.Is(err, microvm.ErrUnsupported) {
		t.Fatalf("Restore of a 1.17 snapshot on firecracker 1.0: %v, want an incompatibility error", err)
	}
	assertClean(t, state, "clone")
}

// TestSnapshotDiskFull puts the state directory on a tiny tmpfs: the
// snapshot fails, no half snapshot is registered, and the VM is running
// again.
func TestSnapshotDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	state := t.TempDir()
	if err := unix.Mount("tmpfs", state, "tmpfs", 0, "size=1m,mode=0700"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(state, unix.MNT_DETACH) })
	rt := open(t, state, standin(t))
	t.Cleanup(func() { destroyAll(t, rt); rt.Close() })
	ctx := context.Background()
	spec := testSpec(t)
	spec.MemoryMiB = 256 // its memory file has 4 MiB of data: more than the disk
	if _, err := rt.Create(ctx, "vm", spec); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "vm"); err != nil {
		t.Fatal(err)
	}
	_, err := rt.Snapshot(ctx, "vm", "snap", nil)
	if err == nil {
		t.Fatal("Snapshot on a full disk succeeded")
	}
	t.Logf("Snapshot on a full disk: %v", err)
	vm, gerr := rt.Get(ctx, "vm")
	if gerr != nil || vm.Status != microvm.StatusRunning {
		t.Fatalf("after a failed snapshot the VM is %v (%v), want running", vm.Status, gerr)
	}
	if st := fcState(t, vm.Backend.APISocket); st != fcapi.StateRunning {
		t.Fatalf("after a failed snapshot firecracker reports %q, want Running (resumed)", st)
	}
	if snaps, err := rt.Snapshots(ctx, ""); err != nil || len(snaps) != 0 {
		t.Fatalf("Snapshots after a failed snapshot: %v %v, want none", snaps, err)
	}
	if _, err := rt.Restore(ctx, "clone", "snap", nil); !errors.Is(err, microvm.ErrSnapshotNotFound) {
		t.Fatalf("Restore of the failed snapshot: %v, want ErrSnapshotNotFound", err)
	}
	ents, _ := os.ReadDir(filepath.Join(state, "snapshots"))
	for _, e := range ents {
		if e.Name() != ".lock" {
			t.Errorf("snapshot store holds %q after a failed snapshot", e.Name())
		}
	}
	// The VM still works: pause and resume.
	if _, err := rt.Pause(ctx, "vm"); err != nil {
		t.Fatalf("Pause after failed snapshot: %v", err)
	}
	if _, err := rt.Resume(ctx, "vm"); err != nil {
		t.Fatalf("Resume after failed snapshot: %v", err)
	}
}

// TestDeleteSnapshotInUse: a snapshot a live VM was restored from is
// refused unless forced; once the clone is gone it deletes.
func TestDeleteSnapshotInUse(t *testing.T) {
	rt, _ := newRuntime(t)
	runningWithSnapshot(t, rt)
	ctx := context.Background()
	if _, err := rt.Restore(ctx, "clone", "snap", nil); err != nil {
		t.Fatal(err)
	}
	if err := rt.DeleteSnapshot(ctx, "snap", nil); !errors.Is(err, microvm.ErrSnapshotInUse) {
		t.Fatalf("DeleteSnapshot while a clone runs from it: %v, want ErrSnapshotInUse", err)
	}
	if _, err := rt.Destroy(ctx, "clone"); err != nil {
		t.Fatal(err)
	}
	if err := rt.DeleteSnapshot(ctx, "snap", nil); err != nil {
		t.Fatalf("DeleteSnapshot after the clone is gone: %v", err)
	}
	if _, err := rt.Restore(ctx, "clone2", "snap", nil); !errors.Is(err, microvm.ErrSnapshotNotFound) {
		t.Fatalf("Restore of a deleted snapshot: %v", err)
	}
}
