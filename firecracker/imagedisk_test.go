package firecracker_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/image"
	"github.com/mvm-dev/microvm/image/store"
	"github.com/mvm-dev/microvm/internal/realfc"
)

// buildImage builds image name (an ext4 file system holding one file) in
// the store of state (<state>/images) and returns the store.
func buildImage(t testing.TB, state, name string, sizeMiB int) *store.Store {
	t.Helper()
	s, err := store.Open(filepath.Join(state, "images"))
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "hello"), []byte("hello from "+name+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(context.Background(), name, &store.Source{Kind: "dir", Path: src}, "test",
		func(ctx context.Context, path string) error {
			return image.BuildFromDir(ctx, src, path, image.BuildOptions{SizeMiB: sizeMiB})
		}); err != nil {
		t.Fatalf("build image %s: %v", name, err)
	}
	return s
}

// imageSpec is testSpec with its root drive from image name.
func imageSpec(t testing.TB, name string) microvm.Spec {
	s := testSpec(t)
	s.RootDrive = microvm.Drive{Image: name}
	return s
}

func inode(t testing.TB, p string) (uint64, int64) {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino, fi.Size()
}

func checkUsers(t testing.TB, s *store.Store, name string, want ...string) {
	t.Helper()
	got, err := s.Users(name)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("users of image %s: %v, want %v", name, got, want)
	}
}

// TestImageClonePerVM: two VMs made from one image each run from their
// own writable clone in their own directory (no ErrImageInUse), each
// holds a lease (the image cannot be removed), and Destroy releases the
// lease and removes the clone.
func TestImageClonePerVM(t *testing.T) {
	rt, state := newRuntime(t)
	ctx := context.Background()
	s := buildImage(t, state, "base", 8)
	img, err := s.Get("base")
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, id := range []string{"a", "b"} {
		vm, err := rt.Create(ctx, id, imageSpec(t, "base"))
		if err != nil {
			t.Fatalf("Create %s from an image: %v", id, err)
		}
		if _, err := rt.Start(ctx, id); err != nil {
			t.Fatalf("Start %s: %v", id, err)
		}
		d := vm.Spec.RootDrive
		if d.Image != "base" || filepath.Dir(d.Path) != filepath.Join(state, "vms", id) {
			t.Errorf("vm %s root drive %+v: want image base, a clone in its directory", id, d)
		}
		paths = append(paths, d.Path)
	}
	inoA, sizeA := inode(t, paths[0])
	inoB, _ := inode(t, paths[1])
	inoI, sizeI := inode(t, img.Path)
	if inoA == inoB || inoA == inoI || inoB == inoI {
		t.Errorf("clones share a file: inodes a %d b %d image %d", inoA, inoB, inoI)
	}
	if sizeA != sizeI {
		t.Errorf("clone size %d, image %d", sizeA, sizeI)
	}
	for _, p := range paths {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if err != nil {
			t.Fatalf("clone not writable: %v", err)
		}
		f.Close()
	}
	checkUsers(t, s, "base", "a", "b")
	if err := s.Remove("base", false); !errors.Is(err, store.ErrInUse) {
		t.Errorf("Remove of an image in use: %v, want ErrInUse", err)
	}
	if _, err := rt.Destroy(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(paths[0]); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("clone of destroyed vm: %v, want gone", err)
	}
	checkUsers(t, s, "base", "b")
	if _, err := rt.Destroy(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	checkUsers(t, s, "base")
	if err := s.Remove("base", false); err != nil {
		t.Errorf("Remove once unused: %v", err)
	}
	assertClean(t, state, "a")
	assertClean(t, state, "b")
}

// TestImageMissing: a spec naming an image the store lacks fails with an
// error naming the field and the image, and leaves nothing.
func TestImageMissing(t *testing.T) {
	rt, state := newRuntime(t)
	ctx := context.Background()
	_, err := rt.Create(ctx, "m", imageSpec(t, "no-such-image"))
	if !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), `"no-such-image"`) || !strings.Contains(err.Error(), "root_drive.image") {
		t.Fatalf("Create from a missing image: %v, want ErrNotFound naming root_drive.image and the image", err)
	}
	if _, err := rt.Get(ctx, "m"); !errors.Is(err, microvm.ErrNotFound) {
		t.Errorf("Get after failed Create: %v", err)
	}
	assertClean(t, state, "m")

	// Hostile or inconsistent drives are refused by validation.
	for _, d := range []microvm.Drive{
		{Image: "../etc"},
		{Image: "base", Path: "/etc/passwd"},
		{Path: "/x", SizeBytes: 4096},
		{Image: "base", SizeBytes: 1000},
	} {
		s := testSpec(t)
		s.RootDrive = d
		var se *microvm.SpecError
		if _, err := rt.Create(ctx, "m", s); !errors.As(err, &se) {
			t.Errorf("Create with drive %+v: %v, want a *SpecError", d, err)
		}
	}
}

