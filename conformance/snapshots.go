package conformance

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mvm-dev/microvm"
)

// ---------------------------------------------------------------------------
// Snapshots

func (s *suite) testSnapshots(t *testing.T) {
	s.needBoot(t)
	e := s.env(t)

	t.Run("RunningAndPaused", func(t *testing.T) {
		for _, st := range []microvm.Status{microvm.StatusRunning, microvm.StatusPaused} {
			id := "s-" + string(st)
			vm := e.make(t, id, st)
			before := time.Now().Add(-time.Minute)
			snap := e.snapshot(t, id, id+"-snap")
			if snap.ID != id+"-snap" || snap.VMID != id || snap.Type != microvm.SnapshotFull || snap.Parent != "" {
				t.Errorf("Snapshot of %s VM returned {ID: %q, VMID: %q, Type: %q, Parent: %q}, want {%q, %q, full, none}",
					st, snap.ID, snap.VMID, snap.Type, snap.Parent, id+"-snap", id)
			}
			if snap.CreatedAt.Before(before) {
				t.Errorf("Snapshot.CreatedAt = %v, want the current time", snap.CreatedAt)
			}
			wantSpec(t, "snapshot spec (want the VM's)", snap.Spec, vm.Spec)
			e.wantStatus(t, id, st)
			if got := e.get(t, id).Snapshots; !slices.Equal(got, []string{id + "-snap"}) {
				t.Errorf("VM.Snapshots = %q, want [%q]", got, id+"-snap")
			}
		}
	})

	t.Run("DuplicateID", func(t *testing.T) {
		e.make(t, "s-dup-a", microvm.StatusRunning)
		e.make(t, "s-dup-b", microvm.StatusPaused)
		e.snapshot(t, "s-dup-a", "s-dup")
		_, err := e.rt.Snapshot(t.Context(), "s-dup-a", "s-dup", nil)
		wantErr(t, "second Snapshot with the same id, same VM", err, microvm.ErrSnapshotExists)
		_, err = e.rt.Snapshot(t.Context(), "s-dup-b", "s-dup", nil)
		wantErr(t, "second Snapshot with the same id, other VM", err, microvm.ErrSnapshotExists)
		e.wantStatus(t, "s-dup-a", microvm.StatusRunning)
		e.wantStatus(t, "s-dup-b", microvm.StatusPaused)
		snaps, err := e.rt.Snapshots(t.Context(), "")
		if err != nil {
			t.Fatalf("Snapshots: %v", err)
		}
		for _, sn := range snaps {
			if sn.ID == "s-dup" && sn.VMID != "s-dup-a" {
				t.Errorf("snapshot %q now belongs to VM %q, want %q", sn.ID, sn.VMID, "s-dup-a")
			}
		}
		if got := e.snapshotIDs(t, "s-dup-b"); len(got) != 0 {
			t.Errorf("Snapshots(%q) = %q, want none", "s-dup-b", got)
		}
	})

	t.Run("OldestFirst", func(t *testing.T) {
		e.make(t, "s-ord-a", microvm.StatusRunning)
		e.make(t, "s-ord-b", microvm.StatusPaused)
		order := []struct{ vm, snap string }{
			{"s-ord-a", "s-ord-1"}, {"s-ord-b", "s-ord-2"}, {"s-ord-a", "s-ord-3"}, {"s-ord-b", "s-ord-4"}, {"s-ord-a", "s-ord-5"},
		}
		for _, o := range order {
			e.snapshot(t, o.vm, o.snap)
		}
		want := map[string][]string{
			"s-ord-a": {"s-ord-1", "s-ord-3", "s-ord-5"},
			"s-ord-b": {"s-ord-2", "s-ord-4"},
		}
		for vm, w := range want {
			if got := e.snapshotIDs(t, vm); !slices.Equal(got, w) {
				t.Errorf("Snapshots(%q) = %q, want %q (oldest first)", vm, got, w)
			}
			if got := e.get(t, vm).Snapshots; !slices.Equal(got, w) {
				t.Errorf("Get(%q).Snapshots = %q, want %q (oldest first)", vm, got, w)
			}
		}
		var all []string
		for _, id := range e.snapshotIDs(t, "") {
			if strings.HasPrefix(id, "s-ord-") {
				all = append(all, id)
			}
		}
		if w := []string{"s-ord-1", "s-ord-2", "s-ord-3", "s-ord-4", "s-ord-5"}; !slices.Equal(all, w) {
			t.Errorf(`Snapshots("") lists ours as %q, want %q (oldest first)`, all, w)
		}
	})

	t.Run("CopiesOut", func(t *testing.T) {
		spec := richSpec(e.spec)
		if _, err := e.rt.Create(t.Context(), "s-copy", spec); err != nil {
			t.Fatalf("Create: %v", err)
		}
		if _, err := e.rt.Start(t.Context(), "s-copy"); err != nil {
			t.Fatalf("Start: %v", err)
		}
		snap := e.snapshot(t, "s-copy", "s-copy-snap")
		mutateSpec(&snap.Spec)
		snaps, err := e.rt.Snapshots(t.Context(), "s-copy")
		if err != nil || len(snaps) != 1 {
			t.Fatalf("Snapshots: %d snapshots, %v; want 1", len(snaps), err)
		}
		mutateSpec(&snaps[0].Spec)
		snaps, _ = e.rt.Snapshots(t.Context(), "s-copy")
		if len(snaps) == 1 {
			wantSpec(t, "snapshot spec after changing returned copies", snaps[0].Spec, spec.WithDefaults())
		}
	})

	t.Run("SurviveDestroy", func(t *testing.T) {
		e.make(t, "s-surv", microvm.StatusRunning)
		e.snapshot(t, "s-surv", "s-surv-snap")
		if _, err := e.rt.Destroy(t.Context(), "s-surv"); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		if got := e.snapshotIDs(t, "s-surv"); !slices.Equal(got, []string{"s-surv-snap"}) {
			t.Errorf("Snapshots(%q) after Destroy = %q, want [%q]", "s-surv", got, "s-surv-snap")
		}
		vm, err := e.rt.Restore(t.Context(), "s-surv-r", "s-surv-snap", nil)
		if err != nil {
			t.Fatalf("Restore from a snapshot of a destroyed VM: %v", err)
		}
		if vm.Status != microvm.StatusRunning {
			t.Errorf("restored VM is %s, want running", vm.Status)
		}
	})

	t.Run("Delete", func(t *testing.T) {
		e.make(t, "s-del", microvm.StatusRunning)
		e.snapshot(t, "s-del", "s-del-keep")
		e.snapshot(t, "s-del", "s-del-snap")
		if err := e.rt.DeleteSnapshot(t.Context(), "s-del-snap", nil); err != nil {
			t.Fatalf("DeleteSnapshot: %v", err)
		}
		if got := e.snapshotIDs(t, "s-del"); !slices.Equal(got, []string{"s-del-keep"}) {
			t.Errorf("Snapshots(%q) after DeleteSnapshot = %q, want [%q]", "s-del", got, "s-del-keep")
		}
		if got := e.snapshotIDs(t, ""); slices.Contains(got, "s-del-snap") {
			t.Errorf(`Snapshots("") still lists deleted snapshot %q`, "s-del-snap")
		}
		if got := e.get(t, "s-del").Snapshots; !slices.Equal(got, []string{"s-del-keep"}) {
			t.Errorf("VM.Snapshots after DeleteSnapshot = %q, want [%q]", got, "s-del-keep")
		}
		_, err := e.rt.Restore(t.Context(), "s-del-r", "s-del-snap", nil)
		wantErr(t, "Restore from a deleted snapshot", err, microvm.ErrSnapshotNotFound)
		e.wantGone(t, "s-del-r")
		err = e.rt.DeleteSnapshot(t.Context(), "s-del-snap", nil)
		wantErr(t, "second DeleteSnapshot", err, microvm.ErrSnapshotNotFound)
		e.wantStatus(t, "s-del", microvm.StatusRunning)
	})

	t.Run("DeleteWhileRestored", func(t *testing.T) {
		e.make(t, "s-pin", microvm.StatusRunning)
		e.snapshot(t, "s-pin", "s-pin-snap")
		if _, err := e.rt.Restore(t.Context(), "s-pin-r", "s-pin-snap", nil); err != nil {
			t.Fatalf("Restore: %v", err)
		}
		// A runtime whose restored VMs read the snapshot's memory may
		// refuse; Force must then delete it.
		err := e.rt.DeleteSnapshot(t.Context(), "s-pin-snap", nil)
		switch {
		case err == nil:
		case errors.Is(err, microvm.ErrSnapshotInUse):
			if got := e.snapshotIDs(t, ""); !slices.Contains(got, "s-pin-snap") {
				t.Errorf("DeleteSnapshot refused with ErrSnapshotInUse but the snapshot is gone")
			}
			if err := e.rt.DeleteSnapshot(t.Context(), "s-pin-snap", &microvm.DeleteSnapshotOptions{Force: true}); err != nil {
				t.Fatalf("DeleteSnapshot with Force: %v", err)
			}
		default:
			t.Fatalf("DeleteSnapshot of a snapshot a VM was restored from: %v, want nil or ErrSnapshotInUse", err)
		}
		if got := e.snapshotIDs(t, ""); slices.Contains(got, "s-pin-snap") {
			t.Errorf("Snapshots still lists deleted snapshot %q", "s-pin-snap")
		}
		if vm := e.get(t, "s-pin-r"); vm.RestoredFrom != "s-pin-snap" {
			t.Errorf("restored VM's RestoredFrom = %q after its snapshot was deleted, want %q", vm.RestoredFrom, "s-pin-snap")
		}
		if _, err := e.rt.Destroy(t.Context(), "s-pin-r"); err != nil {
			t.Errorf("Destroy of a VM whose snapshot was deleted: %v", err)
		}
	})
}

