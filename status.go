package microvm

import (
	"slices"
	"strings"
)

// Status is where a VM is in its lifecycle.
type Status string

// The statuses of a VM. See the package documentation for the transition
// table.
const (
	// StatusCreated: configured, never booted.
	StatusCreated Status = "created"
	// StatusRunning: the guest is running.
	StatusRunning Status = "running"
	// StatusPaused: the guest's vCPUs are paused; its memory is held.
	StatusPaused Status = "paused"
	// StatusStopped: the guest was shut down and holds no memory; Start
	// boots it again.
	StatusStopped Status = "stopped"
	// StatusFailed: the VM's process died when nobody asked it to;
	// VM.LastError says why. Start boots it again; Destroy removes it.
	StatusFailed Status = "failed"
	// StatusDestroyed: the VM was destroyed. Only the value returned by
	// Destroy carries it; a destroyed VM is no longer listed.
	StatusDestroyed Status = "destroyed"
)

// Statuses lists every status, in lifecycle order.
func Statuses() []Status {
	return []Status{StatusCreated, StatusRunning, StatusPaused, StatusStopped, StatusFailed, StatusDestroyed}
}

// Valid reports whether s is one of the defined statuses.
func (s Status) Valid() bool { return slices.Contains(Statuses(), s) }

// Op names a lifecycle operation, as used in the transition table.
type Op string

// The operations of the transition table.
const (
	OpStart    Op = "start"
	OpStop     Op = "stop"
	OpPause    Op = "pause"
	OpResume   Op = "resume"
	OpSnapshot Op = "snapshot"
	OpDestroy  Op = "destroy"
	// OpCrash is the transition a runtime makes when a VM's process dies
	// unasked. Callers never request it.
	OpCrash Op = "crash"
	// OpShutdown is the transition a runtime makes when the guest shuts
	// itself down cleanly (it powered off or reset, and the VM's process
	// exited with status 0). Callers never request it; Stop is the
	// operation that shuts a VM down on request.
	OpShutdown Op = "shutdown"
)

// Ops lists the operations of the transition table.
func Ops() []Op {
	return []Op{OpStart, OpStop, OpPause, OpResume, OpSnapshot, OpDestroy, OpCrash, OpShutdown}
}

type transition struct {
	from []Status
	to   Status // "" keeps the status
}

// transitions is the one transition table every runtime enforces.
var transitions = map[Op]transition{
	OpStart:    {from: []Status{StatusCreated, StatusStopped, StatusFailed}, to: StatusRunning},
	OpStop:     {from: []Status{StatusRunning, StatusPaused}, to: StatusStopped},
	OpPause:    {from: []Status{StatusRunning}, to: StatusPaused},
	OpResume:   {from: []Status{StatusPaused}, to: StatusRunning},
	OpSnapshot: {from: []Status{StatusRunning, StatusPaused}},
	OpDestroy:  {from: []Status{StatusCreated, StatusRunning, StatusPaused, StatusStopped, StatusFailed}, to: StatusDestroyed},
	OpCrash:    {from: []Status{StatusRunning, StatusPaused}, to: StatusFailed},
	OpShutdown: {from: []Status{StatusRunning, StatusPaused}, to: StatusStopped},
}

// Transition returns the status a VM with status from reaches through op, or
// a [*TransitionError] (matching [ErrInvalidTransition]) when op is not
// allowed from there. For [OpSnapshot] the returned status is from itself.
// id only labels the error.
func Transition(id string, from Status, op Op) (Status, error) {
	t, ok := transitions[op]
	if !ok || !slices.Contains(t.from, from) {
		return "", &TransitionError{ID: id, Op: op, From: from, To: t.to}
	}
	if t.to == "" {
		return from, nil
	}
	return t.to, nil
}

func allowedFrom(op Op) []Status { return transitions[op].from }

// orList joins statuses as "a, b or c".
func orList(ss []Status) string {
	parts := make([]string, len(ss))
	for i, s := range ss {
		parts[i] = string(s)
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return strings.Join(parts[:len(parts)-1], ", ") + " or " + parts[len(parts)-1]
}
