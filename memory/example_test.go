package memory_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/memory"
)

// exampleClock ticks one second per call from a fixed time, so the output
// of the examples does not depend on when they run.
func exampleClock() func() time.Time {
	now := time.Date(2026, 11, 25, 17, 0, 0, 0, time.UTC)
	return func() time.Time {
		t := now
		now = now.Add(time.Second)
		return t
	}
}

// The main flow: create, start, snapshot, restore a clone, destroy.
func Example() {
	ctx := context.Background()
	rt := memory.New(nil)
	defer rt.Close()

	spec := microvm.Spec{
		Kernel:    "/var/lib/mvm/vmlinux",
		RootDrive: microvm.Drive{Path: "/var/lib/mvm/rootfs.ext4"},
		VCPUs:     2,
		MemoryMiB: 512,
	}
	vm, err := rt.Create(ctx, "web-1", spec)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(vm.ID, vm.Status, vm.Spec.RootDrive.ID)

	vm, _ = rt.Start(ctx, "web-1")
	fmt.Println(vm.ID, vm.Status)

	snap, err := rt.Snapshot(ctx, "web-1", "web-1-warm", nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("snapshot", snap.ID, snap.Type, "of", snap.VMID)

	clone, err := rt.Restore(ctx, "web-2", "web-1-warm", &microvm.RestoreOptions{Paused: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(clone.ID, clone.Status, "restored from", clone.RestoredFrom)

	vm, _ = rt.Destroy(ctx, "web-1")
	fmt.Println(vm.ID, vm.Status)
	_, err = rt.Get(ctx, "web-1")
	fmt.Println(errors.Is(err, microvm.ErrNotFound))

	// The snapshot outlives its VM.
	snaps, _ := rt.Snapshots(ctx, "web-1")
	fmt.Println(len(snaps), "snapshot of web-1 left")

	// Output:
	// web-1 created rootfs
	// web-1 running
	// snapshot web-1-warm full of web-1
	// web-2 paused restored from web-1-warm
	// web-1 destroyed
	// true
	// 1 snapshot of web-1 left
}

// A refused transition is a *microvm.TransitionError.
func Example_invalidTransition() {
	ctx := context.Background()
	rt := memory.New(nil)
	defer rt.Close()

	spec := microvm.Spec{Kernel: "/vmlinux", RootDrive: microvm.Drive{Path: "/rootfs.ext4"}, VCPUs: 1, MemoryMiB: 128}
	rt.Create(ctx, "db-1", spec)

	_, err := rt.Pause(ctx, "db-1")
	var te *microvm.TransitionError
	if errors.As(err, &te) {
		fmt.Println(te.From, te.Op, errors.Is(err, microvm.ErrInvalidTransition))
	}
	fmt.Println(err)

	// Output:
	// created pause true
	// cannot pause vm "db-1": it is created, not running
}

// Crash lets a test exercise failure handling.
func ExampleRuntime_Crash() {
	ctx := context.Background()
	rt := memory.New(&memory.Options{Clock: exampleClock()})
	defer rt.Close()

	spec := microvm.Spec{Kernel: "/vmlinux", RootDrive: microvm.Drive{Path: "/rootfs.ext4"}, VCPUs: 1, MemoryMiB: 128}
	rt.Create(ctx, "job-1", spec)
	rt.Start(ctx, "job-1")

	rt.Crash("job-1", "guest kernel panic")
	vm, _ := rt.Get(ctx, "job-1")
	fmt.Println(vm.Status, vm.LastError)

	vm, _ = rt.Start(ctx, "job-1") // a failed VM boots again
	fmt.Println(vm.Status)

	lines, _ := rt.Logs(ctx, "job-1", 0)
	for _, l := range lines {
		fmt.Println(l)
	}

	// Output:
	// failed guest kernel panic
	// running
	// 2026-11-25T17:00:00Z created
	// 2026-11-25T17:00:01Z started
	// 2026-11-25T17:00:02Z failed: guest kernel panic
	// 2026-11-25T17:00:03Z started
}

// Diff snapshots need dirty-page tracking and apply to the VM's newest
// snapshot by default.
func ExampleRuntime_Snapshot_diff() {
	ctx := context.Background()
	rt := memory.New(nil)
	defer rt.Close()

	spec := microvm.Spec{
		Kernel:          "/vmlinux",
		RootDrive:       microvm.Drive{Path: "/rootfs.ext4"},
		VCPUs:           1,
		MemoryMiB:       128,
		TrackDirtyPages: true,
	}
	rt.Create(ctx, "ci-1", spec)
	rt.Start(ctx, "ci-1")

	rt.Snapshot(ctx, "ci-1", "base", nil)
	d, _ := rt.Snapshot(ctx, "ci-1", "step-1", &microvm.SnapshotOptions{Type: microvm.SnapshotDiff})
	fmt.Println(d.ID, d.Type, "on", d.Parent)

	err := rt.DeleteSnapshot(ctx, "base", nil)
	fmt.Println(errors.Is(err, microvm.ErrSnapshotInUse))

	// Output:
	// step-1 diff on base
	// true
}
