package firecracker

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
)

// TestDiscardKeepsNetworkedRecordWithoutNetworking: an interrupted Create
// of a VM holding a managed network, found by a runtime without
// networking, is not discarded: its network could not be released, so its
// record and folder stay (Get still shows it) for a runtime with
// networking, instead of the slot leaking with no record naming it.
func TestDiscardKeepsNetworkedRecordWithoutNetworking(t *testing.T) {
	bin, spec := standinSpec(t)
	ctx := context.Background()
	state := t.TempDir()
	cfg := Config{StateDir: state, FirecrackerBin: bin, ReadyTimeout: 5 * time.Second}
	rt, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Create(ctx, "n", spec); err != nil {
		t.Fatal(err)
	}
	// What a Create of a networked VM killed after Attach leaves: the op
	// mark and the attachment in the record.
	rec, err := rt.load("n")
	if err != nil {
		t.Fatal(err)
	}
	rt.unwatch("n")
	rec.Op = opCreate
	rec.Net = &NetworkAttachment{NetNS: "/run/netns/gone", TAP: "tap0"}
	if err := rt.save(rec); err != nil {
		t.Fatal(err)
	}
	rt.Close()

	rt, err = Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close()
	vm, err := rt.Get(ctx, "n")
	if err != nil {
		t.Fatalf("Get after adoption: %v, want the record kept (its network is not released)", err)
	}
	if pid := vm.Backend.PID; pid != 0 {
		// The record may still name it; the process itself was ended.
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil && !strings.Contains(string(b), ") Z ") {
			t.Errorf("the interrupted Create's process still runs: pid %d", pid)
		}
	}
	if _, err := os.Stat(rt.paths("n").dir); err != nil {
		t.Errorf("vm folder: %v, want kept", err)
	}
	if _, err := rt.Destroy(ctx, "n"); !errors.Is(err, ErrNoNetwork) {
		t.Errorf("Destroy without networking: %v, want ErrNoNetwork", err)
	}
	// Clean up as a runtime with networking would: forget the attachment.
	rec, err = rt.load("n")
	if err != nil {
		t.Fatal(err)
	}
	rec.Net = nil
	if err := rt.save(rec); err != nil {
		t.Fatal(err)
	}
	// The next touch finishes the discard (or Destroy does).
	if _, err := rt.Destroy(ctx, "n"); err != nil && !errors.Is(err, microvm.ErrNotFound) {
		t.Fatal(err)
	}
	if _, err := os.Stat(rt.paths("n").dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("vm folder after the discard: %v", err)
	}
}
