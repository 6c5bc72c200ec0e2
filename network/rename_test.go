//go:build linux

package network

import (
	"errors"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mvm-dev/microvm/network/internal/nstest"
)

// nsIno returns the inode of the namespace pinned at path.
func nsIno(t testing.TB, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Ino
}

// TestRename: a VM's network moves to another id with its kernel objects
// untouched (same namespace, same HostIP, the guest's traffic still under
// its policy); afterwards the policy is changed and the network removed
// by the new id, the old id has nothing and gets a network of its own.
func TestRename(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	up := nstest.Serve(t, h.env.Up, upstreamIPs...)
	ctx := ctxT(t)
	s := h.setup("pool-1", Options{Policy: Policy{DenyAll: true}, TAPUID: 1234, TAPGID: 1234})
	g := h.guest(s)
	ino := nsIno(t, s.NetNSPath)
	mustNotReach(t, g, at(nstest.UpstreamIP), up)

	got, err := h.m.Rename(ctx, "pool-1", "alice")
	if err != nil {
		t.Fatalf("Rename: %v", err)
	}
	want := *s
	want.VMID = "alice"
	if *got != want {
		t.Fatalf("renamed slot %+v, want %+v", got, want)
	}
	if nsIno(t, got.NetNSPath) != ino {
		t.Error("the namespace was replaced")
	}
	if sl, err := h.m.Slot("alice"); err != nil || *sl != want {
		t.Fatalf("Slot(alice): %+v, %v", sl, err)
	}
	if _, err := h.m.Slot("pool-1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Slot(old id): %v, want ErrNotFound", err)
	}
	if err := h.m.SetPolicy(ctx, "pool-1", Policy{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetPolicy(old id): %v, want ErrNotFound", err)
	}
	if ids, _ := h.store.List(kindVM); !slices.Equal(ids, []string{"alice"}) {
		t.Fatalf("vm records %v, want [alice]", ids)
	}
	var vr vmRecord
	if err := h.store.Get(kindVM, "alice", &vr); err != nil || !vr.Policy.DenyAll || vr.TAPUID != 1234 {
		t.Fatalf("record of alice %+v, %v: the options did not move", vr, err)
	}
	mustNotReach(t, g, at(nstest.UpstreamIP), up) // the policy still applies
	if err := h.m.SetPolicy(ctx, "alice", Policy{}); err != nil {
		t.Fatalf("SetPolicy(new id): %v", err)
	}
	mustReach(t, g, at(nstest.UpstreamIP), nstest.HostEgressIP)
	// Setup of the new id with its options is the same slot.
	if again := h.setup("alice", Options{TAPUID: 1234, TAPGID: 1234}); *again != want {
		t.Fatalf("Setup(alice) after rename: %+v", again)
	}

	// The old id is free: a network of its own.
	other := h.setup("pool-1", Options{})
	if other.Name == s.Name {
		t.Fatal("the old id got the renamed slot")
	}
	// Refusals.
	if _, err := h.m.Rename(ctx, "alice", "pool-1"); !errors.Is(err, ErrExists) {
		t.Errorf("Rename onto an id with a network: %v, want ErrExists", err)
	}
	if _, err := h.m.Rename(ctx, "nobody", "bob"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Rename of an id without a network: %v, want ErrNotFound", err)
	}
	var fe *FieldError
	if _, err := h.m.Rename(ctx, "alice", "bad/id"); !errors.Is(err, ErrInvalidVMID) || !errors.As(err, &fe) || fe.Field != "newID" {
		t.Errorf("Rename to a bad id: %v, want a FieldError of newID matching ErrInvalidVMID", err)
	}
	if _, err := h.m.Rename(ctx, "alice", "alice"); !errors.Is(err, ErrInvalidVMID) {
		t.Errorf("Rename to the same id: %v, want ErrInvalidVMID", err)
	}
	h.teardown("alice")
	h.teardown("pool-1")
	h.checkNoSlots()
}

