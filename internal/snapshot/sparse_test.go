package snapshot

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	microvm "github.com/mvm-dev/microvm"
)

func TestHashFileSparseAware(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]struct {
		size int64
		exts []extent
	}{
		"all hole":        {64 * page, nil},
		"data at start":   {64 * page, []extent{{0, pseudo(1, 3*page)}}},
		"data at end":     {64 * page, []extent{{60 * page, pseudo(2, 4*page)}}},
		"scattered":       {256 * page, []extent{{page, pseudo(3, page)}, {100 * page, pseudo(4, 10*page)}, {255 * page, pseudo(5, page)}}},
		"unaligned size":  {10*page + 123, []extent{{5 * page, pseudo(6, 2*page)}}},
		"zeros as data":   {16 * page, []extent{{4 * page, make([]byte, 4*page)}}},
		"tail past holes": {copyBufSize*3 + 5, []extent{{copyBufSize + 7, pseudo(7, 3)}}},
	}
	for name, c := range cases {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		writeSparse(t, path, c.size, c.exts)
		content, _ := os.ReadFile(path)
		f, _ := os.Open(path)
		d, err := hashFile(context.Background(), f, c.size)
		dd, err2 := hashFileDense(context.Background(), f, c.size)
		f.Close()
		if err != nil || err2 != nil {
			t.Fatal(err, err2)
		}
		if d.SHA256 != sum(content) || dd.SHA256 != d.SHA256 || d.Size != c.size {
			t.Errorf("%s: hashFile = %s, dense %s, sha256 of content %s", name, d.SHA256, dd.SHA256, sum(content))
		}
		var data int64
		for _, e := range c.exts {
			data += int64(len(e.data))
		}
		if d.DataBytes < data || d.DataBytes > c.size {
			t.Errorf("%s: DataBytes %d, want at least %d", name, d.DataBytes, data)
		}
	}
}

func TestMergeSparse(t *testing.T) {
	dir := t.TempDir()
	const size = 256 * page
	// Parent: data in [0,16), [64,96), [200,210) pages; holes elsewhere.
	parentExts := []extent{{0, pseudo(1, 16*page)}, {64 * page, pseudo(2, 32*page)}, {200 * page, pseudo(3, 10*page)}}
	// Diff: overwrites part of parent data, writes into a parent hole, and
	// writes explicit zero pages over parent data (dirty pages that the
	// guest zeroed: they must win over the parent).
	diffExts := []extent{
		{8 * page, pseudo(4, 4*page)},     // inside parent data
		{30 * page, pseudo(5, 2*page)},    // in a parent hole
		{70 * page, make([]byte, 3*page)}, // zeros over parent data
		{255 * page, pseudo(6, page)},     // last page
	}
	parent := filepath.Join(dir, "parent")
	diff := filepath.Join(dir, "diff")
	dst := filepath.Join(dir, "merged")
	writeSparse(t, parent, size, parentExts)
	writeSparse(t, diff, size, diffExts)
	pb, _ := os.ReadFile(parent)

	if err := MergeSparse(dst, parent, diff); err != nil {
		t.Fatal(err)
	}
	want := apply(pb, size, diffExts)
	assertContent(t, dst, want)
	// Holes of the parent that the diff does not touch stay holes.
	assertHole(t, dst, 16*page, 14*page)  // [16,30)
	assertHole(t, dst, 32*page, 32*page)  // [32,64)
	assertHole(t, dst, 96*page, 104*page) // [96,200)
	assertHole(t, dst, 210*page, 45*page) // [210,255)
	if fi, _ := os.Stat(dst); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	// Inputs untouched.
	assertContent(t, parent, pb)

	// dst is replaced atomically.
	if err := MergeSparse(dst, parent, parent); err != nil {
		t.Fatal(err)
	}
	assertContent(t, dst, pb)

	// A larger diff grows the result; a smaller one keeps the parent's size.
	big := filepath.Join(dir, "big")
	writeSparse(t, big, size+8*page, []extent{{size + 4*page, pseudo(7, page)}})
	if err := MergeSparse(dst, parent, big); err != nil {
		t.Fatal(err)
	}
	assertContent(t, dst, apply(pb, size+8*page, []extent{{size + 4*page, pseudo(7, page)}}))
	small := filepath.Join(dir, "small")
	writeSparse(t, small, 4*page, []extent{{page, pseudo(8, page)}})
	if err := MergeSparse(dst, parent, small); err != nil {
		t.Fatal(err)
	}
	assertContent(t, dst, apply(pb, size, []extent{{page, pseudo(8, page)}}))

	// Errors leave dst alone and no temporary files.
	before, _ := os.ReadFile(dst)
	for _, c := range [][2]string{{parent, filepath.Join(dir, "nope")}, {filepath.Join(dir, "nope"), diff}, {dir, diff}, {dst, diff}} {
		if err := MergeSparse(dst, c[0], c[1]); err == nil {
			t.Errorf("MergeSparse(dst, %s, %s) succeeded", c[0], c[1])
		}
	}
	assertContent(t, dst, before)
	if got := entries(t, dir); !slices.Equal(got, []string{"big", "diff", "merged", "parent", "small"}) {
		t.Errorf("dir holds %q", got)
	}
}

