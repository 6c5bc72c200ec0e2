package network

import (
	"errors"
	"strings"

	"github.com/mvm-dev/microvm/internal/registry"
)

// Sentinel errors. Test for them with errors.Is; the returned errors add the
// VM, slot, field or address involved.
var (
	// ErrInvalidConfig reports a Config that breaks a rule; the error is a
	// *FieldError (or several joined) naming the field.
	ErrInvalidConfig = errors.New("invalid network config")
	// ErrInvalidPolicy reports a Policy that breaks a rule; the error is a
	// *FieldError (or several joined) naming the field.
	ErrInvalidPolicy = errors.New("invalid network policy")
	// ErrInvalidVMID reports a vm id that is empty, too long or has
	// characters other than [A-Za-z0-9._-]; the error is a *FieldError.
	ErrInvalidVMID = errors.New("invalid vm id")
	// ErrPoolExhausted reports that every slot of the address pool is
	// leased.
	ErrPoolExhausted = errors.New("network address pool exhausted")
	// ErrNotFound reports that a VM has no network.
	ErrNotFound = errors.New("vm network not found")
	// ErrExists reports that the VM id that Rename would give a network
	// to already has one.
	ErrExists = errors.New("vm network exists")
	// ErrEgressMissing reports that Config.EgressInterface is not in the
	// host namespace (unplugged, renamed, deleted): a Manager opens
	// without it, and everything but giving a VM a new network works;
	// Setup of a VM that has no network yet fails with a *FieldError
	// matching it, until the interface is back.
	ErrEgressMissing = errors.New("egress interface missing")
	// ErrClosed reports use of a Manager after Close.
	ErrClosed = errors.New("network manager closed")
	// ErrRecordExists is what a Store's Create wraps when the record
	// already exists (the FileStore's errors match it).
	ErrRecordExists = registry.ErrExists
	// ErrRecordNotFound is what a Store's Get wraps when there is no
	// such record (the FileStore's errors match it).
	ErrRecordNotFound = registry.ErrNotFound
)

// FieldError is one broken rule of a Config, Policy or argument. It matches
// the sentinel in Err (ErrInvalidConfig, ErrInvalidPolicy or
// ErrInvalidVMID).
type FieldError struct {
	Field string // e.g. "Config.Pool" or "Policy.Allow[2].Ports"
	Rule  string // what is wrong and what is expected
	Err   error  // the sentinel it matches
}

// Error returns "<field>: <rule>".
func (e *FieldError) Error() string { return e.Field + ": " + e.Rule }

// Unwrap returns the sentinel.
func (e *FieldError) Unwrap() error { return e.Err }

// fieldErrors collects problems and joins them into one error.
type fieldErrors struct {
	sentinel error
	errs     []error
}

func (f *fieldErrors) add(field, rule string) {
	f.errs = append(f.errs, &FieldError{Field: field, Rule: rule, Err: f.sentinel})
}

func (f *fieldErrors) err() error {
	switch len(f.errs) {
	case 0:
		return nil
	case 1:
		return f.errs[0]
	}
	return joined(f.errs)
}

// joined is errors.Join with "; " between the messages, so a one-line log
// shows every problem.
type joined []error

func (j joined) Error() string {
	parts := make([]string, len(j))
	for i, e := range j {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "; ")
}

func (j joined) Unwrap() []error { return j }
