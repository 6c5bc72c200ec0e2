//go:build linux

package nstest

import (
	"os"
	"strings"
	"testing"
)

// CheckNoSlots fails t if any slot namespace is pinned in e.RunDir, any
// link named with prefix is left in e's host namespace, or list (the
// store's List) still returns records of one of kinds.
func (e *Env) CheckNoSlots(t testing.TB, prefix string, list func(kind string) ([]string, error), kinds ...string) {
	t.Helper()
	if ents, err := os.ReadDir(e.RunDir); err != nil {
		t.Errorf("read run dir: %v", err)
	} else if len(ents) > 0 {
		var names []string
		for _, ent := range ents {
			names = append(names, ent.Name())
		}
		t.Errorf("namespaces left in %s: %v", e.RunDir, names)
	}
	for _, l := range Links(t, e.Host) {
		if strings.HasPrefix(l, prefix) {
			t.Errorf("link left in the host namespace: %s", l)
		}
	}
	for _, kind := range kinds {
		if ids, err := list(kind); err != nil {
			t.Errorf("list %s: %v", kind, err)
		} else if len(ids) > 0 {
			t.Errorf("records left in %s: %v", kind, ids)
		}
	}
}
