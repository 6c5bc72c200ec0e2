package firecracker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/fcapi"
	"github.com/mvm-dev/microvm/internal/registry"
	"github.com/mvm-dev/microvm/internal/snapshot"
	"github.com/mvm-dev/microvm/uffd"
)

// Snapshot saves a running or paused VM in the snapshot store: a running
// VM is paused, firecracker writes its state and memory into the store's
// pending directory, the VM is resumed (also when the snapshot failed),
// and the snapshot is committed (hashed, made read-only, published).
//
// A diff snapshot needs Spec.TrackDirtyPages and holds the pages written
// since the VM's latest snapshot, or since it was restored: that
// snapshot is its parent (the default); any other parent is refused,
// since firecracker tracks dirty pages only since then.
func (r *Runtime) Snapshot(ctx context.Context, id, snapID string, opts *microvm.SnapshotOptions) (microvm.Snapshot, error) {
	if err := microvm.ValidateID(id); err != nil {
		return microvm.Snapshot{}, err
	}
	if err := microvm.ValidateSnapshotID(snapID); err != nil {
		return microvm.Snapshot{}, err
	}
	if err := opts.Validate(); err != nil {
		return microvm.Snapshot{}, err
	}
	rec, done, err := r.enterVM(ctx, id)
	if err != nil {
		return microvm.Snapshot{}, err
	}
	defer done()
	if _, err := microvm.Transition(id, rec.Status, microvm.OpSnapshot); err != nil {
		return microvm.Snapshot{}, err
	}
	typ, parent := opts.SnapshotType(), ""
	if typ == microvm.SnapshotDiff {
		if parent, err = diffParent(rec, opts.Parent); err != nil {
			return microvm.Snapshot{}, err
		}
	}
	pending, err := r.snaps.Begin(snapID)
	if err != nil {
		return microvm.Snapshot{}, err
	}
	defer pending.Abort() // after Commit it does nothing

	wasRunning := rec.Status == microvm.StatusRunning
	rec.Op, rec.OpSnapshot = opSnapshot, snapID
	if err := r.mark(rec); err != nil {
		return microvm.Snapshot{}, &microvm.OpError{Op: "snapshot", ID: id, Err: err}
	}
	// fail ends the operation: the VM keeps its status unless its
	// process died (then call has marked it failed).
	fail := func(err error) (microvm.Snapshot, error) {
		rec.Op, rec.OpSnapshot = "", ""
		return microvm.Snapshot{}, r.failOp("snapshot", rec, err)
	}
	if wasRunning {
		if err := r.call(ctx, rec, "pause for snapshot", func(c *vmClient) error { return c.PauseVM(ctx) }); err != nil {
			return fail(err)
		}
	}
	fcType := fcapi.SnapshotTypeFull
	if typ == microvm.SnapshotDiff {
		fcType = fcapi.SnapshotTypeDiff
	}
	// A jailed firecracker writes inside its chroot; the files are then
	// moved into the store (a rename on one file system).
	l := r.layout(rec)
	memPath, statePath := pending.MemPath(), pending.StatePath()
	if l.root != "" {
		memPath, statePath = filepath.Join(l.root, "snapshot.mem"), filepath.Join(l.root, "snapshot.state")
		for _, f := range []string{memPath, statePath} {
			if err := removeIfExists(f); err != nil {
				return fail(err)
			}
		}
	}
	err = r.call(ctx, rec, "create snapshot", func(c *vmClient) error {
		return c.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{
			MemFilePath:  l.fcJailFile(memPath),
			SnapshotPath: l.fcJailFile(statePath),
			SnapshotType: fcType,
		})
	})
	if err == nil {
		err = r.snapshotDisks(ctx, rec, pending.Dir())
	}
	if err == nil && l.root != "" {
		for _, f := range []string{memPath, statePath} {
			if cerr := os.Chown(f, os.Geteuid(), os.Getegid()); cerr != nil {
				err = cerr
			}
		}
		if err == nil {
			err = pending.Import(statePath, memPath)
		}
	}
	if l.root != "" {
		removeIfExists(memPath)
		removeIfExists(statePath)
	}
	if wasRunning && rec.Status != microvm.StatusFailed {
		// Resume whatever happened, with a context of its own: the
		// caller's may be what ended the snapshot.
		rctx, cancel := context.WithTimeout(context.Background(), r.cfg.APITimeout)
		rerr := r.call(rctx, rec, "resume after snapshot", func(c *vmClient) error { return c.ResumeVM(rctx) })
		cancel()
		if rerr != nil && rec.Status != microvm.StatusFailed {
			rec.setStatus(microvm.StatusPaused) // it stays paused
			err = errors.Join(err, rerr)
		}
	}
	if err != nil {
		return fail(err)
	}
	m, err := pending.CommitContext(ctx, snapshot.Manifest{
		VMID:               id,
		Type:               typ,
		Parent:             parent,
		FirecrackerVersion: rec.Version,
		Spec:               rec.Spec,
	})
	if err != nil {
		return fail(err)
	}
	rec.Op, rec.OpSnapshot = "", ""
	rec.DiffBase = snapID
	if err := r.save(rec); err != nil {
		return microvm.Snapshot{}, &microvm.OpError{Op: "snapshot", ID: id, Err: err}
	}
	r.emit(microvm.EventSnapshotted, rec, "", snapID)
	return r.snaps.Snapshot(m), nil
}

