package firecracker_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
)

// Example boots a VM, snapshots it and restores a clone. It needs a
// firecracker binary, a kernel and a root file system, so it is compiled
// but not run.
func Example() {
	ctx := context.Background()
	rt, err := firecracker.Open(ctx, firecracker.Config{
		StateDir:       "/var/lib/mvm",
		FirecrackerBin: "/usr/local/bin/firecracker",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer rt.Close() // the VMs keep running; a later runtime adopts them

	spec := microvm.Spec{
		Kernel:    "/var/lib/mvm/images/vmlinux",
		RootDrive: microvm.Drive{Path: "/var/lib/mvm/images/rootfs.ext4", ReadOnly: true},
		VCPUs:     2,
		MemoryMiB: 256,
		Vsock:     &microvm.Vsock{}, // socket in the VM's directory
	}
	if _, err := rt.Create(ctx, "web-1", spec); err != nil {
		var oe *microvm.OpError
		if errors.As(err, &oe) {
			for _, line := range oe.Detail { // what firecracker said last
				log.Println(line)
			}
		}
		log.Fatal(err)
	}
	vm, err := rt.Start(ctx, "web-1")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(vm.Status, vm.Backend.PID, vm.Backend.VsockPath)

	if _, err := rt.Snapshot(ctx, "web-1", "web-golden", nil); err != nil {
		log.Fatal(err)
	}
	clone, err := rt.Restore(ctx, "web-2", "web-golden", &microvm.RestoreOptions{
		MemoryBackend: microvm.MemoryBackendUffd, // pages served on demand
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(clone.ID, clone.Status, clone.RestoredFrom)

	if _, err := rt.Stop(ctx, "web-1", &microvm.StopOptions{Timeout: 5 * time.Second}); err != nil {
		log.Fatal(err)
	}
	lines, _ := rt.Logs(ctx, "web-1", 20)
	for _, l := range lines {
		fmt.Println(l)
	}
}
