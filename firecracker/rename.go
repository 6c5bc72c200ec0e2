package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/internal/registry"
)

var _ microvm.Renamer = (*Runtime)(nil)

// Rename gives the VM oldID the id newID (see [microvm.Renamer]): a
// created, stopped or paused VM keeps its firecracker process (its API
// socket, console and vsock socket move with the VM directory, which the
// process works in), its status and its spec. A VM with a managed network
// keeps it: the Network moves it to the new id ([NetworkRenamer]; a
// Network without it makes such a rename fail with
// [microvm.ErrUnsupported]), with its namespace, TAP, address and egress
// policy, so SetEgressPolicy and Destroy of the new id act on it and the
// old id is free for a VM with a network of its own. Errors are
// *microvm.OpError of op "rename" and the old id.
//
// A jailed VM with a process (created or paused) is refused with
// [microvm.ErrUnsupported]: its jail is named after its id; once stopped
// it has none, and its next start is jailed under the new id.
//
// Snapshots taken of the VM are not touched: a snapshot is an artifact of
// its own, and its VMID says which VM it was taken of, under the id the
// VM had then (Snapshots lists them under the old id, and under "").
//
// It is crash-safe: both records are written first (the old one marked
// with the new id, the new one with the old), then the network is moved,
// then the directory is renamed, which commits, then the old record is
// removed. Recovery of either record (see recoverRename) finishes a
// rename whose directory was renamed and undoes one whose directory was
// not, the network following the directory.
//
// A committed rename records one renamed event ([microvm.EventRenamed]),
// when the new record's mark is cleared: by Rename, or by the recovery
// that finishes an interrupted one. An undone rename records none.
func (r *Runtime) Rename(ctx context.Context, oldID, newID string) (microvm.VM, error) {
	vm, err := r.rename(ctx, oldID, newID)
	if err != nil {
		var oe *microvm.OpError
		if !errors.As(err, &oe) || oe.Op != "rename" {
			err = &microvm.OpError{Op: "rename", ID: oldID, Err: err}
		}
	}
	return vm, err
}

