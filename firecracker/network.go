package firecracker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/fcapi"
	"github.com/mvm-dev/microvm/internal/registry"
)

// Network sets up the host side of managed network interfaces (a
// NetworkInterface with an empty HostDevName): typically a network
// namespace per VM holding a TAP device, with NAT and an egress firewall.
// Package github.com/mvm-dev/microvm/network/fcnet provides one, backed by
// package network. The runtime calls Attach before it first spawns the
// VM's firecracker (Create, Restore) and again before a cold Start (to
// repair an attachment lost meanwhile, e.g. to a host reboot), and Detach
// when the VM is destroyed or its creation is undone; a stopped VM keeps
// its attachment.
//
// A Network may also implement [PolicyUpdater] (for
// [Runtime.SetEgressPolicy]), [Cleaner] (called by Open), [TAPOwner] (for
// jailed VMs) and [NetworkRenamer] (for [Runtime.Rename]).
type Network interface {
	// Attach prepares the managed interface nic of VM id and returns what
	// firecracker needs. Calling it again for an id that is attached
	// returns the same attachment, repaired if needed.
	Attach(ctx context.Context, id string, nic microvm.NetworkInterface) (NetworkAttachment, error)
	// Detach releases everything Attach made for id. Detaching an id that
	// is not attached is not an error.
	Detach(ctx context.Context, id string) error
}

// PolicyUpdater is implemented by a [Network] that can replace the egress
// policy of an attached VM while it runs. A nil policy is the default
// policy (see microvm.NetworkInterface.Egress).
type PolicyUpdater interface {
	SetPolicy(ctx context.Context, id string, p *microvm.EgressPolicy) error
}

// Cleaner is implemented by a [Network] that can find and remove what it
// set up for VMs that no longer exist. Open calls Cleanup once, after it
// has adopted the VMs of the state directory, with keep reporting whether
// a VM record exists (records are written before Attach, so VMs being
// created by other processes are kept). Errors are logged, not returned
// by Open.
type Cleaner interface {
	Cleanup(ctx context.Context, keep func(id string) bool) error
}

// NetworkRenamer is implemented by a [Network] that can give an attached
// VM's network to another id, for [Runtime.Rename]: without it, a VM with
// a managed interface cannot be renamed.
type NetworkRenamer interface {
	// RenameNetwork moves what Attach made for oldID to newID, as it is:
	// a firecracker process running in it keeps its network, and
	// the attachment Attach returned stays valid (it must name nothing
	// after the VM id). It must be idempotent, as the runtime calls it
	// again to finish or undo a rename interrupted by a crash: when oldID
	// has nothing, it succeeds (the move was done, or there was nothing
	// to move); when both ids have a network, it fails.
	RenameNetwork(ctx context.Context, oldID, newID string) error
}

// TAPOwner is implemented by a [Network] that can give an attached VM's
// TAP device to a uid and gid: a jailed firecracker (Config.Jailer) runs
// as the VM's own uid and can open its TAP only when it owns it. The
// runtime calls it before each jailed launch of a VM with a managed
// interface; without it, such a launch fails.
type TAPOwner interface {
	SetTAPOwner(ctx context.Context, id string, nic microvm.NetworkInterface, uid, gid uint32) error
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
	// Metadata, a JSON object, is given to the guest through MMDS under
	// the key "mvm" / "network" (see the package documentation); empty
	// gives the guest nothing.
	Metadata json.RawMessage `json:"metadata,omitempty"`
	// Info is what VM.Backend.Network shows.
	Info microvm.NetworkInfo `json:"info"`
}

// ErrNoNetwork reports an operation on a managed network interface by a
// runtime without networking (Config.Network is nil). Errors matching it
// also match microvm.ErrUnsupported.
var ErrNoNetwork = errors.New("the runtime has no networking configured (Config.Network)")

// errNoNetwork is ErrNoNetwork that also matches microvm.ErrUnsupported.
var errNoNetwork = fmt.Errorf("%w: %w", ErrNoNetwork, microvm.ErrUnsupported)

// MMDS keys of the managed network's facts: the MMDS data store holds them
// at MMDSKey / MMDSNetworkKey, e.g. GET http://169.254.169.254/mvm/network
// from the guest.
const (
	MMDSKey        = "mvm"
	MMDSNetworkKey = "network"
)

// managedInterface returns the spec's managed interface, if any.
func managedInterface(spec microvm.Spec) (microvm.NetworkInterface, bool) {
	i := managedIndex(spec)
	if i < 0 {
		return microvm.NetworkInterface{}, false
	}
	return spec.Network[i], true
}

