//go:build linux

package uffd

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/internal/uffdguest"
	"golang.org/x/sys/unix"
)

// The test binary doubles as Firecracker's side (role "guest") and as a
// handler process that can be killed (role "handler"), and busy-loops to
// load the machine in benchmarks (role "spin").
func TestMain(m *testing.M) {
	switch os.Getenv("UFFD_TEST_ROLE") {
	case "guest":
		if err := uffdguest.RunCommands(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	case "handler":
		os.Exit(handlerRole())
	case "spin":
		spinRole()
	}
	os.Exit(m.Run())
}

func handlerRole() int {
	s, err := Listen(Config{
		SocketPath: os.Getenv("UFFD_TEST_SOCKET"),
		MemFile:    os.Getenv("UFFD_TEST_MEMFILE"),
		Prefetch:   os.Getenv("UFFD_TEST_PREFETCH") == "1",
		Detach:     os.Getenv("UFFD_TEST_DETACH") == "1",
	})
	if err != nil {
		fmt.Println("err", err)
		return 1
	}
	fmt.Println("ok ready")
	go func() {
		for !s.Stats().Detached {
			time.Sleep(5 * time.Millisecond)
		}
		fmt.Println("ok detached")
	}()
	err = s.Serve(context.Background())
	fmt.Println("ok served", err)
	s.Close()
	return 0
}

// spinRole busy-loops for at most ten minutes (its parent kills it
// earlier).
func spinRole() {
	deadline := time.Now().Add(10 * time.Minute)
	for x := uint64(1); ; x = x*6364136223846793005 + 1 {
		if x%(1<<20) == 0 && time.Now().After(deadline) {
			os.Exit(0)
		}
	}
}

const (
	kib = 1 << 10
	mib = 1 << 20
)

func skipUnlessUFFD(t testing.TB) {
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

// makeMemFile writes a memory file of size bytes whose every 8 bytes encode
// their offset, leaving the given ranges as holes.
func makeMemFile(t testing.TB, size int64, holes ...extent) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mem")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, mib)
	for off := int64(0); off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		for i := int64(0); i < n; i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], uint64(off+i)*0x9E3779B97F4A7C15|1)
		}
		// Write only the parts outside holes.
		segs := []extent{{off, off + n}}
		for _, h := range holes {
			var next []extent
			for _, s := range segs {
				if h.end <= s.start || h.start >= s.end {
					next = append(next, s)
					continue
				}
				if s.start < h.start {
					next = append(next, extent{s.start, h.start})
				}
				if h.end < s.end {
					next = append(next, extent{h.end, s.end})
				}
			}
			segs = next
		}
		for _, s := range segs {
			if _, err := f.WriteAt(buf[s.start-off:s.end-off], s.start); err != nil {
				t.Fatal(err)
			}
		}
	}
	return path
}

func startGuest(t testing.TB) *uffdguest.Child {
	t.Helper()
	c, err := uffdguest.StartChild(os.Args[0], []string{"-test.run=^$"}, []string{"UFFD_TEST_ROLE=guest"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Kill(10 * time.Second)
		if t.Failed() {
			t.Logf("guest stderr: %s", c.Stderr())
		}
	})
	return c
}

// do runs a guest command that must succeed.
func do(t testing.TB, c *uffdguest.Child, format string, args ...any) string {
	t.Helper()
	cmd := fmt.Sprintf(format, args...)
	out, err := c.Do(60*time.Second, cmd)
	if err != nil {
		t.Fatalf("guest %q: %v", cmd, err)
	}
	return out
}

type served struct {
	*Server
	errc chan error
}

// wait returns Serve's result.
func (s served) wait(t testing.TB) error {
	t.Helper()
	select {
	case err := <-s.errc:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return")
		return nil
	}
}

func startServer(t testing.TB, cfg Config) served {
	t.Helper()
	if cfg.SocketPath == "" {
		cfg.SocketPath = filepath.Join(t.TempDir(), "uffd.sock")
	}
	s, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(context.Background()) }()
	return served{s, errc}
}

func connectCmd(s *Server, size int64, pageSize int, opts ...string) string {
	return strings.TrimSpace(fmt.Sprintf("connect %s %s %d %d %s", s.cfg.SocketPath, s.cfg.MemFile, size, pageSize, strings.Join(opts, " ")))
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