// TestDiffChain commits full A, diff B on A and diff C on B, and checks the
// memory of each byte for byte, with A's holes kept.
func TestDiffChain(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	const size = 2 << 20 // 512 pages
	// A is sparse in places (a real full snapshot is dense, but holes must
	// survive merging anyway).
	aExts := []extent{{0, pseudo(1, 100*page)}, {300 * page, pseudo(2, 100*page)}}
	p, _ := s.Begin("a")
	writeFile(t, p.StatePath(), []byte("state a"))
	writeSparse(t, p.MemPath(), size, aExts)
	if _, err := p.Commit(Manifest{VMID: "vm-a", FirecrackerVersion: testFC, Spec: testSpec(2)}); err != nil {
		t.Fatal(err)
	}
	aMem := apply(nil, size, aExts)

	bExts := []extent{{10 * page, pseudo(3, 5*page)}, {150 * page, pseudo(4, page)}, {310 * page, make([]byte, 2*page)}}
	mb, err := createDiff(t, s, "b", "a", size, bExts)
	if err != nil {
		t.Fatal(err)
	}
	bMem := apply(aMem, size, bExts)
	cExts := []extent{{11 * page, pseudo(5, page)}, {150 * page, pseudo(6, page)}, {511 * page, pseudo(7, page)}}
	mc, err := createDiff(t, s, "c", "b", size, cExts)
	if err != nil {
		t.Fatal(err)
	}
	cMem := apply(bMem, size, cExts)

	ma, _ := s.Get("a")
	if mb.Type != microvm.SnapshotDiff || mb.Parent != "a" || mb.Diff == nil || mb.Diff.Size != size ||
		mb.Diff.DataBytes != 8*page || mb.Diff.ParentMemorySHA256 != ma.Files[1].SHA256 {
		t.Errorf("manifest b: %+v diff %+v", mb, mb.Diff)
	}
	if mc.Diff.ParentMemorySHA256 != mb.Files[1].SHA256 || mb.Files[1].SHA256 != sum(bMem) || mc.Files[1].SHA256 != sum(cMem) {
		t.Error("chain hashes do not match the expected memory")
	}
	for id, want := range map[string][]byte{"a": aMem, "b": bMem, "c": cMem} {
		mf, err := s.MemoryFile(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		assertContent(t, mf, want)
		if err := s.Verify(ctx, id); err != nil {
			t.Fatal(err)
		}
		assertHole(t, mf, 400*page, 111*page)
		assertHole(t, mf, 160*page, 140*page)
	}
	assertHole(t, filepath.Join(s.Dir(), "a", MemoryFileName), 100*page, 200*page)

	// Lineage.
	if kids, err := s.Children("a"); err != nil || !slices.Equal(kids, []string{"b"}) {
		t.Errorf("Children(a) = %q, %v", kids, err)
	}
	if kids, err := s.Children("c"); err != nil || len(kids) != 0 {
		t.Errorf("Children(c) = %q, %v", kids, err)
	}
	if _, err := s.Children("zz"); !errors.Is(err, microvm.ErrSnapshotNotFound) {
		t.Errorf("Children(zz) = %v", err)
	}

	// Delete refuses a parent unless forced.
	err = s.Delete("b", false)
	wantErr(t, err, microvm.ErrSnapshotInUse)
	if !strings.Contains(err.Error(), `"c"`) && !strings.Contains(err.Error(), " c ") && !strings.Contains(err.Error(), "s) c") {
		t.Errorf("Delete error should name the child: %v", err)
	}
	wantErr(t, s.Delete("a", false), microvm.ErrSnapshotInUse)
	if err := s.Delete("b", true); err != nil {
		t.Fatal(err)
	}
	// The child is self-contained: still verifies and loads.
	if err := s.Verify(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	mf, _ := s.MemoryFile(ctx, "c")
	assertContent(t, mf, cMem)
	// a has no children left: deletable.
	if err := s.Delete("a", false); err != nil {
		t.Fatal(err)
	}
	// A diff on a missing parent is refused.
	if _, err := createDiff(t, s, "d", "a", size, bExts); !errors.Is(err, microvm.ErrSnapshotNotFound) {
		t.Errorf("diff on a deleted parent: %v", err)
	}
	// A diff of another size than its parent is refused.
	if _, err := createDiff(t, s, "d", "c", size/2, bExts[:1]); !errors.Is(err, microvm.ErrInvalidArgument) || !strings.Contains(err.Error(), "same guest memory") {
		t.Errorf("diff of another size: %v", err)
	}
	// A diff on a corrupt parent is refused.
	cm := filepath.Join(s.Dir(), "c", MemoryFileName)
	damage(t, cm, func(p string) { os.Truncate(p, size-page) })
	if _, err := createDiff(t, s, "d", "c", size, bExts); !errors.Is(err, microvm.ErrSnapshotCorrupt) {
		t.Errorf("diff on a truncated parent: %v", err)
	}
	onlyVisible(t, s.Dir(), "c")
}

func TestDiffNeedsHoleReporting(t *testing.T) {
	s := openStore(t)
	createFull(t, s, "a", "vm", pseudo(1, 1<<20))
	s.sparseMu.Lock()
	s.probed, s.sparseOK = true, false // as on a filesystem without SEEK_HOLE
	s.sparseMu.Unlock()
	_, err := createDiff(t, s, "b", "a", 1<<20, []extent{{0, pseudo(2, page)}})
	wantErr(t, err, microvm.ErrUnsupported)
	onlyVisible(t, s.Dir(), "a")
}

func TestSparseProbe(t *testing.T) {
	s := openStore(t)
	ok, err := s.sparseSupported()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s reports holes: %v", s.Dir(), ok)
	onlyVisible(t, s.Dir())
}

// TestParentDeletedDuringCommit: a diff whose parent is deleted while it
// is being committed (after the merge, before it is published) is not
// registered.
func TestParentDeletedDuringCommit(t *testing.T) {
	s := openStore(t)
	createFull(t, s, "a", "vm", pseudo(1, 1<<20))
	var delErr error
	testHook = func(step string) {
		if step == "hashed" {
			delErr = s.Delete("a", false) // b is not registered yet: allowed
		}
	}
	defer func() { testHook = nil }()
	_, err := createDiff(t, s, "b", "a", 1<<20, []extent{{0, pseudo(2, page)}})
	if delErr != nil {
		t.Fatal(delErr)
	}
	wantErr(t, err, microvm.ErrSnapshotNotFound)
	if !strings.Contains(err.Error(), "deleted during commit") {
		t.Errorf("error %v", err)
	}
	onlyVisible(t, s.Dir())
}

// TestMergeWindows: a diff larger than several merge windows, with extents
// across window boundaries, merges and hashes right (the hash follows the
// merge window by window).
func TestMergeWindows(t *testing.T) {
	s := openStore(t)
	const size = 2*mergeWindow + 8<<20 // 3 windows, the last one partial
	base := pseudo(1, size)
	createFull(t, s, "a", "vm", base)
	exts := []extent{
		{0, pseudo(2, page)},
		{mergeWindow - 2*page, pseudo(3, 4*page)}, // across the first boundary
		{2*mergeWindow - page, make([]byte, 2*page)},
		{size - page, pseudo(4, page)},
	}
	m, err := createDiff(t, s, "b", "a", size, exts)
	if err != nil {
		t.Fatal(err)
	}
	want := apply(base, size, exts)
	if m.Files[1].SHA256 != sum(want) {
		t.Fatal("the hash computed while merging is not the hash of the merged memory")
	}
	mf, _ := s.MemoryFile(context.Background(), "b")
	assertContent(t, mf, want)
	if err := s.Verify(context.Background(), "b"); err != nil {
		t.Fatal(err)
	}

	// A canceled diff commit leaves nothing.
	p, _ := s.Begin("c")
	writeFile(t, p.StatePath(), []byte("s"))
	writeSparse(t, p.MemPath(), size, exts)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = p.CommitContext(ctx, Manifest{VMID: "vm", Type: microvm.SnapshotDiff, Parent: "a", FirecrackerVersion: testFC, Spec: testSpec(size >> 20)})
	wantErr(t, err, context.Canceled)
	onlyVisible(t, s.Dir(), "a", "b")
}
