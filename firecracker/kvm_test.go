package firecracker_test

// The real-KVM suite: real firecracker binaries boot real guests. It runs
// where /dev/kvm opens read-write, once per firecracker-v* binary of the
// workplace's shared/firecracker folder (or MVM_FIRECRACKER_BIN alone),
// with its vmlinux-6.1 (or MVM_KERNEL) and the project's own agent image
// (package image, cmd/mvm-agent; or MVM_ROOTFS for the conformance run).
// Elsewhere every test here skips with one line. The cases that need a
// managed network (clones with their own networks, NAT and egress, MMDS)
// are in network/fcnet/kvm_test.go, beside the test topology they use.

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/agent"
	"github.com/mvm-dev/microvm/conformance"
	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/internal/guesttest"
	"github.com/mvm-dev/microvm/internal/realfc"
)

// kvmCtx bounds one case of the suite.
func kvmCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// kvmRootFS is MVM_ROOTFS, or a fresh agent image.
func kvmRootFS(t *testing.T) string {
	if p := os.Getenv("MVM_ROOTFS"); p != "" {
		return p
	}
	return guesttest.Image(t)
}

// kvmMemoryMiB is MVM_KVM_MEMORY_MIB, default 128.
func kvmMemoryMiB() int {
	if v, err := strconv.Atoi(os.Getenv("MVM_KVM_MEMORY_MIB")); err == nil && v > 0 {
		return v
	}
	return 128
}

// guestSpec boots the agent image: root drive read-only (every VM of the
// suite shares the image), one vCPU, a vsock device in the VM directory.
func guestSpec(kernel, rootfs string) microvm.Spec {
	return microvm.Spec{
		Kernel:    kernel,
		RootDrive: microvm.Drive{Path: rootfs, ReadOnly: true},
		VCPUs:     1,
		MemoryMiB: kvmMemoryMiB(),
		Vsock:     &microvm.Vsock{},
	}
}

// TestKVMConformance runs the conformance suite against each real
// firecracker, booting vmlinux-6.1 with the agent image.
//
// On a kvm-pvm host (see guesttest.RequireKVM) guests run for seconds,
// which the suite's VMs need: it runs there with the newest firecracker
// only (the suite takes minutes per binary), without Harness.Shutdown (no
// guest gets far enough to shut itself down). Elsewhere MVM_KVM_SUITE=off
// skips it like the rest of the booting suite.
func TestKVMConformance(t *testing.T) {
	guesttest.RequireKVMDevice(t)
	pvm := realfc.PVM() && os.Getenv("MVM_KVM_SUITE") != "on"
	if !pvm {
		guesttest.RequireKVM(t)
	}
	kernel := guesttest.Kernel(t)
	bins := guesttest.Firecrackers(t)
	spec := guestSpec(kernel, kvmRootFS(t))
	spec.Vsock = nil
	vs := guesttest.Versions(bins)
	if pvm {
		vs = vs[len(vs)-1:]
	}
	// The harness's Shutdown is Ctrl-Alt-Del, which needs the guest
	// kernel's i8042 keyboard.
	missing, err := guesttest.KernelHasConfig(kernel, ctrlAltDelConfig...)
	noCAD := err != nil || len(missing) > 0
	for _, v := range vs {
		t.Run(v, func(t *testing.T) {
			h := harness(bins[v], spec, 4)
			if pvm || noCAD {
				h.Shutdown = nil
			}
			conformance.Run(t, h)
		})
	}
}

