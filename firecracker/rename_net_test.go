package firecracker_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
)

// movingNet is fakeNet that can move a VM's network to another id (keeping
// its namespace, as package network does) and whose Cleanup removes the
// networks of VMs keep rejects.
type movingNet struct {
	*fakeNet
}

func (m movingNet) RenameNetwork(ctx context.Context, oldID, newID string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	p, ok := m.attached[oldID]
	if !ok {
		return nil
	}
	if _, taken := m.attached[newID]; taken {
		return fmt.Errorf("vm %q already has a network", newID)
	}
	m.attached[newID], m.policies[newID] = p, m.policies[oldID]
	delete(m.attached, oldID)
	delete(m.policies, oldID)
	return nil
}

func (m movingNet) Cleanup(ctx context.Context, keep func(string) bool) error {
	m.mu.Lock()
	var gone []string
	for id := range m.attached {
		if !keep(id) {
			gone = append(gone, id)
		}
	}
	m.mu.Unlock()
	for _, id := range gone {
		if err := m.Detach(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

func (m movingNet) ids() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Sorted(maps.Keys(m.attached))
}

var _ firecracker.NetworkRenamer = movingNet{}

// TestRenameNetworkRecovery: a rename of a VM with a managed network whose
// process dies at each step (before the network moved, after it moved,
// after the directory moved, after the old record went) is undone or
// finished by the runtime opened next, whichever id is touched first, and
// the network ends under the VM's id, in the same namespace, with Open's
// network cleanup removing nothing of it.
func TestRenameNetworkRecovery(t *testing.T) {
	bin := standin(t)
	ctx := context.Background()
	for _, c := range []struct {
		step, touch, want string
	}{
		{"network", "a", "a"},
		{"network", "b", "a"},
		{"directory", "a", "a"},
		{"directory", "b", "a"},
		{"committed", "a", "b"},
		{"committed", "b", "b"},
		{"old record removed", "b", "b"},
	} {
		t.Run(c.step+", touch "+c.touch, func(t *testing.T) {
			fn := movingNet{newFakeNet(t)}
			state := t.TempDir()
			withNet := func(cfg *firecracker.Config) { cfg.Network = fn }
			rt := open(t, state, bin, withNet)
			spec := testSpec(t)
			spec.Network = []microvm.NetworkInterface{{ID: "eth0"}}
			vm, err := rt.Create(ctx, "a", spec)
			if err != nil {
				t.Fatal(err)
			}
			ns := vm.Backend.Network.NetNS
			renameDiesAt(t, ctx, rt, c.step, "a", "b")
			rt.Close()

			rt = open(t, state, bin, withNet)
			defer rt.Close()
			got, err := rt.Get(ctx, c.touch)
			if c.touch == c.want {
				if err != nil || got.Backend.Network == nil || got.Backend.Network.NetNS != ns {
					t.Fatalf("Get(%s): %+v, %v; want the VM in %s", c.touch, got.Backend.Network, err, ns)
				}
			} else if !errors.Is(err, microvm.ErrNotFound) {
				t.Fatalf("Get(%s): %v, want ErrNotFound", c.touch, err)
			}
			vms, err := rt.List(ctx)
			if err != nil || len(vms) != 1 || vms[0].ID != c.want {
				t.Fatalf("List: %+v, %v; want only %s", vms, err, c.want)
			}
			if ids := fn.ids(); !slices.Equal(ids, []string{c.want}) {
				t.Fatalf("networks of %v, want [%s]", ids, c.want)
			}
			if _, err := rt.SetEgressPolicy(ctx, c.want, &microvm.EgressPolicy{DenyAll: true}); err != nil {
				t.Fatalf("SetEgressPolicy(%s): %v", c.want, err)
			}
			if _, err := rt.Start(ctx, c.want); err != nil {
				t.Fatalf("Start(%s) after recovery: %v", c.want, err)
			}
			if _, err := rt.Destroy(ctx, c.want); err != nil {
				t.Fatal(err)
			}
			if ids := fn.ids(); len(ids) > 0 {
				t.Fatalf("networks left after Destroy: %v", ids)
			}
		})
	}
}

// TestRenameNetworkFailure: when moving the network fails, the rename is
// undone: the VM and its network stay under the old id, the new id has
// neither.
func TestRenameNetworkFailure(t *testing.T) {
	fn := movingNet{newFakeNet(t)}
	state := t.TempDir()
	rt := open(t, state, standin(t), func(cfg *firecracker.Config) { cfg.Network = fn })
	defer rt.Close()
	ctx := context.Background()
	spec := testSpec(t)
	spec.Network = []microvm.NetworkInterface{{ID: "eth0"}}
	if _, err := rt.Create(ctx, "a", spec); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("injected failure")
	for _, step := range []string{"network", "directory"} {
		restore := firecracker.SetRenameStepHook(func(s string) error {
			if s == step {
				return boom
			}
			return nil
		})
		_, err := rt.Rename(ctx, "a", "b")
		restore()
		if !errors.Is(err, boom) {
			t.Fatalf("step %s: Rename: %v, want the injected failure", step, err)
		}
		if _, err := rt.Get(ctx, "b"); !errors.Is(err, microvm.ErrNotFound) {
			t.Fatalf("step %s: Get(b): %v", step, err)
		}
		if vm, err := rt.Get(ctx, "a"); err != nil || vm.Backend.Network == nil {
			t.Fatalf("step %s: Get(a): %+v, %v", step, vm, err)
		}
		if ids := fn.ids(); !slices.Equal(ids, []string{"a"}) {
			t.Fatalf("step %s: networks of %v, want [a]", step, ids)
		}
	}
	if _, err := rt.Destroy(ctx, "a"); err != nil {
		t.Fatal(err)
	}
}
