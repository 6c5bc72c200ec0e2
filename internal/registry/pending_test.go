package registry_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-dev/microvm/internal/registry"
)

// recordFiles lists the files of a kind's directory (temporary ones
// included).
func recordFiles(t *testing.T, r *registry.Registry, kind string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(r.Dir(), kind))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestPrepareCommit: a prepared write is invisible until committed; Commit
// replaces, CommitNew refuses an existing record, Discard leaves nothing,
// and a Pending commits once.
func TestPrepareCommit(t *testing.T) {
	r := openTemp(t)
	w, err := r.Prepare("vm", "a", vmRecord{Name: "one"})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Get("vm", "a", nil); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("prepared record visible before commit: %v", err)
	}
	if err := w.CommitNew(); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err == nil {
		t.Fatal("second commit of one Pending succeeded")
	}
	var got vmRecord
	if err := r.Get("vm", "a", &got); err != nil || got.Name != "one" {
		t.Fatalf("after CommitNew: %+v, %v", got, err)
	}

	w, err = r.Prepare("vm", "a", vmRecord{Name: "two"})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.CommitNew(); !errors.Is(err, registry.ErrExists) {
		t.Fatalf("CommitNew over an existing record: %v, want ErrExists", err)
	}
	if err := r.Get("vm", "a", &got); err != nil || got.Name != "one" {
		t.Fatalf("a refused CommitNew changed the record: %+v, %v", got, err)
	}

	w, err = r.Prepare("vm", "a", vmRecord{Name: "three"})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := r.Get("vm", "a", &got); err != nil || got.Name != "three" {
		t.Fatalf("after Commit: %+v, %v", got, err)
	}

	w, err = r.Prepare("vm", "b", vmRecord{Name: "never"})
	if err != nil {
		t.Fatal(err)
	}
	w.Discard()
	w.Discard()
	if err := r.Get("vm", "b", nil); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("discarded write visible: %v", err)
	}
	if names := recordFiles(t, r, "vm"); len(names) != 1 || names[0] != "a.json" {
		t.Fatalf("files left in vm/: %v, want only a.json", names)
	}
}

// TestPutUnsynced: an unsynced Put replaces the record atomically and
// leaves no temporary file.
func TestPutUnsynced(t *testing.T) {
	r := openTemp(t)
	if err := r.Put("vm", "a", vmRecord{Name: "old"}); err != nil {
		t.Fatal(err)
	}
	if err := r.PutUnsynced("vm", "a", vmRecord{Name: "new"}); err != nil {
		t.Fatal(err)
	}
	var got vmRecord
	if err := r.Get("vm", "a", &got); err != nil || got.Name != "new" {
		t.Fatalf("after PutUnsynced: %+v, %v", got, err)
	}
	for _, n := range recordFiles(t, r, "vm") {
		if strings.HasPrefix(n, ".") {
			t.Fatalf("temporary file left: %s", n)
		}
	}
	if err := r.PutUnsynced("vm", "../x", vmRecord{}); !errors.Is(err, registry.ErrInvalidName) {
		t.Fatalf("PutUnsynced with a bad id: %v", err)
	}
}

// TestLockMakesNoFile: taking and releasing locks of many names leaves
// only the lock table in locks/.
func TestLockMakesNoFile(t *testing.T) {
	r := openTemp(t)
	for _, name := range []string{"vm-a", "vm-b", "snap-c", "typo"} {
		unlock, err := r.Lock(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		unlock()
	}
	ents, err := os.ReadDir(filepath.Join(r.Dir(), "locks"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "table" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("locks/ holds %v, want only the lock table", names)
	}
}