// ---------------------------------------------------------------------------
// Restore

func (s *suite) testRestore(t *testing.T) {
	s.needBoot(t)
	e := s.env(t)
	spec := e.spec.Clone()
	spec.Labels = map[string]string{"role": "template"}
	if _, err := e.rt.Create(t.Context(), "r-src", spec); err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := e.rt.Start(t.Context(), "r-src"); err != nil {
		t.Fatalf("Start: %v", err)
	}
	snap := e.snapshot(t, "r-src", "r-snap")

	check := func(t *testing.T, vm microvm.VM, id string, st microvm.Status) {
		t.Helper()
		if vm.ID != id || vm.Status != st || vm.RestoredFrom != "r-snap" {
			t.Errorf("restored VM: {ID: %q, Status: %s, RestoredFrom: %q}, want {%q, %s, %q}",
				vm.ID, vm.Status, vm.RestoredFrom, id, st, "r-snap")
		}
		if len(vm.Snapshots) != 0 {
			t.Errorf("restored VM %q lists snapshots %q, want none of its own", id, vm.Snapshots)
		}
	}

	t.Run("Running", func(t *testing.T) {
		vm, err := e.rt.Restore(t.Context(), "r-run", "r-snap", nil)
		if err != nil {
			t.Fatalf("Restore: %v", err)
		}
		check(t, vm, "r-run", microvm.StatusRunning)
		wantSpec(t, "restored VM's spec (want the snapshot's)", vm.Spec, snap.Spec)
		got := e.get(t, "r-run")
		check(t, got, "r-run", microvm.StatusRunning)
		wantSpec(t, "restored VM's spec from Get", got.Spec, snap.Spec)
		if _, err := e.rt.Pause(t.Context(), "r-run"); err != nil {
			t.Errorf("Pause of the restored VM: %v", err)
		}
		e.wantStatus(t, "r-src", microvm.StatusRunning)
	})

	t.Run("Paused", func(t *testing.T) {
		vm, err := e.rt.Restore(t.Context(), "r-paused", "r-snap", &microvm.RestoreOptions{Paused: true})
		if err != nil {
			t.Fatalf("Restore: %v", err)
		}
		check(t, vm, "r-paused", microvm.StatusPaused)
		check(t, e.get(t, "r-paused"), "r-paused", microvm.StatusPaused)
		if _, err := e.rt.Resume(t.Context(), "r-paused"); err != nil {
			t.Errorf("Resume of the VM restored paused: %v", err)
		}
	})

	t.Run("Labels", func(t *testing.T) {
		labels := map[string]string{"role": "clone", "n": "1"}
		vm, err := e.rt.Restore(t.Context(), "r-labels", "r-snap", &microvm.RestoreOptions{Labels: labels})
		if err != nil {
			t.Fatalf("Restore: %v", err)
		}
		labels["n"] = "changed by the caller"
		want := snap.Spec.Clone()
		want.Labels = map[string]string{"role": "clone", "n": "1"}
		wantSpec(t, "restored VM's spec with RestoreOptions.Labels", vm.Spec, want)
		wantSpec(t, "restored VM's spec with RestoreOptions.Labels, from Get", e.get(t, "r-labels").Spec, want)
	})

	t.Run("ExistingID", func(t *testing.T) {
		e.create(t, "r-taken")
		_, err := e.rt.Restore(t.Context(), "r-taken", "r-snap", nil)
		wantErr(t, "Restore into an existing id", err, microvm.ErrAlreadyExists)
		vm := e.get(t, "r-taken")
		if vm.Status != microvm.StatusCreated || vm.RestoredFrom != "" {
			t.Errorf("existing VM after a refused Restore: status %s, RestoredFrom %q; want created, none", vm.Status, vm.RestoredFrom)
		}
		_, err = e.rt.Restore(t.Context(), "r-src", "r-snap", nil)
		wantErr(t, "Restore into the snapshot's own VM", err, microvm.ErrAlreadyExists)
	})

	t.Run("UnknownSnapshot", func(t *testing.T) {
		_, err := e.rt.Restore(t.Context(), "r-unknown", "r-no-such-snap", nil)
		wantErr(t, "Restore from an unknown snapshot", err, microvm.ErrSnapshotNotFound)
		e.wantGone(t, "r-unknown")
	})

	t.Run("Concurrent", func(t *testing.T) {
		n := manyVMs / 2
		ids := make([]string, n)
		for i := range ids {
			ids[i] = fmt.Sprintf("r-many-%02d", i)
		}
		s.parallel(n, func(i int) {
			vm, err := e.rt.Restore(t.Context(), ids[i], "r-snap", nil)
			if err != nil {
				t.Errorf("Restore(%q): %v", ids[i], err)
				return
			}
			if vm.Status != microvm.StatusRunning || vm.RestoredFrom != "r-snap" {
				t.Errorf("Restore(%q): status %s, RestoredFrom %q; want running, r-snap", ids[i], vm.Status, vm.RestoredFrom)
			}
		})
		listed := e.listIDs(t)
		for _, id := range ids {
			if !slices.Contains(listed, id) {
				t.Errorf("List does not show restored VM %q", id)
			}
		}
		s.parallel(n, func(i int) {
			if _, err := e.rt.Destroy(t.Context(), ids[i]); err != nil {
				t.Errorf("Destroy(%q): %v", ids[i], err)
			}
		})
	})
}
