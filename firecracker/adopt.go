package firecracker

import (
	"context"
	"errors"
	"fmt"
	"sync"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/fcapi"
)

// This file holds what keeps records and processes in agreement: the
// crash watchers of an open runtime, the adoption of VMs at Open, and the
// recovery of operations interrupted by a dying process.

// watcher waits for the exit of one VM's firecracker.
type watcher struct {
	id string
	p  *proc
}

// watch starts a crash watcher on p, the current process of VM id,
// replacing any watcher of an earlier process. It takes ownership of p.
// The watcher runs until the process exits or the runtime closes; it is
// tied to no request.
func (r *Runtime) watch(id string, p *proc) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		p.close()
		return
	}
	if old := r.watchers[id]; old != nil {
		if old.p.pid == p.pid && old.p.startTime == p.startTime {
			r.mu.Unlock()
			p.close()
			return
		}
		old.p.close()
	}
	w := &watcher{id: id, p: p}
	r.watchers[id] = w
	r.bg.Add(1)
	r.mu.Unlock()
	go r.runWatcher(w)
}

// unwatch stops watching VM id (its process is ending on purpose).
func (r *Runtime) unwatch(id string) {
	r.mu.Lock()
	w := r.watchers[id]
	delete(r.watchers, id)
	r.mu.Unlock()
	if w != nil {
		w.p.close()
	}
}

func (r *Runtime) runWatcher(w *watcher) {
	defer r.bg.Done()
	exited, _ := w.p.wait(r.ctx, 0)
	r.mu.Lock()
	if r.watchers[w.id] == w {
		delete(r.watchers, w.id)
	}
	r.mu.Unlock()
	if !exited {
		w.p.close() // closed or unwatched
		return
	}
	pr := *recordOf(w.p)
	if ei := w.p.reap(); ei.known {
		r.noteExit(pr, ei)
	}
	w.p.close()
	r.handleExit(w.id, pr)
}

// handleExit runs when a watched process has exited. Unless an operation
// ended it on purpose (it then holds the VM's lock and replaces the
// record's process before letting go), the VM is recovered: a running or
// paused VM turns failed.
func (r *Runtime) handleExit(id string, pr procRecord) {
	unlock, err := r.lockVM(r.ctx, id)
	if err != nil {
		return // closing
	}
	defer unlock()
	rec, err := r.load(id)
	if err != nil || rec.Process == nil || rec.Process.PID != pr.PID || rec.Process.StartTime != pr.StartTime {
		r.forgetExit(pr)
		return
	}
	if _, err := r.reconcile(r.ctx, rec); err != nil {
		r.log.Error("recover vm after its process exited", "vm", id, "err", err)
	}
}

// noteExit keeps the exit status of a process this process reaped, for
// whoever reports the crash.
func (r *Runtime) noteExit(pr procRecord, ei exitInfo) {
	pr.BootID = ""
	r.mu.Lock()
	r.exits[pr] = ei
	r.mu.Unlock()
}

// exitOf returns (and forgets) the noted exit status of a process.
func (r *Runtime) exitOf(pr procRecord) exitInfo {
	pr.BootID = ""
	r.mu.Lock()
	defer r.mu.Unlock()
	ei, ok := r.exits[pr]
	if !ok {
		// A child that exited while no Runtime watched it.
		return childExit(pr.PID, pr.StartTime)
	}
	delete(r.exits, pr)
	return ei
}

func (r *Runtime) forgetExit(pr procRecord) { r.exitOf(pr) }

// exitNow returns the exit status of VM id's process pr once it has
// exited: reaped now through its watcher's pidfd when the watcher has not
// got to it yet (an operation noticed the exit first), else what the
// watcher noted. It is unknown for a process that was not our child.
func (r *Runtime) exitNow(id string, pr procRecord) exitInfo {
	r.mu.Lock()
	w := r.watchers[id]
	r.mu.Unlock()
	if w != nil && pr.same(w.p) {
		if ei := w.p.reap(); ei.known {
			r.forgetExit(pr)
			return ei
		}
	}
	return r.exitOf(pr)
}

