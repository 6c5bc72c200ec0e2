package registry_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mvm-dev/microvm/internal/registry"
)

// FuzzNames checks that name validation never panics and that every
// accepted kind or id is a single, non-hidden path element.
func FuzzNames(f *testing.F) {
	for _, s := range []string{"vm", "web-1", "10.0.0.2", "../x", "a/b", "", ".hidden", "-x", "..", "café", "locks", strings.Repeat("a", 129)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		check := func(what string, err error, maxLen int) {
			if err != nil {
				if !errors.Is(err, registry.ErrInvalidName) {
					t.Fatalf("%s(%q) = %v, want ErrInvalidName", what, s, err)
				}
				return
			}
			switch {
			case s == "" || len(s) > maxLen:
				t.Fatalf("%s accepted %q: length %d", what, s, len(s))
			case strings.ContainsAny(s, "/\\\x00"):
				t.Fatalf("%s accepted %q: separator or NUL", what, s)
			case s[0] == '.' || s[0] == '-':
				t.Fatalf("%s accepted %q: leading '.' or '-'", what, s)
			case filepath.Base(s) != s || !filepath.IsLocal(s+".json") || filepath.Clean(s) != s:
				t.Fatalf("%s accepted %q: not a single path element", what, s)
			}
		}
		check("ValidateID", registry.ValidateID(s), registry.MaxIDLen)
		err := registry.ValidateKind(s)
		check("ValidateKind", err, registry.MaxKindLen)
		if err == nil && strings.Trim(s, "abcdefghijklmnopqrstuvwxyz") != "" {
			t.Fatalf("ValidateKind accepted %q", s)
		}
	})
}
