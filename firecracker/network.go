package firecracker

import (
	"context"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
)

// Network sets up the host side of managed network interfaces (a
// NetworkInterface with an empty HostDevName): typically a network
// namespace per VM holding a TAP device, with NAT and an egress firewall.
// Package github.com/mvm-dev/microvm/network provides one. The runtime
// calls Attach before it first spawns the VM's firecracker (Create,
// Restore) and Detach when the VM is destroyed or its creation is undone;
// a stopped VM keeps its attachment, so Start reuses it.
type Network interface {
	// Attach prepares the managed interface nic of VM id and returns what
	// firecracker needs. Calling it again for an id that is attached
	// returns the same attachment.
	Attach(ctx context.Context, id string, nic microvm.NetworkInterface) (NetworkAttachment, error)
	// Detach releases everything Attach made for id. Detaching an id that
	// is not attached is not an error.
	Detach(ctx context.Context, id string) error
}

// NetworkAttachment is the host side of a VM's managed interface.
type NetworkAttachment struct {
	// NetNS is the path of the network namespace firecracker runs in
	// ("" for the runtime's own).
	NetNS string `json:"netns,omitempty"`
	// TAP is the TAP device, inside NetNS, behind the interface.
	TAP string `json:"tap"`
	// GuestMAC is the guest's MAC address when the spec sets none.
	GuestMAC string `json:"guest_mac,omitempty"`
	// BootArgs are appended to the kernel command line (e.g. "ip=...").
	BootArgs string `json:"boot_args,omitempty"`
	// Info is what VM.Backend.Network shows.
	Info microvm.NetworkInfo `json:"info"`
}

// managedInterface returns the spec's managed interface, if any.
func managedInterface(spec microvm.Spec) (microvm.NetworkInterface, bool) {
	for _, n := range spec.Network {
		if n.HostDevName == "" {
			return n, true
		}
	}
	return microvm.NetworkInterface{}, false
}

// attachNetwork sets up the managed interface of rec's spec, if any, and
// records the attachment in rec.
func (r *Runtime) attachNetwork(ctx context.Context, rec *vmRecord) error {
	nic, ok := managedInterface(rec.Spec)
	if !ok {
		return nil
	}
	if r.cfg.Network == nil {
		return fmt.Errorf("network[%s]: a managed interface (empty host_dev_name) needs a runtime with networking configured (Config.Network): %w",
			nic.ID, microvm.ErrUnsupported)
	}
	att, err := r.cfg.Network.Attach(ctx, rec.ID, nic)
	if err != nil {
		return fmt.Errorf("attach network: %w", err)
	}
	rec.Net = &att
	return nil
}

// detachNetwork releases the managed interface of rec, if any.
func (r *Runtime) detachNetwork(ctx context.Context, rec *vmRecord) error {
	if rec.Net == nil || r.cfg.Network == nil {
		return nil
	}
	if err := r.cfg.Network.Detach(ctx, rec.ID); err != nil {
		return fmt.Errorf("detach network: %w", err)
	}
	rec.Net = nil
	return nil
}

// netBootArgs returns the kernel arguments the attachment asks for.
func (r *Runtime) netBootArgs(rec *vmRecord) string {
	if rec.Net == nil {
		return ""
	}
	return rec.Net.BootArgs
}

// inNetNS runs fn on an OS thread that has joined the network namespace at
// path; processes fn starts are born in it. An empty path runs fn as is.
func inNetNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	ns, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("open network namespace: %w", err)
	}
	defer ns.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: it dies with this goroutine, so a
		// failure to switch back cannot leak the namespace to other
		// goroutines.
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("join network namespace %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