// crashed records that rec's firecracker died unasked: a running or
// paused VM turns failed with the exit in LastError; a created VM stays
// created (Start spawns a new process) with the exit in LastError. A
// process this process started that exited with status 0 is a guest that
// shut itself down (it powered off or reset; Firecracker exits on a guest
// reset): its VM turns stopped, as after Stop, with no LastError, unless
// firecracker's last lines say KVM stopped a vCPU (see vcpuFault). An
// adopted process's exit status is unknowable (it was not our child), so
// its VM turns failed. Its other processes and sockets are cleaned up.
// The caller holds the VM's lock. It returns the *microvm.ExitError, or
// nil for a clean shutdown.
func (r *Runtime) crashed(rec *vmRecord) error {
	pr := rec.Process
	if pr == nil {
		return nil
	}
	console, _ := tailLines(r.paths(rec.ID).console, outputLines, r.tailLimit())
	ei := r.exitNow(rec.ID, *pr)
	xerr := exitError(rec.ID, pr.PID, ei, console)
	r.endProcesses(rec)
	// Status 0 after a vCPU that KVM stopped (v1.7 exits so) is no
	// shutdown: the guest died.
	if ei.known && ei.code == 0 && ei.signal == "" && vcpuFault(rec.ID, console) == "" {
		if to, err := microvm.Transition(rec.ID, rec.Status, microvm.OpShutdown); err == nil {
			rec.setStatus(to)
			if err := r.save(rec); err != nil {
				r.log.Error("record guest shutdown", "vm", rec.ID, "err", err)
			}
			r.log.Info("guest shut down (firecracker exited with status 0)", "vm", rec.ID, "pid", pr.PID)
			r.emit(microvm.EventStopped, rec, "the guest shut down", "")
			return nil
		}
	}
	msg := xerr.Error()
	if to, err := microvm.Transition(rec.ID, rec.Status, microvm.OpCrash); err == nil {
		rec.Status = to
		rec.LastError = msg
	} else {
		rec.LastError = "firecracker exited before the VM booted: " + msg
	}
	rec.LastErrorDetail = xerr.Console
	if err := r.save(rec); err != nil {
		r.log.Error("record crash", "vm", rec.ID, "err", err)
	}
	r.log.Warn("vm process exited unexpectedly", "vm", rec.ID, "err", msg)
	r.emit(microvm.EventCrashed, rec, msg, "")
	return xerr
}

func (r *Runtime) tailLimit() int64 {
	if r.cfg.ConsoleMaxBytes > 0 {
		return r.cfg.ConsoleMaxBytes
	}
	return DefaultConsoleMaxBytes * 8
}

