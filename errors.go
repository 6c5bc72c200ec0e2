package microvm

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Sentinel errors. Test for them with [errors.Is]; the concrete errors that
// carry details ([*OpError], [*TransitionError], [*SpecError], [*IDError],
// [*BackendError], [*ExitError]) match the sentinels below.
var (
	// ErrNotFound: no VM with that id.
	ErrNotFound = errors.New("vm not found")
	// ErrAlreadyExists: a VM with that id exists already.
	ErrAlreadyExists = errors.New("vm already exists")
	// ErrInvalidTransition: the operation is not allowed in the VM's status.
	ErrInvalidTransition = errors.New("invalid transition")
	// ErrInvalidSpec: the spec breaks one or more rules; see [*SpecError].
	ErrInvalidSpec = errors.New("invalid spec")
	// ErrInvalidID: a VM or snapshot id breaks the id rules; see [*IDError].
	ErrInvalidID = errors.New("invalid id")
	// ErrInvalidArgument: an option or argument other than a spec or id is
	// out of range (a negative timeout, a nil options pointer that is
	// required, ...).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrSnapshotExists: a snapshot with that id exists already.
	ErrSnapshotExists = errors.New("snapshot already exists")
	// ErrSnapshotNotFound: no snapshot with that id.
	ErrSnapshotNotFound = errors.New("snapshot not found")
	// ErrSnapshotInUse: the snapshot cannot be deleted because a VM still
	// depends on it.
	ErrSnapshotInUse = errors.New("snapshot in use")
	// ErrSnapshotCorrupt: a snapshot's files are missing, truncated, fail
	// their checksum or were made by an incompatible hypervisor.
	ErrSnapshotCorrupt = errors.New("snapshot corrupt or incompatible")
	// ErrBackend: the hypervisor or the host refused or failed an operation;
	// see [*BackendError].
	ErrBackend = errors.New("backend error")
	// ErrUnsupported: the runtime or the hypervisor version does not
	// support the requested feature.
	ErrUnsupported = errors.New("not supported")
	// ErrClosed: the runtime has been closed.
	ErrClosed = errors.New("runtime closed")
	// ErrExited: the VM's process exited when nobody asked it to.
	ErrExited = errors.New("vm process exited")
)

// TransitionError reports an operation refused in the VM's current status.
// It matches [ErrInvalidTransition].
type TransitionError struct {
	ID   string // the VM
	Op   Op     // the refused operation
	From Status // the status the VM was in
	To   Status // the status the operation leads to ("" when it keeps the status)
}

// Error says what was refused and why, in the caller's terms:
//
//	cannot snapshot vm "x": it is created, not running or paused
func (e *TransitionError) Error() string {
	from := allowedFrom(e.Op)
	if len(from) == 0 {
		return fmt.Sprintf("cannot %s vm %q: no status allows it (it is %s)", e.Op, e.ID, e.From)
	}
	return fmt.Sprintf("cannot %s vm %q: it is %s, not %s", e.Op, e.ID, e.From, orList(from))
}

// Is reports whether target is [ErrInvalidTransition].
func (e *TransitionError) Is(target error) bool { return target == ErrInvalidTransition }

// FieldError is one broken rule of a [Spec].
type FieldError struct {
	Field string // the field's path, e.g. "drives[1].path"
	Rule  string // what the value must satisfy
}

// Error returns "<field>: <rule>".
func (e FieldError) Error() string { return e.Field + ": " + e.Rule }

// SpecError reports every problem found in a [Spec] at once. It matches
// [ErrInvalidSpec].
type SpecError struct {
	Problems []FieldError
}

// Error returns "invalid spec: " and every problem, joined by "; ".
func (e *SpecError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.Error()
	}
	return "invalid spec: " + strings.Join(parts, "; ")
}

// Is reports whether target is [ErrInvalidSpec].
func (e *SpecError) Is(target error) bool { return target == ErrInvalidSpec }

// Has reports whether the error names field.
func (e *SpecError) Has(field string) bool {
	for _, p := range e.Problems {
		if p.Field == field {
			return true
		}
	}
	return false
}

// BackendError is a failure reported by the hypervisor or the host. It keeps
// the hypervisor's own message and HTTP status code, and matches
// [ErrBackend] (and whatever Err matches). Its Error shows the message
// trimmed to one line and the sentences that fit in 240 bytes; Message keeps it
// verbatim.
type BackendError struct {
	Op         string // what mvm was doing, e.g. "configure drives"
	Method     string // HTTP method of the API call, if any
	Path       string // API path, if any
	StatusCode int    // HTTP status of the API answer, 0 when none
	Message    string // the hypervisor's fault_message, verbatim
	Err        error  // the underlying cause, if any
}

