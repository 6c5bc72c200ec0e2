package firecracker_test

import (
	"os"
	"strconv"
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
	conformance.Run(t, harness(bin, spec, 4))
}