// reconcile brings rec in line with the host, and returns the updated
// record, or nil when the VM was removed (an interrupted Create or
// Restore is undone; an interrupted Destroy is finished). The caller holds
// the VM's lock, so an operation named in rec.Op is one whose process
// died. Rules:
//
//   - process gone: a running or paused VM turns failed (an interrupted
//     Stop ends stopped instead); the leftovers (sockets, page server)
//     are removed;
//   - process alive: the status is read from GET / ("Not started" is
//     created, "Running", "Paused"); an interrupted Stop is finished with
//     SIGKILL; an interrupted Snapshot resumes a VM it had paused; a
//     process a stopped or failed VM should not have is ended. A live
//     process whose API does not answer keeps its status.
func (r *Runtime) reconcile(ctx context.Context, rec *vmRecord) (*vmRecord, error) {
	if rec.Op == opRename {
		out, err := r.recoverRename(ctx, rec)
		if out == nil || err != nil {
			return out, err
		}
		rec = out
	}
	var p *proc
	if rec.Process != nil {
		q, err := attach(rec.Process.PID, rec.Process.StartTime, rec.Process.BootID)
		switch {
		case err == nil:
			p = q
		case !errors.Is(err, errGone):
			return rec, err
		}
	}
	switch {
	case rec.Process == nil && (rec.Op == opCreate || rec.Op == opRestore || rec.Op == opStart),
		rec.Op == opRestore && rec.Uffd == nil && rec.MemoryBackend == microvm.MemoryBackendUffd:
		// A process may have been spawned before its pid was recorded:
		// the firecracker, or a restore's page server.
		if err := r.killStrays(rec.ID, rec.Process); err != nil {
			return rec, err
		}
	}
	if rec.Op != "" {
		// Writes of the record the dead driver began and never renamed.
		if _, err := r.reg.RemoveTemps(kindVM, rec.ID); err != nil {
			r.log.Warn("remove temporary record files", "vm", rec.ID, "err", err)
		}
	}
	switch rec.Op {
	case opCreate, opRestore, opDestroy:
		if err := r.discard(rec, p); err != nil {
			return rec, err
		}
		r.log.Info("removed vm left by an interrupted operation", "vm", rec.ID, "op", rec.Op)
		return nil, nil
	}
	op, opSnap := rec.Op, rec.OpSnapshot
	rec.Op, rec.OpSnapshot = "", ""
	if p == nil {
		switch {
		case rec.Process != nil && op == opStop:
			r.endProcesses(rec)
			rec.setStatus(microvm.StatusStopped)
		case rec.Process != nil && op == opStart:
			r.endProcesses(rec)
			rec.LastError = "start was interrupted (the process running it exited)"
		case rec.Process != nil:
			r.crashed(rec) // saves
			return rec, nil
		case rec.Uffd != nil:
			r.endProcesses(rec)
		}
		if rec.Process == nil && (rec.Status == microvm.StatusRunning || rec.Status == microvm.StatusPaused) {
			// A booted VM with no process to show for it.
			rec.Status = microvm.StatusFailed
			rec.LastError = "the VM has no firecracker process (its record was left inconsistent)"
		}
		return rec, r.save(rec)
	}
	if op == opStop {
		r.endProcesses(rec)
		p.close()
		rec.setStatus(microvm.StatusStopped)
		return rec, r.save(rec)
	}
	state, err := r.probe(ctx, rec)
	if err != nil {
		if op == opStart {
			r.endProcesses(rec)
			p.close()
			rec.LastError = "start was interrupted (the process running it exited)"
			return rec, r.save(rec)
		}
		r.log.Warn("adopted vm does not answer its API", "vm", rec.ID, "err", err)
		if op == opSnapshot {
			// It may still be writing the snapshot (the API answers one
			// request at a time): keep the mark, so that a later
			// adoption resumes the VM the snapshot paused.
			rec.Op, rec.OpSnapshot = op, opSnap
		}
		r.watch(rec.ID, p)
		return rec, r.save(rec)
	}
	switch {
	case state == fcapi.StateNotStarted && rec.Status == microvm.StatusCreated:
	case state == fcapi.StateRunning, state == fcapi.StatePaused:
		if state == fcapi.StatePaused && op == opSnapshot && rec.Status == microvm.StatusRunning {
			// The snapshot paused it; finish its promise to resume.
			if err := r.call(ctx, rec, "resume", func(c *vmClient) error { return c.ResumeVM(ctx) }); err == nil {
				state = fcapi.StateRunning
			}
		}
		if state == fcapi.StateRunning {
			rec.setStatus(microvm.StatusRunning)
		} else {
			rec.setStatus(microvm.StatusPaused)
		}
	default:
		// A process the record's status says should not exist (a stopped
		// or failed VM), or a booted VM reading "Not started".
		r.endProcesses(rec)
		p.close()
		if rec.Status == microvm.StatusRunning || rec.Status == microvm.StatusPaused {
			rec.Status = microvm.StatusFailed
			rec.LastError = fmt.Sprintf("firecracker reported state %q for a %s VM; its process was ended", state, rec.Status)
		}
		return rec, r.save(rec)
	}
	r.watch(rec.ID, p)
	return rec, r.save(rec)
}

