// Package memory is an in-memory [microvm.Runtime] for tests of programs
// that embed mvm. It runs no processes and touches no files, but it keeps
// the whole contract: the same transition table ([microvm.Transition]), the
// same validation of ids, specs and options, the same errors, deep copies
// in and out, snapshots, restores and logs. It passes the conformance suite
// (package github.com/mvm-dev/microvm/conformance).
//
// What is particular to this runtime:
//
//   - Nothing is durable: Close ends the runtime and its state with it.
//   - Logs returns the VM's lifecycle events, one line each, such as
//     "2026-11-25T17:00:00Z started", the newest [MaxLogLines] kept.
//   - A VM never fails on its own; [Runtime.Crash] makes it fail, so tests
//     can exercise failure handling.
//   - Diff snapshots need Spec.TrackDirtyPages and a parent: by default
//     the VM's newest snapshot, else the snapshot it was restored from. An
//     explicit parent must be one of those too. Breaking these rules gives
//     [microvm.ErrInvalidArgument]; an unknown parent gives
//     [microvm.ErrSnapshotNotFound].
//   - Snapshots hold no memory, so a VM restored from a snapshot does not
//     keep it in use: DeleteSnapshot refuses ([microvm.ErrSnapshotInUse])
//     only while a diff snapshot has it as parent, unless Force. Restoring
//     a diff snapshot whose parent chain was force-deleted gives
//     [microvm.ErrSnapshotCorrupt].
//   - VM.Snapshots lists the snapshots taken from that VM itself; a VM
//     created again under the id of a destroyed one starts with none,
//     while Snapshots(id) lists every snapshot taken under the id.
package memory

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mvm-dev/microvm"
)

// MaxLogLines is how many log lines the runtime keeps per VM; older lines
// are dropped.
const MaxLogLines = 1000

// RuntimeName is the value of VM.Backend.Runtime.
const RuntimeName = "memory"

// Options configures a [Runtime]. The zero value (or nil) is ready to use.
type Options struct {
	// Clock returns the current time, for CreatedAt, UpdatedAt, snapshot
	// times and log lines. Nil means time.Now.
	Clock func() time.Time
	// Logger receives a debug record for every lifecycle event. Nil
	// discards them.
	Logger *slog.Logger
	// Stats supplies the figures Stats returns for a VM (its ID and
	// Status are set by the runtime). Nil: zero counters.
	Stats func(id string) microvm.VMStats
}

// Runtime is the in-memory [microvm.Runtime]. Create one with [New]. It is
// safe for concurrent use: each VM has its own lock, and the runtime's
// maps have another that is only held for lookups and inserts.
type Runtime struct {
	clock func() time.Time
	log   *slog.Logger

	// mu guards the fields below. Lock order: a VM's mu, then r.mu.
	mu     sync.Mutex
	closed bool
	vms    map[string]*vm
	snaps  map[string]*snapshot
	seq    uint64 // orders snapshots, oldest first

	events hub
	stats  func(id string) microvm.VMStats
}

var _ microvm.Runtime = (*Runtime)(nil)

// vm is one VM's record. Its fields are guarded by mu.
type vm struct {
	mu           sync.Mutex
	gone         bool // destroyed and removed from Runtime.vms
	id           string
	status       microvm.Status
	spec         microvm.Spec // defaulted; never handed out without Clone
	restoredFrom string
	createdAt    time.Time
	updatedAt    time.Time
	lastError    string
	logs         []string // oldest first, at most MaxLogLines
}

// snapshot is a recorded snapshot; guarded by Runtime.mu.
type snapshot struct {
	meta  microvm.Snapshot // Spec is never handed out without Clone
	owner *vm              // the VM (instance) it was taken from
	seq   uint64
}

