package guesttest

import (
	"context"
	"fmt"
	"strings"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/agent"
)

// BootArgs are the kernel arguments of a guest booted from Image under
// Firecracker: the runtime's defaults (serial console, reset on reboot,
// no PCI probing). Firecracker adds root= itself.
const BootArgs = microvm.DefaultBootArgs

// ConsoleHas reports whether the VM's console and log, read through the
// runtime's Logs, hold a line containing s.
func ConsoleHas(ctx context.Context, rt microvm.Runtime, id, s string) (bool, error) {
	lines, err := rt.Logs(ctx, id, 0)
	if err != nil {
		return false, err
	}
	for _, l := range lines {
		if strings.Contains(l, s) {
			return true, nil
		}
	}
	return false, nil
}

// WaitConsole waits until the VM's console (through rt.Logs) holds a line
// containing s, or ctx ends; the error then quotes the console's tail.
func WaitConsole(ctx context.Context, rt microvm.Runtime, id, s string) error {
	var lerr error
	err := WaitFor(ctx, func() bool {
		ok, err := ConsoleHas(ctx, rt, id, s)
		lerr = err
		return ok
	})
	if err == nil {
		return nil
	}
	tail, _ := rt.Logs(context.Background(), id, 20)
	return fmt.Errorf("vm %q: no %q on the console (%v, last Logs error %v); console tail:\n%s",
		id, s, err, lerr, strings.Join(tail, "\n"))
}

// DialAgent connects to the agent of VM id over its vsock device (the
// spec must have one), retrying while the guest boots, until ctx ends.
func DialAgent(ctx context.Context, rt microvm.Runtime, id string) (*agent.Client, error) {
	vm, err := rt.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if vm.Backend.VsockPath == "" {
		return nil, fmt.Errorf("vm %q has no vsock device", id)
	}
	return agent.DialVsock(ctx, vm.Backend.VsockPath, agent.DefaultPort)
}

// Counter connects to VM id's agent, reads the next counter value and
// closes the connection.
func Counter(ctx context.Context, rt microvm.Runtime, id string) (uint64, error) {
	c, err := DialAgent(ctx, rt, id)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.Counter(ctx)
}
