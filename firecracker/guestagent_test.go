package firecracker_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/agent"
	"github.com/mvm-dev/microvm/firecracker"
)

// syncBuf is a log sink safe for concurrent writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// guestAgent runs the real agent service as a process-local server behind
// the stand-in's vsock (FCSTANDIN_VSOCK_GUEST): the "guest" is a folder
// holding <port>.sock listeners. It returns the folder and the agent's
// file root.
func guestAgent(t testing.TB, agentLog io.Writer) (guestDir, root string) {
	t.Helper()
	guestDir = t.TempDir()
	root = t.TempDir()
	shm, err := os.MkdirTemp("/dev/shm", "mvm-fc-agent-")
	if err != nil {
		t.Skipf("no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	ln, err := net.Listen("unix", filepath.Join(guestDir, strconv.Itoa(agent.HTTPPort)+".sock"))
	if err != nil {
		t.Fatal(err)
	}
	svc := &agent.Service{Version: "standin-guest", SecretsDir: filepath.Join(shm, "secrets"), FileRoots: []string{root},
		Env: []string{"PATH=" + os.Getenv("PATH")}, Log: slog.New(slog.NewTextHandler(agentLog, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return guestDir, root
}

func TestGuestAgentThroughStandin(t *testing.T) {
	agentLog := &syncBuf{}
	guestDir, root := guestAgent(t, agentLog)
	rtLog := &syncBuf{}
	state := t.TempDir()
	rt := open(t, state, standin(t, "FCSTANDIN_VSOCK_GUEST="+guestDir), func(c *firecracker.Config) {
		c.Logger = slog.New(slog.NewTextHandler(rtLog, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	t.Cleanup(func() { destroyAll(t, rt); rt.Close() })
	var ga microvm.GuestAgent = rt
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	spec := testSpec(t)
	spec.Vsock = &microvm.Vsock{}
	if _, err := rt.Create(ctx, "ga", spec); err != nil {
		t.Fatal(err)
	}
	// Not running yet.
	if _, err := ga.Ping(ctx, "ga"); !errors.Is(err, microvm.ErrInvalidTransition) || !strings.HasPrefix(err.Error(), `vm "ga" is created, not running`) {
		t.Fatalf("Ping of a created VM = %v, want ErrInvalidTransition saying the VM's status first", err)
	}
	if _, err := rt.Start(ctx, "ga"); err != nil {
		t.Fatal(err)
	}
	info, err := ga.Ping(ctx, "ga")
	if err != nil || info.Version != "standin-guest" || info.Protocol != agent.APIVersion {
		t.Fatalf("Ping = %+v, %v", info, err)
	}
	var out bytes.Buffer
	res, err := ga.Exec(ctx, "ga", microvm.ExecRequest{Args: []string{"sh", "-c", "cat; echo done"}, Stdin: strings.NewReader("in\n"), Stdout: &out})
	if err != nil || res.ExitCode != 0 || out.String() != "in\ndone\n" {
		t.Fatalf("Exec = %+v %v, stdout %q", res, err, out.String())
	}

	// A large file both ways, checked by sha256.
	size := int64(64) << 20
	if n, err := strconv.ParseInt(os.Getenv("MVM_AGENT_BIG_MIB"), 10, 64); err == nil && n > 0 {
		size = n << 20
	}
	h := sha256.New()
	src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{3}), size), h)
	start := time.Now()
	if err := ga.WriteFile(ctx, "ga", filepath.Join(root, "big"), src, &microvm.WriteFileOptions{Size: size}); err != nil {
		t.Fatal(err)
	}
	up := time.Since(start)
	h2 := sha256.New()
	start = time.Now()
	fi, err := ga.ReadFile(ctx, "ga", filepath.Join(root, "big"), h2)
	if err != nil || fi.Size != size || !bytes.Equal(h.Sum(nil), h2.Sum(nil)) {
		t.Fatalf("ReadFile = %+v %v, or the checksum differs", fi, err)
	}
	t.Logf("%d MiB through the stand-in's vsock: write %v, read %v", size>>20, up.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

	// Environment and secrets; the secret never reaches a host file or log.
	secret := fmt.Sprintf("top-secret-%d-%d", os.Getpid(), time.Now().UnixNano())
	if err := ga.SetEnv(ctx, "ga", map[string]string{"GREETING": "hello"}); err != nil {
		t.Fatal(err)
	}
	if err := ga.SetSecret(ctx, "ga", "api_key", []byte(secret)); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if _, err := ga.Exec(ctx, "ga", microvm.ExecRequest{Args: []string{"sh", "-c", `echo "$GREETING"; cat "$MVM_SECRETS_DIR/api_key" | sha256sum`}, Stdout: &out}); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("hello\n%x  -\n", sha256.Sum256([]byte(secret)))
	if out.String() != want {
		t.Fatalf("exec saw %q, want %q", out.String(), want)
	}
	for _, bad := range []map[string]string{{"1X": "y"}, {"A-B": "y"}} {
		if err := ga.SetEnv(ctx, "ga", bad); !errors.Is(err, microvm.ErrInvalidArgument) {
			t.Errorf("SetEnv(%v) = %v", bad, err)
		}
	}
	for _, bad := range []string{"a/b", "", "a.b"} {
		if err := ga.SetSecret(ctx, "ga", bad, []byte("v")); !errors.Is(err, microvm.ErrInvalidArgument) {
			t.Errorf("SetSecret(%q) = %v", bad, err)
		}
	}

	// Clones restored from a snapshot answer too, each through its own socket.
	if _, err := rt.Snapshot(ctx, "ga", "ga-snap", nil); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		id := fmt.Sprintf("ga-clone-%d", i)
		if _, err := rt.Restore(ctx, id, "ga-snap", nil); err != nil {
			t.Fatal(err)
		}
		out.Reset()
		if _, err := ga.Exec(ctx, id, microvm.ExecRequest{Args: []string{"echo", id}, Stdout: &out}); err != nil || out.String() != id+"\n" {
			t.Fatalf("exec in clone %s: %v %q", id, err, out.String())
		}
	}

	// Bad input.
	if _, err := ga.Ping(ctx, "nope"); !errors.Is(err, microvm.ErrNotFound) {
		t.Errorf("Ping of an unknown VM = %v, want ErrNotFound", err)
	}
	if _, err := ga.Exec(ctx, "ga", microvm.ExecRequest{Args: []string{"no-such-command-mvm"}}); !errors.Is(err, microvm.ErrCommandNotFound) {
		t.Errorf("unknown command = %v, want ErrCommandNotFound", err)
	}
	if err := ga.WriteFile(ctx, "ga", "/etc/mvm-test", strings.NewReader("x"), nil); !errors.Is(err, microvm.ErrPathNotAllowed) {
		t.Errorf("write outside the root = %v, want ErrPathNotAllowed", err)
	}
	plain := testSpec(t)
	if _, err := rt.Create(ctx, "novsock", plain); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "novsock"); err != nil {
		t.Fatal(err)
	}
	if _, err := ga.Ping(ctx, "novsock"); !errors.Is(err, microvm.ErrUnsupported) || !strings.Contains(err.Error(), "vsock") {
		t.Errorf("Ping of a VM without vsock = %v, want ErrUnsupported naming vsock", err)
	}
	if _, err := rt.Pause(ctx, "ga"); err != nil {
		t.Fatal(err)
	}
	if _, err := ga.Ping(ctx, "ga"); !errors.Is(err, microvm.ErrInvalidTransition) || !strings.Contains(err.Error(), "paused") {
		t.Errorf("Ping of a paused VM = %v, want ErrInvalidTransition", err)
	}

	// The secret is in no file under the state directory and in no log.
	filepath.WalkDir(state, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(secret)) {
			t.Errorf("the secret's value is in %s", p)
		}
		return nil
	})
	if strings.Contains(rtLog.String(), secret) || strings.Contains(agentLog.String(), secret) {
		t.Error("the secret's value is in a log")
	}
}

func TestGuestAgentNoAgent(t *testing.T) {
	guestDir := t.TempDir() // nothing listens in this guest
	rt, _ := newRuntime(t, "FCSTANDIN_VSOCK_GUEST="+guestDir)
	ctx := context.Background()
	spec := testSpec(t)
	spec.Vsock = &microvm.Vsock{}
	if _, err := rt.Create(ctx, "bare", spec); err != nil {
		t.Fatal(err)
	}
	if _, err := rt.Start(ctx, "bare"); err != nil {
		t.Fatal(err)
	}
	tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err := rt.Exec(tctx, "bare", microvm.ExecRequest{Args: []string{"true"}})
	if !errors.Is(err, microvm.ErrAgentUnavailable) || !strings.Contains(err.Error(), "port 1025") {
		t.Fatalf("Exec with no agent = %v, want ErrAgentUnavailable naming port 1025", err)
	}
}

// benchGuest starts a VM under the stand-in whose vsock is bridged to the
// agent service in this process: every call crosses the runtime's lookup,
// the CONNECT handshake and the stand-in's copy loop (no real guest).
func benchGuest(b *testing.B) (*firecracker.Runtime, string) {
	guestDir, root := guestAgent(b, io.Discard)
	state := b.TempDir()
	rt := open(b, state, standin(b, "FCSTANDIN_VSOCK_GUEST="+guestDir))
	b.Cleanup(func() { destroyAll(b, rt); rt.Close() })
	ctx := context.Background()
	spec := testSpec(b)
	spec.Vsock = &microvm.Vsock{}
	if _, err := rt.Create(ctx, "bench", spec); err != nil {
		b.Fatal(err)
	}
	if _, err := rt.Start(ctx, "bench"); err != nil {
		b.Fatal(err)
	}
	return rt, root
}

func BenchmarkGuestAgentStandinExecTrue(b *testing.B) {
	rt, _ := benchGuest(b)
	ctx := context.Background()
	for b.Loop() {
		if _, err := rt.Exec(ctx, "bench", microvm.ExecRequest{Args: []string{"true"}}); err != nil {
			b.Fatal(err)
		}
	}
}

type countW struct{ n int64 }

func (c *countW) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func BenchmarkGuestAgentStandinStdout(b *testing.B) {
	rt, _ := benchGuest(b)
	ctx := context.Background()
	b.SetBytes(256 << 20)
	for b.Loop() {
		n := &countW{}
		if _, err := rt.Exec(ctx, "bench", microvm.ExecRequest{Args: []string{"dd", "if=/dev/zero", "bs=1M", "count=256", "status=none"}, Stdout: n}); err != nil || n.n != 256<<20 {
			b.Fatal(err, n.n)
		}
	}
}

func BenchmarkGuestAgentStandinCopy(b *testing.B) {
	rt, root := benchGuest(b)
	ctx := context.Background()
	const size = 128 << 20
	buf := make([]byte, size)
	rand.NewChaCha8([32]byte{}).Read(buf)
	p := filepath.Join(root, "f")
	b.Run("in", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			if err := rt.WriteFile(ctx, "bench", p, bytes.NewReader(buf), &microvm.WriteFileOptions{Size: size}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("out", func(b *testing.B) {
		b.SetBytes(size)
		for b.Loop() {
			if _, err := rt.ReadFile(ctx, "bench", p, io.Discard); err != nil {
				b.Fatal(err)
			}
		}
	})
}
