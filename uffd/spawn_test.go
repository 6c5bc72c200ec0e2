//go:build linux

package uffd_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/uffd"
)

// TestSpawnedHandlerReaped: a page server Spawn started that dies is
// reaped by this process (no zombie), through its pidfd.
func TestSpawnedHandlerReaped(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "mvm-uffd")
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if out, err := exec.Command(gobin, "build", "-o", bin, "../cmd/mvm-uffd").CombinedOutput(); err != nil {
		t.Fatalf("build mvm-uffd: %v\n%s", err, out)
	}
	mem := filepath.Join(dir, "mem")
	if err := os.WriteFile(mem, make([]byte, 1<<16), 0o600); err != nil {
		t.Fatal(err)
	}
	pid, err := uffd.Spawn(context.Background(), bin, uffd.Config{SocketPath: filepath.Join(dir, "u.sock"), MemFile: mem})
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, err := os.Stat("/proc/" + strconv.Itoa(pid))
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			st, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
			t.Fatalf("handler %d not reaped 10s after SIGKILL: %s", pid, st)
		}
		time.Sleep(time.Millisecond)
	}
}
