//go:build linux

package agent_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"testing"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/agent"
)

// cutProxy forwards connections to the agent's socket and cuts each one
// (both directions closed) once `limit` bytes went the way `up` says
// (true: client to agent; false: agent to client).
func cutProxy(t *testing.T, ta *testAgent, limit int64, up bool) *agent.Guest {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cut.sock")
	ln, err := net.Listen("unix", sock)
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
			s, err := net.Dial("unix", ta.sock)
			if err != nil {
				c.Close()
				continue
			}
			cut := func() { c.Close(); s.Close() }
			go func() {
				if up {
					io.CopyN(s, c, limit)
					cut()
				} else {
					io.Copy(s, c)
				}
			}()
			go func() {
				if !up {
					io.CopyN(c, s, limit)
					cut()
				} else {
					io.Copy(c, s)
				}
			}()
		}
	}()
	g := agent.NewGuest(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}, "unix socket "+sock)
	t.Cleanup(func() { g.Close() })
	return g
}

func TestDroppedConnectionMidStream(t *testing.T) {
	ta := startAgent(t, "")
	ctx := ctx2(t)

	// Output cut: the exec fails with ErrConnectionLost and the command
	// (endless output) is killed.
	down := cutProxy(t, ta, 1<<20, false)
	out := &notifyWriter{want: "\n", ready: make(chan struct{})}
	_, err := down.Exec(ctx, microvm.ExecRequest{Args: []string{"sh", "-c", "echo $$; exec yes"}, Stdout: out})
	if !errors.Is(err, microvm.ErrConnectionLost) {
		t.Fatalf("Exec cut mid-output = %v, want ErrConnectionLost", err)
	}
	var pid int
	fmt.Sscan(out.String(), &pid)
	if pid == 0 {
		t.Fatalf("no pid in the output")
	}
	waitGone(t, pid)

	// Read cut.
	big := filepath.Join(ta.files, "big")
	randomFile(t, big, 8<<20, 2)
	if _, err := down.ReadFile(ctx, big, io.Discard); !errors.Is(err, microvm.ErrConnectionLost) {
		t.Fatalf("ReadFile cut = %v, want ErrConnectionLost", err)
	}

	// Upload cut: nothing is created, no temporary file is left.
	up := cutProxy(t, ta, 1<<20, true)
	dst := filepath.Join(ta.files, "upload")
	err = up.WriteFile(ctx, dst, io.LimitReader(rand.NewChaCha8([32]byte{}), 8<<20), &microvm.WriteFileOptions{Size: 8 << 20})
	if err == nil {
		t.Fatal("WriteFile through a cut connection succeeded")
	}
	waitNoTemp(t, ta.files)
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a half-written file was left: %v", err)
	}
	// Stdin cut: the command is killed.
	out = &notifyWriter{want: "\n", ready: make(chan struct{})}
	_, err = up.Exec(ctx, microvm.ExecRequest{Args: []string{"sh", "-c", "echo $$; exec cat >/dev/null"}, Stdin: rand.NewChaCha8([32]byte{}), Stdout: out})
	if err == nil {
		t.Fatal("Exec with its stdin cut succeeded")
	}
	pid = 0
	fmt.Sscan(out.String(), &pid)
	if pid != 0 {
		waitGone(t, pid)
	}
}
