//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/internal/uffdguest"
	"github.com/mvm-dev/microvm/uffd"
	"golang.org/x/sys/unix"
)

// The test binary stands in for mvm-uffd (role "main"), for Firecracker
// (role "guest") and for a handler that never gets ready (role "hang").
func TestMain(m *testing.M) {
	switch os.Getenv("MVM_UFFD_TEST_ROLE") {
	case "main":
		os.Exit(run(os.Args[1:]))
	case "guest":
		if err := uffdguest.RunCommands(os.Stdin, os.Stdout); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	case "hang":
		time.Sleep(time.Hour)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func skipUnlessUFFD(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("userfaultfd tests need root")
	}
	fd, err := uffdguest.NewUserfaultfd()
	if err != nil {
		t.Skipf("userfaultfd unusable: %v", err)
	}
	unix.Close(fd)
}

func memFile(t *testing.T, size int) string {
	t.Helper()
	b := make([]byte, size)
	for i := 0; i < size; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], uint64(i)*0x9E3779B97F4A7C15|1)
	}
	p := filepath.Join(t.TempDir(), "mem")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func guest(t *testing.T) *uffdguest.Child {
	t.Helper()
	g, err := uffdguest.StartChild(os.Args[0], nil, []string{"MVM_UFFD_TEST_ROLE=guest"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Kill(10 * time.Second) })
	return g
}

func do(t *testing.T, g *uffdguest.Child, format string, args ...any) {
	t.Helper()
	cmd := fmt.Sprintf(format, args...)
	if _, err := g.Do(60*time.Second, cmd); err != nil {
		t.Fatalf("guest %q: %v", cmd, err)
	}
}

// waitGone waits for pid to exit (Spawn reaps it).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for unix.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("handler %d still running", pid)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitLog(t *testing.T, path, want string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), want) {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("log %s lacks %q:\n%s", path, want, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSpawnEndToEnd(t *testing.T) {
	skipUnlessUFFD(t)
	t.Setenv("MVM_UFFD_TEST_ROLE", "main")
	const size = 16 << 20
	mf := memFile(t, size)
	sock := filepath.Join(t.TempDir(), "uffd.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pid, err := uffd.Spawn(ctx, os.Args[0], uffd.Config{SocketPath: sock, MemFile: mf, Prefetch: true, Detach: true, Populate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Kill(pid, unix.SIGKILL)
	if sid, _ := unix.Getsid(pid); sid != pid {
		t.Errorf("handler session %d, want its own (%d)", sid, pid)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket not listening after Spawn: %v", err)
	}
	g := guest(t)
	do(t, g, "connect %s %s %d 4096", sock, mf, size)
	do(t, g, "check 0 %d", size)
	logPath := uffd.LogPath(sock)
	waitLog(t, logPath, "detached")
	do(t, g, "dontneed 0 %d", 1<<20)
	do(t, g, "zero 0 %d", 1<<20)
	if err := g.Wait(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	log := waitLog(t, logPath, "peer exited; done")
	for _, want := range []string{"uffd: serving", fmt.Sprintf("peer_pid=%d", g.Pid()), "prefetch done"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
}

func TestSpawnAcceptTimeout(t *testing.T) {
	skipUnlessUFFD(t)
	t.Setenv("MVM_UFFD_TEST_ROLE", "main")
	sock := filepath.Join(t.TempDir(), "uffd.sock")
	pid, err := uffd.Spawn(context.Background(), os.Args[0], uffd.Config{SocketPath: sock, MemFile: memFile(t, 1<<20), AcceptTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	waitLog(t, uffd.LogPath(sock), "nobody connected")
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestSpawnFailures(t *testing.T) {
	dir := t.TempDir()
	t.Run("bad memory file", func(t *testing.T) {
		t.Setenv("MVM_UFFD_TEST_ROLE", "main")
		_, err := uffd.Spawn(context.Background(), os.Args[0], uffd.Config{SocketPath: filepath.Join(dir, "a.sock"), MemFile: filepath.Join(dir, "missing")})
		if err == nil || !strings.Contains(err.Error(), "exited before listening") || !strings.Contains(err.Error(), "open memory file") {
			t.Fatalf("Spawn = %v, want an early exit quoting the log", err)
		}
	})
	t.Run("never ready", func(t *testing.T) {
		t.Setenv("MVM_UFFD_TEST_ROLE", "hang")
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := uffd.Spawn(ctx, os.Args[0], uffd.Config{SocketPath: filepath.Join(dir, "b.sock"), MemFile: filepath.Join(dir, "x")})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Spawn = %v, want context.DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Spawn took %s", d)
		}
	})
	t.Run("no binary", func(t *testing.T) {
		_, err := uffd.Spawn(context.Background(), filepath.Join(dir, "nope"), uffd.Config{SocketPath: filepath.Join(dir, "c.sock"), MemFile: "x"})
		if err == nil {
			t.Fatal("Spawn of a missing binary succeeded")
		}
	})
}

// TestProcess runs the command directly: readiness on stdout, pidfile,
// exit status 0 once the peer is gone.
func TestProcess(t *testing.T) {
	skipUnlessUFFD(t)
	const size = 4 << 20
	dir := t.TempDir()
	mf, sock, pidfile := memFile(t, size), filepath.Join(dir, "s"), filepath.Join(dir, "pid")
	cmd := exec.Command(os.Args[0], "--socket", sock, "--mem-file", mf, "--pidfile", pidfile, "--no-prefetch", "--log-level", "debug")
	cmd.Env = append(os.Environ(), "MVM_UFFD_TEST_ROLE=main")
	out, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	if l, err := bufio.NewReader(out).ReadString('\n'); err != nil || l != "ready\n" {
		t.Fatalf("readiness line %q, %v", l, err)
	}
	b, err := os.ReadFile(pidfile)
	if got, _ := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || got != cmd.Process.Pid {
		t.Errorf("pidfile holds %q (%v), want %d", b, err, cmd.Process.Pid)
	}
	g := guest(t)
	do(t, g, "connect %s %s %d 4096", sock, mf, size)
	do(t, g, "check 0 %d", size)
	g.Wait(10 * time.Second)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("mvm-uffd exited with %v:\n%s", err, stderr.String())
	}
	if _, err := os.Stat(pidfile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pidfile left behind: %v", err)
	}
	if !strings.Contains(stderr.String(), "faults=1024") {
		t.Errorf("final log line lacks the fault count:\n%s", stderr.String())
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"--socket", "/tmp/x"},
		{"--socket", "/tmp/x", "--mem-file", "/tmp/y", "extra"},
		{"--bogus"},
		{"--socket", "/tmp/x", "--mem-file", "/tmp/y", "--log-level", "loud"},
		{"--socket", "/tmp/x", "--mem-file", "/nonexistent/mem"},
	} {
		if code := run(args); code != 2 {
			t.Errorf("run(%q) = %d, want 2", args, code)
		}
	}
}
