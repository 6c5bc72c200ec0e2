// Package bench holds side-by-side benchmarks of mvm's Firecracker runtime
// (package github.com/mvm-dev/microvm/firecracker), the official
// firecracker-go-sdk v1.0.0 and a spawn floor, all driving the same
// firecracker binary.
//
// It is a separate module so the SDK's dependencies (go-openapi, logrus,
// CNI, mongo-driver, ...) stay out of the library's go.mod.
//
// # The firecracker binary
//
// $MVM_BENCH_FIRECRACKER names it; "standin" means the stand-in
// (internal/fcstandin/server, built by the benchmark, which validates every
// request against the official spec and needs shared/reference). Unset:
// the real Firecracker v1.0 (shared/firecracker/firecracker-v1.0.0, found
// walking up from this directory) when present, else the stand-in. The
// binary in use is logged once (b.Log) by every benchmark.
//
// Without /dev/kvm a real firecracker serves its API up to InstanceStart,
// which fails: the benchmarks that boot a guest (CreateStart and the
// post-boot operations of BenchmarkOps) then run only on the stand-in and
// are skipped with the real binary.
//
// # Interleaving
//
// The host is shared, and its load moves by the minute: running all of
// one implementation's iterations and then the next's lets the load decide
// the comparison. Every benchmark here therefore interleaves the three
// implementations inside one iteration: one iteration (a "round") runs a
// batch of `parallel` VMs with each implementation in turn (the order
// rotates from round to round), and the ratios are computed per round,
// between batches run seconds apart under the same load.
//
// Run (see docs/benchmarks.md for the numbers):
//
//	cd bench && go test -run '^$' -bench 'BenchmarkCreate$' -benchtime 30x
//	cd bench && go test -run '^$' -bench 'BenchmarkOps' -benchtime 20x
//
// Implementations: mvm (firecracker.Runtime), sdk (firecracker-go-sdk
// v1.0.0) and floor (spawn + inotify + the bare API calls on one
// keep-alive connection: the lower bound any client could reach; see
// floor_test.go).
//
// Metrics, per implementation X (mvm, sdk, floor):
//
//	X-ms        median over rounds of the batch wall time (at parallel=1:
//	            the latency of one VM)
//	X-cpu-ms/vm CPU time (user+sys, getrusage RUSAGE_SELF) of the benchmark
//	            process, i.e. of the client library, per VM, inside the
//	            timed region (summed over rounds / VMs)
//	X-fc-ms/vm  CPU time of the firecracker processes per VM over their
//	            whole life (RUSAGE_CHILDREN, counted when they are reaped
//	            at teardown)
//
// and the ratios of batch wall times, taken per round, then their median
// and quartiles over rounds: mvm/sdk, mvm/floor (and -q1, -q3); and the
// ratios of total CPU (client + firecracker) per VM: mvm/sdk-cpu,
// mvm/floor-cpu.
package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mvm-dev/microvm/internal/fcstandin"
)

// Guest shape used by every implementation. The kernel and rootfs are
// dummy files: without KVM firecracker only opens them.
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