// New returns an empty runtime. opts may be nil.
func New(opts *Options) *Runtime {
	r := &Runtime{
		clock: time.Now,
		log:   slog.New(slog.DiscardHandler),
		vms:   map[string]*vm{},
		snaps: map[string]*snapshot{},
	}
	if opts != nil && opts.Clock != nil {
		r.clock = opts.Clock
	}
	if opts != nil && opts.Logger != nil {
		r.log = opts.Logger
	}
	if opts != nil {
		r.stats = opts.Stats
	}
	return r
}

// now returns the clock's time without its monotonic reading, so that
// copies compare equal.
func (r *Runtime) now() time.Time { return r.clock().Round(0) }

// enter checks the context and that the runtime is open.
func (r *Runtime) enter(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return fmt.Errorf("memory: %w", microvm.ErrClosed)
	}
	return nil
}

func notFound(op, id string) error {
	return fmt.Errorf("memory: %s vm %q: %w", op, id, microvm.ErrNotFound)
}

func snapshotNotFound(op, id string) error {
	return fmt.Errorf("memory: %s: snapshot %q: %w", op, id, microvm.ErrSnapshotNotFound)
}

// locked runs fn with the VM's lock held, after the common checks: context,
// closed, id, existence.
func (r *Runtime) locked(ctx context.Context, op, id string, fn func(v *vm) error) error {
	if err := r.enter(ctx); err != nil {
		return err
	}
	if err := microvm.ValidateID(id); err != nil {
		return fmt.Errorf("memory: %s: %w", op, err)
	}
	return r.lockedValid(op, id, fn)
}

