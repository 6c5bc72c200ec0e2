package firecracker_test

import (
	"context"
	"errors"
	"testing"

	microvm "github.com/mvm-dev/microvm"
)

// TestJailedRename: a jailed VM with a live process (its chroot, cgroups
// and uid lease are named after its id, and the next Open's sweep would
// end it under a new id) is not renamed; once stopped (it has no jail
// then) it is, and its next start is jailed under the new id, which the
// next Open keeps.
func TestJailedRename(t *testing.T) {
	p := jailPairs(t)[1]
	bin, extra := jailedStandin(t)
	jc := jailConfig(t, p.jailer)
	jc.ExtraFiles, jc.SkipVersionCheck = extra, true
	state := t.TempDir()
	rt := openJailed(t, state, bin, jc)
	ctx := context.Background()
	vm, err := rt.Create(ctx, "a", testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	if vm.Backend.Jail == nil {
		t.Fatal("the VM is not jailed")
	}
	if _, err := rt.Rename(ctx, "a", "b"); !errors.Is(err, microvm.ErrUnsupported) {
		t.Fatalf("Rename of a jailed VM with a process: %v, want ErrUnsupported", err)
	}
	if _, err := rt.Start(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Pause(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Rename(ctx, "a", "b"); !errors.Is(err, microvm.ErrUnsupported) {
		t.Fatalf("Rename of a paused jailed VM: %v, want ErrUnsupported", err)
	}
	if _, err := rt.Stop(ctx, "a", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Rename(ctx, "a", "b"); err != nil {
		t.Fatalf("Rename of a stopped jailed VM: %v", err)
	}
	if vm, err = rt.Start(ctx, "b"); err != nil || vm.Backend.Jail == nil {
		t.Fatalf("Start(b): %v, jail %+v", err, vm.Backend.Jail)
	}
	// The next runtime's Open sweeps the jails no record names: b's is
	// named, and b runs on.
	rt.Close()
	rt = openJailed(t, state, bin, jc)
	if got, err := rt.Get(ctx, "b"); err != nil || got.Status != microvm.StatusRunning || got.Backend.PID != vm.Backend.PID {
		t.Fatalf("Get(b) from another runtime: %s pid %d, %v", got.Status, got.Backend.PID, err)
	}
	if _, err := rt.Destroy(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	checkNoJailLeft(t, state)
}
