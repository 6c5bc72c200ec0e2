package firecracker

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/mvm-dev/microvm/agent"
)

// TestPruneGuests: the agent client cache keeps the live VMs' clients and
// drops those of another process of the same socket, of a removed socket
// (a destroyed VM) and of an ended process.
func TestPruneGuests(t *testing.T) {
	dir := t.TempDir()
	sock := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	live, other := sock("live.sock"), sock("other.sock")
	self := os.Getpid()
	keys := map[string]guestKey{
		"keep":          {live, self},
		"same-socket":   {live, 1},
		"other-live":    {other, self},
		"socket-gone":   {filepath.Join(dir, "gone.sock"), self},
		"process-ended": {other, 1 << 22}, // above pid_max: no such process
	}
	for _, k := range keys {
		guests.Store(k, agent.DialGuest(k.uds, agent.HTTPPort))
	}
	t.Cleanup(func() {
		for _, k := range keys {
			guests.Delete(k)
		}
	})
	pruneGuests(keys["keep"])
	for name, k := range keys {
		_, ok := guests.Load(k)
		if want := name == "keep" || name == "other-live"; ok != want {
			t.Errorf("%s: cached %v, want %v", name, ok, want)
		}
	}
}
