//go:build linux

package snapshot

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	microvm "github.com/mvm-dev/microvm"
	"golang.org/x/sys/unix"
)

// smallDisk mounts a tmpfs of size bytes on a temporary directory.
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("disk-full tests mount a small tmpfs: need root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// fill writes a file in dir until the disk is full but for keep bytes.
func fill(t *testing.T, dir string, keep int64) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n := freeBytes(t, dir) - keep
	if n > 0 {
		if _, err := io.CopyN(f, zeroReader{}, n); err != nil && !errors.Is(err, syscall.ENOSPC) {
			t.Fatal(err)
		}
	}
	return path
}

type zeroReader struct{}

func (zeroReader) Read(b []byte) (int, error) {
	clear(b)
	return len(b), nil
}

func wantENOSPC(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("error %v, want one matching ENOSPC", err)
	}
	t.Logf("error (as wanted): %v", err)
}

func TestDiskFullDuringMerge(t *testing.T) {
	disk := smallDisk(t, "4m")
	s, err := Open(filepath.Join(disk, "store"))
	if err != nil {
		t.Fatal(err)
	}
	const size = 2 << 20
	createFull(t, s, "base", "vm", pseudo(1, size))
	free := freeBytes(t, disk)
	// The diff fits, but its merge needs another 2 MiB: there is not.
	_, err = createDiff(t, s, "child", "base", size, []extent{{0, pseudo(2, 64*page)}, {300 * page, pseudo(3, page)}})
	wantENOSPC(t, err)
	if !strings.Contains(err.Error(), `snapshot "child"`) || !strings.Contains(err.Error(), "merge") {
		t.Errorf("error should say which snapshot and step failed: %v", err)
	}
	_, err = s.Get("child")
	wantErr(t, err, microvm.ErrSnapshotNotFound)
	onlyVisible(t, s.Dir(), "base")
	if got := freeBytes(t, disk); got != free {
		t.Errorf("free space %d after the failed commit, %d before: something was left behind", got, free)
	}
	if err := s.Verify(context.Background(), "base"); err != nil {
		t.Fatal(err)
	}
	// The store still works once there is room.
	if err := s.Delete("base", false); err != nil {
		t.Fatal(err)
	}
	createFull(t, s, "small", "vm", pseudo(4, 64*page))
	onlyVisible(t, s.Dir(), "small")
}

func TestDiskFullAtManifest(t *testing.T) {
	disk := smallDisk(t, "4m")
	s, err := Open(filepath.Join(disk, "store"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.Begin("full")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, p.StatePath(), pseudo(1, 3*page))
	writeFile(t, p.MemPath(), pseudo(2, 1<<20))
	filler := fill(t, disk, 0) // Firecracker filled the disk: no room for the manifest
	_, err = p.Commit(Manifest{VMID: "vm", FirecrackerVersion: testFC, Spec: testSpec(1)})
	wantENOSPC(t, err)
	if !strings.Contains(err.Error(), "manifest") {
		t.Errorf("error should name the manifest: %v", err)
	}
	_, err = s.Get("full")
	wantErr(t, err, microvm.ErrSnapshotNotFound)
	onlyVisible(t, s.Dir())
	os.Remove(filler)
	createFull(t, s, "full", "vm", pseudo(3, 1<<20))
	if err := s.Verify(context.Background(), "full"); err != nil {
		t.Fatal(err)
	}
}

func TestDiskFullMergeSparse(t *testing.T) {
	disk := smallDisk(t, "4m")
	in := t.TempDir() // inputs on the big disk
	parent, diff := filepath.Join(in, "parent"), filepath.Join(in, "diff")
	writeFile(t, parent, pseudo(1, 2<<20))
	writeSparse(t, diff, 2<<20, []extent{{page, pseudo(2, page)}})
	fill(t, disk, 1<<20)
	dst := filepath.Join(disk, "merged")
	err := MergeSparse(dst, parent, diff)
	wantENOSPC(t, err)
	if _, err := os.Lstat(dst); !os.IsNotExist(err) {
		t.Errorf("dst exists after a failed merge: %v", err)
	}
	if got := entries(t, disk); len(got) != 1 || got[0] != "filler" {
		t.Errorf("the disk holds %q after a failed merge", got)
	}
}
