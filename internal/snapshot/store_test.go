package snapshot

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
)

func TestRoundTrip(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	if fi, err := os.Stat(s.Dir()); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("store dir: %v, mode %v; want 0700", err, fi.Mode())
	}
	mem := pseudo(1, 2<<20)
	p, err := s.Begin("snap-1")
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(p.StatePath()) || !filepath.IsAbs(p.MemPath()) || filepath.Dir(p.MemPath()) != p.Dir() {
		t.Fatalf("pending paths %q, %q must be absolute, in %q", p.StatePath(), p.MemPath(), p.Dir())
	}
	state := pseudo(2, 12345)
	writeFile(t, p.StatePath(), state)
	writeFile(t, p.MemPath(), mem)
	if _, err := s.Get("snap-1"); !errors.Is(err, microvm.ErrSnapshotNotFound) {
		t.Fatalf("Get of a pending snapshot: %v, want ErrSnapshotNotFound", err)
	}
	created := time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600))
	m, err := p.Commit(Manifest{VMID: "vm-a", FirecrackerVersion: "Firecracker v1.10.1",
		SnapshotFormatVersion: "4.0.0", Spec: testSpec(2), CreatedAt: created})
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != "snap-1" || m.Type != microvm.SnapshotFull || m.FormatVersion != FormatVersion || m.MemoryMiB != 2 ||
		!m.CreatedAt.Equal(created) || m.CreatedAt.Location() != time.UTC {
		t.Errorf("manifest %+v", m)
	}
	wantFiles := []File{{StateFileName, int64(len(state)), sum(state)}, {MemoryFileName, int64(len(mem)), sum(mem)}}
	if !slices.Equal(m.Files, wantFiles) {
		t.Errorf("files %+v, want %+v", m.Files, wantFiles)
	}
	if m.Size() != int64(len(state)+len(mem)) {
		t.Errorf("Size %d", m.Size())
	}
	got, err := s.Get("snap-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.CreatedAt != m.CreatedAt || !slices.Equal(got.Files, m.Files) || got.Spec.Labels["team"] != "a" || got.VMID != "vm-a" {
		t.Errorf("Get = %+v, want %+v", got, m)
	}
	if err := s.Verify(ctx, "snap-1"); err != nil {
		t.Fatal(err)
	}
	sp, mp, err := s.Paths("snap-1")
	if err != nil {
		t.Fatal(err)
	}
	assertContent(t, sp, state)
	assertContent(t, mp, mem)
	if mf, err := s.MemoryFile(ctx, "snap-1"); err != nil || mf != mp {
		t.Fatalf("MemoryFile = %q, %v; want %q", mf, err, mp)
	}
	for _, f := range []string{sp, mp, filepath.Join(s.Dir(), "snap-1", ManifestFileName)} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o400 {
			t.Errorf("%s: mode %v, %v; want 0400", f, fi.Mode(), err)
		}
	}
	snap := s.Snapshot(got)
	if snap.ID != "snap-1" || snap.Dir != filepath.Join(s.Dir(), "snap-1") || snap.HypervisorVersion != "Firecracker v1.10.1" || snap.Size != m.Size() {
		t.Errorf("Snapshot = %+v", snap)
	}
	onlyVisible(t, s.Dir(), "snap-1")

	// A second store over the same directory sees it.
	s2, err := Open(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.Get("snap-1"); err != nil {
		t.Fatal(err)
	}

	if err := s.Delete("snap-1", false); err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.Delete("snap-1", false), microvm.ErrSnapshotNotFound)
	_, err = s.Get("snap-1")
	wantErr(t, err, microvm.ErrSnapshotNotFound)
	wantErr(t, s.Verify(ctx, "snap-1"), microvm.ErrSnapshotNotFound)
	_, err = s.MemoryFile(ctx, "snap-1")
	wantErr(t, err, microvm.ErrSnapshotNotFound)
	_, _, err = s.Paths("snap-1")
	wantErr(t, err, microvm.ErrSnapshotNotFound)
	onlyVisible(t, s.Dir())
}

