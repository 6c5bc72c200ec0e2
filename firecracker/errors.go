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

// outputLines is how many lines of output an OpError's Detail carries.
const outputLines = 8

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
	if e.Signal == "" {
		e.Reason = exitReason(e.ExitCode)
	}
	fault := vcpuFault(id, console)
	if !ei.known {
		// Not our child: the status is lost, but firecracker logs its own
		// exit as its last words. Said as the log's claim only: the guest's
		// serial output shares the file and could forge the line.
		if code, ok := loggedExitCode(id, console); ok {
			e.Reason = fmt.Sprintf("firecracker's log says exit_code=%d", code)
			if fault != "" {
				e.Reason += " after " + fault
			} else if r := exitReason(code); r != "" {
				e.Reason += ": " + r
			}
			return e
		}
	}
	if fault != "" && e.Reason == "" && e.Signal == "" {
		e.Reason = "firecracker's log says " + fault
	}
	return e
}

// vcpuFault finds, in the last lines of firecracker's output, a vCPU of
// VM id stopped by KVM ("[<id>:fc_vcpu N] Received KVM_EXIT_INTERNAL_ERROR
// signal"; after it v1.14 exits with status 1, v1.7 with 0, v1.0 logs no
// exit) and says what it means, or "". The guest ran no further: KVM
// could not run it (a guest kernel an emulated KVM such as kvm-pvm does
// not support stops so in early boot).
func vcpuFault(id string, lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		_, after, ok := strings.Cut(l, "["+id+":fc_vcpu ")
		if !ok {
			continue
		}
		vcpu, _, _ := strings.Cut(after, "]")
		vcpu, _, _ = strings.Cut(vcpu, ":") // v1.0: "[id:fc_vcpu 0:ERROR:file:line]"
		for _, exit := range []string{"KVM_EXIT_INTERNAL_ERROR", "KVM_EXIT_FAIL_ENTRY"} {
			if strings.Contains(after, exit) {
				return fmt.Sprintf("%s on vCPU %s: KVM could not run the guest", exit, vcpu)
			}
		}
	}
	return ""
}

// loggedExitCode finds firecracker's own last line, "... [<id>:main]
// Firecracker exiting ... exit_code=N", in the last lines of its output.
func loggedExitCode(id string, lines []string) (int, bool) {
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		if !strings.Contains(l, "["+id+":main] Firecracker exiting") {
			continue
		}
		_, after, ok := strings.Cut(l, "exit_code=")
		if !ok {
			return 0, false
		}
		code, err := strconv.Atoi(strings.TrimSpace(after))
		return code, err == nil && code >= 0 && code < 256
	}
	return 0, false
}

// exitReason says what firecracker's exit status means (FcExitCode in
// firecracker's src/vmm/src/lib.rs, the same from v1.0 to v1.14): it
// exits 148 when its seccomp filter catches a system call, and 149 to 157
// when it intercepts a fatal signal or refuses its configuration or
// command line. 0, 1 (generic error) and 2 need no words.
func exitReason(code int) string {
	switch code {
	case 148:
		return "firecracker made a system call its seccomp filter forbids"
	case 149:
		return "firecracker caught SIGBUS: guest memory or a mapped file became unreadable"
	case 150:
		return "firecracker caught SIGSEGV"
	case 151:
		return "firecracker caught SIGXFSZ: a file it writes reached the size limit"
	case 152:
		return "firecracker refused its configuration file"
	case 153:
		return "firecracker refused its command line"
	case 154:
		return "firecracker caught SIGXCPU: it reached its CPU time limit"
	case 155:
		return "firecracker caught SIGPIPE"
	case 156:
		return "firecracker caught SIGHUP"
	case 157:
		return "firecracker caught SIGILL"
	}
	return ""
}