func (r *Runtime) rename(ctx context.Context, oldID, newID string) (microvm.VM, error) {
	if err := microvm.ValidateID(oldID); err != nil {
		return microvm.VM{}, err
	}
	if err := microvm.ValidateID(newID); err != nil {
		return microvm.VM{}, fmt.Errorf("new id: %w", err)
	}
	if oldID == newID {
		return microvm.VM{}, invalidArg("the new id is the VM's id")
	}
	if err := r.begin(); err != nil {
		return microvm.VM{}, err
	}
	defer r.end()
	if err := ctx.Err(); err != nil {
		return microvm.VM{}, err
	}
	// Both locks, in id order so that two renames cannot deadlock.
	first, second := oldID, newID
	if second < first {
		first, second = second, first
	}
	unlock1, err := r.lockVM(ctx, first)
	if err != nil {
		return microvm.VM{}, err
	}
	defer unlock1()
	unlock2, err := r.lockVM(ctx, second)
	if err != nil {
		return microvm.VM{}, err
	}
	defer unlock2()

	rec, err := r.load(oldID)
	if err == nil {
		rec, err = r.adoptLocked(ctx, rec, true)
	}
	if err != nil {
		return microvm.VM{}, err
	}
	if err := microvm.CheckRename(oldID, rec.Status); err != nil {
		return microvm.VM{}, err
	}
	if rec.Jail != nil {
		// Its chroot, cgroups and uid lease are named after the id, and
		// the jailer's process runs in them: Open's sweep of jails no
		// record names would end it. A stopped VM has no jail.
		return microvm.VM{}, fmt.Errorf("vm %q runs jailed (its chroot, cgroups and uid lease are named after its id): stop it first: %w", oldID, microvm.ErrUnsupported)
	}
	if _, err := r.networkRenamer(rec); err != nil {
		return microvm.VM{}, err
	}
	networked := hasNetwork(rec)
	switch err := r.reg.Get(kindVM, newID, nil); {
	case err == nil:
		return microvm.VM{}, fmt.Errorf("vm %q: %w", newID, microvm.ErrAlreadyExists)
	case !errors.Is(err, registry.ErrNotFound):
		return microvm.VM{}, err
	}
	// A directory under the new id without a record is an interrupted
	// Create's: end what runs in it and remove it, as Create would.
	if err := r.sweepOrphan(newID); err != nil {
		return microvm.VM{}, fmt.Errorf("remove leftover directory of %q: %w", newID, err)
	}
	// Likewise a network left under the new id (a VM of that id whose
	// Destroy could not detach it): the VM's network moves there.
	if networked {
		if err := r.cfg.Network.Detach(ctx, newID); err != nil {
			return microvm.VM{}, fmt.Errorf("remove leftover network of %q: %w", newID, err)
		}
	}
	from, to := r.paths(oldID), r.paths(newID)
	// The directory's move is the commit: it must exist.
	if err := mkdirPrivate(from.dir); err != nil {
		return microvm.VM{}, fmt.Errorf("vm directory: %w", err)
	}

	rec.Op, rec.RenameTo = opRename, newID
	if err := r.save(rec); err != nil {
		return microvm.VM{}, err
	}
	undoOld := func() {
		rec.Op, rec.RenameTo = "", ""
		if err := r.save(rec); err != nil {
			r.log.Error("undo rename: record", "vm", oldID, "err", err)
		}
	}
	next := *rec
	next.ID, next.Op, next.RenameTo, next.RenameFrom = newID, opRename, "", oldID
	if next.VsockPath == from.vsock {
		next.VsockPath = to.vsock
	}
	next.Spec, next.ImageLeases = rec.Spec.Clone(), slices.Clone(rec.ImageLeases)
	moveClonePaths(&next.Spec, from.dir, to.dir)
	if err := r.reg.Create(kindVM, newID, &next); err != nil {
		undoOld()
		if errors.Is(err, registry.ErrExists) {
			return microvm.VM{}, fmt.Errorf("vm %q: %w", newID, microvm.ErrAlreadyExists)
		}
		return microvm.VM{}, fmt.Errorf("vm %q: write record: %w", newID, err)
	}
	// Image leases are by id: the new id takes them before the commit,
	// the old one drops them after (a lease left by a crash is released
	// by the next Open, its record being gone).
	if err := r.leaseImages(&next); err != nil {
		if derr := r.reg.Delete(kindVM, newID); derr != nil {
			r.log.Error("undo rename: remove new record", "vm", newID, "err", derr)
		}
		undoOld()
		return microvm.VM{}, err
	}
	// undoNew undoes the above once the network is back under the old
	// id; if it cannot be moved back, both records stay marked and the
	// recovery of either moves it back.
	undoNew := func(cause error) (microvm.VM, error) {
		if networked {
			if err := r.renameNetwork(context.WithoutCancel(ctx), rec, newID, oldID); err != nil {
				r.log.Error("undo rename: move the network back (recovery finishes it)", "vm", oldID, "err", err)
				return microvm.VM{}, errors.Join(cause, err)
			}
		}
		r.releaseImages(next.ImageLeases, newID)
		if derr := r.reg.Delete(kindVM, newID); derr != nil {
			r.log.Error("undo rename: remove new record", "vm", newID, "err", derr)
		}
		undoOld()
		return microvm.VM{}, cause
	}
	if err := renameStep("network"); err != nil {
		return undoNew(err)
	}
	if err := r.renameNetwork(ctx, rec, oldID, newID); err != nil {
		return undoNew(err)
	}
	if err := renameStep("directory"); err != nil {
		return undoNew(err)
	}
	r.unwatch(oldID)
	if err := os.Rename(from.dir, to.dir); err != nil {
		vm, err := undoNew(fmt.Errorf("move vm directory: %w", err))
		if rec.Process != nil { // unwatched above: its process still runs under the old id
			r.adoptLive(ctx, rec, false)
		}
		return vm, err
	}
	// Committed: what is left is bookkeeping that recovery would finish.
	forgetMetrics(metricsState(from))
	renameStep("committed")
	r.releaseImages(next.ImageLeases, oldID)
	if err := r.reg.Delete(kindVM, oldID); err != nil {
		r.log.Error("rename: remove old record (recovery finishes it)", "vm", oldID, "err", err)
	}
	renameStep("old record removed")
	next.Op, next.RenameFrom = "", ""
	if err := r.save(&next); err != nil {
		// Recovery clears it and records the renamed event then.
		r.log.Error("rename: clear the mark of the new record (recovery finishes it)", "vm", newID, "err", err)
	} else {
		r.emitRenamed(&next, oldID)
	}
	if next.Process != nil {
		r.adoptLive(ctx, &next, false)
	}
	r.log.Info("vm renamed", "from", oldID, "to", newID)
	return r.viewOf(&next), nil
}