func TestListOrder(t *testing.T) {
	s := openStore(t)
	base := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	for i, c := range []struct {
		id string
		at time.Duration
	}{{"c", 2 * time.Hour}, {"b", time.Hour}, {"a", time.Hour}, {"d", 0}} {
		p, err := s.Begin(c.id)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, p.StatePath(), []byte{byte(i + 1)})
		writeFile(t, p.MemPath(), pseudo(uint64(i), page))
		if _, err := p.Commit(Manifest{VMID: "vm", FirecrackerVersion: testFC, Spec: testSpec(1), CreatedAt: base.Add(c.at)}); err != nil {
			t.Fatal(err)
		}
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range list {
		ids = append(ids, m.ID)
	}
	if want := []string{"d", "a", "b", "c"}; !slices.Equal(ids, want) {
		t.Errorf("List order %q, want %q (CreatedAt, then id)", ids, want)
	}

	// A corrupt entry is reported, the others still listed.
	mpath := filepath.Join(s.Dir(), "b", ManifestFileName)
	os.Chmod(mpath, 0o600)
	writeFile(t, mpath, []byte("{not json"))
	list, err = s.List()
	wantErr(t, err, microvm.ErrSnapshotCorrupt)
	var ce *CorruptError
	if !errors.As(err, &ce) || ce.ID != "b" || ce.File != mpath {
		t.Errorf("List error %v: want a CorruptError naming %s", err, mpath)
	}
	if len(list) != 3 {
		t.Errorf("List returned %d manifests with one corrupt of four, want 3", len(list))
	}
	// Stray entries that are not snapshots are ignored.
	os.Mkdir(filepath.Join(s.Dir(), "not_an_id"), 0o700)
	if _, err := s.List(); !errors.As(err, &ce) || strings.Contains(err.Error(), "not_an_id") {
		t.Errorf("List with a stray directory: %v", err)
	}
}

func TestBeginValidation(t *testing.T) {
	s := openStore(t)
	for _, id := range []string{"", "-x", "a/b", "..", ".pending-x", "a b", strings.Repeat("a", 65)} {
		if _, err := s.Begin(id); !errors.Is(err, microvm.ErrInvalidID) {
			t.Errorf("Begin(%q) = %v, want ErrInvalidID", id, err)
		}
		if _, err := s.Get(id); !errors.Is(err, microvm.ErrInvalidID) {
			t.Errorf("Get(%q) = %v, want ErrInvalidID", id, err)
		}
		if err := s.Delete(id, true); !errors.Is(err, microvm.ErrInvalidID) {
			t.Errorf("Delete(%q) = %v, want ErrInvalidID", id, err)
		}
	}
	onlyVisible(t, s.Dir())
	if _, err := Open(""); !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Errorf("Open(\"\") = %v", err)
	}
	f := filepath.Join(t.TempDir(), "file")
	writeFile(t, f, nil)
	if _, err := Open(f); err == nil {
		t.Error("Open of a file succeeded")
	}
}

func TestOpenRestrictsMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Errorf("mode %v, want 0700", fi.Mode().Perm())
	}
}

