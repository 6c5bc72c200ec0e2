package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/internal/fcstandin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	fcstandin.RemoveBuild()
	os.Exit(code)
}

// syncBuf is a goroutine-safe output buffer.
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

// proc is one running stand-in.
type proc struct {
	t      *testing.T
	dir    string
	sock   string
	cmd    *exec.Cmd
	client *http.Client
	stdout *syncBuf
	stderr *syncBuf
	done   chan struct{}
	state  *os.ProcessState

	lastFault string
}

// shortDir returns a temp dir short enough for unix socket paths.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "fcs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

type startOpt struct {
	id     string
	env    []string
	args   []string
	dir    string
	noWait bool
	start  func(*exec.Cmd) error
}

func startFC(t *testing.T, o startOpt) *proc {
	t.Helper()
	bin := fcstandin.Build(t)
	spec := fcstandin.SpecDir(t)
	dir := o.dir
	if dir == "" {
		dir = shortDir(t)
	}
	p := &proc{t: t, dir: dir, sock: filepath.Join(dir, "api.sock"), stdout: &syncBuf{}, stderr: &syncBuf{}, done: make(chan struct{})}
	id := o.id
	if id == "" {
		id = "vm-1"
	}
	args := append([]string{"--api-sock", p.sock, "--id", id}, o.args...)
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = dir
	p.cmd.Env = append(append(os.Environ(), "FCSTANDIN_SPEC_DIR="+spec), o.env...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	startFn := o.start
	if startFn == nil {
		startFn = (*exec.Cmd).Start
	}
	if err := startFn(p.cmd); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.cmd.Wait()
		p.state = p.cmd.ProcessState
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	p.client = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", p.sock)
		},
	}, Timeout: 20 * time.Second}
	if !o.noWait {
		p.waitSocket()
	}
	return p
}

func (p *proc) waitSocket() {
	p.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			p.t.Fatalf("stand-in exited before serving: %v\nstderr: %s", p.state, p.stderr)
		default:
		}
		if c, err := net.Dial("unix", p.sock); err == nil {
			c.Close()
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	p.t.Fatalf("API socket %s never came up; stderr: %s", p.sock, p.stderr)
}

// do sends one request; body "" means no body.
func (p *proc) do(method, path, body string) (int, string, http.Header) {
	p.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://localhost"+path, rd)
	if err != nil {
		p.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := p.client.Do(req)
	if err != nil {
		p.t.Fatalf("%s %s: %v\nstderr: %s", method, path, err, p.stderr)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if got := resp.Header.Get("Server"); got != "Firecracker API" {
		p.t.Errorf("%s %s: Server header %q", method, path, got)
	}
	return resp.StatusCode, string(b), resp.Header
}

// ok asserts a 2xx answer.
func (p *proc) ok(method, path, body string) string {
	p.t.Helper()
	code, b, _ := p.do(method, path, body)
	if code != 204 && code != 200 {
		p.t.Fatalf("%s %s %s: status %d body %s", method, path, body, code, b)
	}
	return b
}

// fails2 asserts the last fault message contained want.
func (p *proc) fails2(want string) {
	p.t.Helper()
	if !strings.Contains(p.lastFault, want) {
		p.t.Fatalf("fault %q does not contain %q", p.lastFault, want)
	}
}

// fails asserts a 400 with a fault_message containing want.
func (p *proc) fails(method, path, body, want string) {
	p.t.Helper()
	code, b, _ := p.do(method, path, body)
	if code != 400 {
		p.t.Fatalf("%s %s %s: status %d (want 400) body %s", method, path, body, code, b)
	}
	var f struct {
		FaultMessage string `json:"fault_message"`
	}
	if err := json.Unmarshal([]byte(b), &f); err != nil {
		p.t.Fatalf("%s %s: body is not fault_message JSON: %s", method, path, b)
	}
	p.lastFault = f.FaultMessage
	if !strings.Contains(f.FaultMessage, want) {
		p.t.Fatalf("%s %s %s: fault %q does not contain %q", method, path, body, f.FaultMessage, want)
	}
}

// wait waits for the process to exit.
func (p *proc) wait(d time.Duration) *os.ProcessState {
	p.t.Helper()
	select {
	case <-p.done:
		return p.state
	case <-time.After(d):
		p.t.Fatalf("stand-in did not exit within %v; stderr: %s", d, p.stderr)
	}
	return nil
}

func signaled(st *os.ProcessState) (syscall.Signal, bool) {
	ws, ok := st.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		return 0, false
	}
	return ws.Signal(), true
}

// file creates a file with content in dir.
func file(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// dialVsock connects to the host socket of a vsock device, sends line and
// gives the answer 5 seconds; the test closes the connection.
func dialVsock(t *testing.T, path, line string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	io.WriteString(c, line)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	return c
}

func jsonStr(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// bootMinimal configures kernel + rootfs and starts the VM.
func bootMinimal(t *testing.T, p *proc) {
	t.Helper()
	k := file(t, p.dir, "vmlinux", "\x7fELF fake kernel")
	r := file(t, p.dir, "rootfs.ext4", strings.Repeat("\x00", 4096))
	p.ok("PUT", "/boot-source", `{"kernel_image_path":`+jsonStr(k)+`,"boot_args":"console=ttyS0 reboot=k panic=1"}`)
	p.ok("PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":`+jsonStr(r)+`,"is_root_device":true,"is_read_only":false}`)
	p.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newReq(method, path, body string) (*http.Request, error) {
	req, err := http.NewRequest(method, "http://localhost"+path, strings.NewReader(body))
	if err == nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return req, err
}
