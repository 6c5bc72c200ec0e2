package firecracker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/internal/eventlog"
)

// dirEvents holds the event log (package internal/eventlog) in the state
// directory, shared by every runtime over it.
const dirEvents = "events"

var _ microvm.EventSource = (*Runtime)(nil)

func (r *Runtime) eventLog() (*eventlog.Log, error) {
	return eventlog.Open(filepath.Join(r.state, dirEvents), 0)
}

// Events delivers the VMs' lifecycle events, from this runtime and from
// every other runtime (in any process) over the same state directory,
// until ctx ends or the runtime closes (see microvm.EventSource). The
// events come from an append-only log in the state directory, bounded to
// about 4 MiB (its oldest half is dropped as it fills); opts.Since
// replays what it keeps. Each event is recorded by the runtime that made
// it happen, under the VM's lock, so a crash seen by several runtimes is
// recorded once; likewise the renamed event of a rename whose process died
// after its commit is recorded by the one runtime whose recovery finishes
// it (see Rename). The log is one stream for every VM, by the id each had
// at the time, so a replay across a rename shows the old id's events, the
// renamed event, then the new id's.
func (r *Runtime) Events(ctx context.Context, opts *microvm.EventOptions) (<-chan microvm.Event, error) {
	if err := r.begin(); err != nil {
		return nil, err
	}
	defer r.end()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l, err := r.eventLog()
	if err != nil {
		return nil, fmt.Errorf("firecracker: events: %w", err)
	}
	var since time.Time
	if opts != nil {
		since = opts.Since
	}
	// The subscription ends with ctx or with the runtime, whichever first.
	fctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(r.ctx, cancel)
	r.bg.Add(1)
	ch, err := l.Follow(fctx, since, func() { stop(); cancel(); r.bg.Done() })
	if err != nil {
		stop()
		cancel()
		r.bg.Done()
		return nil, fmt.Errorf("firecracker: events: %w", err)
	}
	return ch, nil
}

// emit records an event of rec (its status after the event). The caller
// holds the VM's lock. A failure to record is logged: the operation it
// reports has happened.
func (r *Runtime) emit(typ microvm.EventType, rec *vmRecord, reason, snapshot string) {
	r.appendEvent(microvm.Event{Time: time.Now().UTC(), VM: rec.ID, Type: typ, Status: rec.Status,
		Reason: reason, Snapshot: snapshot, PID: os.Getpid()})
}

// appendEvent records e (see emit), logging a failure.
func (r *Runtime) appendEvent(e microvm.Event) {
	l, err := r.eventLog()
	if err == nil {
		err = l.Append(e)
	}
	if err != nil {
		r.log.Warn("record event", "vm", e.VM, "event", string(e.Type), "err", err)
	}
}

// emitRenamed records the rename of the VM from to rec's id, once it is
// committed and its mark cleared (by Rename, or by the recovery that
// finishes it: whichever clears the new record's mark records it).
func (r *Runtime) emitRenamed(rec *vmRecord, from string) {
	r.appendEvent(microvm.Event{Time: time.Now().UTC(), VM: rec.ID, Type: microvm.EventRenamed, Status: rec.Status,
		From: from, PID: os.Getpid()})
}

// opEvent is the event of a one-call operation.
func opEvent(op microvm.Op) microvm.EventType {
	switch op {
	case microvm.OpPause:
		return microvm.EventPaused
	case microvm.OpResume:
		return microvm.EventResumed
	}
	return ""
}

// emitAdopted records a takeover: a VM whose operation op was left
// unfinished by a process that died, reconciled into out (nil: removed).
func (r *Runtime) emitAdopted(op string, rec, out *vmRecord) {
	if op == "" {
		return
	}
	if out == nil && op == opRename {
		// The record was one half of a rename (the old id's of a committed
		// one, the new id's of an undone one): no VM went; the renamed
		// event, if any, is the other half's.
		return
	}
	if out == nil {
		rec.Status = microvm.StatusDestroyed
		r.emit(microvm.EventDestroyed, rec, "removed: its "+op+" was interrupted", "")
		return
	}
	r.emit(microvm.EventAdopted, out, "took over after an interrupted "+op, "")
}