// renameStepHook, set only by tests, runs at each step of a rename (its
// error fails the step, as a failure there would; a test simulates a
// crash by ending the goroutine).
var renameStepHook func(step string) error

func renameStep(step string) error {
	if renameStepHook == nil {
		return nil
	}
	return renameStepHook(step)
}

// recoverRename finishes or undoes the rename rec is marked with (rec.Op
// is "rename" and nobody holds rec's lock, so the process renaming it
// died). The moved directory decides: where it is, the VM is. It returns
// rec to reconcile further, or nil when the VM is not (any more) under
// rec's id.
//
// A managed network follows the directory: it is moved (see
// NetworkRenamer, idempotent) to the id the VM ends under before either
// record goes, so it is never under an id without a record (which Open's
// network cleanup would remove). When it cannot be moved (e.g. a runtime
// without networking), rec keeps its mark and the error is returned; a
// later runtime with networking finishes the recovery.
func (r *Runtime) recoverRename(ctx context.Context, rec *vmRecord) (*vmRecord, error) {
	other := rec.RenameTo
	if other == "" {
		other = rec.RenameFrom
	}
	if other == "" || microvm.ValidateID(other) != nil {
		rec.Op = ""
		return rec, nil
	}
	// The other record's lock: free unless another runtime is recovering
	// it right now.
	unlock, ok := r.tryLockVM(other)
	if !ok {
		return rec, fmt.Errorf("vm %q: the rename to or from %q is being recovered by another process; retry", rec.ID, other)
	}
	defer unlock()
	here := dirExists(r.paths(rec.ID).dir)
	if hasNetwork(rec) {
		from, to := other, rec.ID
		if !here {
			from, to = rec.ID, other
		}
		if err := r.renameNetwork(ctx, rec, from, to); err != nil {
			return rec, fmt.Errorf("vm %q: recover an interrupted rename: %w", rec.ID, err)
		}
	}
	if here {
		// The VM is under rec's id: a rename from rec not committed, or a
		// rename to rec committed. Remove the other record if it is the
		// pair of this one.
		var orec vmRecord
		if err := r.reg.Get(kindVM, other, &orec); err == nil && orec.Op == opRename && (orec.RenameTo == rec.ID || orec.RenameFrom == rec.ID) {
			if err := r.reg.Delete(kindVM, other); err != nil {
				return rec, err
			}
		}
		from := rec.RenameFrom
		rec.Op, rec.RenameTo, rec.RenameFrom = "", "", ""
		if err := r.save(rec); err != nil {
			return rec, err
		}
		if from != "" {
			// A rename to rec, committed: finished here, so recorded here
			// (exactly once: the mark that brought us here is cleared).
			r.emitRenamed(rec, from)
		}
		r.log.Info("recovered an interrupted rename", "vm", rec.ID, "other", other)
		return rec, nil
	}
	// The directory is under the other id (or gone): this record goes; the
	// other's recovery clears its mark.
	if err := r.reg.Delete(kindVM, rec.ID); err != nil {
		return rec, err
	}
	r.log.Info("recovered an interrupted rename", "vm", rec.ID, "other", other)
	return nil, nil
}

func dirExists(dir string) bool {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false
	}
	return err != nil || fi.IsDir()
}
