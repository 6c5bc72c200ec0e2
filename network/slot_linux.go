//go:build linux

package network

import "github.com/mvm-dev/microvm/network/internal/netnsutil"

// Do runs fn on an OS thread switched into the slot's network namespace
// and locked for fn's duration, then switches the thread back. A process
// that fn starts (exec.Cmd.Start) inherits the namespace: that is how
// Firecracker is launched inside the slot, where it opens TAPName.
// Goroutines that fn starts do not run in the namespace.
func (s *Slot) Do(fn func() error) error {
	return netnsutil.DoPath(s.NetNSPath, fn)
}