// diffParent returns the parent of a diff snapshot of rec.
func diffParent(rec *vmRecord, want string) (string, error) {
	if !rec.Spec.TrackDirtyPages {
		return "", invalidArg("snapshot vm %q: a diff snapshot needs spec.track_dirty_pages", rec.ID)
	}
	if rec.DiffBase == "" {
		return "", invalidArg("snapshot vm %q: a diff snapshot needs a parent, the VM's latest snapshot since it booted, and there is none: take a full snapshot first", rec.ID)
	}
	if want != "" && want != rec.DiffBase {
		return "", invalidArg("snapshot vm %q: parent %q: a diff snapshot's parent must be %q, the latest snapshot of the VM's current process (dirty pages are tracked since then)", rec.ID, want, rec.DiffBase)
	}
	return rec.DiffBase, nil
}

// Restore makes VM newID from a snapshot: it verifies the snapshot's
// files (unless opts.SkipVerify), spawns a firecracker, checks that its
// version can load the snapshot, and loads it with PUT /snapshot/load
// (memory from the store's file, or served by a uffd page server), then
// resumes it unless opts.Paused. The new VM's vsock socket is its own
// (vsock_override on firecracker >= 1.16; on older versions the default
// socket path is recorded relative to the VM directory and so follows the
// VM). A failed load kills the process and leaves nothing registered.
func (r *Runtime) Restore(ctx context.Context, newID, snapID string, opts *microvm.RestoreOptions) (microvm.VM, error) {
	if err := microvm.ValidateID(newID); err != nil {
		return microvm.VM{}, err
	}
	if err := microvm.ValidateSnapshotID(snapID); err != nil {
		return microvm.VM{}, err
	}
	if err := opts.Validate(); err != nil {
		return microvm.VM{}, err
	}
	if opts == nil {
		opts = &microvm.RestoreOptions{}
	}
	if err := r.begin(); err != nil {
		return microvm.VM{}, err
	}
	defer r.end()
	if err := ctx.Err(); err != nil {
		return microvm.VM{}, err
	}
	backend := opts.MemoryBackend
	if backend == microvm.MemoryBackendDefault {
		backend = r.cfg.DefaultMemoryBackend
	}
	m, err := r.snaps.Get(snapID)
	if err != nil {
		return microvm.VM{}, err
	}
	spec := m.Spec.Clone()
	forgetClonePaths(&spec)
	if opts.Labels != nil {
		spec.Labels = maps.Clone(opts.Labels)
	}
	if err := checkDrives(spec); err != nil {
		return microvm.VM{}, err
	}
	unlock, err := r.lockVM(ctx, newID)
	if err != nil {
		return microvm.VM{}, &microvm.OpError{Op: "restore", ID: newID, Err: err}
	}
	defer unlock()
	status := microvm.StatusRunning
	if opts.Paused {
		status = microvm.StatusPaused
	}
	rec := &vmRecord{
		ID: newID, Spec: spec, Status: status, Op: opRestore,
		RestoredFrom: snapID, MemorySnapshot: snapID, MemoryBackend: backend, Binary: r.bin,
	}
	rec.CreatedAt = nowUTC()
	rec.UpdatedAt = rec.CreatedAt
	if err := r.reserveRestore(ctx, rec); err != nil {
		return microvm.VM{}, err
	}
	p, err := r.loadSnapshot(ctx, rec, m, opts)
	if err != nil {
		return microvm.VM{}, r.undo("restore", rec, p, r.withExit(rec, p, err))
	}
	rec.Op = ""
	rec.DiffBase = snapID
	if err := r.save(rec); err != nil {
		return microvm.VM{}, r.undo("restore", rec, p, err)
	}
	r.watch(newID, p)
	r.emit(microvm.EventRestored, rec, "", snapID)
	return r.view(rec, nil), nil
}

