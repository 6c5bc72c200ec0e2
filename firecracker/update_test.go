package firecracker_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/fcapi"
	"github.com/mvm-dev/microvm/firecracker"
)

// vmConfig is GET /vm/config of a VM.
func vmConfig(t *testing.T, vm microvm.VM) fcapi.FullVMConfig {
	t.Helper()
	c := fcapi.New(vm.Backend.APISocket, nil)
	defer c.Close()
	cfg, err := c.VMConfig(context.Background())
	if err != nil {
		t.Fatalf("GET /vm/config: %v", err)
	}
	return cfg
}

func TestUpdateRateLimits(t *testing.T) {
	rt, _ := newRuntime(t)
	ctx := context.Background()
	spec := testSpec(t)
	spec.Drives = []microvm.Drive{{Path: spec.Kernel, ReadOnly: true}} // any other file
	if _, err := rt.Create(ctx, "rl", spec); err != nil {
		t.Fatal(err)
	}
	mib := func(n int64) microvm.LimiterUpdate {
		return microvm.LimiterUpdate{Bandwidth: &microvm.TokenBucket{Size: n << 20, RefillTime: time.Second}}
	}
	upd := microvm.RateLimitUpdate{Drives: map[string]microvm.LimiterUpdate{"rootfs": mib(1)}}
	if _, err := rt.UpdateRateLimits(ctx, "rl", upd); !errors.Is(err, microvm.ErrInvalidTransition) || !strings.Contains(err.Error(), "while created") {
		t.Errorf("UpdateRateLimits on a created VM: %v; want ErrInvalidTransition", err)
	}
	if _, err := rt.Start(ctx, "rl"); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name  string
		u     microvm.RateLimitUpdate
		is    error
		parts []string
	}{
		{"empty", microvm.RateLimitUpdate{}, microvm.ErrInvalidArgument, []string{"lists no drive and no network interface"}},
		{"unknown ids", microvm.RateLimitUpdate{
			Drives:  map[string]microvm.LimiterUpdate{"nope": mib(1)},
			Network: map[string]microvm.NetLimiterUpdate{"eth9": {Rx: mib(1)}},
		}, microvm.ErrInvalidArgument, []string{`drive "nope" (its drives: rootfs, drive1)`, `network interface "eth9" (its interfaces: none)`}},
		{"bad bucket", microvm.RateLimitUpdate{Drives: map[string]microvm.LimiterUpdate{
			"drive1": {Ops: &microvm.TokenBucket{Size: 10}},
		}}, microvm.ErrInvalidSpec, []string{"drives[0].rate_limiter.ops.refill_time"}},
	} {
		_, err := rt.UpdateRateLimits(ctx, "rl", c.u)
		if !errors.Is(err, c.is) {
			t.Errorf("%s: %v; want %v", c.name, err, c.is)
			continue
		}
		for _, p := range c.parts {
			if !strings.Contains(err.Error(), p) {
				t.Errorf("%s: %q lacks %q", c.name, err, p)
			}
		}
	}

	vm, err := rt.UpdateRateLimits(ctx, "rl", microvm.RateLimitUpdate{Drives: map[string]microvm.LimiterUpdate{
		"rootfs": mib(1),
		"drive1": {Ops: &microvm.TokenBucket{Size: 100, RefillTime: time.Second}},
	}})
	if err != nil {
		t.Fatalf("UpdateRateLimits: %v", err)
	}
	if rl := vm.Spec.RootDrive.RateLimiter; rl == nil || rl.Bandwidth.Size != 1<<20 || rl.Ops != nil {
		t.Errorf("spec root limiter = %+v", rl)
	}
	cfg := vmConfig(t, vm)
	if rl := cfg.Drives[0].RateLimiter; rl == nil || rl.Bandwidth == nil || rl.Bandwidth.Size != 1<<20 || rl.Ops == nil || rl.Ops.Size != 0 {
		t.Errorf("firecracker root limiter = %+v (want 1 MiB bandwidth, ops disabled)", rl)
	}
	if rl := cfg.Drives[1].RateLimiter; rl == nil || rl.Ops == nil || rl.Ops.Size != 100 {
		t.Errorf("firecracker drive1 limiter = %+v", rl)
	}

	// A bucket the update leaves alone is kept: drive1 gets a bandwidth
	// limit and keeps its ops limit.
	vm, err = rt.UpdateRateLimits(ctx, "rl", microvm.RateLimitUpdate{Drives: map[string]microvm.LimiterUpdate{"drive1": mib(2)}})
	if err != nil {
		t.Fatalf("UpdateRateLimits of drive1's bandwidth: %v", err)
	}
	if rl := vm.Spec.Drives[0].RateLimiter; rl == nil || rl.Ops == nil || rl.Ops.Size != 100 || rl.Bandwidth == nil || rl.Bandwidth.Size != 2<<20 {
		t.Errorf("drive1 limiter after a bandwidth update = %+v, want its ops bucket kept", rl)
	}
	if rl := vmConfig(t, vm).Drives[1].RateLimiter; rl == nil || rl.Ops == nil || rl.Ops.Size != 100 || rl.Bandwidth == nil || rl.Bandwidth.Size != 2<<20 {
		t.Errorf("firecracker drive1 limiter after a bandwidth update = %+v", rl)
	}

	// Paused works too; size-0 buckets remove the limits.
	if _, err := rt.Pause(ctx, "rl"); err != nil {
		t.Fatal(err)
	}
	off := &microvm.TokenBucket{}
	vm, err = rt.UpdateRateLimits(ctx, "rl", microvm.RateLimitUpdate{Drives: map[string]microvm.LimiterUpdate{"drive1": {Bandwidth: off, Ops: off}}})
	if err != nil {
		t.Fatalf("UpdateRateLimits on a paused VM: %v", err)
	}
	if vm.Spec.Drives[0].RateLimiter != nil || vm.Spec.RootDrive.RateLimiter == nil {
		t.Errorf("after removing drive1's limits: root %+v drive1 %+v", vm.Spec.RootDrive.RateLimiter, vm.Spec.Drives[0].RateLimiter)
	}
	if rl := vmConfig(t, vm).Drives[1].RateLimiter; rl == nil || rl.Ops == nil || rl.Ops.Size != 0 || rl.Bandwidth == nil || rl.Bandwidth.Size != 0 {
		t.Errorf("firecracker drive1 limiter after removal = %+v (want 0-size buckets)", rl)
	}

	// A restart keeps them: the fresh process is configured from the spec.
	if _, err := rt.Stop(ctx, "rl", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.UpdateRateLimits(ctx, "rl", upd); !errors.Is(err, microvm.ErrInvalidTransition) {
		t.Errorf("UpdateRateLimits on a stopped VM: %v; want ErrInvalidTransition", err)
	}
	if vm, err = rt.Start(ctx, "rl"); err != nil {
		t.Fatal(err)
	}
	if rl := vmConfig(t, vm).Drives[0].RateLimiter; rl == nil || rl.Bandwidth == nil || rl.Bandwidth.Size != 1<<20 {
		t.Errorf("root limiter after a restart = %+v", rl)
	}
}

