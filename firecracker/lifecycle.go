package firecracker

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/fcapi"
	"github.com/mvm-dev/microvm/internal/registry"
)

// Create makes a VM from spec: it checks the spec's files, spawns a
// firecracker in the VM's directory and configures it (logger, metrics,
// machine, boot source, drives, network interfaces, vsock, MMDS), without
// booting it. If any step fails, everything made so far is undone (the
// process, the directory, the record) and the *microvm.OpError names the step and
// carries firecracker's last output lines.
func (r *Runtime) Create(ctx context.Context, id string, spec microvm.Spec) (microvm.VM, error) {
	vm, err := r.create(ctx, id, spec)
	if err != nil {
		var oe *microvm.OpError
		if !errors.As(err, &oe) || oe.Op != "create" || oe.ID != id {
			err = &microvm.OpError{Op: "create", ID: id, Err: err}
		}
	}
	return vm, err
}

func (r *Runtime) create(ctx context.Context, id string, spec microvm.Spec) (microvm.VM, error) {
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
	if err := r.begin(); err != nil {
		return microvm.VM{}, err
	}
	defer r.end()
	if err := ctx.Err(); err != nil {
		return microvm.VM{}, err
	}
	if err := checkImageDrives(spec); err != nil {
		return microvm.VM{}, err
	}
	if err := checkFiles(spec); err != nil {
		return microvm.VM{}, err
	}
	if err := checkMMDSKey(spec); err != nil {
		return microvm.VM{}, err
	}
	if nic, ok := managedInterface(spec); ok && r.cfg.Network == nil {
		return microvm.VM{}, &microvm.OpError{Op: "create", ID: id, Err: fmt.Errorf(
			"network[%s]: a managed interface (empty host_dev_name): %w", nic.ID, errNoNetwork)}
	}
	unlock, err := r.lockVM(ctx, id)
	if err != nil {
		return microvm.VM{}, &microvm.OpError{Op: "create", ID: id, Err: err}
	}
	defer unlock()
	// Creates of one id are serialised by the lock, and every writer of VM
	// records holds it: a record that does not exist now will not appear
	// before this Create writes it.
	if err := r.reg.Get(kindVM, id, nil); err == nil || !errors.Is(err, registry.ErrNotFound) {
		if err == nil {
			return microvm.VM{}, microvm.ErrAlreadyExists
		}
		return microvm.VM{}, &microvm.OpError{Op: "create", ID: id, Err: err}
	}
	now := nowUTC()
	rec := &vmRecord{ID: id, Spec: spec, Status: microvm.StatusCreated, Op: opCreate, CreatedAt: now, UpdatedAt: now, Binary: r.bin}
	// No record exists, so a directory of that name was left by an
	// interrupted Create: end what runs in it and remove it.
	if err := r.sweepOrphan(id); err != nil {
		return microvm.VM{}, &microvm.OpError{Op: "create", ID: id, Err: fmt.Errorf("remove leftover vm directory: %w", err)}
	}
	// With a network to attach, the record is written first, so that an
	// interrupted Create is found (and its network released) by its
	// record. Otherwise the VM directory, made before the process is
	// spawned, is the mark that a process may exist (see strays.go), and
	// the record is written once, when the VM is configured.
	// A jailed launch writes the record first too: it names the uid,
	// chroot and cgroups before they are made, and so does a VM with an
	// image drive: the record names the lease before it is taken.
	how := recordNone
	_, managed := managedInterface(spec)
	if managed || r.jailed() || usesImages(spec) {
		if err := r.reg.Create(kindVM, id, rec); err != nil {
			if errors.Is(err, registry.ErrExists) {
				return microvm.VM{}, microvm.ErrAlreadyExists
			}
			return microvm.VM{}, &microvm.OpError{Op: "create", ID: id, Err: err}
		}
		how = recordPID
		if err := r.cloneImages(ctx, rec); err != nil {
			return microvm.VM{}, r.undo("create", rec, nil, err)
		}
		if managed {
			if err := r.attachNetwork(ctx, rec); err != nil {
				return microvm.VM{}, r.undo("create", rec, nil, err)
			}
		}
	}
	// The final record is written and fsynced (Prepare) while firecracker
	// starts and is configured, and made visible (link or rename,
	// directory fsync) only when the configuration succeeded. It is begun
	// right after the spawn with the version the binary reported last
	// time, and begun again if this process reports another.
	type prepared struct {
		w   *registry.Pending
		err error
		rec *vmRecord
	}
	var prep chan prepared
	startPrep := func(version string) {
		f := *rec
		f.Op, f.Version, f.UpdatedAt = "", version, nowUTC()
		if v := spec.Vsock; v != nil {
			_, f.VsockPath = vsockPath(r.layout(&f), v)
		}
		ch := make(chan prepared, 1)
		go func() {
			w, err := r.reg.Prepare(kindVM, id, &f)
			ch <- prepared{w, err, &f}
		}()
		prep = ch
	}
	dropPrep := func() {
		if prep != nil {
			if pw := <-prep; pw.w != nil {
				pw.w.Discard()
			}
			prep = nil
		}
	}
	guess, _ := r.knownVersion(rec.Binary)
	p, c, err := r.launch(ctx, rec, how, func() {
		if guess != "" {
			startPrep(guess)
		}
	})
	if err != nil {
		dropPrep()
		return microvm.VM{}, r.undo("create", rec, nil, err)
	}
	defer c.Close()
	if prep == nil || guess != rec.Version {
		dropPrep()
		startPrep(rec.Version)
	}
	err = r.configure(ctx, c, rec)
	pw := <-prep
	if err != nil {
		if pw.w != nil {
			pw.w.Discard()
		}
		return microvm.VM{}, r.undo("create", rec, p, r.withExit(rec, p, err))
	}
	if pw.err != nil {
		return microvm.VM{}, r.undo("create", rec, p, fmt.Errorf("vm %q: write record: %w", id, pw.err))
	}
	commit := pw.w.CommitNew
	if how != recordNone {
		commit = pw.w.Commit // replaces the record written first
	}
	if err := commit(); err != nil {
		if errors.Is(err, registry.ErrExists) {
			// Another writer (one that does not lock) made the VM: leave
			// its directory and record alone.
			p.terminate(killWait)
			p.close()
			return microvm.VM{}, microvm.ErrAlreadyExists
		}
		return microvm.VM{}, r.undo("create", rec, p, fmt.Errorf("vm %q: write record: %w", id, err))
	}
	rec = pw.rec
	r.watch(id, p)
	r.emit(microvm.EventCreated, rec, "", "")
	return r.view(rec, nil), nil
}