// managedIndex returns the index of the spec's managed interface, or -1.
func managedIndex(spec microvm.Spec) int {
	for i, n := range spec.Network {
		if n.HostDevName == "" {
			return i
		}
	}
	return -1
}

// attachNetwork sets up the managed interface of rec's spec, if any, and
// records the attachment in rec.
func (r *Runtime) attachNetwork(ctx context.Context, rec *vmRecord) error {
	nic, ok := managedInterface(rec.Spec)
	if !ok {
		return nil
	}
	if r.cfg.Network == nil {
		return fmt.Errorf("network[%s]: a managed interface (empty host_dev_name): %w", nic.ID, errNoNetwork)
	}
	att, err := r.cfg.Network.Attach(ctx, rec.ID, nic)
	if err != nil {
		return fmt.Errorf("attach network: %w", err)
	}
	rec.Net = &att
	return nil
}

// detachNetwork releases the managed interface of rec, if any. A VM whose
// spec has one is detached even when its record holds no attachment yet
// (a Create or Restore that died between Attach and the record's write).
func (r *Runtime) detachNetwork(ctx context.Context, rec *vmRecord) error {
	if !hasNetwork(rec) {
		return nil
	}
	if err := r.needsNetwork(rec); err != nil {
		return err
	}
	if err := r.cfg.Network.Detach(ctx, rec.ID); err != nil {
		return fmt.Errorf("detach network: %w", err)
	}
	rec.Net = nil
	return nil
}

// hasNetwork reports whether rec may hold a managed network (an
// attachment, or a spec with a managed interface whose attachment may not
// be recorded yet).
func hasNetwork(rec *vmRecord) bool {
	return rec.Net != nil || managedIndex(rec.Spec) >= 0
}

// networkRenamer returns what moves rec's managed network to another id:
// nil when rec has none, an error of [microvm.ErrUnsupported] when the
// runtime's Network cannot move it.
func (r *Runtime) networkRenamer(rec *vmRecord) (NetworkRenamer, error) {
	if !hasNetwork(rec) {
		return nil, nil
	}
	nr, ok := r.cfg.Network.(NetworkRenamer)
	if !ok {
		return nil, fmt.Errorf("vm %q has a managed network interface, which only a runtime whose Config.Network implements NetworkRenamer can move to another id: %w", rec.ID, microvm.ErrUnsupported)
	}
	return nr, nil
}

// renameNetwork moves the managed network of a VM from oldID to newID (see
// NetworkRenamer); a VM without one is left alone.
func (r *Runtime) renameNetwork(ctx context.Context, rec *vmRecord, oldID, newID string) error {
	nr, err := r.networkRenamer(rec)
	if nr == nil {
		return err
	}
	if err := nr.RenameNetwork(ctx, oldID, newID); err != nil {
		return fmt.Errorf("move network from %q to %q: %w", oldID, newID, err)
	}
	return nil
}

// needsNetwork refuses to release a VM that holds (or may hold: see
// hasNetwork) a managed network when the runtime has no Network to release
// it with: the slot would leak. Destroy asks first; detachNetwork asks
// again for every other release (an interrupted Create or Restore
// discarded by adoption), so that the record stays for a runtime with
// networking.
func (r *Runtime) needsNetwork(rec *vmRecord) error {
	if r.cfg.Network != nil || !hasNetwork(rec) {
		return nil
	}
	return fmt.Errorf("vm %q has a managed network interface, which only a runtime with networking can release: %w", rec.ID, errNoNetwork)
}

// cleanupNetwork asks the Network to remove what it holds for VMs that
// have no record (see Cleaner).
func (r *Runtime) cleanupNetwork(ctx context.Context) {
	cl, ok := r.cfg.Network.(Cleaner)
	if !ok {
		return
	}
	keep := func(id string) bool {
		err := r.reg.Get(kindVM, id, nil)
		return err == nil || !errors.Is(err, registry.ErrNotFound) // keep when unsure
	}
	if err := cl.Cleanup(ctx, keep); err != nil {
		r.log.Warn("network cleanup", "err", err)
	}
}

// netBootArgs returns the kernel arguments the attachment asks for.
func (r *Runtime) netBootArgs(rec *vmRecord) string {
	if rec.Net == nil {
		return ""
	}
	return rec.Net.BootArgs
}