func TestSetEgressPolicyRefusals(t *testing.T) {
	rt, _ := newRuntime(t)
	ctx := context.Background()
	if _, err := rt.SetEgressPolicy(ctx, "none", nil); !errors.Is(err, microvm.ErrNotFound) {
		t.Errorf("unknown VM: %v; want ErrNotFound", err)
	}
	if _, err := rt.Create(ctx, "plain", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.SetEgressPolicy(ctx, "plain", &microvm.EgressPolicy{DenyAll: true}); !errors.Is(err, microvm.ErrInvalidArgument) || !strings.Contains(err.Error(), "no managed network interface") {
		t.Errorf("VM without a managed interface: %v; want ErrInvalidArgument", err)
	}
}

// fakeNet is a firecracker.Network that gives each VM a network namespace
// of its own (pinned under a test directory) and records what it is asked.
type fakeNet struct {
	t   *testing.T
	dir string

	mu       sync.Mutex
	attached map[string]string // vm -> namespace path
	policies map[string]*microvm.EgressPolicy
	cleanups int
	kept     []string
}

func newFakeNet(t *testing.T) *fakeNet {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (network namespaces and TAP devices)")
	}
	dir, err := os.MkdirTemp("", "fcnet-")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeNet{t: t, dir: dir, attached: map[string]string{}, policies: map[string]*microvm.EgressPolicy{}}
	t.Cleanup(func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for id, p := range f.attached {
			t.Errorf("vm %s is still attached", id)
			unix.Unmount(p, unix.MNT_DETACH)
		}
		os.RemoveAll(dir)
	})
	return f
}

func (f *fakeNet) Attach(ctx context.Context, id string, nic microvm.NetworkInterface) (firecracker.NetworkAttachment, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	path, ok := f.attached[id]
	if !ok {
		path = filepath.Join(f.dir, id)
		if err := pinNewNetNS(path); err != nil {
			return firecracker.NetworkAttachment{}, err
		}
		f.attached[id] = path
	}
	f.policies[id] = nic.Egress
	return firecracker.NetworkAttachment{
		NetNS: path, TAP: "ftap0", GuestMAC: "06:00:00:00:00:01", BootArgs: "ip=fake",
		Metadata: []byte(`{"ip":"192.0.2.2"}`),
		Info:     microvm.NetworkInfo{NetNS: path, TAP: "ftap0", GuestIP: "192.0.2.2"},
	}, nil
}

