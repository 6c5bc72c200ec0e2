//go:build linux

package nstest

import (
	"slices"
	"testing"

	"github.com/google/nftables"
)

// Tables lists, sorted, the names of the nftables tables of the namespace
// at path.
func Tables(t testing.TB, path string) []string {
	t.Helper()
	ns := Netns(t, path)
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	ts, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, x := range ts {
		names = append(names, x.Name)
	}
	slices.Sort(names)
	return names
}
