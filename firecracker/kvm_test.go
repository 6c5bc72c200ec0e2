package firecracker_test

import (
	"context"
	"os"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/conformance"
)

// TestKVMConformance runs the conformance suite against a real
// firecracker; see the package documentation for how to enable it.
func TestKVMConformance(t *testing.T) {
	bin, kernel, rootfs := os.Getenv("MVM_FIRECRACKER_BIN"), os.Getenv("MVM_KERNEL"), os.Getenv("MVM_ROOTFS")
	if unix.Access("/dev/kvm", unix.R_OK|unix.W_OK) != nil || bin == "" || kernel == "" || rootfs == "" {
		t.Skip("real-KVM test: needs read-write /dev/kvm and MVM_FIRECRACKER_BIN, MVM_KERNEL, MVM_ROOTFS")
	}
	mem := 128
	if v, err := strconv.Atoi(os.Getenv("MVM_KVM_MEMORY_MIB")); err == nil && v > 0 {
		mem = v
	}
	spec := microvm.Spec{
		Kernel:    kernel,
		RootDrive: microvm.Drive{Path: rootfs, ReadOnly: true},
		VCPUs:     1,
		MemoryMiB: mem,
	}
	states := map[microvm.Runtime]string{}
	conformance.Run(t, conformance.Harness{
		New: func(t *testing.T) microvm.Runtime {
			state := t.TempDir()
			rt := open(t, state, bin)
			states[rt] = state
			return rt
		},
		Spec: func(t *testing.T) microvm.Spec { return spec.Clone() },
		Reopen: func(t *testing.T, rt microvm.Runtime) microvm.Runtime {
			state := states[rt]
			if err := rt.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			nrt := open(t, state, bin)
			states[nrt] = state
			return nrt
		},
		Crash: func(t *testing.T, rt microvm.Runtime, id string) {
			vm, err := rt.Get(context.Background(), id)
			if err != nil || vm.Backend.PID == 0 {
				t.Fatalf("Crash: Get(%q): pid %d, %v", id, vm.Backend.PID, err)
			}
			syscall.Kill(vm.Backend.PID, syscall.SIGKILL)
		},
		Parallelism: 4,
	})
}
