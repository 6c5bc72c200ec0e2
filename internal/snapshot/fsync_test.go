package snapshot

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// TestCommitFsyncs: Commit fsyncs the state and memory files and the
// manifest before the pending directory, that directory before it is
// renamed into place, and the store directory after the rename; and a
// failure of any of those fsyncs fails the commit and leaves no snapshot
// and no pending directory behind.
func TestCommitFsyncs(t *testing.T) {
	s := openStore(t)
	mem := pseudo(1, 1<<20)
	var mu sync.Mutex
	var calls []string
	failAt := -1
	old := fsync
	defer func() { fsync = old }()
	fsync = func(f *os.File) error {
		name := f.Name()
		rel, err := filepath.Rel(s.dir, name)
		if err != nil {
			rel = name
		}
		switch {
		case name == s.dir:
			rel = "<store>"
		case strings.HasPrefix(rel, pendingPrefix) && !strings.Contains(rel, "/"):
			rel = "<pending>"
		case strings.Contains(rel, "/"):
			base := filepath.Base(rel)
			if strings.HasPrefix(base, "."+ManifestFileName+".tmp-") {
				base = ManifestFileName + " (temporary)"
			}
			rel = base
		}
		// Whether the snapshot is visible under its name at this fsync.
		if _, err := os.Stat(filepath.Join(s.dir, "snap")); err == nil {
			rel += " [visible]"
		}
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, rel)
		if len(calls)-1 == failAt {
			return errors.New("injected fsync failure")
		}
		return old(f)
	}
	want := []string{
		StateFileName, MemoryFileName, ManifestFileName + " (temporary)",
		"<pending>", "<pending>", "<store> [visible]",
	}
	commit := func() error {
		p, err := s.Begin("snap")
		if err != nil {
			t.Fatal(err)
		}
		defer p.Abort()
		writeFile(t, p.StatePath(), pseudo(2, 3*page))
		writeFile(t, p.MemPath(), mem)
		_, err = p.Commit(Manifest{VMID: "vm", FirecrackerVersion: testFC, Spec: testSpec(1)})
		return err
	}
	for failAt = range want {
		calls = nil
		if err := commit(); err == nil {
			t.Fatalf("fsync %d (%s) failed and Commit succeeded", failAt, want[failAt])
		}
		if !slices.Equal(calls, want[:failAt+1]) {
			t.Errorf("fsync %d failing: fsyncs %q, want %q", failAt, calls, want[:failAt+1])
		}
		onlyVisible(t, s.dir)
	}
	failAt, calls = -1, nil
	if err := commit(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(calls, want) {
		t.Errorf("fsyncs of a commit: %q, want %q", calls, want)
	}
	onlyVisible(t, s.dir, "snap")
}