// withExit adds to err how p ended, when a step failed because the
// process died (the error then also matches microvm.ErrExited). A request
// that failed in transport (not with an API answer) may have lost its
// connection a moment before the process became a zombie: it waits for
// the exit briefly.
func (r *Runtime) withExit(rec *vmRecord, p *proc, err error) error {
	if p == nil || !r.diedDuring(p, err) {
		return err
	}
	ei := p.reap()
	if !ei.known {
		ei = r.exitOf(*recordOf(p))
	}
	return fmt.Errorf("%w; %w", err, exitError(rec.ID, p.pid, ei, nil))
}

// exitGrace bounds the wait for a process whose API connection broke.
const exitGrace = 200 * time.Millisecond

// diedDuring reports whether p has exited, waiting up to exitGrace when
// err is a transport failure rather than an API answer.
func (r *Runtime) diedDuring(p *proc, err error) bool {
	if p.exited() {
		return true
	}
	var ae *fcapi.APIError
	if errors.As(err, &ae) || errors.Is(err, fcapi.ErrUnsupported) || errors.Is(err, fcapi.ErrInvalidArgument) {
		return false
	}
	done, _ := p.wait(context.Background(), exitGrace)
	return done
}

// undo removes everything an interrupted Create or Restore made: the
// process (p, or the one recorded), the network attachment, the VM
// directory and the record. It returns the *microvm.OpError for cause, with the
// last output lines read before the directory went.
func (r *Runtime) undo(op string, rec *vmRecord, p *proc, cause error) error {
	out := r.lastOutput(rec.ID)
	if err := r.discard(rec, p); err != nil {
		r.log.Error("undo "+op, "vm", rec.ID, "err", err)
		cause = fmt.Errorf("%w (and undoing it failed: %v)", cause, err)
	}
	return &microvm.OpError{Op: op, ID: rec.ID, Err: cause, Detail: out}
}

