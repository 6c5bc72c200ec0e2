package memory_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/memory"
)

// TestCapabilities: the in-memory runtime offers the root package's
// optional capabilities, found by type assertion on a microvm.Runtime,
// with the firecracker runtime's rules; concurrent rate limit updates of
// different buckets both take effect (the read-modify-write is the
// runtime's, under the VM's lock).
func TestCapabilities(t *testing.T) {
	ctx := context.Background()
	var rt microvm.Runtime = memory.New(nil)
	eu, ok1 := rt.(microvm.EgressUpdater)
	ru, ok2 := rt.(microvm.RateLimitUpdater)
	if !ok1 || !ok2 {
		t.Fatalf("memory runtime: EgressUpdater %v, RateLimitUpdater %v", ok1, ok2)
	}
	spec := microvm.Spec{
		Kernel: "/k", RootDrive: microvm.Drive{Path: "/r"}, VCPUs: 1, MemoryMiB: 64,
		Network: []microvm.NetworkInterface{{}},
	}
	if _, err := rt.Create(ctx, "cap", spec); err != nil {
		t.Fatal(err)
	}
	plain := spec
	plain.Network = nil
	if _, err := rt.Create(ctx, "plain", plain); err != nil {
		t.Fatal(err)
	}

	deny := &microvm.EgressPolicy{DenyAll: true, Allow: []microvm.EgressRule{{CIDR: netip.MustParsePrefix("192.0.2.0/24")}}}
	vm, err := eu.SetEgressPolicy(ctx, "cap", deny)
	if err != nil || vm.Spec.Network[0].Egress == nil || !vm.Spec.Network[0].Egress.DenyAll {
		t.Fatalf("SetEgressPolicy: %v %+v", err, vm.Spec.Network)
	}
	deny.DenyAll = false // the caller's copy
	if got, _ := rt.Get(ctx, "cap"); !got.Spec.Network[0].Egress.DenyAll {
		t.Errorf("the runtime kept the caller's policy, not a copy")
	}
	if _, err := eu.SetEgressPolicy(ctx, "plain", nil); !errors.Is(err, microvm.ErrInvalidArgument) {
		t.Errorf("SetEgressPolicy without a managed interface: %v", err)
	}
	bad := &microvm.EgressPolicy{Allow: []microvm.EgressRule{{CIDR: netip.MustParsePrefix("2001:db8::/32")}}}
	if _, err := eu.SetEgressPolicy(ctx, "cap", bad); !errors.Is(err, microvm.ErrInvalidSpec) {
		t.Errorf("SetEgressPolicy with an IPv6 rule: %v", err)
	}

	bw := &microvm.TokenBucket{Size: 1 << 20, RefillTime: time.Second}
	ops := &microvm.TokenBucket{Size: 100, RefillTime: time.Second}
	upd := microvm.RateLimitUpdate{Drives: map[string]microvm.LimiterUpdate{"rootfs": {Bandwidth: bw}}}
	if _, err := ru.UpdateRateLimits(ctx, "cap", upd); !errors.Is(err, microvm.ErrInvalidTransition) {
		t.Errorf("UpdateRateLimits of a created VM: %v", err)
	}
	if _, err := rt.Start(ctx, "cap"); err != nil {
		t.Fatal(err)
	}
	_, err = ru.UpdateRateLimits(ctx, "cap", microvm.RateLimitUpdate{Drives: map[string]microvm.LimiterUpdate{"nope": {Bandwidth: bw}}})
	if !errors.Is(err, microvm.ErrInvalidArgument) || !strings.Contains(err.Error(), `drive "nope" (its drives: rootfs)`) {
		t.Errorf("unknown drive: %v", err)
	}
	// Two updates at once, of the bandwidth and of the ops bucket: both
	// stay.
	var wg sync.WaitGroup
	for _, u := range []microvm.LimiterUpdate{{Bandwidth: bw}, {Ops: ops}} {
		wg.Go(func() {
			if _, err := ru.UpdateRateLimits(ctx, "cap", microvm.RateLimitUpdate{
				Drives:  map[string]microvm.LimiterUpdate{"rootfs": u},
				Network: map[string]microvm.NetLimiterUpdate{"eth0": {Tx: u}},
			}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	vm, _ = rt.Get(ctx, "cap")
	for name, rl := range map[string]*microvm.RateLimiter{"root drive": vm.Spec.RootDrive.RateLimiter, "eth0 tx": vm.Spec.Network[0].TxRateLimiter} {
		if rl == nil || rl.Bandwidth == nil || rl.Ops == nil || rl.Bandwidth.Size != 1<<20 || rl.Ops.Size != 100 {
			t.Errorf("%s limiter after two concurrent updates = %+v, want both buckets", name, rl)
		}
	}
	// A size-0 bucket removes that limit only.
	vm, err = ru.UpdateRateLimits(ctx, "cap", microvm.RateLimitUpdate{Drives: map[string]microvm.LimiterUpdate{"rootfs": {Bandwidth: &microvm.TokenBucket{}}}})
	if rl := vm.Spec.RootDrive.RateLimiter; err != nil || rl == nil || rl.Bandwidth != nil || rl.Ops == nil {
		t.Errorf("after removing the bandwidth limit: %v %+v", err, rl)
	}
}

// TestRename: the in-memory runtime renames created, stopped and paused
// VMs, refuses a running one, a taken id and a bad id.
func TestRename(t *testing.T) {
	ctx := context.Background()
	var rt microvm.Runtime = memory.New(nil)
	rn, ok := rt.(microvm.Renamer)
	if !ok {
		t.Fatal("memory runtime is no Renamer")
	}
	spec := microvm.Spec{Kernel: "/k", RootDrive: microvm.Drive{Path: "/r"}, VCPUs: 1, MemoryMiB: 64}
	for _, id := range []string{"a", "taken"} {
		if _, err := rt.Create(ctx, id, spec); err != nil {
			t.Fatal(err)
		}
	}
	vm, err := rn.Rename(ctx, "a", "b")
	if err != nil || vm.ID != "b" || vm.Status != microvm.StatusCreated {
		t.Fatalf("Rename: %v %+v", err, vm)
	}
	if _, err := rt.Get(ctx, "a"); !errors.Is(err, microvm.ErrNotFound) {
		t.Errorf("Get(old): %v", err)
	}
	if _, err := rn.Rename(ctx, "b", "taken"); !errors.Is(err, microvm.ErrAlreadyExists) {
		t.Errorf("Rename onto a taken id: %v", err)
	}
	if _, err := rn.Rename(ctx, "b", "bad/id"); !errors.Is(err, microvm.ErrInvalidID) {
		t.Errorf("Rename to a bad id: %v", err)
	}
	if _, err := rt.Start(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := rn.Rename(ctx, "b", "c"); !errors.Is(err, microvm.ErrInvalidTransition) {
		t.Errorf("Rename of a running VM: %v", err)
	}
	if _, err := rt.Pause(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Snapshot(ctx, "b", "snap-b", nil); err != nil {
		t.Fatal(err)
	}
	if vm, err := rn.Rename(ctx, "b", "c"); err != nil || vm.Status != microvm.StatusPaused || len(vm.Snapshots) != 0 {
		t.Errorf("Rename of a paused VM: %v %+v (snapshots taken before stay the old id's)", err, vm)
	}
	if ss, err := rt.Snapshots(ctx, "b"); err != nil || len(ss) != 1 || ss[0].ID != "snap-b" || ss[0].VMID != "b" {
		t.Errorf("Snapshots(old id) after rename: %+v, %v", ss, err)
	}
	if vms, _ := rt.List(ctx); len(vms) != 2 || vms[0].ID != "c" || vms[1].ID != "taken" {
		t.Errorf("List: %+v", vms)
	}
}

// TestCreateErrorShape: every Create error is a *microvm.OpError of
// "create" and the id, matching the sentinel of its cause, as the
// firecracker runtime's.
func TestCreateErrorShape(t *testing.T) {
	ctx := context.Background()
	rt := memory.New(nil)
	good := microvm.Spec{Kernel: "/k", RootDrive: microvm.Drive{Path: "/r"}, VCPUs: 1, MemoryMiB: 64}
	if _, err := rt.Create(ctx, "a", good); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		id   string
		spec microvm.Spec
		is   error
	}{
		{"bad/id", good, microvm.ErrInvalidID},
		{"b", microvm.Spec{}, microvm.ErrInvalidSpec},
		{"a", good, microvm.ErrAlreadyExists},
	} {
		_, err := rt.Create(ctx, c.id, c.spec)
		var oe *microvm.OpError
		if !errors.As(err, &oe) || oe.Op != "create" || oe.ID != c.id || !errors.Is(err, c.is) || strings.Contains(err.Error(), "\n") {
			t.Errorf("Create(%q): %v, want an OpError of create %q matching %v", c.id, err, c.id, c.is)
		}
	}
}
