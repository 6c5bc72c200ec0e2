package vsock_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/vsock"
)

// fakeFirecracker serves Firecracker's host-initiated vsock handshake on a
// unix socket: the first `refuse` connections are closed without an answer
// (no guest listener yet); later ones get answer followed by "hello\n" in
// the same write, then an echo of what the client sends.
type fakeFirecracker struct {
	path    string
	refuse  int32
	answer  string
	ports   chan string
	accepts atomic.Int32
}

func serveFake(t *testing.T, refuse int32, answer string) *fakeFirecracker {
	t.Helper()
	f := &fakeFirecracker{path: filepath.Join(t.TempDir(), "v.sock"), refuse: refuse, answer: answer, ports: make(chan string, 16)}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := f.accepts.Add(1)
			go f.serve(c, n)
		}
	}()
	return f
}

func (f *fakeFirecracker) serve(c net.Conn, n int32) {
	defer c.Close()
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return
	}
	f.ports <- strings.TrimSpace(line)
	if n <= f.refuse {
		return
	}
	if _, err := io.WriteString(c, f.answer+"hello\n"); err != nil {
		return
	}
	io.Copy(c, r)
}

func TestDialHandshakeKeepsGuestBytes(t *testing.T) {
	f := serveFake(t, 3, "OK 1073741824\n")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := vsock.Dial(ctx, f.path, 1024)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer c.Close()
	if got := f.accepts.Load(); got != 4 {
		t.Errorf("connections = %d, want 4 (three refused, then accepted)", got)
	}
	if p := <-f.ports; p != "CONNECT 1024" {
		t.Errorf("handshake line = %q, want CONNECT 1024", p)
	}
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || line != "hello\n" {
		t.Fatalf("first guest line = %q, %v; want hello (bytes after OK were lost)", line, err)
	}
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := r.ReadString('\n'); err != nil || line != "ping\n" {
		t.Fatalf("echo = %q, %v", line, err)
	}
}

func TestDialLongSocketPath(t *testing.T) {
	dir := t.TempDir()
	for len(dir) < 120 {
		dir = filepath.Join(dir, "a-long-directory-name")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	f := &fakeFirecracker{path: filepath.Join(dir, "v.sock"), answer: "OK 5\n", ports: make(chan string, 4)}
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ln, err := net.Listen("unix", fmt.Sprintf("/proc/self/fd/%d/v.sock", d.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			f.serve(c, 1)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := vsock.Dial(ctx, f.path, 7)
	if err != nil {
		t.Fatalf("Dial of a %d-byte socket path: %v", len(f.path), err)
	}
	c.Close()
}

func TestDialNoListener(t *testing.T) {
	f := serveFake(t, 1<<30, "")
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	_, err := vsock.Dial(ctx, f.path, 52)
	if !errors.Is(err, vsock.ErrNoListener) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial = %v, want ErrNoListener and DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), "port 52") || !strings.Contains(err.Error(), f.path) {
		t.Errorf("error %q does not name the port and the socket", err)
	}
	if f.accepts.Load() < 2 {
		t.Errorf("only %d attempts: Dial did not retry", f.accepts.Load())
	}
}

func TestDialMissingSocket(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := vsock.Dial(ctx, filepath.Join(t.TempDir(), "absent.sock"), 1)
	if !errors.Is(err, vsock.ErrNoListener) {
		t.Fatalf("Dial = %v, want ErrNoListener", err)
	}
}

func TestDialBadAnswer(t *testing.T) {
	for _, answer := range []string{"NO\n", "OK x\n", "OK \n", strings.Repeat("A", 100)} {
		f := serveFake(t, 0, answer)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := vsock.Dial(ctx, f.path, 1)
		cancel()
		if err == nil || errors.Is(err, vsock.ErrNoListener) || !strings.Contains(err.Error(), "unexpected answer") {
			t.Errorf("answer %q: Dial = %v, want an unexpected-answer error at once", answer, err)
		}
		if n := f.accepts.Load(); n != 1 {
			t.Errorf("answer %q: %d attempts, want 1", answer, n)
		}
	}
}