// probe asks a VM's firecracker for its state (GET /), within
// probeTimeout.
func (r *Runtime) probe(ctx context.Context, rec *vmRecord) (fcapi.InstanceState, error) {
	c, err := r.client(rec, rec.Version)
	if err != nil {
		return "", err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	info, err := c.InstanceInfo(ctx)
	if err != nil {
		return "", err
	}
	return info.State, nil
}

// AdoptAll reconciles every VM of the state directory now, a few at a
// time, and watches every live process: what Open did before adoption
// became lazy (see the package documentation, "Adoption"). A long-running
// user of the Runtime that wants crash detection, and states changed
// behind the records' backs, for every VM from the start calls it once
// after Open. It costs about one API request per live VM.
func (r *Runtime) AdoptAll(ctx context.Context) error {
	if err := r.begin(); err != nil {
		return err
	}
	defer r.end()
	ids, err := r.reg.List(kindVM)
	if err != nil {
		return fmt.Errorf("firecracker: adopt: list vms: %w", err)
	}
	work := make(chan string)
	var wg sync.WaitGroup
	for range min(openWorkers, len(ids)) {
		wg.Go(func() {
			for id := range work {
				r.adoptOne(ctx, id)
			}
		})
	}
	for _, id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	return ctx.Err()
}

// adoptOne adopts one VM (see ensureAdopted), unless another operation
// holds its lock (its owner is alive and will finish).
func (r *Runtime) adoptOne(ctx context.Context, id string) {
	rec, err := r.load(id)
	if err != nil {
		r.log.Warn("skip unreadable vm record", "vm", id, "err", err)
		return
	}
	if _, err := r.ensureAdopted(ctx, rec, true); err != nil && !errors.Is(err, microvm.ErrNotFound) {
		r.log.Error("adopt vm", "vm", id, "err", err)
	}
}

// stateMatches reports whether firecracker's state agrees with a status.
func stateMatches(st fcapi.InstanceState, s microvm.Status) bool {
	switch st {
	case fcapi.StateNotStarted:
		return s == microvm.StatusCreated
	case fcapi.StateRunning:
		return s == microvm.StatusRunning
	case fcapi.StatePaused:
		return s == microvm.StatusPaused
	}
	return false
}

// watching reports whether this runtime watches rec's recorded process.
func (r *Runtime) watching(rec *vmRecord) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	w := r.watchers[rec.ID]
	return w != nil && rec.Process.same(w.p)
}

// ensureAdopted brings a VM in line with the host the first time this
// runtime meets it (adoption is lazy: Open reconciles nothing): a record
// whose process is alive (pid, start time and boot match) is watched; with
// probe, only once its API reports the recorded state (GET /). Anything
// else (the process gone, another state, an operation interrupted) is
// reconciled under the VM's lock, if nobody holds it (an operation in
// progress; its owner will settle it). It returns the current record;
// microvm.ErrNotFound when recovery removed the VM.
func (r *Runtime) ensureAdopted(ctx context.Context, rec *vmRecord, probe bool) (*vmRecord, error) {
	if rec.Process == nil && rec.Uffd == nil && rec.Op == "" {
		return rec, nil
	}
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return rec, nil
	}
	if rec.Op == "" && rec.Process != nil {
		if r.watching(rec) {
			return rec, nil
		}
		if r.adoptLive(ctx, rec, probe) {
			return rec, nil
		}
	}
	unlock, ok := r.tryLockVM(rec.ID)
	if !ok {
		return rec, nil // an operation is in progress; its owner will settle it
	}
	defer unlock()
	cur, err := r.load(rec.ID)
	if err != nil {
		return nil, err
	}
	out, err := r.adoptLocked(ctx, cur, probe)
	if err != nil && !errors.Is(err, microvm.ErrNotFound) {
		r.log.Error("adopt vm", "vm", rec.ID, "err", err)
		return cur, nil
	}
	return out, err
}

// adoptLive watches rec's process if it is alive and (with probe) its API
// reports the recorded state. It reports whether it did.
func (r *Runtime) adoptLive(ctx context.Context, rec *vmRecord, probe bool) bool {
	p, err := attach(rec.Process.PID, rec.Process.StartTime, rec.Process.BootID)
	if err != nil {
		return false
	}
	if probe {
		if st, err := r.probe(ctx, rec); err != nil || !stateMatches(st, rec.Status) {
			p.close()
			return false
		}
		// One VM met for the first time: bring its output files back
		// within bounds (a lister leaves that to the trimmer).
		r.trimVM(rec.ID)
	}
	r.watch(rec.ID, p)
	return true
}

// adoptLocked is ensureAdopted for a caller that holds the VM's lock and
// has just read rec.
func (r *Runtime) adoptLocked(ctx context.Context, rec *vmRecord, probe bool) (*vmRecord, error) {
	if rec.Process == nil && rec.Uffd == nil && rec.Op == "" {
		return rec, nil
	}
	if rec.Op == "" && rec.Process != nil && (r.watching(rec) || r.adoptLive(ctx, rec, probe)) {
		return rec, nil
	}
	op := rec.Op
	out, err := r.reconcile(ctx, rec)
	if err != nil {
		return rec, err
	}
	r.emitAdopted(op, rec, out)
	if out == nil {
		return nil, fmt.Errorf("vm %q: %w", rec.ID, microvm.ErrNotFound)
	}
	r.trimVM(rec.ID)
	return out, nil
}
