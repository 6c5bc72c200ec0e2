package snapshot

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	microvm "github.com/mvm-dev/microvm"
)

const (
	page   = 4096
	testFC = "1.10.1"
)

func testSpec(memMiB int) microvm.Spec {
	return microvm.Spec{
		Kernel:    "/var/lib/mvm/vmlinux",
		RootDrive: microvm.Drive{ID: "rootfs", Path: "/var/lib/mvm/rootfs.ext4"},
		VCPUs:     1,
		MemoryMiB: memMiB,
		Labels:    map[string]string{"team": "a"},
	}
}

func openStore(t testing.TB) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "snapshots"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// pseudo returns n deterministic pseudo-random bytes for seed.
func pseudo(seed uint64, n int) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	b := make([]byte, n)
	rand.NewChaCha8(key).Read(b)
	return b
}

// extent is data at an offset of a sparse file.
type extent struct {
	off  int64
	data []byte
}

// writeSparse creates path as a sparse file of size bytes holding exts
// (everything else holes), the way Firecracker writes a diff memory file.
func writeSparse(t testing.TB, path string, size int64, exts []extent) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, e := range exts {
		if _, err := f.WriteAt(e.data, e.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// apply returns base with exts written over it (grown as needed).
func apply(base []byte, size int64, exts []extent) []byte {
	out := make([]byte, size)
	copy(out, base)
	for _, e := range exts {
		copy(out[e.off:], e.data)
	}
	return out
}

// dataRanges lists the data extents of path.
func dataRanges(t testing.TB, path string) [][2]int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	var r [][2]int64
	if err := dataExtents(f, 0, fi.Size(), func(off, n int64) error {
		r = append(r, [2]int64{off, off + n})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return r
}

// assertHole fails unless [off, off+n) of path is a hole.
func assertHole(t testing.TB, path string, off, n int64) {
	t.Helper()
	for _, r := range dataRanges(t, path) {
		if r[0] < off+n && off < r[1] {
			t.Errorf("%s: [%d, %d) should be a hole, but data extent [%d, %d) overlaps it", filepath.Base(path), off, off+n, r[0], r[1])
		}
	}
}

// assertContent fails unless path holds exactly want.
func assertContent(t testing.TB, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, want %d", path, len(got), len(want))
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("%s: differs at offset %d: got %#x, want %#x", path, i, got[i], want[i])
	}
}

func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// createFull begins id, writes a state file and a dense memory file and
// commits a full snapshot of vm.
func createFull(t testing.TB, s *Store, id, vm string, mem []byte) Manifest {
	t.Helper()
	p, err := s.Begin(id)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Abort()
	writeFile(t, p.StatePath(), pseudo(uint64(len(id)), 3*page+17))
	writeFile(t, p.MemPath(), mem)
	m, err := p.Commit(Manifest{VMID: vm, FirecrackerVersion: testFC, Spec: testSpec(len(mem) >> 20)})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// createDiff begins id, writes a state file and a sparse diff memory file
// of size bytes holding exts, and commits a diff snapshot on parent.
func createDiff(t testing.TB, s *Store, id, parent string, size int64, exts []extent) (Manifest, error) {
	t.Helper()
	p, err := s.Begin(id)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Abort()
	writeFile(t, p.StatePath(), pseudo(uint64(len(id))+7, 2*page))
	writeSparse(t, p.MemPath(), size, exts)
	return p.Commit(Manifest{VMID: "vm-b", Type: microvm.SnapshotDiff, Parent: parent,
		FirecrackerVersion: testFC, Spec: testSpec(int(size >> 20))})
}

func writeFile(t testing.TB, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// entries lists the names in dir.
func entries(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names
}

// onlyVisible fails if dir holds anything but the lock file and the given
// snapshot ids.
func onlyVisible(t testing.TB, dir string, ids ...string) {
	t.Helper()
	want := append([]string{lockFileName}, ids...)
	slices.Sort(want)
	if got := entries(t, dir); !slices.Equal(got, want) {
		t.Errorf("store holds %q, want %q", got, want)
	}
}

func wantErr(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v, want one matching %v", err, target)
	}
}
