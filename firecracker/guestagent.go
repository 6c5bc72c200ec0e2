package firecracker

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/agent"
)

// The Runtime offers the guest agent's calls ([microvm.GuestAgent]) for VMs
// whose spec has a vsock device and whose guest runs mvm-agent: each call
// dials the agent's HTTP API (agent.HTTPPort) through the VM's vsock unix
// socket, retrying while the guest boots until the call's context ends; a
// guest without an agent then gives microvm.ErrAgentUnavailable naming
// the port and the socket. Nothing a call carries (a secret's value, a
// file's content, a command's output) is written to the VM's record, its
// logs or the runtime's log.
var _ microvm.GuestAgent = (*Runtime)(nil)

// guests caches one agent client per VM process (vsock socket and
// firecracker pid), so calls reuse idle connections.
var guests sync.Map // guestKey -> *agent.Guest

type guestKey struct {
	uds string
	pid int
}

// guest returns the agent client of a running VM.
func (r *Runtime) guest(ctx context.Context, id string) (*agent.Guest, error) {
	vm, err := r.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if vm.Status != microvm.StatusRunning {
		return nil, fmt.Errorf("vm %q is %s, not running: its guest agent cannot answer: %w", id, vm.Status, microvm.ErrInvalidTransition)
	}
	if vm.Backend.VsockPath == "" {
		return nil, fmt.Errorf("%w: vm %q has no vsock device (spec.vsock), the guest agent's only way in", microvm.ErrUnsupported, id)
	}
	k := guestKey{vm.Backend.VsockPath, vm.Backend.PID}
	if g, ok := guests.Load(k); ok {
		return g.(*agent.Guest), nil
	}
	g, loaded := guests.LoadOrStore(k, agent.DialGuest(vm.Backend.VsockPath, agent.HTTPPort))
	if !loaded {
		pruneGuests(k)
	}
	return g.(*agent.Guest), nil
}

// pruneGuests drops the cached clients of processes that are gone (another
// process of keep's socket, a destroyed VM's: its socket removed or its
// process ended), so the cache holds at most the live VMs' clients.
func pruneGuests(keep guestKey) {
	guests.Range(func(key, v any) bool {
		gk := key.(guestKey)
		if gk == keep {
			return true
		}
		_, statErr := os.Lstat(gk.uds)
		if gk.uds == keep.uds || statErr != nil || syscall.Kill(gk.pid, 0) == syscall.ESRCH {
			v.(*agent.Guest).Close()
			guests.Delete(key)
		}
		return true
	})
}

// Ping implements [microvm.GuestAgent].
func (r *Runtime) Ping(ctx context.Context, id string) (microvm.AgentInfo, error) {
	g, err := r.guest(ctx, id)
	if err != nil {
		return microvm.AgentInfo{}, err
	}
	return g.Ping(ctx)
}

// Exec implements [microvm.GuestAgent].
func (r *Runtime) Exec(ctx context.Context, id string, req microvm.ExecRequest) (microvm.ExecResult, error) {
	if err := req.Validate(); err != nil {
		return microvm.ExecResult{}, err
	}
	g, err := r.guest(ctx, id)
	if err != nil {
		return microvm.ExecResult{}, err
	}
	return g.Exec(ctx, req)
}

// WriteFile implements [microvm.GuestAgent].
func (r *Runtime) WriteFile(ctx context.Context, id, path string, src io.Reader, opts *microvm.WriteFileOptions) error {
	g, err := r.guest(ctx, id)
	if err != nil {
		return err
	}
	return g.WriteFile(ctx, path, src, opts)
}

// ReadFile implements [microvm.GuestAgent].
func (r *Runtime) ReadFile(ctx context.Context, id, path string, w io.Writer) (microvm.FileInfo, error) {
	g, err := r.guest(ctx, id)
	if err != nil {
		return microvm.FileInfo{}, err
	}
	return g.ReadFile(ctx, path, w)
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
	return g.SetEnv(ctx, env)
}

// SetSecret implements [microvm.GuestAgent].
func (r *Runtime) SetSecret(ctx context.Context, id, name string, value []byte) error {
	if err := microvm.ValidSecretName(name); err != nil {
		return err
	}
	g, err := r.guest(ctx, id)
	if err != nil {
		return err
	}
	return g.SetSecret(ctx, name, value)
}
