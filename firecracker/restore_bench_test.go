package firecracker_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
)

// BenchmarkRestoreClones restores 20 clones from one snapshot in parallel
// against the stand-in, with both memory backends, and reports the wall time
// of the batch and per clone. Checksums are verified once per snapshot (the
// first Restore), then skipped, as a clone farm would.
//
//	go test -run '^$' -bench RestoreClones -benchtime 3x ./firecracker/
func BenchmarkRestoreClones(b *testing.B) {
	const clones = 20
	for _, backend := range []microvm.MemoryBackend{microvm.MemoryBackendFile, microvm.MemoryBackendUffd} {
		b.Run(fmt.Sprintf("backend=%s/clones=%d", backend, clones), func(b *testing.B) {
			if backend == microvm.MemoryBackendUffd && os.Geteuid() != 0 {
				b.Skip("uffd backend needs root for /dev/userfaultfd")
			}
			ctx := context.Background()
			rt := open(b, benchStateDir(b), standin(b), func(c *firecracker.Config) { c.UffdBin = uffdBin(b) })
			defer rt.Close()
			spec := testSpec(b)
			if _, err := rt.Create(ctx, "seed", spec); err != nil {
				b.Fatal(err)
			}
			if _, err := rt.Start(ctx, "seed"); err != nil {
				b.Fatal(err)
			}
			if _, err := rt.Snapshot(ctx, "seed", "seed-snap", nil); err != nil {
				b.Fatal(err)
			}
			batch := restoreBatches(b, rt, "seed-snap", clones, backend)
			b.ReportMetric(float64(batch.Microseconds())/1000/float64(b.N), "ms/batch")
			b.ReportMetric(float64(batch.Microseconds())/1000/float64(b.N*clones), "ms/clone")
			destroyIDs(b, rt, []string{"seed"})
			rt.DeleteSnapshot(ctx, "seed-snap", &microvm.DeleteSnapshotOptions{Force: true})
		})
	}
}

// restoreBatches restores, per iteration of b.Loop, clones VMs from snap at
// once (checksums skipped, as a clone farm would after the first check)
// with backend, destroys them untimed, and returns the time the batches
// took together.
func restoreBatches(b *testing.B, rt microvm.Runtime, snap string, clones int, backend microvm.MemoryBackend) time.Duration {
	ctx := context.Background()
	var batch time.Duration
	for i := 0; b.Loop(); i++ {
		ids := make([]string, clones)
		for j := range ids {
			ids[j] = fmt.Sprintf("c%d-%d", i, j)
		}
		t0 := time.Now()
		var wg sync.WaitGroup
		for _, id := range ids {
			wg.Go(func() {
				opts := &microvm.RestoreOptions{MemoryBackend: backend, SkipVerify: true}
				if _, err := rt.Restore(ctx, id, snap, opts); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		batch += time.Since(t0)
		b.StopTimer()
		destroyIDs(b, rt, ids)
		b.StartTimer()
	}
	return batch
}