// discard ends the VM's processes and releases all it holds on the host
// (see held), then removes its record. It is the common end of Destroy,
// of undone creates and restores, and of recovery. A process that
// survives SIGKILL keeps the record, so that a later Destroy or recovery
// finds it.
func (r *Runtime) discard(rec *vmRecord, p *proc) error {
	// Stop watching first: the exit is asked for, and a watcher woken by
	// it would only take the VM's lock (and make its lock file again)
	// after Destroy removed it.
	r.unwatch(rec.ID)
	if err := r.release(rec, p, scopeVM); err != nil {
		return err
	}
	return r.reg.Delete(kindVM, rec.ID)
}

// Start boots a created, stopped or failed VM. A created VM whose process
// is alive is booted with InstanceStart; otherwise a fresh process is
// spawned, configured from the spec and booted (a stopped or failed VM
// keeps no process; a VM restored from a snapshot then boots from its
// kernel).
func (r *Runtime) Start(ctx context.Context, id string) (microvm.VM, error) {
	rec, done, err := r.enterVM(ctx, id)
	if err != nil {
		return microvm.VM{}, err
	}
	defer done()
	to, err := microvm.Transition(id, rec.Status, microvm.OpStart)
	if err != nil {
		return microvm.VM{}, err
	}
	if rec.Status == microvm.StatusCreated && rec.Process != nil {
		if p, err := attach(rec.Process.PID, rec.Process.StartTime, rec.Process.BootID); err == nil {
			defer p.close()
			// Marked before the call: a driver that dies after
			// InstanceStart leaves a record that recovery settles by
			// asking firecracker (see reconcile).
			rec.Op = opStart
			if err := r.mark(rec); err != nil {
				return microvm.VM{}, &microvm.OpError{Op: "start", ID: id, Err: err}
			}
			err := r.call(ctx, rec, "boot", func(c *vmClient) error { return c.InstanceStart(ctx) })
			rec.Op = ""
			if err == nil {
				rec.setStatus(to)
				if err := r.save(rec); err != nil {
					return microvm.VM{}, &microvm.OpError{Op: "start", ID: id, Err: err}
				}
				r.emit(microvm.EventStarted, rec, "", "")
				return r.viewOf(rec), nil
			}
			// call records the exit (rec.Process nil) when the process
			// died; while it dumps core, its pidfd may not be readable yet.
			if rec.Process != nil && !p.exited() {
				return microvm.VM{}, r.failOp("start", rec, err)
			}
			// The configured process died (maybe killed by InstanceStart
			// itself, as firecracker v1.0 aborts without KVM; maybe by
			// something else while Start attached): boot a fresh one below.
		}
	}
	return r.coldStart(ctx, rec, to)
}