// Error returns one line: the operation, the request, the status,
// Firecracker's fault message trimmed to a sentence and the cause.
func (e *BackendError) Error() string {
	var b strings.Builder
	b.WriteString(e.Op)
	if e.Method != "" {
		fmt.Fprintf(&b, ": %s %s", e.Method, e.Path)
	}
	if e.StatusCode != 0 {
		fmt.Fprintf(&b, ": status %d", e.StatusCode)
	}
	if e.Message != "" {
		fmt.Fprintf(&b, ": %s", faultSentence(e.Message))
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	return b.String()
}

// Is reports whether target is [ErrBackend].
func (e *BackendError) Is(target error) bool { return target == ErrBackend }

// Unwrap returns the underlying cause.
func (e *BackendError) Unwrap() error { return e.Err }

// ExitError describes a VM process that ended when nobody asked it to. It
// matches [ErrExited].
type ExitError struct {
	ID       string // the VM
	PID      int    // the process that exited
	ExitCode int    // exit status, or -1 when killed by a signal
	Signal   string // the signal's name when killed by one
	// Reason is what the hypervisor's exit status means, when it gives
	// one a meaning (firecracker: 148 is a forbidden system call caught
	// by its seccomp filter, 149 SIGBUS, ...); "" otherwise.
	Reason  string
	Console []string // the last lines of the guest console
}

// Error names the VM, its process and how the process ended.
func (e *ExitError) Error() string {
	how := fmt.Sprintf("exit status %d", e.ExitCode)
	if e.Signal != "" {
		how = "killed by signal " + e.Signal
	} else if e.ExitCode < 0 {
		how = "exit status unknown"
	}
	if e.Reason != "" {
		how += " (" + e.Reason + ")"
	}
	return fmt.Sprintf("vm %q: process %d exited unexpectedly: %s", e.ID, e.PID, how)
}

// Is reports whether target is [ErrExited].
func (e *ExitError) Is(target error) bool { return target == ErrExited }

// OpError is the error of an operation on one VM: the operation, the VM,
// the cause and, apart from the message, what the hypervisor wrote last.
// Create, in the firecracker and memory runtimes, returns no other error
// type: every failure, from a refused id or spec to a crashed process, is
// an *OpError whose cause matches one of the sentinels above. The
// firecracker runtime's other operations return one when the operation
// itself failed, and their refusals (an unknown VM, an invalid id,
// argument or transition) as they are. It matches whatever its cause
// matches ([errors.Is] and [errors.As] see through it).
//
// Error is one line: the operation, the VM and the cause, with the
// hypervisor's fault message trimmed to one line and a sentence.
// Detail, the hypervisor's last output lines, is never part of it: a CLI
// shows it on request (mvm shows it with --verbose, and for a VM that
// still exists in `mvm inspect` and `mvm logs`).
type OpError struct {
	Op  string // "create", "start", "restore", ...
	ID  string // the VM
	Err error  // the cause
	// Detail is the last lines the hypervisor and the guest console wrote
	// before the failure, oldest first (read before a rollback removed
	// them); nil when not relevant.
	Detail []string
}

// Error formats the error on one line:
//
//	start vm "x": boot: PUT /actions: status 400: Start microvm error: ...
func (e *OpError) Error() string {
	return oneLine(fmt.Sprintf("%s vm %q: %v", e.Op, e.ID, e.Err))
}

// Unwrap returns the cause.
func (e *OpError) Unwrap() error { return e.Err }

// maxFault is the longest fault message faultSentence keeps whole.
const maxFault = 240

// faultSentence trims a hypervisor's fault message for an error line: line
// breaks (firecracker ends some lines of its messages with a backslash)
// and runs of spaces become one space, and a message longer than 240
// bytes keeps the whole sentences that fit in 240 bytes, or, when the
// first does not, its first 240 bytes and "...".
func faultSentence(msg string) string {
	msg = oneLine(strings.ReplaceAll(msg, "\\\n", " "))
	if len(msg) <= maxFault {
		return msg
	}
	if i := strings.LastIndex(msg[:maxFault], ". "); i > 0 {
		return msg[:i+1] // the whole sentences that fit
	}
	cut := maxFault
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + "..."
}

// oneLine collapses s onto one line: each run of whitespace (line breaks
// included) becomes one space, and leading and trailing space goes.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
