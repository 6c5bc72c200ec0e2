package firecracker_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
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

// TestFirecrackerEnvironment: firecracker gets a minimal environment (PATH
// only), never the embedder's; Config.Env replaces it.
func TestFirecrackerEnvironment(t *testing.T) {
	t.Setenv("MVM_TEST_SECRET", "hunter2")
	ctx := context.Background()
	for _, c := range []struct {
		env  []string
		want string
	}{
		{nil, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		{[]string{"MVM_TEST_GIVEN=1"}, "MVM_TEST_GIVEN=1"},
	} {
		rt := open(t, t.TempDir(), standin(t), func(cfg *firecracker.Config) { cfg.Env = c.env })
		vm, err := rt.Create(ctx, "env", testSpec(t))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile("/proc/" + strconv.Itoa(vm.Backend.PID) + "/environ")
		if err != nil {
			t.Fatal(err)
		}
		env := strings.Split(string(b), "\x00")
		if slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "MVM_TEST_SECRET=") }) || !slices.Contains(env, c.want) {
			t.Errorf("Env %q: firecracker's environment %q, want %q and not the embedder's", c.env, env, c.want)
		}
		rt.Destroy(ctx, "env")
		rt.Close()
	}
}

// TestNoFileForUnknownIDs: operations on ids that never existed leave no
// file behind in the state directory (no lock file, no record, no
// directory).
func TestNoFileForUnknownIDs(t *testing.T) {
	ctx := context.Background()
	state := t.TempDir()
	rt := open(t, state, standin(t))
	defer rt.Close()
	for i := range 20 {
		id := "ghost-" + strconv.Itoa(i)
		if _, err := rt.Get(ctx, id); !errors.Is(err, microvm.ErrNotFound) {
			t.Fatalf("Get(%s): %v", id, err)
		}
		if _, err := rt.Start(ctx, id); !errors.Is(err, microvm.ErrNotFound) {
			t.Fatalf("Start(%s): %v", id, err)
		}
		if _, err := rt.Destroy(ctx, id); !errors.Is(err, microvm.ErrNotFound) {
			t.Fatalf("Destroy(%s): %v", id, err)
		}
	}
	filepath.WalkDir(state, func(path string, d os.DirEntry, err error) error {
		if strings.Contains(filepath.Base(path), "ghost") {
			t.Errorf("left behind for an id that never existed: %s", path)
		}
		return nil
	})
}