// TestImageGrow: a clone grown to SizeBytes has that size, and its file
// system was grown too (e2fsck finds it clean).
func TestImageGrow(t *testing.T) {
	rt, state := newRuntime(t)
	ctx := context.Background()
	s := buildImage(t, state, "small", 8)
	spec := imageSpec(t, "small")
	spec.RootDrive.SizeBytes = 32 << 20
	vm, err := rt.Create(ctx, "g", spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, size := inode(t, vm.Spec.RootDrive.Path); size != 32<<20 {
		t.Errorf("grown clone: %d bytes, want %d", size, 32<<20)
	}
	spec.RootDrive.SizeBytes = 4 << 20 // smaller than the image
	if _, err := rt.Create(ctx, "g2", spec); !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Errorf("Create shrinking an image: %v, want ErrInvalidArgument", err)
	}
	if _, err := rt.Destroy(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	checkUsers(t, s, "small")
	assertClean(t, state, "g2")
}

// TestImageSnapshotRestore: a snapshot of a VM running from a clone keeps
// a copy of its disk; each VM restored from it gets its own clone of that
// copy, with the disk's content at snapshot time, even after the source VM
// wrote to its disk and was destroyed.
func TestImageSnapshotRestore(t *testing.T) {
	rt, state := newRuntime(t)
	ctx := context.Background()
	buildImage(t, state, "base", 8)
	vm, err := rt.Create(ctx, "src", imageSpec(t, "base"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	mark := []byte("written before the snapshot")
	writeAt(t, vm.Spec.RootDrive.Path, mark, 1<<20)
	if _, err := rt.Snapshot(ctx, "src", "snap", nil); err != nil {
		t.Fatal(err)
	}
	writeAt(t, vm.Spec.RootDrive.Path, []byte("written after the snapshot!"), 1<<20)
	if _, err := rt.Destroy(ctx, "src"); err != nil {
		t.Fatal(err)
	}
	var inos []uint64
	for _, id := range []string{"r1", "r2"} {
		r, err := rt.Restore(ctx, id, "snap", nil)
		if err != nil {
			t.Fatalf("Restore %s: %v", id, err)
		}
		p := r.Spec.RootDrive.Path
		if filepath.Dir(p) != filepath.Join(state, "vms", id) {
			t.Errorf("restored %s runs from %s, want a clone in its directory", id, p)
		}
		ino, _ := inode(t, p)
		inos = append(inos, ino)
		if got := readAt(t, p, len(mark), 1<<20); string(got) != string(mark) {
			t.Errorf("restored %s disk holds %q, want the snapshot's %q", id, got, mark)
		}
	}
	if inos[0] == inos[1] {
		t.Errorf("restored vms share a disk (inode %d)", inos[0])
	}
	if _, err := rt.Destroy(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(state, "vms", "r2")); err != nil {
		t.Errorf("r2's directory after destroying r1: %v", err)
	}
	if _, err := rt.Destroy(ctx, "r2"); err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(state, "snapshots", "snap", "disk-rootfs.ext4")
	if _, err := os.Stat(copyPath); err != nil {
		t.Fatalf("snapshot's disk copy: %v", err)
	}
	if err := rt.DeleteSnapshot(ctx, "snap", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(copyPath); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("snapshot's disk copy after DeleteSnapshot: %v", err)
	}
}

func writeAt(t testing.TB, p string, b []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func readAt(t testing.TB, p string, n int, off int64) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestImageCloneKilled: a driver SIGKILLed while it clones an image for a
// Create leaves, after recovery by another runtime, no VM, no clone, no
// temporary file and no lease.
func TestImageCloneKilled(t *testing.T) {
	state := t.TempDir()
	bin := standin(t)
	// A large image with data, so the clone takes long enough to be
	// caught in the middle.
	s := buildImage(t, state, "base", 8)
	big := t.TempDir()
	if err := os.WriteFile(filepath.Join(big, "data"), make([]byte, 0), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(context.Background(), "big2", &store.Source{Kind: "dir", Path: big}, "test",
		func(ctx context.Context, path string) error {
			if err := image.BuildFromDir(ctx, big, path, image.BuildOptions{SizeMiB: 8}); err != nil {
				return err
			}
			// Fill the file with data beyond the file system's blocks in
			// use: a clone copies it all.
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := f.Truncate(256 << 20); err != nil {
				return err
			}
			chunk := make([]byte, 4<<20)
			for i := range chunk {
				chunk[i] = byte(i)
			}
			for off := int64(16 << 20); off < 256<<20; off += 8 << 20 {
				if _, err := f.WriteAt(chunk, off); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
		t.Fatal(err)
	}
	spec := imageSpec(t, "big2")
	raw, _ := json.Marshal(childJob{State: state, Bin: bin, ID: "k", Spec: spec, Ops: []string{"create"}})
	cmd := execChild(raw)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait for the clone in progress (its temporary file), then kill.
	dir := filepath.Join(state, "vms", "k")
	caught := false
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if strings.Contains(e.Name(), ".clone-") {
				caught = true
			}
		}
		if caught {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if !caught {
		t.Fatal("never saw the clone in progress")
	}
	checkUsers(t, s, "big2", "k") // the lease was taken before the clone
	rt := open(t, state, bin)
	defer rt.Close()
	vms, err := rt.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(vms) != 0 {
		t.Errorf("after recovery: %d vms, want none", len(vms))
	}
	checkUsers(t, s, "big2")
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("vm directory after recovery: %v, want gone", err)
	}
	assertClean(t, state, "k")
}

// TestImageCloneRealFirecracker: the real firecracker accepts the clones
// of two VMs made from one image (it opens each; the locks see two files).
func TestImageCloneRealFirecracker(t *testing.T) {
	eachReal(t, func(t *testing.T, b realfc.Binary) {
		rt, state := realRuntime(t, b)
		ctx := context.Background()
		s := buildImage(t, state, "base", 8)
		for _, id := range []string{"x", "y"} {
			spec := realSpec(t)
			spec.RootDrive = microvm.Drive{Image: "base", SizeBytes: 16 << 20}
			if _, err := rt.Create(ctx, id, spec); err != nil {
				t.Fatalf("Create %s: %v", id, err)
			}
		}
		checkUsers(t, s, "base", "x", "y")
		for _, id := range []string{"x", "y"} {
			if _, err := rt.Destroy(ctx, id); err != nil {
				t.Fatal(err)
			}
		}
		checkUsers(t, s, "base")
	})
}

// TestJailedImageClones: jailed (real jailer and firecracker v1.7), each
// VM made from one image gets its clone linked into its chroot, owned by
// its uid while it runs; Destroy releases the lease and leaves no jail.
func TestJailedImageClones(t *testing.T) {
	p := jailPairs(t)[1]
	state := t.TempDir()
	rt := openJailed(t, state, p.fc, jailConfig(t, p.jailer))
	ctx := context.Background()
	s := buildImage(t, state, "base", 8)
	for _, id := range []string{"j1", "j2"} {
		vm, err := rt.Create(ctx, id, imageSpec(t, "base"))
		if err != nil {
			t.Fatalf("jailed Create %s from an image: %v", id, err)
		}
		j := vm.Backend.Jail
		if j == nil {
			t.Fatalf("vm %s: not jailed", id)
		}
		fi, err := os.Stat(vm.Spec.RootDrive.Path)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != j.UID || st.Nlink != 2 {
			t.Errorf("vm %s clone: owner %d links %d, want the jailed uid %d and a link in the chroot", id, st.Uid, st.Nlink, j.UID)
		}
	}
	checkUsers(t, s, "base", "j1", "j2")
	destroyAll(t, rt)
	checkUsers(t, s, "base")
	checkNoJailLeft(t, state)
}

// TestJailedImageSnapshotRestore: jailed (stand-in behind the real
// jailer), a snapshot of a VM running from a clone restores into two VMs,
// each with its own clone in its own chroot.
func TestJailedImageSnapshotRestore(t *testing.T) {
	p := jailPairs(t)[1]
	bin, extra := jailedStandin(t)
	state := t.TempDir()
	jc := jailConfig(t, p.jailer)
	jc.ExtraFiles, jc.SkipVersionCheck = extra, true
	rt := openJailed(t, state, bin, jc)
	ctx := context.Background()
	buildImage(t, state, "base", 8)
	if _, err := rt.Create(ctx, "js", imageSpec(t, "base")); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "js"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Snapshot(ctx, "js", "js-snap", nil); err != nil {
		t.Fatal(err)
	}
	var inos []uint64
	for _, id := range []string{"jr1", "jr2"} {
		vm, err := rt.Restore(ctx, id, "js-snap", nil)
		if err != nil {
			t.Fatalf("jailed Restore %s: %v", id, err)
		}
		if filepath.Dir(vm.Spec.RootDrive.Path) != filepath.Join(state, "vms", id) {
			t.Errorf("restored %s runs from %s", id, vm.Spec.RootDrive.Path)
		}
		ino, _ := inode(t, vm.Spec.RootDrive.Path)
		inos = append(inos, ino)
	}
	if inos[0] == inos[1] {
		t.Error("restored vms share a disk")
	}
	destroyAll(t, rt)
	checkNoJailLeft(t, state)
}

// TestImageRename: renaming a VM made from an image moves its clone (with
// its directory) and its lease to the new id.
func TestImageRename(t *testing.T) {
	rt, state := newRuntime(t)
	ctx := context.Background()
	s := buildImage(t, state, "base", 8)
	if _, err := rt.Create(ctx, "old", imageSpec(t, "base")); err != nil {
		t.Fatal(err)
	}
	vm, err := rt.Rename(ctx, "old", "new")
	if err != nil {
		t.Fatal(err)
	}
	if p := vm.Spec.RootDrive.Path; p != filepath.Join(state, "vms", "new", "disk-rootfs.ext4") {
		t.Errorf("renamed vm runs from %s", p)
	} else if _, err := os.Stat(p); err != nil {
		t.Errorf("renamed vm's clone: %v", err)
	}
	checkUsers(t, s, "base", "new")
	if _, err := rt.Start(ctx, "new"); err != nil {
		t.Fatalf("Start after rename: %v", err)
	}
	if _, err := rt.Destroy(ctx, "new"); err != nil {
		t.Fatal(err)
	}
	checkUsers(t, s, "base")
	assertClean(t, state, "new")
}

// TestImageOrphanLeases: Open releases leases whose VM has no record and
// keeps those of VMs it has.
func TestImageOrphanLeases(t *testing.T) {
	state := t.TempDir()
	bin := standin(t)
	s := buildImage(t, state, "base", 8)
	rt := open(t, state, bin)
	if _, err := rt.Create(context.Background(), "kept", imageSpec(t, "base")); err != nil {
		t.Fatal(err)
	}
	rt.Close()
	if _, err := s.Use("base", "ghost"); err != nil {
		t.Fatal(err)
	}
	checkUsers(t, s, "base", "ghost", "kept")
	rt = open(t, state, bin)
	defer func() { destroyAll(t, rt); rt.Close() }()
	checkUsers(t, s, "base", "kept")
}
