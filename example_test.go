package microvm_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/memory"
)

// A program drives any Runtime the same way; here the in-memory one.
func Example() {
	ctx := context.Background()
	var rt microvm.Runtime = memory.New(nil)
	defer rt.Close()

	spec := microvm.Spec{
		Kernel:    "/var/lib/mvm/vmlinux",
		RootDrive: microvm.Drive{Path: "/var/lib/mvm/rootfs.ext4"},
		VCPUs:     2,
		MemoryMiB: 512,
	}
	if _, err := rt.Create(ctx, "api-1", spec); err != nil {
		fmt.Println(err)
		return
	}
	vm, _ := rt.Start(ctx, "api-1")
	fmt.Println(vm.ID, vm.Status)

	snap, _ := rt.Snapshot(ctx, "api-1", "api-1-ready", nil)
	clone, _ := rt.Restore(ctx, "api-2", snap.ID, nil)
	fmt.Println(clone.ID, clone.Status, "from", clone.RestoredFrom)

	// Operations are not idempotent: test the error instead.
	if _, err := rt.Start(ctx, "api-1"); errors.Is(err, microvm.ErrInvalidTransition) {
		fmt.Println("already running")
	}

	vms, _ := rt.List(ctx)
	for _, vm := range vms {
		rt.Destroy(ctx, vm.ID)
	}
	_, err := rt.Destroy(ctx, "api-1")
	fmt.Println(errors.Is(err, microvm.ErrNotFound))

	// Output:
	// api-1 running
	// api-2 running from api-1-ready
	// already running
	// true
}

// Validate reports every problem of a spec at once, by field.
func ExampleSpec_Validate() {
	spec := microvm.Spec{
		Kernel:    "/var/lib/mvm/vmlinux",
		VCPUs:     48,
		MemoryMiB: 512,
		Network:   []microvm.NetworkInterface{{HostDevName: "tap0", GuestMAC: "01:00:5e:00:00:01"}},
	}
	err := spec.WithDefaults().Validate()
	var se *microvm.SpecError
	if errors.As(err, &se) {
		for _, p := range se.Problems {
			fmt.Println(p.Field+":", p.Rule)
		}
	}
	// Output:
	// root_drive.path: is required
	// vcpus: must be between 1 and 32 (got 48)
	// network[0].guest_mac: must be a unicast address (got multicast "01:00:5e:00:00:01")
}

// Transition is the one table every runtime enforces.
func ExampleTransition() {
	to, err := microvm.Transition("web-1", microvm.StatusPaused, microvm.OpResume)
	fmt.Println(to, err)
	_, err = microvm.Transition("web-1", microvm.StatusStopped, microvm.OpPause)
	fmt.Println(err)
	// Output:
	// running <nil>
	// cannot pause vm "web-1": it is stopped, not running
}