// TestRenameCrash: a Rename whose process dies at any step leaves the slot
// with exactly one VM (the old id before the commit, the new one after);
// a fresh Manager's Cleanup keeps that slot and removes the stale record,
// and a second Rename finishes the job.
func TestRenameCrash(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	ctx := ctxT(t)
	for _, c := range []struct {
		step      string
		committed bool
	}{
		{"rename-record", false},
		{"rename-commit", false},
		{"rename-old", true},
	} {
		m1 := h.newManager(nil)
		s, err := m1.Setup(ctx, "a", Options{Policy: Policy{DenyAll: true}})
		if err != nil {
			t.Fatal(err)
		}
		m1.failHook = func(step string) error {
			if step == c.step {
				return errCrash
			}
			return nil
		}
		if _, err := m1.Rename(ctx, "a", "b"); !errors.Is(err, errCrash) {
			t.Fatalf("step %s: Rename: %v", c.step, err)
		}
		m1.simulateCrash() // the slot's owner is now dead

		holder, free := "a", "b"
		if c.committed {
			holder, free = "b", "a"
		}
		if got, err := h.m.Slot(holder); err != nil || got.Name != s.Name {
			t.Fatalf("step %s: Slot(%s): %+v, %v", c.step, holder, got, err)
		}
		if _, err := h.m.Slot(free); !errors.Is(err, ErrNotFound) {
			t.Fatalf("step %s: Slot(%s): %v, want ErrNotFound", c.step, free, err)
		}
		// Both ids are kept (as the runtime's records would say during
		// its own recovery): the slot stays, the stale record goes.
		rep, err := h.m.Cleanup(ctx, func(string) bool { return true })
		if err != nil || len(rep.Removed)+len(rep.RemovedVMs)+len(rep.Repaired) > 0 {
			t.Fatalf("step %s: Cleanup: %+v, %v", c.step, rep, err)
		}
		if ids, _ := h.store.List(kindVM); !slices.Equal(ids, []string{holder}) {
			t.Fatalf("step %s: vm records %v, want [%s]", c.step, ids, holder)
		}
		// Renaming again ends with the network under b either way.
		if !c.committed {
			if _, err := h.m.Rename(ctx, "a", "b"); err != nil {
				t.Fatalf("step %s: Rename again: %v", c.step, err)
			}
		}
		if _, err := h.m.Rename(ctx, "a", "b"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("step %s: Rename once done: %v, want ErrNotFound", c.step, err)
		}
		var vr vmRecord
		if err := h.store.Get(kindVM, "b", &vr); err != nil || !vr.Policy.DenyAll {
			t.Fatalf("step %s: record of b %+v, %v", c.step, vr, err)
		}
		h.teardown("b")
		h.checkNoSlots()
	}
}

// TestCleanupKeepsSlotWithStaleRecordBeside: a stale vm record naming the
// same slot as its holder's (listed after it) does not make Cleanup take
// the holder's lease for an unheld one.
func TestCleanupKeepsSlotWithStaleRecordBeside(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	ctx := ctxT(t)
	m1 := h.newManager(nil)
	s, err := m1.Setup(ctx, "a", Options{})
	if err != nil {
		t.Fatal(err)
	}
	m1.simulateCrash() // the lease's owner is dead: only the record holds it
	if err := h.store.Put(kindVM, "z", &vmRecord{Slot: s.Name, Token: "0000000000000000"}); err != nil {
		t.Fatal(err)
	}
	rep, err := h.m.Cleanup(ctx, func(string) bool { return true })
	if err != nil || len(rep.Removed) > 0 || !slices.Equal(rep.StaleRecords, []string{"z"}) {
		t.Fatalf("Cleanup: %+v, %v; want only z's stale record removed", rep, err)
	}
	if got, err := h.m.Slot("a"); err != nil || got.Name != s.Name {
		t.Fatalf("Slot(a): %+v, %v", got, err)
	}
	h.teardown("a")
}
