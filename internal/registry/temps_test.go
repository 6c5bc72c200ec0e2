package registry

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestTempIDsAndRemoveTemps(t *testing.T) {
	r, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Put("k", "a", map[string]int{"v": 1}); err != nil {
		t.Fatal(err)
	}
	kdir := filepath.Join(r.dir, "k")
	for _, n := range []string{".tmp-a-123", ".tmp-a-b-456", ".tmp-a-b-789", ".tmp-c-x", ".tmp--1", "notes"} {
		if err := os.WriteFile(filepath.Join(kdir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ids, err := r.TempIDs("k")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids, []string{"a", "a-b"}) {
		t.Fatalf("TempIDs = %v; want [a a-b]", ids)
	}
	n, err := r.RemoveTemps("k", "a")
	if err != nil || n != 1 {
		t.Fatalf("RemoveTemps(a) = %d, %v; want 1 (not a-b's)", n, err)
	}
	if ids, _ := r.TempIDs("k"); !slices.Equal(ids, []string{"a-b"}) {
		t.Fatalf("after removing a's: %v", ids)
	}
	var v map[string]int
	if err := r.Get("k", "a", &v); err != nil || v["v"] != 1 {
		t.Fatalf("the record itself was touched: %v %v", v, err)
	}
	if n, err := r.RemoveTemps("k", "a-b"); err != nil || n != 2 {
		t.Fatalf("RemoveTemps(a-b) = %d, %v; want 2", n, err)
	}
	for _, keep := range []string{".tmp-c-x", ".tmp--1", "notes"} {
		if _, err := os.Stat(filepath.Join(kdir, keep)); err != nil {
			t.Errorf("%s removed: %v", keep, err)
		}
	}
	if ids, err := r.TempIDs("none"); err != nil || len(ids) != 0 {
		t.Fatalf("TempIDs of a missing kind = %v, %v", ids, err)
	}
}
