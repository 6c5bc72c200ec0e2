package memory

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	microvm "github.com/mvm-dev/microvm"
)

// The memory runtime's [microvm.GuestAgent] is a fake guest for tests of
// programs that embed mvm: every running VM has an in-memory file system
// (absolute, clean paths; /proc, /sys and /dev refused), an environment
// and secrets (kept in memory, never logged), and runs these commands:
// true, false, echo ARGS, cat (stdin to stdout), cat PATH, env (the
// environment, sorted) and exit N; others give
// [microvm.ErrCommandNotFound]. Ping answers version "memory". The rules
// on ids, statuses and arguments are those of the firecracker runtime.
var _ microvm.GuestAgent = (*Runtime)(nil)

type fakeGuest struct {
	mu      sync.Mutex
	files   map[string]fakeFile
	env     map[string]string
	secrets map[string][]byte
}

type fakeFile struct {
	data []byte
	mode os.FileMode
}

var fakeGuests sync.Map // *vm -> *fakeGuest

// guest returns the fake guest of a running VM.
func (r *Runtime) guest(ctx context.Context, id string) (*fakeGuest, error) {
	if err := r.enter(ctx); err != nil {
		return nil, err
	}
	if err := microvm.ValidateID(id); err != nil {
		return nil, err
	}
	r.mu.Lock()
	v := r.vms[id]
	r.mu.Unlock()
	if v == nil {
		return nil, fmt.Errorf("%w: %q", microvm.ErrNotFound, id)
	}
	v.mu.Lock()
	st := v.status
	v.mu.Unlock()
	if st != microvm.StatusRunning {
		return nil, fmt.Errorf("vm %q is %s, not running: its guest agent cannot answer: %w", id, st, microvm.ErrInvalidTransition)
	}
	g, _ := fakeGuests.LoadOrStore(v, &fakeGuest{files: map[string]fakeFile{}, env: map[string]string{}, secrets: map[string][]byte{}})
	return g.(*fakeGuest), nil
}

// Ping implements [microvm.GuestAgent].
func (r *Runtime) Ping(ctx context.Context, id string) (microvm.AgentInfo, error) {
	if _, err := r.guest(ctx, id); err != nil {
		return microvm.AgentInfo{}, err
	}
	return microvm.AgentInfo{Version: "memory", Protocol: 1, Uptime: time.Second}, nil
}

func checkGuestPath(p string) error {
	if p == "" || !path.IsAbs(p) || path.Clean(p) != p || p == "/" || strings.ContainsRune(p, 0) {
		return fmt.Errorf("%w: guest path %q must be absolute and clean", microvm.ErrInvalidArgument, p)
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/run/mvm/secrets"} {
		if p == d || strings.HasPrefix(p, d+"/") {
			return fmt.Errorf("%w: %q is under %s", microvm.ErrPathNotAllowed, p, d)
		}
	}
	return nil
}

// WriteFile implements [microvm.GuestAgent].
func (r *Runtime) WriteFile(ctx context.Context, id, p string, src io.Reader, opts *microvm.WriteFileOptions) error {
	if err := checkGuestPath(p); err != nil {
		return err
	}
	g, err := r.guest(ctx, id)
	if err != nil {
		return err
	}
	mode := os.FileMode(0o644)
	if opts != nil && opts.Mode != 0 {
		mode = opts.Mode
	}
	var b []byte
	if src != nil {
		if b, err = io.ReadAll(src); err != nil {
			return fmt.Errorf("write file %s: %w", p, err) // nothing written
		}
	}
	g.mu.Lock()
	g.files[p] = fakeFile{data: b, mode: mode}
	g.mu.Unlock()
	return nil
}

// ReadFile implements [microvm.GuestAgent].
func (r *Runtime) ReadFile(ctx context.Context, id, p string, w io.Writer) (microvm.FileInfo, error) {
	if err := checkGuestPath(p); err != nil {
		return microvm.FileInfo{}, err
	}
	g, err := r.guest(ctx, id)
	if err != nil {
		return microvm.FileInfo{}, err
	}
	g.mu.Lock()
	f, ok := g.files[p]
	g.mu.Unlock()
	if !ok {
		return microvm.FileInfo{}, fmt.Errorf("%w: %s", microvm.ErrGuestFileNotFound, p)
	}
	_, err = w.Write(f.data)
	return microvm.FileInfo{Size: int64(len(f.data)), Mode: f.mode}, err
}

// SetEnv implements [microvm.GuestAgent].
func (r *Runtime) SetEnv(ctx context.Context, id string, env map[string]string) error {
	if err := microvm.ValidEnv(env); err != nil {
		return err
	}
	g, err := r.guest(ctx, id)
	if err != nil {
		return err
	}
	g.mu.Lock()
	maps.Copy(g.env, env)
	g.mu.Unlock()
	return nil
}

// SetSecret implements [microvm.GuestAgent].
func (r *Runtime) SetSecret(ctx context.Context, id, name string, value []byte) error {
	if err := microvm.ValidSecretName(name); err != nil {
		return err
	}
	if len(value) > microvm.MaxSecretBytes {
		return fmt.Errorf("%w: secret %s longer than %d bytes", microvm.ErrInvalidArgument, name, microvm.MaxSecretBytes)
	}
	g, err := r.guest(ctx, id)
	if err != nil {
		return err
	}
	g.mu.Lock()
	g.secrets[name] = bytes.Clone(value)
	g.mu.Unlock()
	return nil
}

// Exec implements [microvm.GuestAgent] with the fake's few commands.
func (r *Runtime) Exec(ctx context.Context, id string, req microvm.ExecRequest) (microvm.ExecResult, error) {
	if err := req.Validate(); err != nil {
		return microvm.ExecResult{}, err
	}
	g, err := r.guest(ctx, id)
	if err != nil {
		return microvm.ExecResult{}, err
	}
	out, errw := req.Stdout, req.Stderr
	if out == nil {
		out = io.Discard
	}
	if errw == nil {
		errw = io.Discard
	}
	args := req.Args
	switch args[0] {
	case "true":
		return microvm.ExecResult{}, nil
	case "false":
		return microvm.ExecResult{ExitCode: 1}, nil
	case "exit":
		var n int
		if len(args) > 1 {
			fmt.Sscan(args[1], &n)
		}
		return microvm.ExecResult{ExitCode: n & 0xff}, nil
	case "echo":
		_, err := fmt.Fprintln(out, strings.Join(args[1:], " "))
		return microvm.ExecResult{}, err
	case "cat":
		if len(args) == 1 {
			if req.Stdin != nil {
				_, err = io.Copy(out, req.Stdin)
			}
			return microvm.ExecResult{}, err
		}
		g.mu.Lock()
		f, ok := g.files[args[1]]
		g.mu.Unlock()
		if !ok {
			fmt.Fprintf(errw, "cat: %s: No such file or directory\n", args[1])
			return microvm.ExecResult{ExitCode: 1}, nil
		}
		_, err = out.Write(f.data)
		return microvm.ExecResult{}, err
	case "env":
		g.mu.Lock()
		env := maps.Clone(g.env)
		g.mu.Unlock()
		maps.Copy(env, req.Env)
		env["MVM_SECRETS_DIR"] = "/run/mvm/secrets"
		for _, k := range slices.Sorted(maps.Keys(env)) {
			fmt.Fprintf(out, "%s=%s\n", k, env[k])
		}
		return microvm.ExecResult{}, nil
	}
	return microvm.ExecResult{}, fmt.Errorf("%w: %q (the memory runtime's fake guest runs only true, false, exit, echo, cat and env)", microvm.ErrCommandNotFound, args[0])
}
