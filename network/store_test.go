//go:build linux

package network_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/network"
)

// FileStore keeps the Store contract a Manager relies on: Create refuses
// an existing record with ErrRecordExists, Get a missing one with
// ErrRecordNotFound, Delete of a missing record is no error, records are
// seen by another FileStore on the same directory, and a lock held
// through one FileStore excludes the other until it is released.
func TestFileStore(t *testing.T) {
	var _ network.Store = (*network.FileStore)(nil)
	var _ network.TempSweeper = (*network.FileStore)(nil)
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "net")
	a, err := network.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("OpenStore made %s: %v, %v; want a directory of mode 0700", dir, fi, err)
	}
	b, err := network.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	type rec struct{ N int }
	if err := a.Create("netlease", "x", rec{1}); err != nil {
		t.Fatal(err)
	}
	if err := b.Create("netlease", "x", rec{2}); !errors.Is(err, network.ErrRecordExists) {
		t.Fatalf("second Create = %v; want ErrRecordExists", err)
	}
	if err := b.Put("netlease", "w", rec{3}); err != nil {
		t.Fatal(err)
	}
	var got rec
	if err := b.Get("netlease", "x", &got); err != nil || got.N != 1 {
		t.Fatalf("Get through the other store = %+v, %v; want N 1", got, err)
	}
	if ids, err := a.List("netlease"); err != nil || !slices.Equal(ids, []string{"w", "x"}) {
		t.Fatalf("List = %v, %v; want [w x]", ids, err)
	}
	if err := a.Delete("netlease", "x"); err != nil {
		t.Fatal(err)
	}
	if err := a.Delete("netlease", "x"); err != nil {
		t.Fatalf("Delete of a missing record = %v; want nil", err)
	}
	if err := b.Get("netlease", "x", &got); !errors.Is(err, network.ErrRecordNotFound) {
		t.Fatalf("Get of a deleted record = %v; want ErrRecordNotFound", err)
	}

	unlock, err := a.Lock(ctx, "netalloc-mvm")
	if err != nil {
		t.Fatal(err)
	}
	// The wait ends with the context: the lock stays held throughout.
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := b.Lock(wctx, "netalloc-mvm"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock of a lock held through another FileStore = %v; want it to wait until the context ends", err)
	}
	unlock()
	unlock2, err := b.Lock(ctx, "netalloc-mvm")
	if err != nil {
		t.Fatalf("Lock after unlock: %v", err)
	}
	unlock2()

	if ids, err := a.TempIDs("netlease"); err != nil || len(ids) != 0 {
		t.Fatalf("TempIDs = %v, %v; want none", ids, err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Put("netlease", "y", rec{4}); err == nil {
		t.Fatal("Put after Close succeeded")
	}
}
