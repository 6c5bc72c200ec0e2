package firecracker_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestChildReapedAfterClose: a firecracker this process started that exits
// after its Runtime closed is reaped (no zombie is left in a long-lived
// embedder), and a Runtime opened later learns how it really ended.
func TestChildReapedAfterClose(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	bin := standin(t)
	rt := open(t, state, bin)
	vm, err := rt.Create(ctx, "z", testSpec(t))
	if err != nil {
		t.Fatal(err)
	}
	pid := vm.Backend.PID
	rt.Close()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Gone from /proc once reaped; a zombie would stay.
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, err := os.Stat("/proc/" + strconv.Itoa(pid))
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
			t.Fatalf("pid %d not reaped 10s after SIGKILL: %s", pid, st)
		}
		time.Sleep(time.Millisecond)
	}
	rt2 := open(t, state, bin)
	defer rt2.Close()
	got, err := rt2.Get(ctx, "z")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got.LastError, "killed by signal SIGKILL") {
		t.Errorf("LastError %q: want the real exit (SIGKILL) of this process's child", got.LastError)
	}
	rt2.Destroy(ctx, "z")
}
