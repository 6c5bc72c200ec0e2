package snapshot

import (
	"fmt"

	microvm "github.com/mvm-dev/microvm"
)

// CorruptError reports a snapshot that cannot be used: a file of it is
// missing, truncated, fails its checksum, its manifest is unreadable or
// invalid, or it was written in a newer format than this package reads
// ("incompatible"). It matches [microvm.ErrSnapshotCorrupt].
type CorruptError struct {
	// ID is the snapshot.
	ID string
	// File is the absolute path of the file at fault.
	File string
	// Reason says what is wrong with it.
	Reason string
	// Err is the underlying error, if any.
	Err error
}

// Error names the snapshot, the file and the problem.
func (e *CorruptError) Error() string {
	s := fmt.Sprintf("snapshot %q: %s: %s", e.ID, e.File, e.Reason)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Is reports whether target is [microvm.ErrSnapshotCorrupt].
func (e *CorruptError) Is(target error) bool { return target == microvm.ErrSnapshotCorrupt }

// Unwrap returns the underlying error.
func (e *CorruptError) Unwrap() error { return e.Err }

func notFound(id string) error {
	return fmt.Errorf("snapshot %q: %w", id, microvm.ErrSnapshotNotFound)
}
