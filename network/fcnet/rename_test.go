//go:build linux

package fcnet_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/network"
	"github.com/mvm-dev/microvm/network/fcnet"
)

// netRecords lists the network's vm records.
func netRecords(t testing.TB, w *world) []string {
	t.Helper()
	ids, err := w.reg.List("netvm")
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestRenameNetworked: a created VM with a managed network is renamed
// with its process and its slot (same namespace, TAP and HostIP; the
// egress policy kept and updated by the new id), a stopped one too; a
// network left under the new id by a VM that is gone is removed first;
// the old id is free and gets a network of its own; a runtime opened
// later keeps the renamed VM's network; Destroy of the new id removes its
// slot; a runtime without networking refuses.
func TestRenameNetworked(t *testing.T) {
	w := newWorld(t, 0)
	ctx := ctxT(t)
	spec := testSpec(t)
	spec.Network[0].Egress = &microvm.EgressPolicy{DenyAll: true}
	vm, err := w.rt.Create(ctx, "pool-1", spec)
	if err != nil {
		t.Fatal(err)
	}
	n, pid := *vm.Backend.Network, vm.Backend.PID
	slot, err := w.m.Slot("pool-1")
	if err != nil {
		t.Fatal(err)
	}
	// A network left under the new id with no VM of that id.
	ghost, err := w.m.Setup(ctx, "alice", network.Options{})
	if err != nil {
		t.Fatal(err)
	}

	got, err := w.rt.Rename(ctx, "pool-1", "alice")
	if err != nil {
		t.Fatalf("Rename of a created VM with a network: %v", err)
	}
	if got.ID != "alice" || got.Backend.PID != pid || got.Backend.Network == nil || *got.Backend.Network != n {
		t.Fatalf("renamed VM: pid %d network %+v, want pid %d network %+v", got.Backend.PID, got.Backend.Network, pid, n)
	}
	if s, err := w.m.Slot("alice"); err != nil || s.Name != slot.Name {
		t.Fatalf("Slot(alice): %+v, %v; want %s", s, err, slot.Name)
	}
	if _, err := w.m.Slot("pool-1"); !errors.Is(err, network.ErrNotFound) {
		t.Fatalf("Slot(pool-1): %v, want ErrNotFound", err)
	}
	if _, err := os.Stat(filepath.Join(w.env.RunDir, ghost.Name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the leftover network of alice is still there: %v", err)
	}
	if ids := netRecords(t, w); !slices.Equal(ids, []string{"alice"}) {
		t.Fatalf("network records %v, want [alice]", ids)
	}
	var rec struct {
		Policy network.Policy `json:"policy"`
	}
	if err := w.reg.Get("netvm", "alice", &rec); err != nil || !rec.Policy.DenyAll {
		t.Fatalf("network record of alice: %+v, %v; want the DenyAll policy", rec, err)
	}
	// The egress policy is updated by the new id.
	if _, err := w.rt.SetEgressPolicy(ctx, "alice", nil); err != nil {
		t.Fatalf("SetEgressPolicy(alice): %v", err)
	}
	rec.Policy = network.Policy{}
	if err := w.reg.Get("netvm", "alice", &rec); err != nil || rec.Policy.DenyAll {
		t.Fatalf("network record of alice after SetEgressPolicy: %+v, %v", rec, err)
	}
	if _, err := w.rt.SetEgressPolicy(ctx, "pool-1", nil); !errors.Is(err, microvm.ErrNotFound) {
		t.Errorf("SetEgressPolicy(old id): %v, want ErrNotFound", err)
	}
	vm, err = w.rt.Start(ctx, "alice")
	if err != nil || vm.Backend.PID != pid {
		t.Fatalf("Start after rename: %v, pid %d want %d", err, vm.Backend.PID, pid)
	}
	sameNetNS(t, vm.Backend.PID, n.NetNS)
	checkFacts(t, vm, n.HostIP)

	// A stopped VM.
	if _, err := w.rt.Stop(ctx, "alice", nil); err != nil {
		t.Fatal(err)
	}
	if got, err = w.rt.Rename(ctx, "alice", "bob"); err != nil {
		t.Fatalf("Rename of a stopped VM with a network: %v", err)
	}
	if got.Status != microvm.StatusStopped || got.Backend.Network == nil || *got.Backend.Network != n {
		t.Fatalf("renamed stopped VM: %s, network %+v", got.Status, got.Backend.Network)
	}
	if vm, err = w.rt.Start(ctx, "bob"); err != nil {
		t.Fatalf("Start(bob): %v", err)
	}
	sameNetNS(t, vm.Backend.PID, n.NetNS)

	// The old ids are free: a VM of its own, with a network of its own.
	other, err := w.rt.Create(ctx, "pool-1", testSpec(t))
	if err != nil {
		t.Fatalf("Create(pool-1) again: %v", err)
	}
	if other.Backend.Network == nil || other.Backend.Network.HostIP == n.HostIP || other.Backend.Network.NetNS == n.NetNS {
		t.Fatalf("the new pool-1's network %+v, want one other than %+v", other.Backend.Network, n)
	}
	if _, err := w.rt.Rename(ctx, "pool-1", "bob"); !errors.Is(err, microvm.ErrAlreadyExists) {
		t.Errorf("Rename onto a VM: %v, want ErrAlreadyExists", err)
	}

	// Another runtime (Open cleans networks up) keeps bob's.
	if err := w.rt.Close(); err != nil {
		t.Fatal(err)
	}
	w.rt = w.open(fcnet.New(w.m))
	if s, err := w.m.Slot("bob"); err != nil || s.Name != slot.Name {
		t.Fatalf("Slot(bob) after reopening: %+v, %v", s, err)
	}

	// Without a Network that can move networks: refused, nothing moved.
	if _, err := w.rt.Stop(ctx, "bob", nil); err != nil {
		t.Fatal(err)
	}
	bare := w.open(nil)
	if _, err := bare.Rename(ctx, "bob", "carol"); !errors.Is(err, microvm.ErrUnsupported) {
		t.Errorf("Rename without networking: %v, want ErrUnsupported", err)
	}
	bare.Close()
	plain := w.open(attachOnly{fcnet.New(w.m)})
	if _, err := plain.Rename(ctx, "bob", "carol"); !errors.Is(err, microvm.ErrUnsupported) {
		t.Errorf("Rename with a Network that cannot rename: %v, want ErrUnsupported", err)
	}
	plain.Close()
	if _, err := w.rt.Get(ctx, "bob"); err != nil {
		t.Fatalf("Get(bob) after refusals: %v", err)
	}

	if _, err := w.rt.Destroy(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(n.NetNS); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("bob's namespace outlived Destroy: %v", err)
	}
	if _, err := w.m.Slot("bob"); !errors.Is(err, network.ErrNotFound) {
		t.Errorf("Slot(bob) after Destroy: %v", err)
	}
	if _, err := w.rt.Destroy(ctx, "pool-1"); err != nil {
		t.Fatal(err)
	}
	w.checkNoSlots()
}

// attachOnly is a firecracker.Network with nothing more.
type attachOnly struct{ n *fcnet.Network }

func (a attachOnly) Attach(ctx context.Context, id string, nic microvm.NetworkInterface) (firecracker.NetworkAttachment, error) {
	return a.n.Attach(ctx, id, nic)
}
func (a attachOnly) Detach(ctx context.Context, id string) error { return a.n.Detach(ctx, id) }

// crashingNet is fcnet's Network whose RenameNetwork ends the goroutine
// calling it (the runtime's Rename, whose deferred unlocks run as a dead
// process's locks are dropped), before or after moving the network, once.
type crashingNet struct {
	*fcnet.Network
	after   bool
	crashed bool
}

func (c *crashingNet) RenameNetwork(ctx context.Context, oldID, newID string) error {
	if c.crashed {
		return c.Network.RenameNetwork(ctx, oldID, newID)
	}
	c.crashed = true
	if c.after {
		if err := c.Network.RenameNetwork(ctx, oldID, newID); err != nil {
			return err
		}
	}
	runtime.Goexit()
	return nil
}

// TestRenameNetworkedRecovery: a rename of a networked VM whose process
// dies before the network moved, after it moved, or after the directory
// moved too, is undone or finished by the runtime opened next (whichever
// id is touched first): the VM and its network end under the same id, the
// other id has neither, and Destroy leaves nothing.
func TestRenameNetworkedRecovery(t *testing.T) {
	for _, c := range []struct {
		name        string
		netMoved    bool
		dirMoved    bool
		touch, want string
	}{
		{"before the network moved, touch old", false, false, "a", "a"},
		{"before the network moved, touch new", false, false, "b", "a"},
		{"network moved, touch old", true, false, "a", "a"},
		{"network moved, touch new", true, false, "b", "a"},
		{"directory moved, touch old", true, true, "a", "b"},
		{"directory moved, touch new", true, true, "b", "b"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := newWorld(t, 0)
			ctx := ctxT(t)
			spec := testSpec(t)
			spec.Network[0].Egress = &microvm.EgressPolicy{DenyAll: true}
			if _, err := w.rt.Create(ctx, "a", spec); err != nil {
				t.Fatal(err)
			}
			slot, err := w.m.Slot("a")
			if err != nil {
				t.Fatal(err)
			}
			if err := w.rt.Close(); err != nil {
				t.Fatal(err)
			}
			w.rt = w.open(&crashingNet{Network: fcnet.New(w.m), after: c.netMoved})
			done := make(chan struct{})
			go func() {
				defer close(done)
				w.rt.Rename(ctx, "a", "b")
				t.Error("Rename returned: the crash did not happen")
			}()
			<-done
			if c.dirMoved { // the step the crashed Rename would have taken next
				dirs := filepath.Join(w.state, "vms")
				if err := os.Rename(filepath.Join(dirs, "a"), filepath.Join(dirs, "b")); err != nil {
					t.Fatal(err)
				}
			}
			w.rt.Close()

			w.rt = w.open(fcnet.New(w.m))
			first, err := w.rt.Get(ctx, c.touch)
			if c.touch == c.want {
				if err != nil || first.Backend.Network == nil || first.Backend.Network.NetNS != slot.NetNSPath {
					t.Fatalf("Get(%s): %+v, %v; want the VM in %s", c.touch, first.Backend.Network, err, slot.NetNSPath)
				}
			} else if !errors.Is(err, microvm.ErrNotFound) {
				t.Fatalf("Get(%s): %v, want ErrNotFound", c.touch, err)
			}
			vms, err := w.rt.List(ctx)
			if err != nil || len(vms) != 1 || vms[0].ID != c.want {
				t.Fatalf("List: %+v, %v; want only %s", vms, err, c.want)
			}
			if s, err := w.m.Slot(c.want); err != nil || s.Name != slot.Name {
				t.Fatalf("Slot(%s): %+v, %v; want %s", c.want, s, err, slot.Name)
			}
			if ids := netRecords(t, w); !slices.Equal(ids, []string{c.want}) {
				t.Fatalf("network records %v, want [%s]", ids, c.want)
			}
			if _, err := w.rt.SetEgressPolicy(ctx, c.want, nil); err != nil {
				t.Fatalf("SetEgressPolicy(%s): %v", c.want, err)
			}
			// Renaming again works from the recovered state.
			if _, err := w.rt.Rename(ctx, c.want, "c"); err != nil {
				t.Fatalf("Rename(%s, c) after recovery: %v", c.want, err)
			}
			if s, err := w.m.Slot("c"); err != nil || s.Name != slot.Name {
				t.Fatalf("Slot(c): %+v, %v", s, err)
			}
			if _, err := w.rt.Destroy(ctx, "c"); err != nil {
				t.Fatal(err)
			}
			w.checkNoSlots()
		})
	}
}