// coldStart spawns, configures and boots a fresh process for rec. A
// managed network is attached again first, when the runtime has a
// Network: Attach returns the VM's attachment, rebuilt if it was lost (its
// namespace removed, the host rebooted); without one the recorded
// attachment is used as it is.
func (r *Runtime) coldStart(ctx context.Context, rec *vmRecord, to microvm.Status) (microvm.VM, error) {
	r.endProcesses(rec)
	// The operation is marked before the process exists: a driver that
	// dies between the spawn and the record of the pid (written by
	// launch) leaves a mark whose recovery finds the process in the VM
	// directory (see strayProcs).
	rec.Op = opStart
	err := r.mark(rec)
	var (
		p *proc
		c *vmClient
	)
	if err == nil && (r.cfg.Network != nil || rec.Net == nil) {
		err = r.attachNetwork(ctx, rec)
	}
	if err == nil {
		p, c, err = r.launch(ctx, rec, recordPID, nil)
	}
	if err == nil {
		defer c.Close()
		err = r.configure(ctx, c, rec)
		if err == nil {
			if err = c.InstanceStart(ctx); err != nil {
				err = backendErr("boot", err)
			}
		}
	}
	if err != nil {
		err = r.withExit(rec, p, err)
		out := r.lastOutput(rec.ID)
		if p != nil {
			p.terminate(killWait)
			p.close()
		}
		rec.Op = ""
		if rerr := r.release(rec, nil, scopeProcess); rerr != nil {
			err = fmt.Errorf("%w (and releasing the process's resources failed: %v)", err, rerr)
		}
		oe := &microvm.OpError{Op: "start", ID: rec.ID, Err: err, Detail: out}
		rec.setError(oe)
		if serr := r.save(rec); serr != nil {
			r.log.Error("record failed start", "vm", rec.ID, "err", serr)
		}
		return microvm.VM{}, oe
	}
	rec.Op = ""
	rec.setStatus(to)
	if err := r.save(rec); err != nil {
		p.terminate(killWait)
		p.close()
		return microvm.VM{}, &microvm.OpError{Op: "start", ID: rec.ID, Err: err}
	}
	r.watch(rec.ID, p)
	r.emit(microvm.EventStarted, rec, "", "")
	return r.viewOf(rec), nil
}

// Stop shuts a running or paused VM down: for a running VM on x86 it sends
// Ctrl-Alt-Del and waits up to the timeout for the guest to reset (which
// ends firecracker); then, or right away for a paused VM (its vCPUs cannot
// act on the request), SIGTERM, a short wait, and SIGKILL. If ctx ends
// while waiting, Stop escalates to SIGKILL at once rather than leave the
// VM half-stopped. The VM is stopped and holds no process; Start boots it
// again.
func (r *Runtime) Stop(ctx context.Context, id string, opts *microvm.StopOptions) (microvm.VM, error) {
	if err := microvm.ValidateID(id); err != nil {
		return microvm.VM{}, err
	}
	timeout, err := opts.StopTimeout()
	if err != nil {
		return microvm.VM{}, err
	}
	if opts == nil || opts.Timeout == 0 {
		timeout = r.cfg.StopTimeout
	}
	rec, done, err := r.enterVM(ctx, id)
	if err != nil {
		return microvm.VM{}, err
	}
	defer done()
	to, err := microvm.Transition(id, rec.Status, microvm.OpStop)
	if err != nil {
		return microvm.VM{}, err
	}
	rec.Op = opStop
	if err := r.mark(rec); err != nil {
		return microvm.VM{}, &microvm.OpError{Op: "stop", ID: id, Err: err}
	}
	if err := r.shutdown(ctx, rec, timeout); err != nil {
		rec.Op = ""
		oe := &microvm.OpError{Op: "stop", ID: id, Err: err}
		rec.setError(oe)
		r.save(rec)
		return microvm.VM{}, oe
	}
	r.endProcesses(rec)
	rec.Op = ""
	rec.setStatus(to)
	if err := r.save(rec); err != nil {
		return microvm.VM{}, &microvm.OpError{Op: "stop", ID: id, Err: err}
	}
	r.emit(microvm.EventStopped, rec, "", "")
	return r.viewOf(rec), nil
}