func TestCommitValidation(t *testing.T) {
	s := openStore(t)
	good := Manifest{VMID: "vm", FirecrackerVersion: testFC, Spec: testSpec(1)}
	cases := []struct {
		name string
		edit func(*Manifest)
		want string
	}{
		{"no vm id", func(m *Manifest) { m.VMID = "" }, "vm_id"},
		{"bad vm id", func(m *Manifest) { m.VMID = "a/b" }, "vm_id"},
		{"no fc version", func(m *Manifest) { m.FirecrackerVersion = "" }, "firecracker_version"},
		{"bad fc version", func(m *Manifest) { m.FirecrackerVersion = "latest" }, "firecracker_version"},
		{"bad format version", func(m *Manifest) { m.SnapshotFormatVersion = "x" }, "snapshot_format_version"},
		{"other id", func(m *Manifest) { m.ID = "other" }, "differs"},
		{"store format", func(m *Manifest) { m.FormatVersion = 7 }, "format_version"},
		{"bad type", func(m *Manifest) { m.Type = "delta" }, "type"},
		{"full with parent", func(m *Manifest) { m.Parent = "p" }, "parent"},
		{"diff without parent", func(m *Manifest) { m.Type = microvm.SnapshotDiff }, "parent is required"},
		{"diff on itself", func(m *Manifest) { m.Type, m.Parent = microvm.SnapshotDiff, "x" }, "itself"},
		{"diff on missing parent", func(m *Manifest) { m.Type, m.Parent = microvm.SnapshotDiff, "nope" }, "does not exist"},
		{"negative memory", func(m *Manifest) { m.MemoryMiB = -1 }, "memory_mib"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := s.Begin("x")
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, p.StatePath(), []byte("state"))
			writeFile(t, p.MemPath(), pseudo(3, page))
			m := good
			c.edit(&m)
			_, err = p.Commit(m)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), `snapshot "x"`) {
				t.Fatalf("Commit = %v, want an error about %q", err, c.want)
			}
			if c.name == "diff on missing parent" {
				wantErr(t, err, microvm.ErrSnapshotNotFound)
			} else {
				wantErr(t, err, microvm.ErrInvalidArgument)
			}
			onlyVisible(t, s.Dir())
			// The Pending is ended.
			if _, err := p.Commit(good); !errors.Is(err, microvm.ErrInvalidArgument) {
				t.Errorf("second Commit = %v", err)
			}
			if err := p.Abort(); err != nil {
				t.Errorf("Abort after a failed Commit = %v", err)
			}
		})
	}
	t.Run("missing files", func(t *testing.T) {
		for _, write := range []string{"", StateFileName, MemoryFileName} {
			p, err := s.Begin("x")
			if err != nil {
				t.Fatal(err)
			}
			if write != "" {
				writeFile(t, filepath.Join(p.Dir(), write), []byte("x"))
			}
			_, err = p.Commit(good)
			if err == nil || !strings.Contains(err.Error(), "is missing") {
				t.Errorf("Commit with only %q written = %v", write, err)
			}
			onlyVisible(t, s.Dir())
		}
	})
	t.Run("empty or symlinked files", func(t *testing.T) {
		p, _ := s.Begin("x")
		writeFile(t, p.StatePath(), nil)
		writeFile(t, p.MemPath(), []byte("m"))
		if _, err := p.Commit(good); err == nil || !strings.Contains(err.Error(), "empty") {
			t.Errorf("Commit with an empty state file = %v", err)
		}
		p, _ = s.Begin("x")
		target := filepath.Join(t.TempDir(), "t")
		writeFile(t, target, []byte("secret"))
		writeFile(t, p.StatePath(), []byte("s"))
		if err := os.Symlink(target, p.MemPath()); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Commit(good); err == nil {
			t.Error("Commit with a symlinked memory file succeeded")
		}
		if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o600 {
			t.Errorf("Commit changed the mode of a symlink's target to %v", fi.Mode().Perm())
		}
		onlyVisible(t, s.Dir())
	})
}

func TestDuplicateIDs(t *testing.T) {
	s := openStore(t)
	createFull(t, s, "dup", "vm", pseudo(1, page))
	_, err := s.Begin("dup")
	wantErr(t, err, microvm.ErrSnapshotExists)

	p, err := s.Begin("pend")
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Begin("pend")
	wantErr(t, err, microvm.ErrSnapshotExists)
	// Another Store over the same directory, and Open's cleanup, respect
	// the live pending snapshot.
	s2, err := Open(s.Dir())
	if err != nil {
		t.Fatal(err)
	}
	_, err = s2.Begin("pend")
	wantErr(t, err, microvm.ErrSnapshotExists)
	if _, err := os.Stat(p.Dir()); err != nil {
		t.Fatalf("Open removed a live pending snapshot: %v", err)
	}
	writeFile(t, p.StatePath(), []byte("s"))
	writeFile(t, p.MemPath(), []byte("m"))
	if _, err := p.Commit(Manifest{VMID: "vm", FirecrackerVersion: testFC, Spec: testSpec(1)}); err != nil {
		t.Fatal(err)
	}
	_, err = s2.Begin("pend")
	wantErr(t, err, microvm.ErrSnapshotExists)
	onlyVisible(t, s.Dir(), "dup", "pend")
}

