package firecracker_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/image"
	"github.com/mvm-dev/microvm/image/store"
)

// The benchmarks run against the stand-in (which validates every request
// against the API spec, so its own CPU time dominates) and against minifc,
// a minimal API responder that isolates the runtime's own cost.
//
//	go test -run '^$' -bench . -benchtime 3x ./firecracker/

func minifcBin(b testing.TB) string {
	return buildCmd(b, "github.com/mvm-dev/microvm/firecracker/internal/minifc", "firecracker")
}

// benchCreate creates n VMs in parallel per iteration (and Starts them
// when start is set), reporting the wall time per VM.
func benchCreate(b *testing.B, bin string, n int, start bool) {
	state := benchStateDir(b)
	rt := open(b, state, bin)
	defer rt.Close()
	spec := testSpec(b)
	spec.RootDrive.ReadOnly = true // n live VMs share it
	ctx := context.Background()
	var total time.Duration
	for i := 0; b.Loop(); i++ {
		ids := make([]string, n)
		for j := range ids {
			ids[j] = fmt.Sprintf("b%d-%d", i, j)
		}
		t0 := time.Now()
		var wg sync.WaitGroup
		for _, id := range ids {
			wg.Go(func() {
				if _, err := rt.Create(ctx, id, spec); err != nil {
					b.Error(err)
					return
				}
				if start {
					if _, err := rt.Start(ctx, id); err != nil {
						b.Error(err)
					}
				}
			})
		}
		wg.Wait()
		total += time.Since(t0)
		b.StopTimer()
		destroyIDs(b, rt, ids)
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N*n), "ms/vm")
}

// benchStateDir returns the state directory of a benchmark: a temporary
// directory, or one under $MVM_BENCH_STATE_PARENT (e.g. /dev/shm, to take
// the disk's fsync latency out of the numbers).
func benchStateDir(b testing.TB) string {
	parent := os.Getenv("MVM_BENCH_STATE_PARENT")
	if parent == "" {
		return b.TempDir()
	}
	dir, err := os.MkdirTemp(parent, "mvm-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func destroyIDs(b testing.TB, rt microvm.Runtime, ids []string) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, id := range ids {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			rt.Destroy(context.Background(), id)
		})
	}
	wg.Wait()
}

func BenchmarkCreate(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("standin/parallel=%d", n), func(b *testing.B) { benchCreate(b, standin(b), n, false) })
	}
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("minifc/parallel=%d", n), func(b *testing.B) { benchCreate(b, minifcBin(b), n, false) })
	}
}

func BenchmarkCreateStart(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("standin/parallel=%d", n), func(b *testing.B) { benchCreate(b, standin(b), n, true) })
	}
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("minifc/parallel=%d", n), func(b *testing.B) { benchCreate(b, minifcBin(b), n, true) })
	}
}

// makeVMs creates and starts n VMs with at most 32 operations at once.
func makeVMs(b testing.TB, rt microvm.Runtime, spec microvm.Spec, n int) {
	spec.RootDrive.ReadOnly = true // n live VMs share it
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			id := fmt.Sprintf("m%04d", i)
			if _, err := rt.Create(context.Background(), id, spec); err != nil {
				b.Error(err)
				return
			}
			if _, err := rt.Start(context.Background(), id); err != nil {
				b.Error(err)
			}
		})
	}
	wg.Wait()
}

// BenchmarkMemoryPerVM reports the Go memory an open runtime holds per
// managed (running, watched) VM, with 1000 VMs (minifc processes).
func BenchmarkMemoryPerVM(b *testing.B) {
	const n = 1000
	bin := minifcBin(b)
	state := b.TempDir()
	rt := open(b, state, bin)
	defer func() {
		destroyIDs(b, rt, ids(n))
		rt.Close()
	}()
	spec := testSpec(b)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	makeVMs(b, rt, spec, n)
	for b.Loop() {
		runtime.GC()
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	inuse := func(m *runtime.MemStats) int64 { return int64(m.HeapAlloc + m.StackInuse) }
	b.ReportMetric(float64(inuse(&after)-inuse(&before))/n, "B/vm")
	b.ReportMetric(float64(after.NumGC-before.NumGC), "gcs")
}

func ids(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("m%04d", i)
	}
	return out
}

// BenchmarkOpen measures what a command pays to open the runtime over a
// state directory with n running VMs (minifc processes) and do one thing:
// open (Open and Close: no VM is adopted), get (Get of one VM: it alone is
// adopted, its API probed), list (List: every VM read and its process
// checked and watched, no API probe) and adoptall (AdoptAll: every VM
// adopted and probed, what Open did before adoption became lazy).
func BenchmarkOpen(b *testing.B) {
	for _, n := range []int{1, 1000} {
		bin := minifcBin(b)
		state := b.TempDir()
		rt := open(b, state, bin)
		makeVMs(b, rt, testSpec(b), n)
		rt.Close()
		for _, mode := range []string{"open", "get", "list", "adoptall"} {
			b.Run(fmt.Sprintf("vms=%d/%s", n, mode), func(b *testing.B) {
				ctx := context.Background()
				for b.Loop() {
					rt, err := firecracker.Open(ctx, firecracker.Config{StateDir: state, FirecrackerBin: bin})
					if err != nil {
						b.Fatal(err)
					}
					switch mode {
					case "get":
						_, err = rt.Get(ctx, "m0000")
					case "list":
						var vms []microvm.VM
						vms, err = rt.List(ctx)
						if err == nil && len(vms) != n {
							err = fmt.Errorf("listed %d VMs, want %d", len(vms), n)
						}
					case "adoptall":
						err = rt.AdoptAll(ctx)
					}
					if err != nil {
						b.Fatal(err)
					}
					rt.Close()
				}
			})
		}
		rt = open(b, state, bin)
		destroyIDs(b, rt, ids(n))
		rt.Close()
	}
}

// BenchmarkCreateFromImage: Create and Destroy of a VM whose root drive
// is an image (1 GiB ext4 holding 100 MiB of data), cloned per VM, against
// minifc; the same with the image's path attached read-only, for the
// cost of the clone and the lease.
func BenchmarkCreateFromImage(b *testing.B) {
	state := benchStateDir(b)
	src := b.TempDir()
	data := make([]byte, 100<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := os.WriteFile(src+"/data", data, 0o644); err != nil {
		b.Fatal(err)
	}
	s, err := store.Open(state + "/images")
	if err != nil {
		b.Fatal(err)
	}
	img, err := s.Create(context.Background(), "bench", &store.Source{Kind: "dir", Path: src}, "bench",
		func(ctx context.Context, path string) error {
			return image.BuildFromDir(ctx, src, path, image.BuildOptions{SizeMiB: 1024})
		})
	if err != nil {
		b.Fatal(err)
	}
	rt := open(b, state, minifcBin(b))
	defer rt.Close()
	ctx := context.Background()
	for _, mode := range []string{"image", "path"} {
		b.Run(mode, func(b *testing.B) {
			spec := testSpec(b)
			if mode == "image" {
				spec.RootDrive = microvm.Drive{Image: "bench"}
			} else {
				spec.RootDrive = microvm.Drive{Path: img.Path, ReadOnly: true}
			}
			for i := 0; b.Loop(); i++ {
				id := fmt.Sprintf("%s-%d", mode, i)
				if _, err := rt.Create(ctx, id, spec); err != nil {
					b.Fatal(err)
				}
				if _, err := rt.Destroy(ctx, id); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