// TestKVMSpecsOnRealBinaries runs everywhere, KVM or not: each real
// firecracker accepts the configuration of every VM the KVM suite boots
// (Create runs the whole pre-boot API sequence: machine, boot source with
// vmlinux-6.1, the agent image and rate-limited drives, vsock, dirty-page
// tracking), so a KVM host finds only what needs KVM.
func TestKVMSpecsOnRealBinaries(t *testing.T) {
	kernel := guesttest.Kernel(t)
	bins := guesttest.Firecrackers(t)
	rootfs := guesttest.Image(t)
	snap := guestSpec(kernel, rootfs)
	snap.TrackDirtyPages = true
	specs := map[string]microvm.Spec{
		"guest":      guestSpec(kernel, rootfs),
		"snapshots":  snap,
		"rate-limit": rateLimitSpec(t, kernel, rootfs),
	}
	ctx := context.Background()
	for _, v := range guesttest.Versions(bins) {
		t.Run(v, func(t *testing.T) {
			state := t.TempDir()
			rt := open(t, state, bins[v])
			defer rt.Close()
			for name, spec := range specs {
				vm, err := rt.Create(ctx, name, spec)
				if err != nil {
					t.Errorf("Create(%s) with firecracker %s: %v", name, v, err)
					continue
				}
				if vm.Status != microvm.StatusCreated || vm.Backend.VsockPath == "" {
					t.Errorf("%s: %s, vsock %q", name, vm.Status, vm.Backend.VsockPath)
				}
				if _, err := rt.Destroy(ctx, name); err != nil {
					t.Errorf("Destroy(%s): %v", name, err)
				}
				assertClean(t, state, name)
			}
		})
	}
}

// kvmGuest is one firecracker version's runtime for the guest cases.
type kvmGuest struct {
	rt     *firecracker.Runtime
	state  string
	kernel string
	rootfs string
}

// TestKVMGuest boots the agent image under each real firecracker and
// checks what only a real guest shows.
func TestKVMGuest(t *testing.T) {
	guesttest.RequireKVM(t)
	kernel := guesttest.Kernel(t)
	bins := guesttest.Firecrackers(t)
	rootfs := guesttest.Image(t)
	uffd := uffdBin(t)
	for _, v := range guesttest.Versions(bins) {
		t.Run(v, func(t *testing.T) {
			state := t.TempDir()
			rt := open(t, state, bins[v], func(c *firecracker.Config) {
				c.UffdBin = uffd
				c.ReadyTimeout = 10 * time.Second
				c.StopTimeout = 30 * time.Second
			})
			t.Cleanup(func() { destroyAll(t, rt); rt.Close() })
			g := &kvmGuest{rt: rt, state: state, kernel: kernel, rootfs: rootfs}
			t.Run("boot", g.testBoot)
			t.Run("pause-resume", g.testPauseResume)
			t.Run("snapshots", g.testSnapshots)
			t.Run("drive-rate-limit", g.testDriveRateLimit)
			t.Run("sigkill", g.testSIGKILL)
			t.Run("guest-shutdown", g.testGuestShutdown)
			t.Run("ctrl-alt-del", g.testCtrlAltDel)
		})
	}
}

