//go:build linux

package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/agent"
)

type testAgent struct {
	svc     *agent.Service
	g       *agent.Guest
	sock    string
	files   string // the only file root
	secrets string
	log     *bytes.Buffer
	logMu   *sync.Mutex
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// shmDir makes a directory on tmpfs (/dev/shm) for secrets.
func shmDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("/dev/shm", "mvm-agent-test-")
	if err != nil {
		t.Skipf("no /dev/shm tmpfs: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return filepath.Join(d, "secrets")
}

// startAgent runs the agent's HTTP service on a unix socket in dir (named
// <HTTPPort>.sock, as the stand-in's FCSTANDIN_VSOCK_GUEST wants it).
func startAgent(t testing.TB, dir string) *testAgent {
	t.Helper()
	return startAgentIn(t, dir, nil)
}

// startAgentWith is startAgent with the service changed by mod before it
// serves.
func startAgentWith(t testing.TB, mod func(*agent.Service)) *testAgent {
	t.Helper()
	return startAgentIn(t, "", mod)
}

func startAgentIn(t testing.TB, dir string, mod func(*agent.Service)) *testAgent {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	ta := &testAgent{sock: filepath.Join(dir, fmt.Sprintf("%d.sock", agent.HTTPPort)), files: t.TempDir(), secrets: shmDir(t), log: &bytes.Buffer{}, logMu: &sync.Mutex{}}
	ln, err := net.Listen("unix", ta.sock)
	if err != nil {
		t.Fatal(err)
	}
	ta.svc = &agent.Service{
		Version:    "test",
		SecretsDir: ta.secrets,
		FileRoots:  []string{ta.files},
		Env:        []string{"PATH=" + os.Getenv("PATH"), "HOME=/root"},
		Log:        slog.New(slog.NewTextHandler(lockedWriter{ta.logMu, ta.log}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if mod != nil {
		mod(ta.svc)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ta.svc.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	ta.g = agent.NewGuest(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", ta.sock)
	}, "unix socket "+ta.sock)
	t.Cleanup(func() { ta.g.Close() })
	return ta
}

func (ta *testAgent) logText() string {
	ta.logMu.Lock()
	defer ta.logMu.Unlock()
	return ta.log.String()
}

func ctx2(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func run(t *testing.T, g *agent.Guest, req microvm.ExecRequest) (string, string, microvm.ExecResult) {
	t.Helper()
	var out, errb bytes.Buffer
	req.Stdout, req.Stderr = &out, &errb
	res, err := g.Exec(ctx2(t), req)
	if err != nil {
		t.Fatalf("Exec %q: %v", req.Args, err)
	}
	return out.String(), errb.String(), res
}

func TestExecOutputsAndExitCode(t *testing.T) {
	ta := startAgent(t, "")
	out, errs, res := run(t, ta.g, microvm.ExecRequest{Args: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}})
	if out != "out\n" || errs != "err\n" || res.ExitCode != 3 || res.Signal != "" || res.TimedOut || res.PID == 0 {
		t.Fatalf("got stdout %q stderr %q result %+v; want out, err, exit 3", out, errs, res)
	}
	_, _, res = run(t, ta.g, microvm.ExecRequest{Args: []string{"true"}})
	if res.ExitCode != 0 {
		t.Fatalf("true: %+v", res)
	}
	_, _, res = run(t, ta.g, microvm.ExecRequest{Args: []string{"sh", "-c", "kill -KILL $$"}})
	if res.ExitCode != -1 || res.Signal != "SIGKILL" {
		t.Fatalf("killed shell: %+v, want signal SIGKILL, exit -1", res)
	}
}

// randomFile writes n pseudo-random bytes and returns their sha256.
func randomFile(t testing.TB, path string, n int64, seed uint64) [32]byte {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.NewChaCha8([32]byte{byte(seed)}), n); err != nil {
		t.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}

type hashWriter struct {
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
	n int64
}

func (w *hashWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return w.h.Write(p) }

func TestExecLargeBinaryOutputAndStdin(t *testing.T) {
	ta := startAgent(t, "")
	const size = 48 << 20
	src := filepath.Join(t.TempDir(), "blob")
	sum := randomFile(t, src, size, 1)
	hw := &hashWriter{h: sha256.New()}
	res, err := ta.g.Exec(ctx2(t), microvm.ExecRequest{Args: []string{"cat", src}, Stdout: hw})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("cat: %+v %v", res, err)
	}
	if hw.n != size || [32]byte(hw.h.Sum(nil)) != sum {
		t.Fatalf("stdout: %d bytes, checksum differs or short (want %d)", hw.n, size)
	}
	// stdin -> the command -> stdout, the same bytes back
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hw = &hashWriter{h: sha256.New()}
	res, err = ta.g.Exec(ctx2(t), microvm.ExecRequest{Args: []string{"cat"}, Stdin: f, Stdout: hw})
	if err != nil || res.ExitCode != 0 || hw.n != size || [32]byte(hw.h.Sum(nil)) != sum {
		t.Fatalf("cat of stdin: %+v %v, %d bytes back", res, err, hw.n)
	}
	// A command that reads no stdin gets end-of-file at once.
	out, _, _ := run(t, ta.g, microvm.ExecRequest{Args: []string{"wc", "-c"}})
	if strings.TrimSpace(out) != "0" {
		t.Fatalf("wc -c without stdin: %q", out)
	}
}

// notifyWriter closes ready when what was written contains want.
type notifyWriter struct {
	mu    sync.Mutex
	b     bytes.Buffer
	want  string
	ready chan struct{}
	once  sync.Once
}

func (w *notifyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.b.Write(p)
	if strings.Contains(w.b.String(), w.want) {
		w.once.Do(func() { close(w.ready) })
	}
	return len(p), nil
}

func (w *notifyWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

func TestExecSignalForwarded(t *testing.T) {
	ta := startAgent(t, "")
	sigs := make(chan os.Signal, 1)
	out := &notifyWriter{want: "ready", ready: make(chan struct{})}
	go func() {
		<-out.ready
		sigs <- syscall.SIGTERM
	}()
	res, err := ta.g.Exec(ctx2(t), microvm.ExecRequest{
		Args:    []string{"sh", "-c", `trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done`},
		Stdout:  out,
		Signals: sigs,
	})
	if err != nil || res.ExitCode != 7 || !strings.Contains(out.String(), "got TERM") {
		t.Fatalf("Exec = %+v, %v; stdout %q; want exit 7 after the forwarded SIGTERM", res, err, out.String())
	}
}

func TestExecTimeoutKillsGroup(t *testing.T) {
	ta := startAgent(t, "")
	out := &notifyWriter{want: "\n", ready: make(chan struct{})}
	res, err := ta.g.Exec(ctx2(t), microvm.ExecRequest{Args: []string{"sh", "-c", "sleep 60 & echo $!; wait"}, Timeout: time.Second, Stdout: out})
	if err != nil || !res.TimedOut || res.Signal != "SIGKILL" {
		t.Fatalf("Exec = %+v, %v; want timed out, SIGKILL", res, err)
	}
	var child int
	fmt.Sscan(out.String(), &child)
	if child == 0 {
		t.Logf("the shell was killed before it printed its child's pid (a loaded host): the group kill is not checked this time")
		return
	}
	waitGone(t, child)
}

// waitGone waits until pid no longer runs (a zombie counts as gone: PID 1
// here does not reap orphans).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		if f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:])); len(f) > 0 && f[0] == "Z" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("process %d still runs", pid)
}

func TestExecCancelKillsCommand(t *testing.T) {
	ta := startAgent(t, "")
	ctx, cancel := context.WithCancel(ctx2(t))
	out := &notifyWriter{want: "\n", ready: make(chan struct{})}
	go func() { <-out.ready; cancel() }()
	_, err := ta.g.Exec(ctx, microvm.ExecRequest{Args: []string{"sh", "-c", "echo $$; exec sleep 60"}, Stdout: out})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Exec = %v, want context.Canceled", err)
	}
	var pid int
	fmt.Sscan(out.String(), &pid)
	waitGone(t, pid)
}

func TestExec100Concurrent(t *testing.T) {
	ta := startAgent(t, "")
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			res, err := ta.g.Exec(ctx2(t), microvm.ExecRequest{Args: []string{"sh", "-c", `echo "$0"; exit $(($0 % 7))`, fmt.Sprint(i)}, Stdout: &out})
			if err != nil {
				errs <- err
				return
			}
			if out.String() != fmt.Sprintf("%d\n", i) || res.ExitCode != i%7 {
				errs <- fmt.Errorf("exec %d: stdout %q exit %d", i, out.String(), res.ExitCode)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestExecBadInput(t *testing.T) {
	ta := startAgent(t, "")
	ctx := ctx2(t)
	_, err := ta.g.Exec(ctx, microvm.ExecRequest{Args: []string{"no-such-command-mvm"}})
	if !errors.Is(err, microvm.ErrCommandNotFound) || !strings.Contains(err.Error(), "no-such-command-mvm") {
		t.Errorf("unknown command: %v, want ErrCommandNotFound naming it", err)
	}
	_, err = ta.g.Exec(ctx, microvm.ExecRequest{Args: []string{"true"}, Dir: "/no/such/dir"})
	if err == nil || !strings.Contains(err.Error(), "/no/such/dir") {
		t.Errorf("missing dir: %v", err)
	}
	for _, req := range []microvm.ExecRequest{
		{},
		{Args: []string{"true"}, Env: map[string]string{"1BAD": "x"}},
		{Args: []string{"true"}, Env: map[string]string{"A-B": "x"}},
		{Args: []string{"true"}, Dir: "relative"},
		{Args: []string{"true"}, Timeout: -1},
		{Args: []string{"a\x00b"}},
	} {
		if _, err := ta.g.Exec(ctx, req); !errors.Is(err, microvm.ErrInvalidArgument) {
			t.Errorf("Exec(%+v) = %v, want ErrInvalidArgument", req, err)
		}
	}
	// The agent checks too, whatever the client sent.
	c := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", ta.sock)
	}}}
	defer c.CloseIdleConnections()
	for _, body := range []string{`{"args":["true"],"env":{"1X":"y"}}`, `{"args":[]}`, `not json`} {
		resp, err := c.Post("http://agent/v1/exec", agent.ExecContentType, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("raw exec %s: HTTP %d, want 400", body, resp.StatusCode)
		}
	}
	resp, err := c.Get("http://agent/v2/ping")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown API version: HTTP %d", resp.StatusCode)
	}
}

func TestExecEnvDirUser(t *testing.T) {
	ta := startAgent(t, "")
	ctx := ctx2(t)
	if err := ta.g.SetEnv(ctx, map[string]string{"FOO": "from-setenv", "BAR": "old", "EMPTY": ""}); err != nil {
		t.Fatal(err)
	}
	out, _, _ := run(t, ta.g, microvm.ExecRequest{Args: []string{"sh", "-c", `echo "$FOO $BAR [${EMPTY-unset}] $MVM_SECRETS_DIR"; pwd`}, Env: map[string]string{"BAR": "new"}, Dir: ta.files})
	want := fmt.Sprintf("from-setenv new [] %s\n%s\n", ta.secrets, ta.files)
	if out != want {
		t.Errorf("env and dir: %q, want %q", out, want)
	}
	for _, bad := range []map[string]string{{"": "x"}, {"9A": "x"}, {"A=B": "x"}, {"A B": "x"}, {"OK": "nul\x00"}} {
		if err := ta.g.SetEnv(ctx, bad); !errors.Is(err, microvm.ErrInvalidArgument) {
			t.Errorf("SetEnv(%q) = %v, want ErrInvalidArgument", bad, err)
		}
	}
	if os.Geteuid() != 0 {
		t.Skip("running as another user needs root")
	}
	out, _, _ = run(t, ta.g, microvm.ExecRequest{Args: []string{"id", "-u"}, User: "nobody"})
	if strings.TrimSpace(out) != "65534" {
		t.Errorf("id -u as nobody: %q", out)
	}
	out, _, _ = run(t, ta.g, microvm.ExecRequest{Args: []string{"sh", "-c", "id -u; id -g"}, User: "1234:5678"})
	if out != "1234\n5678\n" {
		t.Errorf("id as 1234:5678: %q", out)
	}
	if _, err := ta.g.Exec(ctx, microvm.ExecRequest{Args: []string{"true"}, User: "no-such-user-mvm"}); err == nil || !strings.Contains(err.Error(), "no-such-user-mvm") {
		t.Errorf("unknown user: %v", err)
	}
}

func TestExecTTY(t *testing.T) {
	ta := startAgent(t, "")
	resize := make(chan microvm.TermSize, 1)
	out := &notifyWriter{want: "30 100", ready: make(chan struct{})}
	go func() { <-out.ready; resize <- microvm.TermSize{Rows: 50, Cols: 120} }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := ta.g.Exec(ctx, microvm.ExecRequest{
		Args:    []string{"sh", "-c", `tty; stty size; while [ "$(stty size)" != "50 120" ]; do sleep 0.05; done; stty size; echo bye >&2`},
		TTY:     true,
		TTYSize: &microvm.TermSize{Rows: 30, Cols: 100},
		Resize:  resize,
		Stdout:  out,
	})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("Exec tty: %+v %v; output %q; log %s", res, err, out.String(), ta.logText())
	}
	s := out.String()
	if !strings.Contains(s, "/dev/pts/") || !strings.Contains(s, "30 100") || !strings.Contains(s, "50 120") || !strings.Contains(s, "bye") {
		t.Fatalf("tty output %q: want a /dev/pts name, 30 100, then 50 120 after the resize, and stderr merged", s)
	}
}