func (f *fakeNet) Detach(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p, ok := f.attached[id]; ok {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
			return err
		}
		os.Remove(p)
		delete(f.attached, id)
	}
	return nil
}

func (f *fakeNet) SetPolicy(ctx context.Context, id string, p *microvm.EgressPolicy) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.attached[id]; !ok {
		return fmt.Errorf("vm %q is not attached", id)
	}
	f.policies[id] = p
	return nil
}

func (f *fakeNet) Cleanup(ctx context.Context, keep func(string) bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups++
	f.kept = nil
	for _, id := range []string{"mixed", "ghost"} {
		if keep(id) {
			f.kept = append(f.kept, id)
		}
	}
	return nil
}

// pinNewNetNS creates a network namespace and pins it at path.
func pinNewNetNS(path string) error {
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = unix.Mount(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()), path, "", unix.MS_BIND, "")
		if serr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); serr != nil {
			errc <- errors.Join(err, serr) // still locked: the thread ends with the goroutine
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return fmt.Errorf("pin a new network namespace at %s: %w", path, err)
	}
	return nil
}

// TestManagedWithFakeNetwork: the managed interface is configured first
// (the guest's eth0), MMDS is enabled on it with the facts when the spec
// has none, egress updates reach the Network, Open runs its Cleanup, and
// Destroy detaches.
func TestManagedWithFakeNetwork(t *testing.T) {
	fn := newFakeNet(t)
	state := t.TempDir()
	bin := standin(t)
	rt := open(t, state, bin, func(c *firecracker.Config) { c.Network = fn })
	defer rt.Close()
	if fn.cleanups != 1 {
		t.Errorf("Open ran Cleanup %d times, want 1", fn.cleanups)
	}
	ctx := context.Background()
	spec := testSpec(t)
	spec.Network = []microvm.NetworkInterface{
		{ID: "ext", HostDevName: "ext0"}, // a TAP the stand-in makes in the VM's namespace
		{ID: "mgmt", Egress: &microvm.EgressPolicy{DenyAll: true}},
	}
	vm, err := rt.Create(ctx, "mixed", spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	cfg := vmConfig(t, vm)
	var ids []string
	for _, n := range cfg.NetworkInterfaces {
		ids = append(ids, n.IfaceID+"="+n.HostDevName)
	}
	if !slices.Equal(ids, []string{"mgmt=ftap0", "ext=ext0"}) {
		t.Errorf("interfaces configured as %v, want the managed one first", ids)
	}
	if cfg.MMDSConfig == nil || cfg.MMDSConfig.Version != "V2" || !slices.Equal(cfg.MMDSConfig.NetworkInterfaces, []string{"mgmt"}) {
		t.Errorf("mmds-config = %+v, want V2 on mgmt", cfg.MMDSConfig)
	}
	if !strings.HasSuffix(cfg.BootSource.BootArgs, " ip=fake") {
		t.Errorf("boot args %q lack the network's", cfg.BootSource.BootArgs)
	}
	if vm.Backend.Network == nil || vm.Backend.Network.GuestIP != "192.0.2.2" {
		t.Errorf("Backend.Network = %+v", vm.Backend.Network)
	}
	if p := fn.policies["mixed"]; p == nil || !p.DenyAll {
		t.Errorf("Attach got policy %+v", p)
	}

	allow := &microvm.EgressPolicy{Allow: []microvm.EgressRule{{CIDR: netip.MustParsePrefix("192.0.2.0/24"), Protocol: "tcp", FromPort: 80, ToPort: 81}}}
	if vm, err = rt.SetEgressPolicy(ctx, "mixed", allow); err != nil {
		t.Fatalf("SetEgressPolicy: %v", err)
	}
	if p := fn.policies["mixed"]; p == nil || p.DenyAll || len(p.Allow) != 1 || p.Allow[0].ToPort != 81 {
		t.Errorf("the Network got policy %+v", p)
	}
	if e := vm.Spec.Network[1].Egress; e == nil || len(e.Allow) != 1 {
		t.Errorf("spec egress = %+v", e)
	}

	rt2 := open(t, state, bin, func(c *firecracker.Config) { c.Network = fn })
	rt2.Close()
	if fn.cleanups != 2 || !slices.Equal(fn.kept, []string{"mixed"}) {
		t.Errorf("Cleanup: %d runs, kept %v; want 2 runs keeping only mixed", fn.cleanups, fn.kept)
	}

	if _, err := rt.Destroy(ctx, "mixed"); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if len(fn.attached) != 0 {
		t.Errorf("still attached after Destroy: %v", fn.attached)
	}
	assertClean(t, state, "mixed")
}
