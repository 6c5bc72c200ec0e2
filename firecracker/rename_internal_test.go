package firecracker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/internal/fcstandin"
	"github.com/mvm-dev/microvm/metrics"
)

// standinSpec returns a firecracker binary for the tests of this package's
// internals (the external tests' standin helper is out of their reach): a
// wrapper script that execs the stand-in with the reference specs; and a
// spec for a small VM booting from a one-file image.
func standinSpec(t *testing.T) (bin string, spec microvm.Spec) {
	t.Helper()
	real := fcstandin.Build(t)
	bin = filepath.Join(t.TempDir(), "firecracker")
	script := "#!/bin/sh\nexport FCSTANDIN_SPEC_DIR='" + fcstandin.SpecDir(t) + "'\nexec '" + real + "' \"$@\"\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(img, []byte("image"), 0o600); err != nil {
		t.Fatal(err)
	}
	return bin, microvm.Spec{Kernel: img, RootDrive: microvm.Drive{Path: img, ReadOnly: true}, VCPUs: 1, MemoryMiB: 16}
}

// TestRenameRecovery: a rename interrupted by the death of the process
// running it, at each step, is finished when the directory was moved and
// undone when it was not, whichever of the two ids is touched first; the
// VM's process lives on throughout.
func TestRenameRecovery(t *testing.T) {
	bin, spec := standinSpec(t)
	ctx := context.Background()
	for _, c := range []struct {
		name    string
		moved   bool
		touch   string // the id touched first
		want    string // where the VM ends
		oldGone bool   // the old record already deleted
	}{
		{"records written, touch old", false, "a", "a", false},
		{"records written, touch new", false, "b", "a", false},
		{"directory moved, touch old", true, "a", "b", false},
		{"directory moved, touch new", true, "b", "b", false},
		{"old record deleted", true, "b", "b", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			state := t.TempDir()
			rt, err := Open(ctx, Config{StateDir: state, FirecrackerBin: bin, ReadyTimeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			vm, err := rt.Create(ctx, "a", spec)
			if err != nil {
				t.Fatal(err)
			}
			pid := vm.Backend.PID
			// What Rename does, up to the crash.
			rec, err := rt.load("a")
			if err != nil {
				t.Fatal(err)
			}
			rt.unwatch("a")
			rec.Op, rec.RenameTo = opRename, "b"
			if err := rt.save(rec); err != nil {
				t.Fatal(err)
			}
			next := *rec
			next.ID, next.RenameTo, next.RenameFrom = "b", "", "a"
			if err := rt.reg.Create(kindVM, "b", &next); err != nil {
				t.Fatal(err)
			}
			if c.moved {
				if err := os.Rename(rt.paths("a").dir, rt.paths("b").dir); err != nil {
					t.Fatal(err)
				}
			}
			if c.oldGone {
				rt.reg.Delete(kindVM, "a")
			}
			rt.Close()

			rt, err = Open(ctx, Config{StateDir: state, FirecrackerBin: bin, ReadyTimeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				for _, id := range []string{"a", "b"} {
					rt.Destroy(ctx, id)
				}
				rt.Close()
			}()
			first, err := rt.Get(ctx, c.touch)
			if c.touch == c.want {
				if err != nil || first.Backend.PID != pid || first.Status != microvm.StatusCreated {
					t.Fatalf("Get(%s): %v %+v, want the VM with pid %d", c.touch, err, first, pid)
				}
			} else if !errors.Is(err, microvm.ErrNotFound) {
				t.Fatalf("Get(%s): %v, want ErrNotFound", c.touch, err)
			}
			vms, err := rt.List(ctx)
			if err != nil || len(vms) != 1 || vms[0].ID != c.want || vms[0].Backend.PID != pid {
				t.Fatalf("List: %v %+v, want only %s with pid %d", err, vms, c.want, pid)
			}
			if _, err := rt.Start(ctx, c.want); err != nil {
				t.Fatalf("Start(%s) after recovery: %v", c.want, err)
			}
			if ids, _ := rt.reg.List(kindVM); len(ids) != 1 {
				t.Errorf("records left: %v", ids)
			}
		})
	}
}

// TestMetricsCacheForgotten: the process's cache of a VM's metrics totals
// is dropped when the VM's directory goes, by Rename (the old path) and by
// Destroy, so a long-lived embedder does not keep one entry per VM it
// ever read stats of.
func TestMetricsCacheForgotten(t *testing.T) {
	bin, spec := standinSpec(t)
	var forgot []string
	forgetMetrics = func(p string) { forgot = append(forgot, p) }
	t.Cleanup(func() { forgetMetrics = metrics.Forget })

	ctx := context.Background()
	rt, err := Open(ctx, Config{StateDir: t.TempDir(), FirecrackerBin: bin, ReadyTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	if _, err := rt.Create(ctx, "a", spec); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Rename(ctx, "a", "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Destroy(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	want := []string{metricsState(rt.paths("a")), metricsState(rt.paths("b"))}
	if len(forgot) != 2 || forgot[0] != want[0] || forgot[1] != want[1] {
		t.Errorf("forgotten %q, want %q", forgot, want)
	}
}