// reserveRestore creates the restored VM's record under the snapshot's
// lock, after checking the snapshot still exists: a DeleteSnapshot
// (which takes the same lock) either runs first, and the restore finds no
// snapshot, or after, and sees the record using it.
func (r *Runtime) reserveRestore(ctx context.Context, rec *vmRecord) error {
	unlock, err := r.reg.Lock(ctx, "snap-"+rec.RestoredFrom)
	if err != nil {
		return &microvm.OpError{Op: "restore", ID: rec.ID, Err: err}
	}
	defer unlock()
	if _, err := r.snaps.Get(rec.RestoredFrom); err != nil {
		return err
	}
	if err := r.reg.Create(kindVM, rec.ID, rec); err != nil {
		if errors.Is(err, registry.ErrExists) {
			return fmt.Errorf("restore vm %q: %w", rec.ID, microvm.ErrAlreadyExists)
		}
		return &microvm.OpError{Op: "restore", ID: rec.ID, Err: err}
	}
	return nil
}

// loadSnapshot runs the restore proper for a reserved record: verify, spawn,
// version check, logger and metrics, page server, snapshot load, MMDS
// data. It returns the process, also on error when one was started.
func (r *Runtime) loadSnapshot(ctx context.Context, rec *vmRecord, m snapshot.Manifest, opts *microvm.RestoreOptions) (*proc, error) {
	snapID := rec.RestoredFrom
	if !opts.SkipVerify {
		if err := r.snaps.Verify(ctx, snapID); err != nil {
			return nil, err
		}
	}
	statePath, _, err := r.snaps.Paths(snapID)
	if err != nil {
		return nil, err
	}
	memPath, err := r.snaps.MemoryFile(ctx, snapID)
	if err != nil {
		return nil, err
	}
	if err := r.removeVMDir(rec.ID); err != nil {
		return nil, fmt.Errorf("remove leftover vm directory: %w", err)
	}
	if err := r.restoreDisks(ctx, rec, snapID); err != nil {
		return nil, err
	}
	if err := r.attachNetwork(ctx, rec); err != nil {
		return nil, err
	}
	p, c, err := r.launch(ctx, rec, recordPID, nil)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := m.LoadableBy(rec.Version, ""); err != nil {
		return p, err
	}
	if err := r.configureOutput(ctx, c, rec); err != nil {
		return p, err
	}
	l := r.layout(rec)
	params := fcapi.SnapshotLoadParams{
		SnapshotPath:    l.fcFile(statePath),
		TrackDirtyPages: rec.Spec.TrackDirtyPages,
		ResumeVM:        !opts.Paused,
	}
	switch rec.MemoryBackend {
	case microvm.MemoryBackendUffd:
		sock, err := r.startPageServer(ctx, rec, p, memPath)
		if err != nil {
			return p, err
		}
		params.MemBackend = &fcapi.MemoryBackend{BackendType: fcapi.MemBackendUffd, BackendPath: sock}
	default:
		params.MemBackend = &fcapi.MemoryBackend{BackendType: fcapi.MemBackendFile, BackendPath: l.fcFile(memPath)}
	}
	if v := rec.Spec.Vsock; v != nil {
		paths := r.layout(rec)
		_, abs := vsockPath(paths, v)
		if c.Supports(fcapi.FeatureSnapshotVsockOverride) {
			// The clone's socket is its own, in its directory, whatever
			// path the snapshot recorded.
			params.VsockOverride = &fcapi.VsockOverride{UDSPath: fileVsock}
			abs = paths.vsock
		} else if v.Path != "" {
			// The snapshot binds the source VM's own path again.
			if _, err := os.Lstat(abs); err == nil {
				return p, backendErr("load snapshot", fmt.Errorf(
					"vsock socket %s recorded in the snapshot exists (the VM it was taken from may still use it), "+
						"and firecracker %s cannot move it (vsock_override needs >= 1.16): %w", abs, rec.Version, microvm.ErrUnsupported))
			}
		}
		if err := r.prepareVsock(ctx, rec, abs); err != nil {
			return p, backendErr("load snapshot", err)
		}
		rec.VsockPath = abs
	}
	if err := c.LoadSnapshot(ctx, params); err != nil {
		err = backendErr("load snapshot", err)
		var be *microvm.BackendError
		if rec.MemoryBackend == microvm.MemoryBackendUffd && errors.As(err, &be) &&
			strings.Contains(be.Message, "Unrecognized ioctl flags") && be.Err == nil {
			// Firecracker's userfaultfd library (1.7 and older; 1.14 is
			// fixed) rejects the ioctl bits Linux 6.6 and later report for
			// a registered range (UFFDIO_POISON, UFFDIO_MOVE).
			be.Err = fmt.Errorf("firecracker %s cannot use userfaultfd on this host's kernel "+
				"(its userfaultfd library rejects the ioctls Linux 6.6 and later report); "+
				"use the file memory backend or a newer firecracker: %w", rec.Version, microvm.ErrUnsupported)
		}
		return p, err
	}
	if err := r.putMMDSData(ctx, c, rec); err != nil {
		return p, err
	}
	return p, nil
}

