package registry

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// TempIDs returns, sorted and without repeats, the ids of kind that have
// temporary files: writes in progress, or left by a writer that was killed
// before its commit. It lets a caller that serialises the writes of its
// own records (under its own locks) remove the leftovers at once with
// RemoveTemps, rather than waiting StaleTempAge for Open to do it.
func (r *Registry) TempIDs(kind string) ([]string, error) {
	ents, err := r.kindEntries(kind, "list temporary files of")
	if err != nil {
		return nil, err
	}
	ids := []string{}
	for _, e := range ents {
		if id, ok := tempID(e.Name()); ok && e.Type().IsRegular() {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids), nil
}

// RemoveTemps removes the temporary files of record kind/id and returns
// how many it removed. The caller must know that no write of that record
// is in progress (it holds the lock under which all of them are made): a
// write whose temporary file is removed fails at its commit, and nothing
// is corrupted. A record's file is never touched.
func (r *Registry) RemoveTemps(kind, id string) (int, error) {
	if err := r.check(kind, id); err != nil {
		return 0, err
	}
	kdir := filepath.Join(r.dir, kind)
	ents, err := os.ReadDir(kdir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("registry: remove temporary files of %s/%s: %w", kind, id, err)
	}
	n := 0
	var errs []error
	for _, e := range ents {
		if got, ok := tempID(e.Name()); !ok || got != id || !e.Type().IsRegular() {
			continue
		}
		if err := os.Remove(filepath.Join(kdir, e.Name())); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		n++
	}
	if err := errors.Join(errs...); err != nil {
		return n, fmt.Errorf("registry: remove temporary files of %s/%s: %w", kind, id, err)
	}
	return n, nil
}

// tempID returns the record id of a temporary file name made by writeTemp
// (tmpPrefix, the id, '-', and os.CreateTemp's decimal random part).
func tempID(name string) (string, bool) {
	rest, ok := strings.CutPrefix(name, tmpPrefix)
	if !ok {
		return "", false
	}
	i := strings.LastIndexByte(rest, '-')
	if i <= 0 || i == len(rest)-1 {
		return "", false
	}
	for _, c := range rest[i+1:] {
		if c < '0' || c > '9' {
			return "", false
		}
	}
	id := rest[:i]
	return id, ValidateID(id) == nil
}