// boot creates and starts VM id from spec and waits for the agent's ready
// marker on the console (read through Logs); it returns how long that took
// from Start.
func (g *kvmGuest) boot(t *testing.T, ctx context.Context, id string, spec microvm.Spec) time.Duration {
	t.Helper()
	if _, err := g.rt.Create(ctx, id, spec); err != nil {
		t.Fatalf("Create(%s): %v", id, err)
	}
	start := time.Now()
	if _, err := g.rt.Start(ctx, id); err != nil {
		t.Fatalf("Start(%s): %v", id, err)
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := guesttest.WaitConsole(wctx, g.rt, id, agent.ReadyMarker); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// destroy destroys VM id and checks nothing of it is left.
func (g *kvmGuest) destroy(t *testing.T, id string) {
	t.Helper()
	if _, err := g.rt.Destroy(context.Background(), id); err != nil {
		t.Errorf("Destroy(%s): %v", id, err)
	}
	assertClean(t, g.state, id)
}

// dial connects to VM id's agent over vsock.
func (g *kvmGuest) dial(t *testing.T, ctx context.Context, id string) *agent.Client {
	t.Helper()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := guesttest.DialAgent(dctx, g.rt, id)
	if err != nil {
		t.Fatalf("vsock to the agent of %s: %v", id, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// counter reads VM id's next counter value over a new vsock connection.
func (g *kvmGuest) counter(t *testing.T, ctx context.Context, id string) uint64 {
	t.Helper()
	v, err := g.dial(t, ctx, id).Counter(ctx)
	if err != nil {
		t.Fatalf("counter of %s: %v", id, err)
	}
	return v
}

// testBoot: boot to the ready marker, console capture through Logs, and a
// vsock round trip with the agent as PID 1.
func (g *kvmGuest) testBoot(t *testing.T) {
	ctx := kvmCtx(t)
	took := g.boot(t, ctx, "boot", guestSpec(g.kernel, g.rootfs))
	t.Logf("Start to %q: %s", agent.ReadyMarker, took.Round(time.Millisecond))
	for _, want := range []string{"Run /sbin/init as init process", agent.ReadyMarker + " " + guesttest.AgentVersion} {
		if ok, err := guesttest.ConsoleHas(ctx, g.rt, "boot", want); err != nil || !ok {
			t.Errorf("console (Logs) has no %q (%v)", want, err)
		}
	}
	vm, err := g.rt.Get(ctx, "boot")
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(vm.Backend.ConsoleLog); err != nil || !strings.Contains(string(b), agent.ReadyMarker) {
		t.Errorf("console log file %s has no ready marker (%v)", vm.Backend.ConsoleLog, err)
	}
	c := g.dial(t, ctx, "boot")
	p, err := c.Ping(ctx)
	if err != nil || p.PID != 1 || p.Version != guesttest.AgentVersion || p.Protocol != agent.ProtocolVersion {
		t.Fatalf("ping over vsock = %+v, %v; want the agent as PID 1", p, err)
	}
	for want := uint64(1); want <= 3; want++ {
		if v, err := c.Counter(ctx); err != nil || v != want {
			t.Fatalf("counter = %d, %v; want %d", v, err, want)
		}
	}
	g.destroy(t, "boot")
}

// testPauseResume: a request sent while the VM is paused is answered only
// after Resume, and the guest's state is kept.
func (g *kvmGuest) testPauseResume(t *testing.T) {
	ctx := kvmCtx(t)
	g.boot(t, ctx, "pr", guestSpec(g.kernel, g.rootfs))
	if v := g.counter(t, ctx, "pr"); v != 1 {
		t.Fatalf("counter = %d, want 1", v)
	}
	c := g.dial(t, ctx, "pr")
	if _, err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if vm, err := g.rt.Pause(ctx, "pr"); err != nil || vm.Status != microvm.StatusPaused {
		t.Fatalf("Pause = %s, %v", vm.Status, err)
	}
	type answer struct {
		v   uint64
		err error
	}
	got := make(chan answer, 1)
	go func() {
		v, err := c.Counter(ctx)
		got <- answer{v, err}
	}()
	select {
	case a := <-got:
		t.Fatalf("a paused guest answered: counter %d, %v", a.v, a.err)
	case <-time.After(time.Second):
	}
	if vm, err := g.rt.Resume(ctx, "pr"); err != nil || vm.Status != microvm.StatusRunning {
		t.Fatalf("Resume = %s, %v", vm.Status, err)
	}
	select {
	case a := <-got:
		if a.err != nil || a.v != 2 {
			t.Errorf("counter after resume = %d, %v; want 2", a.v, a.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no answer within 30s of Resume")
	}
	g.destroy(t, "pr")
}

// testSnapshots: full and diff snapshots restored with the File and the
// Uffd memory backends; every restored guest continues the counter from
// where its snapshot was taken, and the source VM goes on independently.
func (g *kvmGuest) testSnapshots(t *testing.T) {
	ctx := kvmCtx(t)
	spec := guestSpec(g.kernel, g.rootfs)
	spec.TrackDirtyPages = true // for the diff snapshot
	g.boot(t, ctx, "src", spec)
	if v := g.counter(t, ctx, "src"); v != 1 {
		t.Fatalf("counter = %d, want 1", v)
	}
	if _, err := g.rt.Snapshot(ctx, "src", "src-full", nil); err != nil {
		t.Fatalf("full Snapshot: %v", err)
	}
	if v := g.counter(t, ctx, "src"); v != 2 {
		t.Fatalf("counter of the source after its snapshot = %d, want 2", v)
	}
	snap, err := g.rt.Snapshot(ctx, "src", "src-diff", &microvm.SnapshotOptions{Type: microvm.SnapshotDiff})
	if err != nil {
		t.Fatalf("diff Snapshot: %v", err)
	}
	if snap.Type != microvm.SnapshotDiff || snap.Parent != "src-full" {
		t.Errorf("diff snapshot = %+v, want a diff of src-full", snap)
	}
	if v := g.counter(t, ctx, "src"); v != 3 {
		t.Fatalf("counter of the source after its diff snapshot = %d, want 3", v)
	}
	for _, c := range []struct {
		snap string
		next uint64 // the counter value a restored guest gives first
	}{{"src-full", 2}, {"src-diff", 3}} {
		for _, backend := range []microvm.MemoryBackend{microvm.MemoryBackendFile, microvm.MemoryBackendUffd} {
			id := c.snap + "-" + string(backend)
			start := time.Now()
			vm, err := g.rt.Restore(ctx, id, c.snap, &microvm.RestoreOptions{MemoryBackend: backend})
			if err != nil {
				t.Fatalf("Restore(%s from %s, %s): %v", id, c.snap, backend, err)
			}
			if vm.Status != microvm.StatusRunning || vm.RestoredFrom != c.snap {
				t.Errorf("restored %s: %s from %q", id, vm.Status, vm.RestoredFrom)
			}
			if v := g.counter(t, ctx, id); v != c.next {
				t.Errorf("%s: counter = %d, want %d (a restored guest continues, it does not reboot)", id, v, c.next)
			}
			t.Logf("%s: Restore to first counter answer: %s", id, time.Since(start).Round(time.Millisecond))
			if ok, _ := guesttest.ConsoleHas(ctx, g.rt, id, "Run /sbin/init"); ok {
				t.Errorf("%s: the restored guest booted again", id)
			}
			g.destroy(t, id)
		}
	}
	if v := g.counter(t, ctx, "src"); v != 4 {
		t.Errorf("counter of the source after the restores = %d, want 4", v)
	}
	g.destroy(t, "src")
}

// testDriveRateLimit: a bandwidth limit on a drive bounds what the guest
// reads from it (O_DIRECT reads by the agent), while an unlimited drive
// reads at full speed.
func (g *kvmGuest) testDriveRateLimit(t *testing.T) {
	ctx := kvmCtx(t)
	g.boot(t, ctx, "rl", rateLimitSpec(t, g.kernel, g.rootfs))
	c := g.dial(t, ctx, "rl")
	const size, rate = rateDriveSize, rateLimit
	limited, err := c.Read(ctx, agent.ReadArgs{Path: "/dev/vdb", Bytes: size})
	if err != nil || limited.Bytes != size || !limited.Direct {
		t.Fatalf("read of the limited drive = %+v, %v", limited, err)
	}
	free, err := c.Read(ctx, agent.ReadArgs{Path: "/dev/vdc", Bytes: size})
	if err != nil || free.Bytes != size {
		t.Fatalf("read of the free drive = %+v, %v", free, err)
	}
	mibps := func(r agent.ReadResult) float64 {
		return float64(r.Bytes) / (1 << 20) / time.Duration(r.ElapsedNS).Seconds()
	}
	t.Logf("guest throughput: limited drive %.1f MiB/s (limit %d MiB/s), free drive %.1f MiB/s", mibps(limited), rate>>20, mibps(free))
	// The bucket starts full (rate bytes), the rest comes at rate: the
	// read cannot be faster than that (a lower bound, with 20% slack).
	if floor := time.Duration(size-rate) * time.Second / rate * 8 / 10; time.Duration(limited.ElapsedNS) < floor {
		t.Errorf("limited drive read in %s, want at least %s: the rate limit is not applied", time.Duration(limited.ElapsedNS), floor)
	}
	g.destroy(t, "rl")
}

// Drive sizes and limit of the rate-limit case.
const (
	rateDriveSize = 16 << 20
	rateLimit     = 4 << 20 // bytes per second: a full bucket per second
)

// rateLimitSpec is guestSpec with two extra read-only drives of
// rateDriveSize zero bytes: /dev/vdb limited to rateLimit bytes per
// second, /dev/vdc unlimited.
func rateLimitSpec(t *testing.T, kernel, rootfs string) microvm.Spec {
	dir := t.TempDir()
	var paths []string
	for _, name := range []string{"limited.img", "free.img"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, rateDriveSize), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	spec := guestSpec(kernel, rootfs)
	spec.Drives = []microvm.Drive{
		{ID: "limited", Path: paths[0], ReadOnly: true, RateLimiter: &microvm.RateLimiter{
			Bandwidth: &microvm.TokenBucket{Size: rateLimit, RefillTime: time.Second}}},
		{ID: "free", Path: paths[1], ReadOnly: true},
	}
	return spec
}

// testSIGKILL: a firecracker killed under a running guest turns the VM
// failed, with the signal in LastError.
func (g *kvmGuest) testSIGKILL(t *testing.T) {
	ctx := kvmCtx(t)
	g.boot(t, ctx, "killed", guestSpec(g.kernel, g.rootfs))
	kill(t, g.rt, "killed")
	vm := waitStatus(t, g.rt, "killed", microvm.StatusFailed)
	if !strings.Contains(vm.LastError, "SIGKILL") || vm.Backend.PID != 0 {
		t.Errorf("failed VM: LastError %q, PID %d; want SIGKILL named and no process", vm.LastError, vm.Backend.PID)
	}
	g.destroy(t, "killed")
}

// testGuestShutdown: the agent's poweroff resets the guest, and
// firecracker exits by itself (status 0); the runtime sees the process
// end unasked, and a clean end leaves the VM stopped.
func (g *kvmGuest) testGuestShutdown(t *testing.T) {
	ctx := kvmCtx(t)
	g.boot(t, ctx, "off", guestSpec(g.kernel, g.rootfs))
	if err := g.dial(t, ctx, "off").Poweroff(ctx); err != nil {
		t.Fatalf("poweroff: %v", err)
	}
	var vm microvm.VM
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err := guesttest.WaitFor(wctx, func() bool {
		var err error
		vm, err = g.rt.Get(ctx, "off")
		return err == nil && vm.Status != microvm.StatusRunning
	})
	if err != nil {
		t.Fatalf("the VM still runs 30s after the guest shut down: %v", err)
	}
	if vm.Status != microvm.StatusStopped || vm.Backend.PID != 0 || vm.LastError != "" {
		t.Errorf("after the guest's shutdown: %s, PID %d, LastError %q; want stopped, firecracker gone, no error", vm.Status, vm.Backend.PID, vm.LastError)
	}
	for _, want := range []string{agent.ShutdownMarker + " (poweroff request)", "reboot: Restarting system"} {
		if ok, err := guesttest.ConsoleHas(ctx, g.rt, "off", want); err != nil || !ok {
			t.Errorf("console has no %q (%v)", want, err)
		}
	}
	g.destroy(t, "off")
}

// ctrlAltDelConfig are the guest kernel options without which
// Ctrl-Alt-Del (an i8042 key sequence) never reaches the guest.
var ctrlAltDelConfig = []string{"CONFIG_SERIO=y", "CONFIG_SERIO_I8042=y", "CONFIG_KEYBOARD_ATKBD=y"}

// testCtrlAltDel: Stop sends Ctrl-Alt-Del; the agent (PID 1) gets SIGINT,
// shuts down and resets the guest, and firecracker exits by itself before
// the stop timeout (after which Stop would send SIGTERM).
func (g *kvmGuest) testCtrlAltDel(t *testing.T) {
	if missing, err := guesttest.KernelHasConfig(g.kernel, ctrlAltDelConfig...); err == nil && len(missing) > 0 {
		t.Skipf("kernel %s lacks %s: Ctrl-Alt-Del cannot reach its guests", g.kernel, strings.Join(missing, ", "))
	}
	ctx := kvmCtx(t)
	g.boot(t, ctx, "cad", guestSpec(g.kernel, g.rootfs))
	const timeout = 30 * time.Second
	start := time.Now()
	vm, err := g.rt.Stop(ctx, "cad", &microvm.StopOptions{Timeout: timeout})
	took := time.Since(start)
	if err != nil || vm.Status != microvm.StatusStopped {
		t.Fatalf("Stop = %s, %v", vm.Status, err)
	}
	t.Logf("Stop by Ctrl-Alt-Del took %s", took.Round(time.Millisecond))
	if took >= timeout {
		t.Errorf("Stop took %s: firecracker did not exit before the %s timeout (SIGTERM ended it)", took, timeout)
	}
	for _, want := range []string{agent.ShutdownMarker + " (signal SIGINT)", "reboot: Restarting system"} {
		if ok, err := guesttest.ConsoleHas(ctx, g.rt, "cad", want); err != nil || !ok {
			t.Errorf("console has no %q (%v)", want, err)
		}
	}
	g.destroy(t, "cad")
}