// startPageServer starts the uffd page server of a restore and returns
// the socket path to give firecracker.
func (r *Runtime) startPageServer(ctx context.Context, rec *vmRecord, p *proc, memPath string) (string, error) {
	bin := r.cfg.UffdBin
	if bin == "" {
		b, err := uffd.FindBinary()
		if err != nil {
			return "", fmt.Errorf("uffd memory backend: %w: %w", microvm.ErrUnsupported, err)
		}
		bin = b
	}
	paths := r.layout(rec)
	pid, err := uffd.Spawn(ctx, bin, uffd.Config{
		SocketPath: paths.uffdSock,
		MemFile:    memPath,
		Prefetch:   true,
		Detach:     true,
		PeerPID:    p.pid,
	})
	if err != nil {
		return "", fmt.Errorf("start uffd page server: %w", err)
	}
	if st, err := readProcStat(pid); err == nil {
		rec.Uffd = &procRecord{PID: pid, StartTime: st.startTime, BootID: bootID()}
		if err := r.save(rec); err != nil {
			return "", err
		}
	}
	if j := rec.Jail; j != nil {
		// The page server runs as the runtime's user; the jailed uid
		// connects.
		if err := os.Chown(paths.uffdSock, j.UID, j.GID); err != nil {
			return "", fmt.Errorf("uffd page server socket: %w", err)
		}
	}
	return paths.fcSock(paths.uffdSock), nil
}

