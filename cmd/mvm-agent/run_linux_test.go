package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mvm-dev/microvm/agent"
)

// openPTY returns the master of a new pseudo-terminal and its slave's path.
func openPTY(t *testing.T) (*os.File, string) {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		unix.Close(fd)
		t.Fatalf("pty number: %v", err)
	}
	return os.NewFile(uintptr(fd), "ptmx"), fmt.Sprintf("/dev/pts/%d", n)
}

// lockedBuffer collects what the agent printed.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// teeConn reads through a copy into seen and writes to the master.
type teeConn struct {
	io.Reader
	*os.File
}

func (c teeConn) Read(p []byte) (int, error) { return c.Reader.Read(p) }

// TestConsoleServer runs the agent (not as PID 1) on the slave side of a
// pseudo-terminal, as it runs on a guest's serial console: the ready marker
// comes first, requests typed on the line are answered (the counter
// counts), nothing is echoed back, and a poweroff request ends it with the
// shutdown marker.
func TestConsoleServer(t *testing.T) {
	master, slave := openPTY(t)
	defer master.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, config{console: slave, version: "test-1"}) }()

	var seen lockedBuffer
	// Wait for the ready marker, as a host does, before sending.
	master.SetReadDeadline(time.Now().Add(20 * time.Second))
	line, err := bufio.NewReaderSize(io.TeeReader(master, &seen), 16).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, agent.ReadyMarker+" test-1") {
		t.Fatalf("first console line = %q, %v; want the ready marker", line, err)
	}
	master.SetReadDeadline(time.Time{})
	c := agent.NewClient(teeConn{Reader: io.TeeReader(master, &seen), File: master})
	for want := uint64(1); want <= 2; want++ {
		v, err := c.Counter(ctx)
		if err != nil || v != want {
			t.Fatalf("Counter over the console = %d, %v; want %d (console so far: %q)", v, err, want, seen.String())
		}
	}
	p, err := c.Ping(ctx)
	if err != nil || p.Version != "test-1" {
		t.Fatalf("Ping = %+v, %v", p, err)
	}
	if err := c.Poweroff(ctx); err != nil {
		t.Fatalf("Poweroff: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run = %v, want nil after poweroff (not PID 1)", err)
		}
	case <-ctx.Done():
		t.Fatal("run did not return after poweroff")
	}
	// Collect the rest of the output: the shutdown marker.
	master.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.Copy(io.Discard, io.TeeReader(master, &seen))
	out := seen.String()
	if !strings.HasPrefix(out, agent.ReadyMarker+" test-1") {
		t.Errorf("console does not start with the ready marker: %q", out)
	}
	if strings.Contains(out, `"op":"counter"`) {
		t.Errorf("the console echoed a request back (not raw): %q", out)
	}
	if !strings.Contains(out, agent.ShutdownMarker+" (poweroff request)") {
		t.Errorf("no shutdown marker on the console: %q", out)
	}
}

func TestOwnFlags(t *testing.T) {
	in := []string{"console=ttyS0", "-port", "5", "ro", "--console=/dev/ttyS1", "-version", "-port"}
	got := strings.Join(ownFlags(in), " ")
	if want := "-port 5 --console=/dev/ttyS1 -version"; got != want {
		t.Errorf("ownFlags = %q, want %q", got, want)
	}
}
