package microvm

import (
	"fmt"
	"time"
)

// ValidateSnapshotID is [ValidateID] for snapshot ids; its error names the
// snapshot id.
func ValidateSnapshotID(id string) error {
	return validateID("snapshot id", id)
}

// StopTimeout returns the stop timeout o asks for: [DefaultStopTimeout] for
// a nil o or a zero Timeout. A negative Timeout is refused with
// [ErrInvalidArgument].
func (o *StopOptions) StopTimeout() (time.Duration, error) {
	if o == nil || o.Timeout == 0 {
		return DefaultStopTimeout, nil
	}
	if o.Timeout < 0 {
		return 0, fmt.Errorf("stop options: timeout must be >= 0 (got %s): %w", o.Timeout, ErrInvalidArgument)
	}
	return o.Timeout, nil
}

// Validate checks the options; a nil o is valid (a full snapshot).
func (o *SnapshotOptions) Validate() error {
	if o == nil {
		return nil
	}
	switch o.Type {
	case "", SnapshotFull:
		if o.Parent != "" {
			return fmt.Errorf("snapshot options: parent is only allowed with type %q: %w", SnapshotDiff, ErrInvalidArgument)
		}
	case SnapshotDiff:
		if o.Parent != "" {
			if err := validateID("snapshot options: parent", o.Parent); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("snapshot options: type must be %q or %q (got %q): %w", SnapshotFull, SnapshotDiff, o.Type, ErrInvalidArgument)
	}
	return nil
}

// SnapshotType returns the type o asks for, full when o is nil or empty.
func (o *SnapshotOptions) SnapshotType() SnapshotType {
	if o == nil || o.Type == "" {
		return SnapshotFull
	}
	return o.Type
}

// Validate checks the options; a nil o is valid. Errors match
// [ErrInvalidArgument]; bad Labels also give a [*SpecError] (matching
// [ErrInvalidSpec]).
func (o *RestoreOptions) Validate() error {
	if o == nil {
		return nil
	}
	switch o.MemoryBackend {
	case MemoryBackendDefault, MemoryBackendFile, MemoryBackendUffd:
	default:
		return fmt.Errorf("restore options: memory backend must be %q or %q (got %q): %w",
			MemoryBackendFile, MemoryBackendUffd, o.MemoryBackend, ErrInvalidArgument)
	}
	if o.Labels != nil {
		v := &validator{}
		checkLabels(v, o.Labels)
		if err := v.err(); err != nil {
			// Bad labels are a bad option (the Runtime contract) and a bad
			// spec (the restored VM's): the error matches both.
			return fmt.Errorf("restore options: %w: %w", ErrInvalidArgument, err)
		}
	}
	return nil
}
