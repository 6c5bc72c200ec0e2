package registry

import (
	"fmt"
	"unicode/utf8"
)

const (
	// MaxKindLen is the longest accepted kind, in bytes.
	MaxKindLen = 32
	// MaxIDLen is the longest accepted id or lock name, in bytes.
	MaxIDLen = 128

	// locksDir is the directory under the registry root that holds lock
	// files; "locks" is therefore not a valid kind.
	locksDir = "locks"
)

// ValidateKind reports whether kind is a valid record kind: 1 to 32 ASCII
// lowercase letters (a-z), other than the reserved name "locks". The error
// wraps ErrInvalidName and names the value and the rule it breaks.
func ValidateKind(kind string) error {
	if kind == "" || len(kind) > MaxKindLen {
		return invalid("kind", kind, fmt.Sprintf("must be 1-%d lowercase letters a-z (got %d bytes)", MaxKindLen, len(kind)))
	}
	for i, c := range kind {
		if c < 'a' || c > 'z' {
			return invalid("kind", kind, fmt.Sprintf("must be lowercase letters a-z only (character %q at offset %d)", c, i))
		}
	}
	if kind == locksDir {
		return invalid("kind", kind, "is reserved for lock files")
	}
	return nil
}

// ValidateID reports whether id is a valid record id (and lock name): 1 to
// 128 bytes of [A-Za-z0-9._-], not starting with '.' or '-'. Such an id is
// always a single, non-hidden path element. The error wraps ErrInvalidName
// and names the value and the rule it breaks.
func ValidateID(id string) error { return validateID("id", id) }

func validateID(what, id string) error {
	if id == "" || len(id) > MaxIDLen {
		return invalid(what, id, fmt.Sprintf("must be 1-%d characters of [A-Za-z0-9._-] (got %d bytes)", MaxIDLen, len(id)))
	}
	if id[0] == '.' || id[0] == '-' {
		return invalid(what, id, "must not start with '.' or '-'")
	}
	for i, c := range id {
		if !idChar(c) {
			return invalid(what, id, fmt.Sprintf("must contain only [A-Za-z0-9._-] (character %q at offset %d)", c, i))
		}
	}
	return nil
}

func idChar(c rune) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == '_' || c == '-'
}

// invalid builds an ErrInvalidName error. Long values are shortened so a
// hostile name cannot bloat logs.
func invalid(what, value, rule string) error {
	const show = 64
	if len(value) > show {
		cut := show
		for cut > 0 && !utf8.RuneStart(value[cut]) {
			cut--
		}
		value = value[:cut] + "..."
	}
	return fmt.Errorf("%w: %s %q %s", ErrInvalidName, what, value, rule)
}