// shutdown ends rec's firecracker: Ctrl-Alt-Del (running VMs on x86) and a
// wait of up to timeout, then SIGTERM and a short wait, then SIGKILL. It
// fails only if the process survives SIGKILL.
func (r *Runtime) shutdown(ctx context.Context, rec *vmRecord, timeout time.Duration) error {
	if rec.Process == nil {
		return nil
	}
	p, err := attach(rec.Process.PID, rec.Process.StartTime, rec.Process.BootID)
	if errors.Is(err, errGone) {
		return nil
	}
	if err != nil {
		return err
	}
	defer p.close()
	if rec.Status == microvm.StatusRunning && runtime.GOARCH == "amd64" && ctx.Err() == nil {
		err := r.call(ctx, rec, "shut down", func(c *vmClient) error { return c.SendCtrlAltDel(ctx) })
		if err == nil {
			if done, _ := p.wait(ctx, timeout); done {
				p.reap()
				return nil
			}
		} else {
			r.log.Info("ctrl-alt-del failed; terminating", "vm", rec.ID, "err", err)
		}
	}
	if ctx.Err() == nil {
		p.signal(unix.SIGTERM)
		if done, _ := p.wait(ctx, termGrace); done {
			p.reap()
			return nil
		}
	}
	if !p.terminate(killWait) {
		return fmt.Errorf("firecracker process %d did not exit within %s of SIGKILL", p.pid, killWait)
	}
	return nil
}

// endProcesses ends whatever processes rec still records (used before a
// fresh spawn, after a stop and after a crash) and releases what they held
// (see held: sockets, and a jail's uid, chroot and cgroups), and forgets
// what belonged to that process: the snapshot whose memory it mapped and
// the base of its dirty-page tracking.
func (r *Runtime) endProcesses(rec *vmRecord) {
	r.unwatch(rec.ID)
	if err := r.release(rec, nil, scopeProcess); err != nil {
		r.log.Error("end processes", "vm", rec.ID, "err", err)
		return
	}
	rec.MemorySnapshot, rec.MemoryBackend, rec.DiffBase = "", "", ""
}

// Pause pauses a running VM's vCPUs (PATCH /vm Paused).
func (r *Runtime) Pause(ctx context.Context, id string) (microvm.VM, error) {
	return r.simple(ctx, id, microvm.OpPause, "pause", func(ctx context.Context, c *vmClient) error {
		return c.PauseVM(ctx)
	})
}

// Resume resumes a paused VM (PATCH /vm Resumed).
func (r *Runtime) Resume(ctx context.Context, id string) (microvm.VM, error) {
	return r.simple(ctx, id, microvm.OpResume, "resume", func(ctx context.Context, c *vmClient) error {
		return c.ResumeVM(ctx)
	})
}

// simple runs a one-call operation: check the transition, make the call,
// record the new status.
func (r *Runtime) simple(ctx context.Context, id string, op microvm.Op, step string,
	fn func(context.Context, *vmClient) error) (microvm.VM, error) {
	rec, done, err := r.enterVM(ctx, id)
	if err != nil {
		return microvm.VM{}, err
	}
	defer done()
	to, err := microvm.Transition(id, rec.Status, op)
	if err != nil {
		return microvm.VM{}, err
	}
	// Marked before the call: a driver that dies after firecracker acted
	// leaves a record that recovery settles by asking firecracker (see
	// reconcile), even where adoption does not probe (List).
	rec.Op = string(op)
	if err := r.mark(rec); err != nil {
		return microvm.VM{}, &microvm.OpError{Op: string(op), ID: id, Err: err}
	}
	err = r.call(ctx, rec, step, func(c *vmClient) error { return fn(ctx, c) })
	rec.Op = ""
	if err != nil {
		return microvm.VM{}, r.failOp(string(op), rec, err)
	}
	rec.setStatus(to)
	// Running or paused, the status describes the live process only: a
	// crash of the host ends it, and the VM is failed whichever of the
	// two the record kept, so the write needs no fsync.
	if err := r.mark(rec); err != nil {
		return microvm.VM{}, &microvm.OpError{Op: string(op), ID: id, Err: err}
	}
	r.emit(opEvent(op), rec, "", "")
	return r.viewOf(rec), nil
}

