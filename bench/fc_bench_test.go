// Package bench holds side-by-side benchmarks of mvm's Firecracker runtime
// (package github.com/mvm-dev/microvm/firecracker) and the official
// firecracker-go-sdk v1.0.0, both driving the same stand-in firecracker
// (internal/fcstandin), which serves Firecracker's API on --api-sock and
// validates every request against the official spec.
//
// It is a separate module so the SDK's dependencies (go-openapi, logrus,
// CNI, mongo-driver, ...) stay out of the library's go.mod.
//
// Run (see docs/benchmarks.md for the numbers):
//
//	cd bench && go test -run '^$' -bench . -benchtime 10x -count 5
//
// Implementations: mvm (firecracker.Runtime), sdk (firecracker-go-sdk
// v1.0.0) and floor (spawn + inotify + the bare PUTs: the lower bound any
// client could reach against the stand-in; see floor_test.go).
//
// Each benchmark iteration is one batch of `parallel` VMs launched at once
// (one firecracker process per VM) and waited for. ns/op is the wall time
// of a batch; teardown (stop the process, wait for its exit, remove its
// files) is outside the timed region (b.StopTimer). Custom metrics:
//
//	ms/vm      mean latency of one VM (its own timer, launch to done)
//	p50-ms/vm  median of the same
//	max-ms/vm  worst VM seen
//	batch-ms   mean wall time of a batch (= ns/op without timer overhead)
//	cpu-ms/vm  CPU time (user+sys) of the benchmark process, i.e. of the
//	           client library, per VM, during the timed region: less
//	           sensitive to other load on the host than wall times (but
//	           file-system syscalls cost more CPU on a contended host)
//	fc-cpu-ms/vm  CPU time of the stand-in processes per VM (whole life,
//	           counted when reaped); the same work for every client
//	x-p1       batch-ms of this parallelism / batch-ms of parallel=1 for
//	           the same implementation (needs parallel=1 to run first, as
//	           it does in the default order)
package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Guest shape used by both implementations. The stand-in only checks that
// the kernel and rootfs files exist; memory size matters a little because
// the stand-in writes a page every 256 KiB of guest memory at
// InstanceStart.
const (
	benchVCPUs     = 1
	benchMemoryMiB = 128
	// bootArgs is microvm.DefaultBootArgs, passed explicitly to the SDK
	// so both send the same boot-source body.
	bootArgs = "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
)

var parallelisms = []int{1, 10, 100}

// Timeouts given to both implementations: mvm's defaults
// (firecracker.DefaultReadyTimeout, DefaultAPITimeout). The SDK's own
// defaults (3 s init, 500 ms per request) fail at parallel=100 on a
// 2-core host; BENCH_SDK_DEFAULT_TIMEOUTS=1 keeps them to show that.
const (
	readyTimeout = 5 * time.Second
	apiTimeout   = 5 * time.Second
)

// benchEnv is the shared setup: the stand-in binary, the guest files and
// a short scratch directory (unix socket paths are limited to 107 bytes).
type benchEnv struct {
	bin     string // stand-in firecracker
	specDir string // FCSTANDIN_SPEC_DIR
	kernel  string
	rootfs  string
	scratch string
}

var (
	envOnce sync.Once
	envVal  *benchEnv
	envErr  error
	envSkip string
	scratch string // removed by TestMain
)

func TestMain(m *testing.M) {
	code := m.Run()
	if scratch != "" {
		os.RemoveAll(scratch)
	}
	os.Exit(code)
}

// setup builds the stand-in once per test binary and prepares the guest
// files. It skips (or, with CI=true, fails) when the reference specs the
// stand-in needs are missing.
func setup(b *testing.B) *benchEnv {
	b.Helper()
	envOnce.Do(func() {
		specDir, err := findSpecDir()
		if err != nil {
			envSkip = err.Error()
			return
		}
		envVal, envErr = buildEnv(specDir)
	})
	if envSkip != "" {
		if os.Getenv("CI") == "true" {
			b.Fatal(envSkip)
		}
		b.Skip(envSkip)
	}
	if envErr != nil {
		b.Fatal(envErr)
	}
	return envVal
}

// findSpecDir locates shared/reference: $MVM_REFERENCE_DIR, else the first
// shared/reference found walking up from the package directory.
func findSpecDir() (string, error) {
	const probe = "firecracker-api.yaml"
	if d := os.Getenv("MVM_REFERENCE_DIR"); d != "" {
		if _, err := os.Stat(filepath.Join(d, probe)); err != nil {
			return "", fmt.Errorf("MVM_REFERENCE_DIR=%s: %w", d, err)
		}
		return d, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		d := filepath.Join(dir, "shared", "reference")
		if _, err := os.Stat(filepath.Join(d, probe)); err == nil {
			return d, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("reference specs not found: set MVM_REFERENCE_DIR or put shared/reference beside the repo")
		}
		dir = parent
	}
}