// lockedValid is locked after the checks.
func (r *Runtime) lockedValid(op, id string, fn func(v *vm) error) error {
	r.mu.Lock()
	v := r.vms[id]
	r.mu.Unlock()
	if v == nil {
		return notFound(op, id)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.gone { // destroyed between the lookup and the lock
		return notFound(op, id)
	}
	return fn(v)
}

// transition moves v through op, or returns the table's refusal. v.mu is
// held.
func (r *Runtime) transition(v *vm, op microvm.Op, event string) error {
	to, err := microvm.Transition(v.id, v.status, op)
	if err != nil {
		return err
	}
	now := r.now()
	if to != v.status {
		v.status = to
		v.updatedAt = now
	}
	r.event(v, now, event)
	r.publishOp(v, now, op, event)
	return nil
}

// event appends a log line stamped t to v and logs it. v.mu is held (or v
// is not yet published).
func (r *Runtime) event(v *vm, t time.Time, event string) {
	if len(v.logs) >= MaxLogLines {
		v.logs = slices.Delete(v.logs, 0, len(v.logs)-MaxLogLines+1)
	}
	v.logs = append(v.logs, t.UTC().Format(time.RFC3339Nano)+" "+event)
	r.log.Debug("memory: "+event, "vm", v.id, "status", string(v.status))
}

// view returns v's read view. v.mu is held; view takes r.mu.
func (r *Runtime) view(v *vm) microvm.VM {
	r.mu.Lock()
	snaps := r.snapshotsOf(v)
	r.mu.Unlock()
	return r.viewWith(v, snaps)
}

func (r *Runtime) viewWith(v *vm, snaps []string) microvm.VM {
	return microvm.VM{
		ID:           v.id,
		Status:       v.status,
		Spec:         v.spec.Clone(),
		Snapshots:    snaps,
		RestoredFrom: v.restoredFrom,
		CreatedAt:    v.createdAt,
		UpdatedAt:    v.updatedAt,
		LastError:    v.lastError,
		Backend:      microvm.Backend{Runtime: RuntimeName},
	}
}

// snapshotsOf returns the ids of the snapshots taken from v, oldest first.
// r.mu is held.
func (r *Runtime) snapshotsOf(v *vm) []string {
	var own []*snapshot
	for _, s := range r.snaps {
		if s.owner == v {
			own = append(own, s)
		}
	}
	return snapshotIDs(sortSnapshots(own))
}

func sortSnapshots(ss []*snapshot) []*snapshot {
	slices.SortFunc(ss, func(a, b *snapshot) int { return cmp.Compare(a.seq, b.seq) })
	return ss
}

func snapshotIDs(ss []*snapshot) []string {
	if len(ss) == 0 {
		return nil
	}
	ids := make([]string, len(ss))
	for i, s := range ss {
		ids[i] = s.meta.ID
	}
	return ids
}

func copySnapshot(s *snapshot) microvm.Snapshot {
	m := s.meta
	m.Spec = m.Spec.Clone()
	return m
}

// Create makes a VM from spec, with status created. The stored spec is a
// defaulted deep copy of spec with absolute paths ([microvm.Spec.AbsPaths]).
// As the firecracker runtime's, its errors are all *microvm.OpError.
func (r *Runtime) Create(ctx context.Context, id string, spec microvm.Spec) (microvm.VM, error) {
	vm, err := r.create(ctx, id, spec)
	if err != nil {
		err = &microvm.OpError{Op: "create", ID: id, Err: err}
	}
	return vm, err
}

func (r *Runtime) create(ctx context.Context, id string, spec microvm.Spec) (microvm.VM, error) {
	if err := r.enter(ctx); err != nil {
		return microvm.VM{}, err
	}
	if err := microvm.ValidateID(id); err != nil {
		return microvm.VM{}, err
	}
	spec, err := spec.WithDefaults().AbsPaths()
	if err == nil {
		err = spec.Validate()
	}
	if err != nil {
		return microvm.VM{}, err
	}
	now := r.now()
	v := &vm{id: id, status: microvm.StatusCreated, spec: spec, createdAt: now, updatedAt: now}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.vms[id] != nil {
		return microvm.VM{}, microvm.ErrAlreadyExists
	}
	r.event(v, now, "created")
	r.publish(v, now, microvm.EventCreated, "", "")
	r.vms[id] = v
	return r.viewWith(v, nil), nil
}

// Start boots a created, stopped or failed VM.
func (r *Runtime) Start(ctx context.Context, id string) (microvm.VM, error) {
	var out microvm.VM
	err := r.locked(ctx, "start", id, func(v *vm) error {
		if err := r.transition(v, microvm.OpStart, "started"); err != nil {
			return err
		}
		out = r.view(v)
		return nil
	})
	return out, err
}

// Stop stops a running or paused VM. The timeout is validated but there is
// no guest to wait for.
func (r *Runtime) Stop(ctx context.Context, id string, opts *microvm.StopOptions) (microvm.VM, error) {
	if err := r.enter(ctx); err != nil {
		return microvm.VM{}, err
	}
	if err := microvm.ValidateID(id); err != nil {
		return microvm.VM{}, fmt.Errorf("memory: stop: %w", err)
	}
	timeout, err := opts.StopTimeout()
	if err != nil {
		return microvm.VM{}, fmt.Errorf("memory: stop vm %q: %w", id, err)
	}
	var out microvm.VM
	err = r.lockedValid("stop", id, func(v *vm) error {
		if err := r.transition(v, microvm.OpStop, "stopped (timeout "+timeout.String()+")"); err != nil {
			return err
		}
		out = r.view(v)
		return nil
	})
	return out, err
}

// Pause pauses a running VM.
func (r *Runtime) Pause(ctx context.Context, id string) (microvm.VM, error) {
	var out microvm.VM
	err := r.locked(ctx, "pause", id, func(v *vm) error {
		if err := r.transition(v, microvm.OpPause, "paused"); err != nil {
			return err
		}
		out = r.view(v)
		return nil
	})
	return out, err
}

// Resume resumes a paused VM.
func (r *Runtime) Resume(ctx context.Context, id string) (microvm.VM, error) {
	var out microvm.VM
	err := r.locked(ctx, "resume", id, func(v *vm) error {
		if err := r.transition(v, microvm.OpResume, "resumed"); err != nil {
			return err
		}
		out = r.view(v)
		return nil
	})
	return out, err
}

// Snapshot records a snapshot of a running or paused VM; the VM's status
// does not change. See the package documentation for diff snapshots.
func (r *Runtime) Snapshot(ctx context.Context, id, snapshotID string, opts *microvm.SnapshotOptions) (microvm.Snapshot, error) {
	if err := r.enter(ctx); err != nil {
		return microvm.Snapshot{}, err
	}
	if err := microvm.ValidateID(id); err != nil {
		return microvm.Snapshot{}, fmt.Errorf("memory: snapshot: %w", err)
	}
	if err := microvm.ValidateSnapshotID(snapshotID); err != nil {
		return microvm.Snapshot{}, fmt.Errorf("memory: snapshot vm %q: %w", id, err)
	}
	if err := opts.Validate(); err != nil {
		return microvm.Snapshot{}, fmt.Errorf("memory: snapshot vm %q: %w", id, err)
	}
	var out microvm.Snapshot
	err := r.lockedValid("snapshot", id, func(v *vm) error {
		if _, err := microvm.Transition(id, v.status, microvm.OpSnapshot); err != nil {
			return err
		}
		now := r.now()
		r.mu.Lock()
		s, err := r.newSnapshot(v, snapshotID, opts, now)
		r.mu.Unlock()
		if err != nil {
			return err
		}
		desc := "snapshot " + snapshotID + " (" + string(s.meta.Type)
		if s.meta.Parent != "" {
			desc += ", parent " + s.meta.Parent
		}
		r.event(v, now, desc+")") // OpSnapshot keeps the status
		r.publish(v, now, microvm.EventSnapshotted, "", snapshotID)
		out = copySnapshot(s)
		return nil
	})
	return out, err
}

// newSnapshot checks and records a snapshot of v. v.mu and r.mu are held.
func (r *Runtime) newSnapshot(v *vm, snapshotID string, opts *microvm.SnapshotOptions, now time.Time) (*snapshot, error) {
	if r.snaps[snapshotID] != nil {
		return nil, fmt.Errorf("memory: snapshot vm %q: snapshot %q: %w", v.id, snapshotID, microvm.ErrSnapshotExists)
	}
	typ := opts.SnapshotType()
	var parent string
	if typ == microvm.SnapshotDiff {
		var err error
		if parent, err = r.diffParent(v, opts.Parent); err != nil {
			return nil, err
		}
	}
	r.seq++
	s := &snapshot{
		owner: v,
		seq:   r.seq,
		meta: microvm.Snapshot{
			ID:        snapshotID,
			VMID:      v.id,
			Type:      typ,
			Parent:    parent,
			CreatedAt: now,
			Spec:      v.spec.Clone(),
		},
	}
	r.snaps[snapshotID] = s
	return s, nil
}

// diffParent returns the parent of a diff snapshot of v: want if set, else
// the newest snapshot of v, else the snapshot v was restored from. r.mu is
// held.
func (r *Runtime) diffParent(v *vm, want string) (string, error) {
	if !v.spec.TrackDirtyPages {
		return "", fmt.Errorf("memory: snapshot vm %q: a diff snapshot needs spec.track_dirty_pages: %w", v.id, microvm.ErrInvalidArgument)
	}
	own := r.snapshotsOf(v)
	if want == "" {
		switch {
		case len(own) > 0:
			return own[len(own)-1], nil
		case v.restoredFrom != "" && r.snaps[v.restoredFrom] != nil:
			return v.restoredFrom, nil
		}
		return "", fmt.Errorf("memory: snapshot vm %q: a diff snapshot needs a parent, and the vm has no snapshot to apply it to: %w", v.id, microvm.ErrInvalidArgument)
	}
	if r.snaps[want] == nil {
		return "", fmt.Errorf("memory: snapshot vm %q: parent: snapshot %q: %w", v.id, want, microvm.ErrSnapshotNotFound)
	}
	if !slices.Contains(own, want) && want != v.restoredFrom {
		return "", fmt.Errorf("memory: snapshot vm %q: parent %q was neither taken from this vm nor restored into it: %w", v.id, want, microvm.ErrInvalidArgument)
	}
	return want, nil
}

// Restore makes a new VM, newID, from a snapshot: running, or paused when
// opts.Paused. Its spec is the snapshot's, with opts.Labels replacing the
// labels when not nil. MemoryBackend and SkipVerify are validated and
// otherwise ignored.
func (r *Runtime) Restore(ctx context.Context, newID, snapshotID string, opts *microvm.RestoreOptions) (microvm.VM, error) {
	if err := r.enter(ctx); err != nil {
		return microvm.VM{}, err
	}
	if err := microvm.ValidateID(newID); err != nil {
		return microvm.VM{}, fmt.Errorf("memory: restore: %w", err)
	}
	if err := microvm.ValidateSnapshotID(snapshotID); err != nil {
		return microvm.VM{}, fmt.Errorf("memory: restore vm %q: %w", newID, err)
	}
	if err := opts.Validate(); err != nil {
		return microvm.VM{}, fmt.Errorf("memory: restore vm %q: %w", newID, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.snaps[snapshotID]
	if s == nil {
		return microvm.VM{}, snapshotNotFound(fmt.Sprintf("restore vm %q", newID), snapshotID)
	}
	for p := s.meta.Parent; p != ""; {
		ps := r.snaps[p]
		if ps == nil {
			return microvm.VM{}, fmt.Errorf("memory: restore vm %q: snapshot %q: parent snapshot %q was deleted: %w",
				newID, snapshotID, p, microvm.ErrSnapshotCorrupt)
		}
		p = ps.meta.Parent
	}
	if r.vms[newID] != nil {
		return microvm.VM{}, fmt.Errorf("memory: restore vm %q: %w", newID, microvm.ErrAlreadyExists)
	}
	spec := s.meta.Spec.Clone()
	if opts != nil && opts.Labels != nil {
		spec.Labels = maps.Clone(opts.Labels)
	}
	status := microvm.StatusRunning
	if opts != nil && opts.Paused {
		status = microvm.StatusPaused
	}
	now := r.now()
	v := &vm{id: newID, status: status, spec: spec, restoredFrom: snapshotID, createdAt: now, updatedAt: now}
	r.event(v, now, "restored from snapshot "+snapshotID+" ("+string(status)+")")
	r.publish(v, now, microvm.EventRestored, "", snapshotID)
	r.vms[newID] = v
	return r.viewWith(v, nil), nil
}

// Destroy removes the VM's record and returns its last view, with status
// destroyed. Its snapshots are kept.
func (r *Runtime) Destroy(ctx context.Context, id string) (microvm.VM, error) {
	var out microvm.VM
	err := r.locked(ctx, "destroy", id, func(v *vm) error {
		if err := r.transition(v, microvm.OpDestroy, "destroyed"); err != nil {
			return err
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		out = r.viewWith(v, r.snapshotsOf(v))
		if r.vms[id] == v {
			delete(r.vms, id)
		}
		v.gone = true
		return nil
	})
	return out, err
}

// Get returns the VM's current view.
func (r *Runtime) Get(ctx context.Context, id string) (microvm.VM, error) {
	var out microvm.VM
	err := r.locked(ctx, "get", id, func(v *vm) error {
		out = r.view(v)
		return nil
	})
	return out, err
}

// List returns every VM, sorted by id.
func (r *Runtime) List(ctx context.Context) ([]microvm.VM, error) {
	if err := r.enter(ctx); err != nil {
		return nil, err
	}
	r.mu.Lock()
	vms := slices.Collect(maps.Values(r.vms))
	r.mu.Unlock()
	slices.SortFunc(vms, func(a, b *vm) int { return strings.Compare(a.id, b.id) })
	out := make([]microvm.VM, 0, len(vms))
	for _, v := range vms {
		v.mu.Lock()
		if !v.gone {
			out = append(out, r.view(v))
		}
		v.mu.Unlock()
	}
	return out, nil
}

// Snapshots returns the snapshots taken from vmID (every snapshot when
// vmID is ""), oldest first. vmID need not exist.
func (r *Runtime) Snapshots(ctx context.Context, vmID string) ([]microvm.Snapshot, error) {
	if err := r.enter(ctx); err != nil {
		return nil, err
	}
	if vmID != "" {
		if err := microvm.ValidateID(vmID); err != nil {
			return nil, fmt.Errorf("memory: snapshots: %w", err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var ss []*snapshot
	for _, s := range r.snaps {
		if vmID == "" || s.meta.VMID == vmID {
			ss = append(ss, s)
		}
	}
	out := make([]microvm.Snapshot, 0, len(ss))
	for _, s := range sortSnapshots(ss) {
		out = append(out, copySnapshot(s))
	}
	return out, nil
}

// DeleteSnapshot removes a snapshot. It refuses with
// [microvm.ErrSnapshotInUse] while a diff snapshot has it as parent, unless
// opts.Force. Restored VMs do not keep a snapshot in use here.
func (r *Runtime) DeleteSnapshot(ctx context.Context, snapshotID string, opts *microvm.DeleteSnapshotOptions) error {
	if err := r.enter(ctx); err != nil {
		return err
	}
	if err := microvm.ValidateSnapshotID(snapshotID); err != nil {
		return fmt.Errorf("memory: delete snapshot: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.snaps[snapshotID]
	if s == nil {
		return snapshotNotFound("delete snapshot", snapshotID)
	}
	if opts == nil || !opts.Force {
		var children []*snapshot
		for _, c := range r.snaps {
			if c.meta.Parent == snapshotID {
				children = append(children, c)
			}
		}
		if len(children) > 0 {
			return fmt.Errorf("memory: delete snapshot %q: it is the parent of diff snapshot(s) %s: %w",
				snapshotID, strings.Join(snapshotIDs(sortSnapshots(children)), ", "), microvm.ErrSnapshotInUse)
		}
	}
	delete(r.snaps, snapshotID)
	r.log.Debug("memory: snapshot deleted", "snapshot", snapshotID, "vm", s.meta.VMID)
	return nil
}

// Logs returns the newest lines of the VM's lifecycle log (all that is
// kept when lines <= 0), oldest first.
func (r *Runtime) Logs(ctx context.Context, id string, lines int) ([]string, error) {
	var out []string
	err := r.locked(ctx, "logs of", id, func(v *vm) error {
		l := v.logs
		if lines > 0 && len(l) > lines {
			l = l[len(l)-lines:]
		}
		out = slices.Clone(l)
		return nil
	})
	return out, err
}

// Crash makes a running or paused VM fail as if its process had died: its
// status becomes failed (through [microvm.OpCrash]) and LastError says
// reason ("crashed" when empty). LastError keeps the reason after a later
// Start, as the last failure. It is a test hook; other states give a
// [*microvm.TransitionError].
func (r *Runtime) Crash(id string, reason string) error {
	if reason == "" {
		reason = "crashed"
	}
	return r.locked(context.Background(), "crash", id, func(v *vm) error {
		if err := r.transition(v, microvm.OpCrash, "failed: "+reason); err != nil {
			return err
		}
		v.lastError = reason
		return nil
	})
}

// Shutdown makes a running or paused VM stop as if its guest had shut
// itself down: its status becomes stopped (through
// [microvm.OpShutdown]) with no LastError. It is a test hook; other
// states give a [*microvm.TransitionError].
func (r *Runtime) Shutdown(id string) error {
	return r.locked(context.Background(), "shutdown", id, func(v *vm) error {
		if err := r.transition(v, microvm.OpShutdown, "stopped: the guest shut down"); err != nil {
			return err
		}
		v.lastError = ""
		return nil
	})
}

// Close ends the runtime: every later call returns [microvm.ErrClosed],
// including a second Close.
func (r *Runtime) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return fmt.Errorf("memory: close: %w", microvm.ErrClosed)
	}
	r.closed = true
	r.closeEvents()
	return nil
}
