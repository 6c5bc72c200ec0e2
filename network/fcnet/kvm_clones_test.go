//go:build linux

package fcnet_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/internal/guesttest"
	"github.com/mvm-dev/microvm/internal/realfc"
	"github.com/mvm-dev/microvm/network"
	"github.com/mvm-dev/microvm/network/internal/nstest"
)

// TestKVMNetworkClones runs wherever /dev/kvm opens (kvm-pvm hosts too: the
// guest needs to run only for seconds): a real guest with a managed
// network under each real firecracker, paused and snapshotted, then ten
// clones of it restored at once, each running by firecracker's own
// account, in its own namespace, holding its own TAP, with its own host
// address; after Destroy nothing of any network is left (the world's
// cleanup checks slots, nft tables and namespaces).
func TestKVMNetworkClones(t *testing.T) {
	guesttest.RequireKVMDevice(t)
	nstest.RequireRoot(t)
	kernel := guesttest.Kernel(t)
	bins := guesttest.Firecrackers(t)
	rootfs := guesttest.Image(t)
	for _, v := range guesttest.Versions(bins) {
		t.Run(v, func(t *testing.T) {
			w := kvmWorld(t, bins[v])
			ctx := ctxT(t)
			if _, err := w.rt.Create(ctx, "src", netGuestSpec(kernel, rootfs)); err != nil {
				t.Fatalf("Create: %v", err)
			}
			if _, err := w.rt.Start(ctx, "src"); err != nil {
				t.Fatalf("Start: %v", err)
			}
			if _, err := w.rt.Pause(ctx, "src"); err != nil {
				t.Fatalf("Pause: %v", err)
			}
			if _, err := w.rt.Snapshot(ctx, "src", "src-snap", nil); err != nil {
				t.Fatalf("Snapshot: %v", err)
			}
			const clones = 10
			start := time.Now()
			var wg sync.WaitGroup
			vms := make([]microvm.VM, clones)
			errs := make([]error, clones)
			for i := range clones {
				wg.Go(func() {
					vms[i], errs[i] = w.rt.Restore(ctx, fmt.Sprintf("clone-%d", i), "src-snap", &microvm.RestoreOptions{SkipVerify: true})
				})
			}
			wg.Wait()
			took := time.Since(start)
			seen := map[string]string{}
			for i, vm := range vms {
				id := fmt.Sprintf("clone-%d", i)
				if errs[i] != nil {
					t.Errorf("Restore(%s): %v", id, errs[i])
					continue
				}
				n := vm.Backend.Network
				if vm.Status != microvm.StatusRunning || n == nil {
					t.Errorf("%s: %s, network %+v", id, vm.Status, n)
					continue
				}
				info, err := client(t, vm).InstanceInfo(ctx)
				if err != nil {
					t.Errorf("GET / of %s: %v", id, err)
				} else if info.State != "Running" {
					t.Errorf("firecracker says %q for %s, want Running", info.State, id)
				}
				sameNetNS(t, vm.Backend.PID, n.NetNS)
				if !realfc.TAPOpenBy(vm.Backend.PID, network.TAPName) {
					t.Errorf("%s: firecracker (pid %d) holds no TAP file of %s", id, vm.Backend.PID, network.TAPName)
				}
				if other, dup := seen[n.HostIP]; dup || n.HostIP == "" {
					t.Errorf("%s: host address %q empty or shared with %s", id, n.HostIP, other)
				}
				seen[n.HostIP] = id
				if other, dup := seen[n.NetNS]; dup {
					t.Errorf("%s: namespace %s shared with %s", id, n.NetNS, other)
				}
				seen[n.NetNS] = id
			}
			t.Logf("%d networked clones restored at once in %s (%.1f clones/s)", clones, took.Round(time.Millisecond), clones/took.Seconds())
			for i := range clones {
				if _, err := w.rt.Destroy(ctx, fmt.Sprintf("clone-%d", i)); err != nil && errs[i] == nil {
					t.Errorf("Destroy(clone-%d): %v", i, err)
				}
			}
		})
	}
}