func buildEnv(specDir string) (*benchEnv, error) {
	mainDir, err := filepath.Abs("..")
	if err != nil {
		return nil, err
	}
	gomod, err := os.ReadFile(filepath.Join(mainDir, "go.mod"))
	if err != nil || !strings.Contains(string(gomod), "module github.com/mvm-dev/microvm\n") {
		return nil, fmt.Errorf("main module not found at %s (bench must sit inside the repo)", mainDir)
	}
	scratch, err = os.MkdirTemp("", "fcb")
	if err != nil {
		return nil, err
	}
	e := &benchEnv{
		bin:     filepath.Join(scratch, "firecracker"),
		specDir: specDir,
		kernel:  filepath.Join(scratch, "vmlinux"),
		rootfs:  filepath.Join(scratch, "rootfs.ext4"),
		scratch: scratch,
	}
	cmd := exec.Command("go", "build", "-o", e.bin, "github.com/mvm-dev/microvm/internal/fcstandin/cmd/fcstandin")
	cmd.Dir = mainDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build stand-in firecracker: %v\n%s", err, out)
	}
	for _, f := range []string{e.kernel, e.rootfs} {
		if err := os.WriteFile(f, make([]byte, 4096), 0o644); err != nil {
			return nil, err
		}
	}
	// Both implementations start firecracker with the benchmark's
	// environment, so this reaches every stand-in process.
	if err := os.Setenv("FCSTANDIN_SPEC_DIR", specDir); err != nil {
		return nil, err
	}
	return e, nil
}

// vmID returns a fresh VM id, valid for both mvm and firecracker's --id.
var vmSeq atomic.Int64

func vmID(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, vmSeq.Add(1))
}

// launcher launches one VM: spawn, configure and, with boot, InstanceStart.
// It returns the teardown (untimed) that stops the process and removes
// everything the VM left.
type launcher interface {
	launch(ctx context.Context, id string, boot bool) (teardown func() error, err error)
	close() error
}

// impls lists the implementations in report order.
var impls = []struct {
	name string
	open func(b *testing.B, e *benchEnv) launcher
}{
	{"mvm", openMVM},
	{"sdk", openSDK},
	{"floor", openFloor},
}

func BenchmarkCreate(b *testing.B)      { benchLaunch(b, false) }
func BenchmarkCreateStart(b *testing.B) { benchLaunch(b, true) }

func benchLaunch(b *testing.B, boot bool) {
	e := setup(b)
	for _, impl := range impls {
		b.Run(impl.name, func(b *testing.B) {
			var p1 float64 // batch-ms of parallel=1
			for _, p := range parallelisms {
				b.Run(fmt.Sprintf("parallel=%d", p), func(b *testing.B) {
					l := impl.open(b, e)
					defer func() {
						if err := l.close(); err != nil {
							b.Errorf("close %s: %v", impl.name, err)
						}
					}()
					batch := runBatches(b, l, p, boot)
					if p == 1 {
						p1 = batch
					} else if p1 > 0 {
						b.ReportMetric(batch/p1, "x-p1")
					}
				})
			}
		})
	}
}

// runBatches runs b.N batches of `parallel` simultaneous launches and
// reports the metrics; it returns the mean batch wall time in ms.
func runBatches(b *testing.B, l launcher, parallel int, boot bool) float64 {
	ctx := context.Background()
	var lats []time.Duration
	var wall, selfCPU, childCPU time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		lat := make([]time.Duration, parallel)
		tds := make([]func() error, parallel)
		errs := make([]error, parallel)
		gate := make(chan struct{})
		var ready, done sync.WaitGroup
		ready.Add(parallel)
		for j := range parallel {
			done.Go(func() {
				id := vmID("vm")
				ready.Done()
				<-gate
				t0 := time.Now()
				tds[j], errs[j] = l.launch(ctx, id, boot)
				lat[j] = time.Since(t0)
			})
		}
		ready.Wait()
		c0 := cpuTime(unix.RUSAGE_SELF)
		k0 := cpuTime(unix.RUSAGE_CHILDREN)
		b.StartTimer()
		t0 := time.Now()
		close(gate)
		done.Wait()
		wall += time.Since(t0)
		b.StopTimer()
		selfCPU += cpuTime(unix.RUSAGE_SELF) - c0
		terr := teardownAll(tds)
		// Children's CPU is counted when they are reaped, in teardown.
		childCPU += cpuTime(unix.RUSAGE_CHILDREN) - k0
		if err := errors.Join(errors.Join(errs...), terr); err != nil {
			b.Fatal(firstLines(err, 5))
		}
		lats = append(lats, lat...)
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(lats)
	var sum time.Duration
	for _, d := range lats {
		sum += d
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(sum)/float64(len(lats)), "ms/vm")
	b.ReportMetric(ms(lats[len(lats)/2]), "p50-ms/vm")
	b.ReportMetric(ms(lats[len(lats)-1]), "max-ms/vm")
	b.ReportMetric(ms(selfCPU)/float64(len(lats)), "cpu-ms/vm")
	b.ReportMetric(ms(childCPU)/float64(len(lats)), "fc-cpu-ms/vm")
	batch := ms(wall) / float64(b.N)
	b.ReportMetric(batch, "batch-ms")
	return batch
}

// teardownAll runs the teardowns concurrently (at most 16 at a time).
func teardownAll(tds []func() error) error {
	errs := make([]error, len(tds))
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i, td := range tds {
		if td == nil {
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = td()
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// cpuTime returns user+system CPU time of this process (RUSAGE_SELF) or
// of its reaped children (RUSAGE_CHILDREN).
func cpuTime(who int) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// firstLines keeps an error report short when many VMs fail alike.
func firstLines(err error, n int) string {
	lines := strings.Split(err.Error(), "\n")
	if len(lines) > n {
		return strings.Join(lines[:n], "\n") + fmt.Sprintf("\n... (%d more lines)", len(lines)-n)
	}
	return err.Error()
}
