package microvm

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxIDLen is the longest VM or snapshot id, in bytes.
const MaxIDLen = 64

// ValidateID reports whether id is a valid VM or snapshot id: 1 to
// [MaxIDLen] characters of [A-Za-z0-9-], not starting with '-'. The error
// matches [ErrInvalidID] and names the rule that was broken.
func ValidateID(id string) error {
	return validateID("id", id)
}

func validateID(field, id string) error {
	var rule string
	switch {
	case id == "":
		rule = "must not be empty"
	case len(id) > MaxIDLen:
		rule = fmt.Sprintf("must be at most %d characters (got %d)", MaxIDLen, len(id))
	case id[0] == '-':
		rule = "must not start with '-'"
	default:
		if i := strings.IndexFunc(id, func(r rune) bool { return !isIDChar(r) }); i >= 0 {
			_, size := utf8.DecodeRuneInString(id[i:]) // 1 for an invalid byte
			rule = fmt.Sprintf("may contain only letters, digits and '-' (bad character %q at offset %d)", id[i:i+size], i)
		}
	}
	if rule == "" {
		return nil
	}
	return &IDError{Field: field, ID: id, Rule: rule}
}

func isIDChar(r rune) bool {
	return r == '-' || ('0' <= r && r <= '9') || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z')
}

// IDError reports an invalid VM or snapshot id. It matches [ErrInvalidID].
type IDError struct {
	Field string // "id", "snapshot id", ...
	ID    string // the rejected value
	Rule  string // the rule it breaks
}

// Error names the field, the id (cut to 80 bytes) and the rule it breaks.
func (e *IDError) Error() string {
	return fmt.Sprintf("invalid %s %q: %s", e.Field, truncate(e.ID, 80), e.Rule)
}

// Is reports whether target is [ErrInvalidID].
func (e *IDError) Is(target error) bool { return target == ErrInvalidID }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