func TestConcurrentBegin(t *testing.T) {
	s := openStore(t)
	const n = 32
	for round := range 5 {
		id := "race-" + string(rune('a'+round))
		var wg sync.WaitGroup
		var mu sync.Mutex
		var won []*Pending
		exists := 0
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// Half of them through a Store of their own.
				st := s
				if i%2 == 0 {
					st = &Store{dir: s.dir}
				}
				<-start
				p, err := st.Begin(id)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					won = append(won, p)
				case errors.Is(err, microvm.ErrSnapshotExists):
					exists++
				default:
					t.Error(err)
				}
			}()
		}
		close(start)
		wg.Wait()
		if len(won) != 1 || exists != n-1 {
			t.Fatalf("round %d: %d Begins won and %d got ErrSnapshotExists, want 1 and %d", round, len(won), exists, n-1)
		}
		if round%2 == 0 {
			won[0].Abort()
		} else {
			writeFile(t, won[0].StatePath(), []byte("s"))
			writeFile(t, won[0].MemPath(), []byte("m"))
			if _, err := won[0].Commit(Manifest{VMID: "vm", FirecrackerVersion: testFC, Spec: testSpec(1)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	onlyVisible(t, s.Dir(), "race-b", "race-d")
}

func TestAbort(t *testing.T) {
	s := openStore(t)
	p, err := s.Begin("gone")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, p.StatePath(), []byte("state"))
	writeFile(t, p.MemPath(), pseudo(1, 1<<20))
	if err := p.Abort(); err != nil {
		t.Fatal(err)
	}
	if err := p.Abort(); err != nil {
		t.Fatalf("second Abort = %v", err)
	}
	if _, err := p.Commit(Manifest{VMID: "vm", FirecrackerVersion: testFC}); !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Fatalf("Commit after Abort = %v", err)
	}
	onlyVisible(t, s.Dir())
	_, err = s.Get("gone")
	wantErr(t, err, microvm.ErrSnapshotNotFound)
	// The id is free again.
	p, err = s.Begin("gone")
	if err != nil {
		t.Fatal(err)
	}
	p.Abort()

	// Abort after Commit is a no-op.
	m := createFull(t, s, "kept", "vm", pseudo(2, page))
	if err := s.Verify(context.Background(), m.ID); err != nil {
		t.Fatal(err)
	}
	onlyVisible(t, s.Dir(), "kept")
}

func TestCommitCanceled(t *testing.T) {
	s := openStore(t)
	p, _ := s.Begin("c")
	writeFile(t, p.StatePath(), []byte("s"))
	writeFile(t, p.MemPath(), pseudo(1, 4<<20))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := p.CommitContext(ctx, Manifest{VMID: "vm", FirecrackerVersion: testFC, Spec: testSpec(4)})
	wantErr(t, err, context.Canceled)
	onlyVisible(t, s.Dir())
}

func TestImport(t *testing.T) {
	s := openStore(t)
	p, _ := s.Begin("imp")
	defer p.Abort()
	src := t.TempDir() // same filesystem: renamed
	state, mem := pseudo(1, 100), pseudo(2, 3*page)
	writeFile(t, filepath.Join(src, "st"), state)
	writeFile(t, filepath.Join(src, "mem"), mem)
	if err := p.Import(filepath.Join(src, "st"), filepath.Join(src, "mem")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(src, "mem")); !os.IsNotExist(err) {
		t.Errorf("source still there after Import: %v", err)
	}
	m, err := p.Commit(Manifest{VMID: "vm", FirecrackerVersion: testFC, Spec: testSpec(1)})
	if err != nil {
		t.Fatal(err)
	}
	if m.Files[1].SHA256 != sum(mem) || m.Files[0].SHA256 != sum(state) {
		t.Error("imported files differ")
	}
	if err := p.Import("", ""); !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Errorf("Import after Commit = %v", err)
	}
	// Across filesystems (when /dev/shm is a tmpfs): copied, holes kept.
	shm, err := os.MkdirTemp("/dev/shm", "mvm-snapshot-test-")
	if err != nil {
		t.Skip("no /dev/shm for a cross-filesystem import:", err)
	}
	defer os.RemoveAll(shm)
	p, _ = s.Begin("imp2")
	defer p.Abort()
	writeSparse(t, filepath.Join(shm, "mem"), 64*page, []extent{{8 * page, pseudo(3, page)}})
	writeFile(t, filepath.Join(shm, "st"), state)
	if err := p.Import(filepath.Join(shm, "st"), filepath.Join(shm, "mem")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(shm, "mem")); !os.IsNotExist(err) {
		t.Errorf("source still there after a cross-filesystem Import: %v", err)
	}
	assertHole(t, p.MemPath(), 0, 8*page)
	assertHole(t, p.MemPath(), 9*page, 55*page)
}