// networkInterfaces returns the PUT /network-interfaces bodies of rec, the
// managed interface first: the guest names its NICs in that order, so the
// managed one is eth0, the device its ip= boot argument names.
func networkInterfaces(rec *vmRecord) []fcapi.NetworkInterface {
	spec := rec.Spec
	m := managedIndex(spec)
	order := make([]int, 0, len(spec.Network))
	if m >= 0 {
		order = append(order, m)
	}
	for i := range spec.Network {
		if i != m {
			order = append(order, i)
		}
	}
	out := make([]fcapi.NetworkInterface, 0, len(order))
	for _, i := range order {
		n := spec.Network[i]
		ni := fcapi.NetworkInterface{
			IfaceID:       n.ID,
			HostDevName:   n.HostDevName,
			GuestMAC:      n.GuestMAC,
			RxRateLimiter: rateLimiter(n.RxRateLimiter),
			TxRateLimiter: rateLimiter(n.TxRateLimiter),
		}
		if i == m && rec.Net != nil {
			ni.HostDevName = rec.Net.TAP
			if ni.GuestMAC == "" {
				ni.GuestMAC = rec.Net.GuestMAC
			}
		}
		out = append(out, ni)
	}
	return out
}

// implicitMMDS returns the MMDS configuration the runtime adds for a VM
// whose spec has none but whose managed network has facts for the guest:
// version 2 on the managed interface, at the default address.
func implicitMMDS(rec *vmRecord) *fcapi.MMDSConfig {
	if rec.Spec.MMDS != nil || rec.Net == nil || len(rec.Net.Metadata) == 0 {
		return nil
	}
	nic, ok := managedInterface(rec.Spec)
	if !ok {
		return nil
	}
	return &fcapi.MMDSConfig{
		Version:           fcapi.MMDSVersionV2,
		NetworkInterfaces: []string{nic.ID},
		IPv4Address:       microvm.DefaultMMDSAddress,
	}
}

// mmdsData returns the MMDS data store of rec: the spec's data with the
// managed network's facts at MMDSKey/MMDSNetworkKey (replacing whatever
// the spec put there); nil when there is nothing to store. It fails when
// the spec's data holds a MMDSKey that is not a JSON object.
func mmdsData(rec *vmRecord) (json.RawMessage, error) {
	var data json.RawMessage
	if rec.Spec.MMDS != nil {
		data = rec.Spec.MMDS.Data
	}
	if rec.Net == nil || len(rec.Net.Metadata) == 0 {
		return data, nil
	}
	return mergeFacts(data, rec.Net.Metadata)
}

// mergeFacts puts facts at MMDSKey/MMDSNetworkKey of the JSON object data
// (empty: a new object).
func mergeFacts(data, facts json.RawMessage) (json.RawMessage, error) {
	var obj map[string]json.RawMessage
	if len(data) > 0 {
		if err := json.Unmarshal(data, &obj); err != nil {
			return nil, mmdsDataError("must be a JSON object")
		}
	}
	if obj == nil {
		obj = map[string]json.RawMessage{}
	}
	var ours map[string]json.RawMessage
	if raw, ok := obj[MMDSKey]; ok {
		if err := json.Unmarshal(raw, &ours); err != nil {
			return nil, mmdsDataError(fmt.Sprintf("key %q must be a JSON object or absent: the runtime puts the managed network's facts at %s.%s",
				MMDSKey, MMDSKey, MMDSNetworkKey))
		}
	}
	if ours == nil {
		ours = map[string]json.RawMessage{}
	}
	ours[MMDSNetworkKey] = facts
	b, err := json.Marshal(ours)
	if err != nil {
		return nil, fmt.Errorf("mmds data: %w", err)
	}
	obj[MMDSKey] = b
	return json.Marshal(obj)
}

func mmdsDataError(rule string) error {
	return &microvm.SpecError{Problems: []microvm.FieldError{{Field: "mmds.data", Rule: rule}}}
}

// checkMMDSKey checks, before anything is made, that the facts of a
// managed network can be merged into the spec's MMDS data.
func checkMMDSKey(spec microvm.Spec) error {
	if _, managed := managedInterface(spec); !managed || spec.MMDS == nil || len(spec.MMDS.Data) == 0 {
		return nil
	}
	_, err := mergeFacts(spec.MMDS.Data, json.RawMessage(`{}`))
	return err
}

// inNetNS runs fn on an OS thread that has joined the network namespace at
// path; processes fn starts are born in it. An empty path runs fn as is.
// The thread is switched back and unlocked afterwards; if switching back
// fails it stays locked, and the runtime ends it with the goroutine. (A
// thread is not simply left locked: when it is the main thread, the Go
// runtime cannot end it and would park it in the namespace for good.)
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
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open the thread's network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("join network namespace %s: %w", path, err)
			return
		}
		err = fn()
		if serr := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); serr != nil {
			errc <- errors.Join(err, fmt.Errorf("leave network namespace %s: %w", path, serr))
			return // still locked: the thread ends with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}