// call runs fn with an API client of rec's process. If the call fails
// because the process is gone, the VM is marked failed (see crashed) and
// the error matches microvm.ErrExited. Errors are *microvm.BackendError
// naming step.
func (r *Runtime) call(ctx context.Context, rec *vmRecord, step string, fn func(*vmClient) error) error {
	if rec.Process == nil {
		return backendErr(step, errors.New("the VM has no firecracker process"))
	}
	c, err := r.client(rec, rec.Version)
	if err != nil {
		return err
	}
	defer c.Close()
	err = fn(c)
	if err == nil {
		return nil
	}
	berr := backendErr(step, err)
	q, aerr := attach(rec.Process.PID, rec.Process.StartTime, rec.Process.BootID)
	if aerr == nil {
		died := r.diedDuring(q, err)
		q.close()
		if !died {
			return berr // alive: the call failed for another reason
		}
	} else if !errors.Is(aerr, errGone) {
		return berr
	}
	xerr := r.crashed(rec)
	if xerr == nil {
		return berr // the guest shut itself down: the VM is stopped
	}
	var be *microvm.BackendError
	if errors.As(berr, &be) {
		if be.Err == nil {
			be.Err = xerr
		} else {
			be.Err = fmt.Errorf("%w (%w)", be.Err, xerr)
		}
	}
	return berr
}

// failOp records a failed operation in the VM's LastError (unless the VM
// failed, whose LastError says why) and returns its *microvm.OpError.
func (r *Runtime) failOp(op string, rec *vmRecord, err error) error {
	oe := &microvm.OpError{Op: op, ID: rec.ID, Err: err}
	if rec.Status != microvm.StatusFailed {
		rec.setError(oe)
	}
	if serr := r.save(rec); serr != nil {
		r.log.Error("record failed operation", "vm", rec.ID, "err", serr)
	}
	return oe
}

// Destroy ends the VM's processes (SIGKILL, then confirms the exit through
// the pidfd), releases its network, removes its directory and its record,
// and returns its last view with status destroyed. Its snapshots are kept.
func (r *Runtime) Destroy(ctx context.Context, id string) (microvm.VM, error) {
	rec, done, err := r.enterVM(ctx, id)
	if err != nil {
		return microvm.VM{}, err
	}
	defer done()
	to, err := microvm.Transition(id, rec.Status, microvm.OpDestroy)
	if err != nil {
		return microvm.VM{}, err
	}
	if err := r.needsNetwork(rec); err != nil {
		return microvm.VM{}, &microvm.OpError{Op: "destroy", ID: id, Err: err}
	}
	vm := r.viewOf(rec)
	rec.Op = opDestroy
	if err := r.mark(rec); err != nil {
		return microvm.VM{}, &microvm.OpError{Op: "destroy", ID: id, Err: err}
	}
	if err := r.discard(rec, nil); err != nil {
		return microvm.VM{}, &microvm.OpError{Op: "destroy", ID: id, Err: err}
	}
	// The VM is gone for good: its lock file goes too (we hold the lock,
	// so waiters retry on a fresh file).
	if err := r.reg.RemoveLock("vm-" + id); err != nil {
		r.log.Warn("remove lock file", "vm", id, "err", err)
	}
	vm.Status = to
	vm.Backend.PID = 0
	rec.Status = to
	r.emit(microvm.EventDestroyed, rec, "", "")
	return vm, nil
}

// lockLoad takes the VM's lock and reads its record, adopting the VM (see
// adoptLocked) if this runtime meets it for the first time: a record left
// mid-operation by a process that died is recovered, a process that died
// unwatched turns its VM failed.
func (r *Runtime) lockLoad(ctx context.Context, id string) (func(), *vmRecord, error) {
	unlock, err := r.lockVM(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	rec, err := r.load(id)
	if err == nil {
		rec, err = r.adoptLocked(ctx, rec, true)
	}
	if err != nil {
		unlock()
		return nil, nil, err
	}
	return unlock, rec, nil
}

// viewOf builds the view of rec with its snapshots (an error reading them
// leaves the list empty).
func (r *Runtime) viewOf(rec *vmRecord) microvm.VM {
	snaps, err := r.snapshotsOf(rec.ID)
	if err != nil {
		r.log.Warn("list snapshots", "vm", rec.ID, "err", err)
	}
	return r.view(rec, snaps)
}
