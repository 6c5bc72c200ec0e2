package registry

import "errors"

// Sentinel errors. Callers test them with errors.Is; the returned errors add
// the kind, id or file involved.
var (
	// ErrNotFound reports that no record exists for a kind and id.
	ErrNotFound = errors.New("registry: record not found")
	// ErrExists reports that Create found a record already present.
	ErrExists = errors.New("registry: record already exists")
	// ErrCorrupt reports a record file that cannot be read or decoded. It
	// is matched by *CorruptError, which names the file.
	ErrCorrupt = errors.New("registry: corrupt record")
	// ErrSchema reports a record in a schema version this build cannot read:
	// newer than SchemaVersion (written by a newer build), or older with no
	// migration path. The record is left untouched.
	ErrSchema = errors.New("registry: unsupported schema version")
	// ErrInvalidName reports a kind, id or lock name that breaks the naming
	// rules (see ValidateKind and ValidateID).
	ErrInvalidName = errors.New("registry: invalid kind or id")
	// ErrClosed reports use of a Registry after Close, or of one not
	// obtained from Open.
	ErrClosed = errors.New("registry: closed")
)

// CorruptError reports a record file that exists but cannot be used: it is
// unreadable, is not valid JSON, is not a registry envelope, names a
// different kind or id than its path, or its data does not decode into the
// caller's value. errors.Is(err, ErrCorrupt) matches it.
type CorruptError struct {
	// Path is the record file.
	Path string
	// Err is the underlying problem.
	Err error
}

// Error names the file and the problem.
func (e *CorruptError) Error() string {
	if e.Err == nil {
		return "registry: corrupt record " + e.Path
	}
	return "registry: corrupt record " + e.Path + ": " + e.Err.Error()
}

// Unwrap returns the underlying problem.
func (e *CorruptError) Unwrap() error { return e.Err }

// Is reports whether target is ErrCorrupt.
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }
