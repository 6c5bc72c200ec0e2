package registry_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/mvm-dev/microvm/internal/registry"
)

// syncLog records the fsyncs the registry makes: each file or directory
// synced, and whether the record file existed at that moment.
type syncLog struct {
	mu     sync.Mutex
	record string // path of the record watched
	calls  []syncCall
	fail   func(name string) bool
}

type syncCall struct {
	name         string // base name, or "<dir>" for the kind directory
	recordExists bool
}

func (l *syncLog) fsync(kdir string) func(*os.File) error {
	return func(f *os.File) error {
		name := filepath.Base(f.Name())
		if f.Name() == kdir {
			name = "<dir>"
		}
		_, err := os.Stat(l.record)
		l.mu.Lock()
		l.calls = append(l.calls, syncCall{name, err == nil})
		fail := l.fail
		l.mu.Unlock()
		if fail != nil && fail(name) {
			return errors.New("injected fsync failure")
		}
		return f.Sync()
	}
}

// TestWritesFsync: Put, Create and Delete fsync what makes them durable,
// in order: the temporary file's data before it gets the record's name,
// then the kind directory once the name is in place (or gone). A write
// whose fsync fails reports it and leaves no temporary file; a failed file
// fsync leaves the old record as it was.
func TestWritesFsync(t *testing.T) {
	r := openTemp(t)
	if err := r.Put("vm", "warm", vmRecord{Name: "x"}); err != nil { // kind directory made
		t.Fatal(err)
	}
	kdir := filepath.Join(r.Dir(), "vm")
	log := &syncLog{record: filepath.Join(kdir, "a.json")}
	defer registry.SetFsync(log.fsync(kdir))()

	check := func(what string, want []syncCall) {
		t.Helper()
		log.mu.Lock()
		got := log.calls
		log.calls = nil
		log.mu.Unlock()
		for i := range got {
			for _, id := range []string{"a", "b"} {
				if strings.HasPrefix(got[i].name, ".tmp-"+id+"-") {
					got[i].name = ".tmp-" + id + "-*"
				}
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: fsyncs %+v, want %+v", what, got, want)
		}
	}
	if err := r.Create("vm", "a", vmRecord{Name: "one"}); err != nil {
		t.Fatal(err)
	}
	check("Create", []syncCall{{".tmp-a-*", false}, {"<dir>", true}})
	if err := r.Put("vm", "a", vmRecord{Name: "two"}); err != nil {
		t.Fatal(err)
	}
	check("Put", []syncCall{{".tmp-a-*", true}, {"<dir>", true}})
	w, err := r.Prepare("vm", "a", vmRecord{Name: "three"})
	if err != nil {
		t.Fatal(err)
	}
	check("Prepare", []syncCall{{".tmp-a-*", true}})
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	check("Commit", []syncCall{{"<dir>", true}})
	if err := r.PutUnsynced("vm", "a", vmRecord{Name: "four"}); err != nil {
		t.Fatal(err)
	}
	check("PutUnsynced", nil)

	// A failed file fsync: the write fails, the record keeps its old
	// content, no temporary file is left.
	log.fail = func(name string) bool { return strings.HasPrefix(name, ".tmp-") }
	if err := r.Put("vm", "a", vmRecord{Name: "five"}); err == nil {
		t.Fatal("Put succeeded although the file fsync failed")
	}
	var got vmRecord
	if err := r.Get("vm", "a", &got); err != nil || got.Name != "four" {
		t.Fatalf("after a failed Put: %+v, %v; want the old record", got, err)
	}
	if err := r.Create("vm", "b", vmRecord{Name: "b"}); err == nil {
		t.Fatal("Create succeeded although the file fsync failed")
	}
	if err := r.Get("vm", "b", nil); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("a Create whose fsync failed left a record: %v", err)
	}
	// A failed directory fsync is reported: the caller must not believe
	// the write durable.
	log.fail = func(name string) bool { return name == "<dir>" }
	if err := r.Put("vm", "a", vmRecord{Name: "six"}); err == nil {
		t.Fatal("Put succeeded although the directory fsync failed")
	}
	if err := r.Delete("vm", "a"); err == nil {
		t.Fatal("Delete succeeded although the directory fsync failed")
	}
	log.fail = nil
	check("failures", []syncCall{{".tmp-a-*", true}, {".tmp-b-*", true}, {".tmp-a-*", true}, {"<dir>", true}, {"<dir>", false}})
	for _, n := range recordFiles(t, r, "vm") {
		if strings.HasPrefix(n, ".tmp-") {
			t.Errorf("temporary file left: %s", n)
		}
	}
}

// TestRemoveTemps: the temporary files of one record (left by writers that
// died before the rename) are removed, whatever their age; those of other
// records, ids that share a prefix included, stay; TempIDs names them.
func TestRemoveTemps(t *testing.T) {
	r := openTemp(t)
	if err := r.Put("vm", "a", vmRecord{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	kdir := filepath.Join(r.Dir(), "vm")
	left := []string{".tmp-a-123", ".tmp-a-4567", ".tmp-a-b-99", ".tmp-ab-1", ".tmp-b-2"}
	for _, n := range left {
		if err := os.WriteFile(filepath.Join(kdir, n), []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ids, err := r.TempIDs("vm")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "a-b", "ab", "b"}; !slices.Equal(ids, want) {
		t.Fatalf("TempIDs = %q, want %q", ids, want)
	}
	if n, err := r.RemoveTemps("vm", "a"); err != nil || n != 2 {
		t.Fatalf("RemoveTemps(a) = %d, %v; want 2", n, err)
	}
	got := recordFiles(t, r, "vm")
	if want := []string{".tmp-a-b-99", ".tmp-ab-1", ".tmp-b-2", "a.json"}; !slices.Equal(got, want) {
		t.Fatalf("after RemoveTemps(a): %q, want %q", got, want)
	}
	if _, err := r.RemoveTemps("vm", "../x"); err == nil {
		t.Error("RemoveTemps accepted an invalid id")
	}
	if _, err := r.RemoveTemps("none", "a"); err != nil {
		t.Errorf("RemoveTemps of a kind without records: %v", err)
	}
}
