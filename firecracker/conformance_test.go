package firecracker_test

import (
	"context"
	"syscall"
	"testing"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/conformance"
	"github.com/mvm-dev/microvm/fcapi"
	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/internal/realfc"
)

// TestConformance runs the conformance suite against the stand-in, in
// the dialects of Firecracker v1.0 and of the newest API.
func TestConformance(t *testing.T) {
	for _, api := range []string{"v1.0", "latest"} {
		t.Run(api, func(t *testing.T) {
			conformance.Run(t, harness(standin(t, "FCSTANDIN_API="+api), testSpec(t), 8))
		})
	}
}

// TestConformanceReal runs the conformance suite on the oldest and the
// newest real Firecracker build. Without /dev/kvm they cannot boot
// (Harness.NoBoot): the suite checks everything up to InstanceStart and
// that Start fails cleanly. With KVM the KVM suite runs it with a bootable
// guest instead.
func TestConformanceReal(t *testing.T) {
	if realfc.KVM() {
		t.Skip("/dev/kvm works here: the KVM suite runs the conformance suite with a bootable guest")
	}
	for _, b := range realfc.Ends(t) {
		t.Run(b.Name(), func(t *testing.T) {
			t.Parallel()
			h := harness(b.Path, realSpec(t), 8)
			h.NoBoot = true
			conformance.Run(t, h)
		})
	}
}

// harness is the conformance harness of a Firecracker runtime running bin
// with spec: every runtime over a fresh state directory, Reopen = Close +
// Open over the same directory, Crash = SIGKILL of the VM's firecracker.
func harness(bin string, spec microvm.Spec, parallelism int) conformance.Harness {
	states := map[microvm.Runtime]string{}
	return conformance.Harness{
		New: func(t *testing.T) microvm.Runtime {
			state := t.TempDir()
			rt := open(t, state, bin)
			states[rt] = state
			return rt
		},
		// The suite makes many VMs of one spec, live at once: their root
		// drive is shared, so read-only (a writable image belongs to one
		// live VM).
		Spec: func(t *testing.T) microvm.Spec {
			s := spec.Clone()
			s.RootDrive.ReadOnly = true
			return s
		},
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
			if err != nil {
				t.Fatalf("Crash: Get(%q): %v", id, err)
			}
			if vm.Backend.PID == 0 {
				t.Fatalf("Crash: VM %q (%s) has no process", id, vm.Status)
			}
			if err := syscall.Kill(vm.Backend.PID, syscall.SIGKILL); err != nil {
				t.Fatalf("Crash: kill %d: %v", vm.Backend.PID, err)
			}
		},
		// The guest's own shutdown: Ctrl-Alt-Del sent straight to the API,
		// behind the runtime's back; the guest resets and firecracker exits
		// with status 0.
		Shutdown: func(t *testing.T, rt microvm.Runtime, id string) {
			vm, err := rt.Get(context.Background(), id)
			if err != nil {
				t.Fatalf("Shutdown: Get(%q): %v", id, err)
			}
			c := fcapi.New(vm.Backend.APISocket, nil)
			defer c.Close()
			if err := c.SendCtrlAltDel(t.Context()); err != nil {
				t.Fatalf("Shutdown: SendCtrlAltDel: %v", err)
			}
		},
		Parallelism: parallelism,
	}
}

var _ microvm.Runtime = (*firecracker.Runtime)(nil)
