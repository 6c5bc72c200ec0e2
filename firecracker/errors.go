package firecracker

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"strconv"
	"strings"
	"syscall"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/fcapi"
)

// OpError is the error of a runtime operation on one VM: the operation,
// the VM, the cause, and, when the cause is a failed boot or
// configuration, the last lines firecracker wrote (the VM directory that
// held them may be gone after a rollback). It matches whatever its cause
// matches (errors.Is and errors.As see through it).
type OpError struct {
	Op     string   // "create", "start", "restore", ...
	ID     string   // the VM
	Err    error    // the cause
	Output []string // the last lines of console.log and firecracker.log, if relevant
}

// Error formats the error on one line:
//
//	create vm "x": configure drives: PUT /drives/rootfs: status 400: <fault_message>; last output: "..." | "..."
func (e *OpError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s vm %q: %v", e.Op, e.ID, e.Err)
	if len(e.Output) > 0 {
		b.WriteString("; last output: ")
		for i, l := range e.Output {
			if i > 0 {
				b.WriteString(" | ")
			}
			if len(l) > maxOutputLine {
				l = l[:maxOutputLine] + "..."
			}
			b.WriteString(strconv.Quote(l))
		}
	}
	return b.String()
}

// Unwrap returns the cause.
func (e *OpError) Unwrap() error { return e.Err }

// outputLines is how many lines of output an OpError carries, and
// maxOutputLine how much of each its message shows.
const (
	outputLines   = 8
	maxOutputLine = 200
)

// backendErr turns a failure of step (e.g. "configure drives") into a
// *microvm.BackendError. An *fcapi.APIError keeps its method, path,
// status code and fault message; a request the hypervisor's version
// cannot express also matches microvm.ErrUnsupported; a missing API
// socket is named as such.
func backendErr(step string, err error) error {
	if err == nil {
		return nil
	}
	var be *microvm.BackendError
	if errors.As(err, &be) {
		return err
	}
	var ae *fcapi.APIError
	if errors.As(err, &ae) {
		msg := ae.FaultMessage
		if msg == "" {
			msg = ae.Body
		}
		return &microvm.BackendError{Op: step, Method: ae.Method, Path: ae.Path, StatusCode: ae.StatusCode, Message: msg}
	}
	switch {
	case errors.Is(err, fcapi.ErrUnsupported):
		err = fmt.Errorf("%w: %w", microvm.ErrUnsupported, err)
	case errors.Is(err, fs.ErrNotExist) && isDialError(err):
		err = fmt.Errorf("api socket is missing (was the VM directory removed?): %w", err)
	case errors.Is(err, syscall.ECONNREFUSED):
		err = fmt.Errorf("api socket refused the connection (is firecracker still running?): %w", err)
	}
	return &microvm.BackendError{Op: step, Err: err}
}

// isDialError reports whether err came from connecting to the socket.
func isDialError(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// invalidArg reports a bad option or argument.
func invalidArg(format string, args ...any) error {
	return fmt.Errorf(format+": %w", append(args, microvm.ErrInvalidArgument)...)
}

// exitError builds the microvm.ExitError of a VM whose process ended
// unasked.
func exitError(id string, pid int, ei exitInfo, console []string) *microvm.ExitError {
	e := &microvm.ExitError{ID: id, PID: pid, ExitCode: ei.code, Signal: ei.signal, Console: console}
	if !ei.known {
		e.ExitCode, e.Signal = -1, ""
	}
	return e
}