// checkDrives is checkFiles for the drives only: a restore does not read
// the kernel.
func checkDrives(spec microvm.Spec) error {
	s := spec
	s.Kernel, s.Initrd = "", ""
	return checkFiles(s)
}

// Snapshots returns the snapshots taken from vmID (any VM when vmID is
// ""), oldest first. A snapshot whose manifest cannot be read is left out
// (and logged).
func (r *Runtime) Snapshots(ctx context.Context, vmID string) ([]microvm.Snapshot, error) {
	if vmID != "" {
		if err := microvm.ValidateID(vmID); err != nil {
			return nil, err
		}
	}
	if err := r.begin(); err != nil {
		return nil, err
	}
	defer r.end()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	list, err := r.listSnapshots()
	if err != nil {
		return nil, err
	}
	out := []microvm.Snapshot{}
	for _, m := range list {
		if vmID == "" || m.VMID == vmID {
			out = append(out, r.snaps.Snapshot(m))
		}
	}
	return out, nil
}

// listSnapshots lists the store, logging (not failing on) corrupt entries.
func (r *Runtime) listSnapshots() ([]snapshot.Manifest, error) {
	list, err := r.snaps.List()
	if err != nil {
		if list == nil {
			return nil, fmt.Errorf("list snapshots: %w", err)
		}
		r.log.Warn("unreadable snapshots left out", "err", err)
	}
	return list, nil
}

// snapshotsOf returns the ids of the snapshots of VM id, oldest first.
func (r *Runtime) snapshotsOf(id string) ([]string, error) {
	list, err := r.listSnapshots()
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, m := range list {
		if m.VMID == id {
			ids = append(ids, m.ID)
		}
	}
	return ids, nil
}

// DeleteSnapshot removes a snapshot and its files. Unless opts.Force it
// refuses with microvm.ErrSnapshotInUse while a VM restored from it still
// maps its memory (a live process restored from it, or a restore in
// progress) or it is the parent of diff snapshots.
func (r *Runtime) DeleteSnapshot(ctx context.Context, snapID string, opts *microvm.DeleteSnapshotOptions) error {
	if err := microvm.ValidateSnapshotID(snapID); err != nil {
		return err
	}
	if err := r.begin(); err != nil {
		return err
	}
	defer r.end()
	if err := ctx.Err(); err != nil {
		return err
	}
	force := opts != nil && opts.Force
	unlock, err := r.reg.Lock(ctx, "snap-"+snapID)
	if err != nil {
		return fmt.Errorf("delete snapshot %q: %w", snapID, err)
	}
	defer unlock()
	if _, err := r.snaps.Get(snapID); errors.Is(err, microvm.ErrSnapshotNotFound) {
		return err
	}
	if !force {
		users, err := r.snapshotUsers(snapID)
		if err != nil {
			return fmt.Errorf("delete snapshot %q: %w", snapID, err)
		}
		if len(users) > 0 {
			return fmt.Errorf("delete snapshot %q: VM(s) %s restored from it still map its memory (destroy or stop them first, or force): %w",
				snapID, strings.Join(users, ", "), microvm.ErrSnapshotInUse)
		}
	}
	return r.snaps.Delete(snapID, force)
}

// snapshotUsers returns the VMs whose process maps the memory of snapID.
func (r *Runtime) snapshotUsers(snapID string) ([]string, error) {
	ids, err := r.reg.List(kindVM)
	if err != nil {
		return nil, err
	}
	var users []string
	for _, id := range ids {
		var rec vmRecord
		if err := r.reg.Get(kindVM, id, &rec); err != nil {
			continue
		}
		if rec.MemorySnapshot == snapID {
			users = append(users, id)
		}
	}
	return users, nil
}
