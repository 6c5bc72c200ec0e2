package microvm

import (
	"context"
	"slices"
	"time"
)

// EventType names what happened to a VM.
type EventType string

// The event types.
const (
	EventCreated     EventType = "created"
	EventStarted     EventType = "started"
	EventPaused      EventType = "paused"
	EventResumed     EventType = "resumed"
	EventSnapshotted EventType = "snapshotted"
	EventRestored    EventType = "restored"
	// EventStopped: stopped on request, or the guest shut itself down
	// (Reason then says so).
	EventStopped EventType = "stopped"
	// EventCrashed: the VM's process died unasked; Reason says how.
	// Exactly one is recorded per crash, whichever runtimes see it.
	EventCrashed   EventType = "crashed"
	EventDestroyed EventType = "destroyed"
	// EventAdopted: a runtime took over a live VM another process started.
	EventAdopted EventType = "adopted"
	// EventRenamed: the VM's id changed ([Renamer]). The event carries
	// the new id in VM and the old one in From; the VM's events before it
	// are under From, those after it under VM. Exactly one is recorded per
	// committed rename, including one finished after a crash by the next
	// runtime over the same state (when it does); a rename refused or
	// undone records none. A consumer tracking a VM by id switches to VM
	// when it sees From (mvm events NAME does).
	EventRenamed EventType = "renamed"
)

// EventTypes lists every event type. Types are only ever added, in the
// order they were introduced (renamed is the newest); a consumer built
// before a type existed skips events of it (Valid is false for it).
func EventTypes() []EventType {
	return []EventType{EventCreated, EventStarted, EventPaused, EventResumed, EventSnapshotted,
		EventRestored, EventStopped, EventCrashed, EventDestroyed, EventAdopted, EventRenamed}
}

// Valid reports whether t is one of the defined event types.
func (t EventType) Valid() bool { return slices.Contains(EventTypes(), t) }

// Event is one thing that happened to a VM.
type Event struct {
	// Time is when it happened (UTC).
	Time time.Time `json:"time"`
	// VM is the VM's id (a renamed event's: the new one).
	VM string `json:"vm"`
	// Type is what happened.
	Type EventType `json:"type"`
	// Status is the VM's status after it.
	Status Status `json:"status"`
	// Reason says why (crashes, shutdowns by the guest).
	Reason string `json:"reason,omitempty"`
	// Snapshot names the snapshot taken (snapshotted) or restored from
	// (restored).
	Snapshot string `json:"snapshot,omitempty"`
	// From is the VM's previous id (renamed; VM is its new id).
	From string `json:"from,omitempty"`
	// PID is the process that recorded the event (not the VM's).
	PID int `json:"pid,omitempty"`
}

// EventSource is an optional capability of a [Runtime]: a stream of the
// VMs' lifecycle events, including those caused by other processes using
// the same state.
type EventSource interface {
	// Events delivers events until ctx ends or the runtime closes, then
	// closes the channel. A nil opts delivers only events that happen
	// after the call.
	Events(ctx context.Context, opts *EventOptions) (<-chan Event, error)
}

// EventOptions tunes Events.
type EventOptions struct {
	// Since replays the kept events at or after this time before
	// following new ones. Zero: no replay.
	Since time.Time
}

// FollowVM returns a filter of an event stream that keeps the events of
// one VM, by id, across renames: it keeps the events whose VM is id, and
// when it keeps a renamed event from id (From == id) it keeps those of the
// new id from then on, no longer those of id (which another VM may take).
// A renamed event to id (VM == id) is kept: the VM bearing id from then
// on. The filter has state: use one per stream, events in order (a
// replay through [EventOptions].Since is tracked the same way). mvm events
// NAME uses it.
func FollowVM(id string) func(Event) bool {
	return func(e Event) bool {
		if e.Type == EventRenamed && e.From == id && e.VM != id {
			id = e.VM
			return true
		}
		return e.VM == id
	}
}