// benchEnv is the shared setup: the firecracker binary, the guest files
// and a short scratch directory (unix socket paths are limited to 107
// bytes).
type benchEnv struct {
	bin      string // firecracker (real or stand-in)
	standin  bool   // bin is the stand-in
	canBoot  bool   // InstanceStart can succeed (stand-in, or /dev/kvm present)
	describe string // what bin is, for the log
	kernel   string
	rootfs   string
	scratch  string
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

// setup prepares the binary and the guest files once per test binary. It
// skips (or, with CI=true, fails) when what the chosen binary needs is
// missing.
func setup(b *testing.B) *benchEnv {
	b.Helper()
	envOnce.Do(func() { envVal, envErr = buildEnv() })
	if envSkip != "" {
		if os.Getenv("CI") == "true" {
			b.Fatal(envSkip)
		}
		b.Skip(envSkip)
	}
	if envErr != nil {
		b.Fatal(envErr)
	}
	b.Logf("firecracker: %s", envVal.describe)
	return envVal
}

// findUp returns the first dir/rel found walking up from the working
// directory for which ok(dir/rel) holds.
func findUp(rel string, ok func(string) bool) (string, bool) {
	dir, err := os.Getwd()
	if err != nil {
		return "", false
	}
	for {
		p := filepath.Join(dir, rel)
		if ok(p) {
			return p, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

func exists(p string) bool { _, err := os.Stat(p); return err == nil }

// realFirecracker is the default real binary, relative to some parent of
// this directory.
var realFirecracker = filepath.Join("shared", "firecracker", "firecracker-v1.0.0")

func buildEnv() (*benchEnv, error) {
	var err error
	scratch, err = os.MkdirTemp("", "fcb")
	if err != nil {
		return nil, err
	}
	e := &benchEnv{
		kernel:  filepath.Join(scratch, "vmlinux"),
		rootfs:  filepath.Join(scratch, "rootfs.ext4"),
		scratch: scratch,
	}
	for _, f := range []string{e.kernel, e.rootfs} {
		if err := os.WriteFile(f, make([]byte, 4096), 0o644); err != nil {
			return nil, err
		}
	}
	choice := os.Getenv("MVM_BENCH_FIRECRACKER")
	switch choice {
	case "standin":
	case "":
		if p, ok := findUp(realFirecracker, exists); ok {
			choice = p
		} else {
			choice = "standin"
		}
	default:
		abs, err := filepath.Abs(choice)
		if err != nil {
			return nil, err
		}
		if fi, err := os.Stat(abs); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return nil, fmt.Errorf("MVM_BENCH_FIRECRACKER=%s: not an executable file", choice)
		}
		choice = abs
	}
	if choice != "standin" {
		out, err := exec.Command(choice, "--version").Output() // reads all of it
		if err != nil {
			return nil, fmt.Errorf("%s --version: %w", choice, err)
		}
		v, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		e.bin = choice
		_, kerr := os.Stat("/dev/kvm")
		e.canBoot = kerr == nil
		e.describe = fmt.Sprintf("%s (%s; /dev/kvm present: %v)", choice, v, e.canBoot)
		return e, nil
	}
	wd, _ := os.Getwd()
	specDir, err := fcstandin.FindSpecDir(os.Getenv, wd)
	if err != nil {
		envSkip = err.Error()
		return nil, nil
	}
	e.bin = filepath.Join(scratch, "firecracker")
	e.standin, e.canBoot = true, true
	e.describe = "the stand-in (internal/fcstandin/server), not a real firecracker"
	// Built as the tests build it (static, in its own module).
	if err := fcstandin.BuildTo(e.bin); err != nil {
		return nil, fmt.Errorf("build stand-in firecracker: %w", err)
	}
	// Every implementation starts firecracker with the benchmark's
	// environment, so this reaches every stand-in process.
	if err := os.Setenv("FCSTANDIN_SPEC_DIR", specDir); err != nil {
		return nil, err
	}
	return e, nil
}

// vmID returns a fresh VM id, valid for mvm and for firecracker's --id.
var vmSeq atomic.Int64

func vmID(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, vmSeq.Add(1))
}

// launcher is one implementation. Operations an implementation does not
// have return errNoOp.
type launcher interface {
	// create spawns and configures a VM and, with boot, boots it. The VM
	// returned (even with an error) is torn down by the caller.
	create(ctx context.Context, id string, boot bool) (benchVM, error)
	// restore spawns a VM from the snapshot files in dir (written by
	// benchVM.snapshot of this implementation), resumed.
	restore(ctx context.Context, id string, snap snapshotRef) (benchVM, error)
	close() error
}

// snapshotRef is what an implementation's snapshot left: a directory with
// the state and memory files, or mvm's snapshot id.
type snapshotRef struct {
	dir, id string
}

// benchVM is one VM of an implementation.
type benchVM interface {
	start(ctx context.Context) error
	stop(ctx context.Context) error
	pause(ctx context.Context) error
	resume(ctx context.Context) error
	snapshot(ctx context.Context, dir string) (snapshotRef, error)
	// destroy ends the process, waits for (and reaps) it and removes its
	// files.
	destroy() error
	// pid is the VM's firecracker process.
	pid(ctx context.Context) (int, error)
	// noticeExit returns once the implementation has seen the process
	// exit (mvm: the VM's record no longer shows a process).
	noticeExit(ctx context.Context) error
}

var errNoOp = errors.New("operation not offered by this implementation")

// skipLauncher stands for an implementation left out with BENCH_IMPLS
// (a comma-separated list of the implementations to run, for profiling
// one of them).
type skipLauncher struct{}

func (skipLauncher) create(context.Context, string, bool) (benchVM, error) { return nil, errNoOp }
func (skipLauncher) restore(context.Context, string, snapshotRef) (benchVM, error) {
	return nil, errNoOp
}
func (skipLauncher) close() error { return nil }

// impls lists the implementations in report order.
var impls = []struct {
	name string
	open func(b *testing.B, e *benchEnv) launcher
}{
	{"mvm", openMVM},
	{"sdk", openSDK},
	{"floor", openFloor},
}

// op is one measured operation: prep makes the VM untimed, run is timed
// and returns the VM to tear down (untimed) afterwards: the one it was
// given, a new one (create, restore), or nil when it ended it (destroy).
type op struct {
	name string
	boot bool // needs InstanceStart (stand-in or KVM only)
	prep func(ctx context.Context, l launcher, id string) (benchVM, error)
	run  func(ctx context.Context, l launcher, id string, vm benchVM) (benchVM, error)
}

var opCreate = op{
	name: "Create",
	run: func(ctx context.Context, l launcher, id string, _ benchVM) (benchVM, error) {
		return l.create(ctx, id, false)
	},
}

var opCreateStart = op{
	name: "CreateStart",
	boot: true,
	run: func(ctx context.Context, l launcher, id string, _ benchVM) (benchVM, error) {
		return l.create(ctx, id, true)
	},
}

// BenchmarkCreate: spawn and configure (no boot), per round one batch of
// each implementation.
func BenchmarkCreate(b *testing.B) { benchOp(b, opCreate, parallelisms) }

// BenchmarkCreateStart: the same plus InstanceStart (stand-in or KVM).
func BenchmarkCreateStart(b *testing.B) { benchOp(b, opCreateStart, parallelisms) }

// The operations of BenchmarkOps, each measured on its own: prep brings
// the VM to the state the operation needs (untimed).
var (
	prepCreated = func(ctx context.Context, l launcher, id string) (benchVM, error) { return l.create(ctx, id, false) }
	prepRunning = func(ctx context.Context, l launcher, id string) (benchVM, error) { return l.create(ctx, id, true) }
	prepPaused  = func(ctx context.Context, l launcher, id string) (benchVM, error) {
		vm, err := l.create(ctx, id, true)
		if err == nil {
			err = vm.pause(ctx)
		}
		return vm, err
	}
	same = func(f func(benchVM, context.Context) error) func(context.Context, launcher, string, benchVM) (benchVM, error) {
		return func(ctx context.Context, _ launcher, _ string, vm benchVM) (benchVM, error) { return vm, f(vm, ctx) }
	}
)

var ops = []op{
	{name: "Start", boot: true, prep: prepCreated, run: same(benchVM.start)},
	{name: "Stop", boot: true, prep: prepRunning, run: same(benchVM.stop)},
	{name: "Pause", boot: true, prep: prepRunning, run: same(benchVM.pause)},
	{name: "Resume", boot: true, prep: prepPaused, run: same(benchVM.resume)},
	{name: "Snapshot", boot: true, prep: prepRunning,
		run: func(ctx context.Context, _ launcher, id string, vm benchVM) (benchVM, error) {
			dir := filepath.Join(scratch, "snap-"+id)
			if err := os.Mkdir(dir, 0o700); err != nil {
				return vm, err
			}
			_, err := vm.snapshot(ctx, dir)
			return &withDir{vm, dir}, err
		}},
	{name: "Restore", boot: true,
		// prep: a snapshot of a VM of this implementation, the VM gone.
		prep: func(ctx context.Context, l launcher, id string) (benchVM, error) {
			src, err := l.create(ctx, id+"-src", true)
			if err != nil {
				return src, err
			}
			dir := filepath.Join(scratch, "snap-"+id)
			if err := os.Mkdir(dir, 0o700); err != nil {
				return src, err
			}
			ref, err := src.snapshot(ctx, dir)
			if err != nil {
				return &withDir{src, dir}, err
			}
			if err := src.destroy(); err != nil {
				return nil, err
			}
			return &snapshotOnly{ref: ref, dir: dir}, nil
		},
		run: func(ctx context.Context, l launcher, id string, prep benchVM) (benchVM, error) {
			s := prep.(*snapshotOnly)
			vm, err := l.restore(ctx, id, s.ref)
			if vm == nil {
				return s, err
			}
			return &withDir{vm, s.dir}, err
		}},
	{name: "Destroy", prep: prepCreated,
		run: func(_ context.Context, _ launcher, _ string, vm benchVM) (benchVM, error) { return nil, vm.destroy() }},
	{name: "CrashDetect", prep: prepCreated,
		run: func(ctx context.Context, _ launcher, _ string, vm benchVM) (benchVM, error) {
			pid, err := vm.pid(ctx)
			if err != nil {
				return vm, err
			}
			if err := unix.Kill(pid, unix.SIGKILL); err != nil {
				return vm, fmt.Errorf("kill %d: %w", pid, err)
			}
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			return vm, vm.noticeExit(ctx)
		}},
}

// BenchmarkOps measures each operation per VM, the implementations
// interleaved as in BenchmarkCreate. With a real firecracker and no
// /dev/kvm only Destroy and CrashDetect (SIGKILL of the process, until the
// implementation has seen it) run; MVM_BENCH_FIRECRACKER=standin runs all
// of them on the stand-in. An implementation without the operation is
// left out of its row.
func BenchmarkOps(b *testing.B) {
	for _, o := range ops {
		b.Run(o.name, func(b *testing.B) { benchOp(b, o, []int{1, 10}) })
	}
}

// withDir is a VM whose teardown also removes a snapshot directory.
type withDir struct {
	benchVM
	dir string
}

func (w *withDir) destroy() error { return errors.Join(w.benchVM.destroy(), os.RemoveAll(w.dir)) }

// snapshotOnly is what Restore's prep leaves: a snapshot, no VM.
type snapshotOnly struct {
	benchVM // nil: only destroy is called
	ref     snapshotRef
	dir     string
}

func (s *snapshotOnly) destroy() error { return os.RemoveAll(s.dir) }

// sample is what one implementation did in one round.
type sample struct {
	wall     time.Duration // the batch, timed region
	selfCPU  time.Duration // client CPU in the timed region
	childCPU time.Duration // reaped children's CPU over the round
	vms      int
}

func benchOp(b *testing.B, o op, ps []int) {
	e := setup(b)
	if o.boot && !e.canBoot {
		b.Skipf("%s boots a guest: needs /dev/kvm with a real firecracker (MVM_BENCH_FIRECRACKER=standin runs it on the stand-in)", o.name)
	}
	for _, p := range ps {
		b.Run(fmt.Sprintf("parallel=%d", p), func(b *testing.B) {
			ls := make([]launcher, len(impls))
			for i, impl := range impls {
				if only := os.Getenv("BENCH_IMPLS"); only != "" && !slices.Contains(strings.Split(only, ","), impl.name) {
					ls[i] = skipLauncher{}
					continue
				}
				ls[i] = impl.open(b, e)
			}
			defer func() {
				for i, l := range ls {
					if err := l.close(); err != nil {
						b.Errorf("close %s: %v", impls[i].name, err)
					}
				}
			}()
			runInterleaved(b, o, ls, p)
		})
	}
}

// runInterleaved runs b.N rounds; each round runs one batch per
// implementation, in an order that rotates from round to round.
func runInterleaved(b *testing.B, o op, ls []launcher, parallel int) {
	samples := make([][]sample, len(ls))
	skipped := make([]bool, len(ls))
	b.StopTimer()
	b.ResetTimer()
	for round := 0; round < b.N; round++ {
		for k := range ls {
			i := (round + k) % len(ls)
			if skipped[i] {
				continue
			}
			s, err := runBatch(b, o, ls[i], parallel)
			if errors.Is(err, errNoOp) {
				skipped[i] = true
				continue
			}
			if err != nil {
				b.Fatalf("%s: %s", impls[i].name, firstLines(err, 5))
			}
			samples[i] = append(samples[i], s)
		}
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	cpu := make([]float64, len(ls))
	for i, ss := range samples {
		if len(ss) == 0 {
			continue
		}
		var walls []float64
		var self, child time.Duration
		var vms int
		for _, s := range ss {
			walls = append(walls, ms(s.wall))
			self += s.selfCPU
			child += s.childCPU
			vms += s.vms
		}
		name := impls[i].name
		b.ReportMetric(quantile(walls, 0.5), name+"-ms")
		b.ReportMetric(ms(self)/float64(vms), name+"-cpu-ms/vm")
		b.ReportMetric(ms(child)/float64(vms), name+"-fc-ms/vm")
		cpu[i] = ms(self+child) / float64(vms)
	}
	// Total CPU (client + firecracker) per VM decides the batch time once
	// the host's cores are saturated, and moves less with other load than
	// wall times do.
	if cpu[0] > 0 && cpu[2] > 0 {
		b.ReportMetric(cpu[0]/cpu[2], "mvm/floor-cpu")
	}
	if cpu[0] > 0 && cpu[1] > 0 {
		b.ReportMetric(cpu[0]/cpu[1], "mvm/sdk-cpu")
	}
	for _, j := range []int{1, 2} {
		if len(samples[0]) == 0 || len(samples[j]) != len(samples[0]) {
			continue
		}
		var rs []float64
		for k := range samples[0] {
			rs = append(rs, float64(samples[0][k].wall)/float64(samples[j][k].wall))
		}
		name := "mvm/" + impls[j].name
		b.ReportMetric(quantile(rs, 0.25), name+"-q1")
		b.ReportMetric(quantile(rs, 0.5), name)
		b.ReportMetric(quantile(rs, 0.75), name+"-q3")
	}
	// ns/op is meaningless here (three implementations per op).
	b.ReportMetric(0, "ns/op")
}

// runBatch runs one batch of `parallel` VMs of one implementation: prep
// (untimed), the operation (timed, all VMs released at once), teardown
// (untimed, children reaped).
func runBatch(b *testing.B, o op, l launcher, parallel int) (sample, error) {
	ctx := context.Background()
	ids := make([]string, parallel)
	vms := make([]benchVM, parallel)
	errs := make([]error, parallel)
	k0 := cpuTime(unix.RUSAGE_CHILDREN)
	var s sample
	if o.prep != nil {
		var wg sync.WaitGroup
		for j := range parallel {
			ids[j] = vmID("vm")
			wg.Go(func() { vms[j], errs[j] = o.prep(ctx, l, ids[j]) })
		}
		wg.Wait()
	} else {
		for j := range parallel {
			ids[j] = vmID("vm")
		}
	}
	if err := errors.Join(errs...); err != nil {
		return s, errors.Join(err, teardownAll(vms))
	}
	// Pay the garbage collection the previous batches (of any
	// implementation) owe outside the timed region, so that one
	// implementation's garbage is not charged to the next.
	runtime.GC()
	gate := make(chan struct{})
	var ready, done sync.WaitGroup
	ready.Add(parallel)
	for j := range parallel {
		done.Go(func() {
			ready.Done()
			<-gate
			vms[j], errs[j] = o.run(ctx, l, ids[j], vms[j])
		})
	}
	ready.Wait()
	c0 := cpuTime(unix.RUSAGE_SELF)
	b.StartTimer()
	t0 := time.Now()
	close(gate)
	done.Wait()
	s.wall = time.Since(t0)
	b.StopTimer()
	s.selfCPU = cpuTime(unix.RUSAGE_SELF) - c0
	s.vms = parallel
	terr := teardownAll(vms)
	// Children's CPU is counted when they are reaped, in teardown.
	s.childCPU = cpuTime(unix.RUSAGE_CHILDREN) - k0
	for _, err := range errs {
		if errors.Is(err, errNoOp) {
			return s, errNoOp
		}
	}
	return s, errors.Join(errors.Join(errs...), terr)
}

// quantile returns the q-quantile of xs (nearest rank on a sorted copy).
func quantile(xs []float64, q float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	i := int(q*float64(len(s)-1) + 0.5)
	return s[i]
}

// teardownAll destroys the VMs concurrently (at most 16 at a time).
func teardownAll(vms []benchVM) error {
	errs := make([]error, len(vms))
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for i, vm := range vms {
		if vm == nil {
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = vm.destroy()
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
