package firecracker

import (
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// TestMkdirChrootRacesRelease: a launch making its chroot while releases
// of other VMs remove the shared exec-name folder whenever it is empty
// (what removeJailDir does) still gets its chroot, every time.
func TestMkdirChrootRacesRelease(t *testing.T) {
	base := t.TempDir()
	shared := filepath.Join(base, "firecracker")
	var stop atomic.Bool
	done := make(chan struct{})
	go func() { // other VMs' releases
		defer close(done)
		for !stop.Load() {
			os.Remove(shared)
		}
	}()
	defer func() { stop.Store(true); <-done }()
	for i := range 500 {
		root := filepath.Join(shared, "vm", "root")
		if err := mkdirChroot(root); err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if err := os.RemoveAll(filepath.Join(shared, "vm")); err != nil {
			t.Fatal(err)
		}
	}
}
