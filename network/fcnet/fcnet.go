//go:build linux

// Package fcnet connects package network to the Firecracker runtime: it
// adapts a [*network.Manager] to [firecracker.Network], so that a VM whose
// spec has a managed network interface (empty HostDevName) gets a slot of
// its own: a network namespace that firecracker runs in, holding the TAP
// device, NAT to a unique host address and the egress firewall. It is for
// embedders that run the firecracker runtime with managed networking.
//
//	store, err := network.OpenStore("/var/lib/mvm/network")
//	...
//	defer store.Close()
//	m, err := network.New(ctx, network.Config{Store: store, EgressInterface: "eth0"})
//	...
//	defer m.Close() // runs after rt.Close; VM networks stay with their VMs
//	rt, err := firecracker.Open(ctx, firecracker.Config{StateDir: "/var/lib/mvm", Network: fcnet.New(m)})
//	...
//	defer rt.Close()
//
// The adapter also implements [firecracker.PolicyUpdater] (live egress
// updates, [firecracker.Runtime.SetEgressPolicy]), [firecracker.Cleaner]
// (the runtime's Open removes the networks of VMs that no longer exist),
// [firecracker.TAPOwner] (jailed VMs) and [firecracker.NetworkRenamer]
// (a renamed VM keeps its network, [firecracker.Runtime.Rename]).
//
// Every slot's guest side is the same (network.TAPName, GuestIP, GatewayIP,
// GuestMAC), so a snapshot restores into any slot without
// network_overrides: each clone gets a slot of its own with the TAP name
// the snapshot recorded.
package fcnet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/network"
)

// Network is a [firecracker.Network] backed by a [*network.Manager]. It is
// safe for concurrent use, as the Manager is.
type Network struct {
	m *network.Manager
}

var (
	_ firecracker.Network        = (*Network)(nil)
	_ firecracker.PolicyUpdater  = (*Network)(nil)
	_ firecracker.Cleaner        = (*Network)(nil)
	_ firecracker.TAPOwner       = (*Network)(nil)
	_ firecracker.NetworkRenamer = (*Network)(nil)
)

// New returns the adapter of m. The caller keeps ownership of m and closes
// it after the runtime.
func New(m *network.Manager) *Network { return &Network{m: m} }

// Attach gives VM id a slot (network.Manager.Setup) with nic's egress
// policy and returns what firecracker needs: the slot's namespace and TAP,
// its guest MAC, the ip= boot argument, the facts for MMDS
// (network.Slot.Metadata) and the view for VM.Backend.Network. A policy
// that package network refuses (e.g. an IPv6 destination) gives an error
// matching both microvm.ErrInvalidSpec and network.ErrInvalidPolicy.
func (n *Network) Attach(ctx context.Context, id string, nic microvm.NetworkInterface) (firecracker.NetworkAttachment, error) {
	p, err := Policy(nic.Egress)
	if err != nil {
		return firecracker.NetworkAttachment{}, fmt.Errorf("network[%s].egress: %w", nic.ID, err)
	}
	s, err := n.m.Setup(ctx, id, network.Options{Policy: p})
	if err != nil {
		return firecracker.NetworkAttachment{}, err
	}
	facts, err := json.Marshal(s.Metadata())
	if err != nil {
		return firecracker.NetworkAttachment{}, fmt.Errorf("network facts of vm %q: %w", id, err)
	}
	mac := s.GuestMAC
	if nic.GuestMAC != "" {
		mac = nic.GuestMAC
	}
	return firecracker.NetworkAttachment{
		NetNS:    s.NetNSPath,
		TAP:      s.TAPName,
		GuestMAC: s.GuestMAC,
		BootArgs: s.BootArg(),
		Metadata: facts,
		Info: microvm.NetworkInfo{
			NetNS:    s.NetNSPath,
			TAP:      s.TAPName,
			GuestIP:  s.GuestIP.String(),
			Gateway:  s.GatewayIP.String(),
			GuestMAC: mac,
			HostIP:   s.HostIP.String(),
		},
	}, nil
}

// SetTAPOwner gives VM id's TAP device to uid and gid, for a jailed
// firecracker (network.Options.TAPUID and TAPGID), keeping nic's egress
// policy.
func (n *Network) SetTAPOwner(ctx context.Context, id string, nic microvm.NetworkInterface, uid, gid uint32) error {
	p, err := Policy(nic.Egress)
	if err != nil {
		return fmt.Errorf("network[%s].egress: %w", nic.ID, err)
	}
	_, err = n.m.Setup(ctx, id, network.Options{Policy: p, TAPUID: uid, TAPGID: gid})
	return err
}

// Detach removes VM id's slot (network.Manager.Teardown).
func (n *Network) Detach(ctx context.Context, id string) error {
	return n.m.Teardown(ctx, id)
}

// RenameNetwork gives VM oldID's slot to newID (network.Manager.Rename),
// for firecracker.Runtime.Rename: the namespace, TAP, addresses and
// firewall stay as they are (they are named after the slot, never after
// the VM), so the attachment Attach returned for oldID is newID's. An
// oldID without a slot is not an error (the move was done, or there is
// nothing to move); a newID with one is (network.ErrExists).
func (n *Network) RenameNetwork(ctx context.Context, oldID, newID string) error {
	_, err := n.m.Rename(ctx, oldID, newID)
	if errors.Is(err, network.ErrNotFound) {
		return nil
	}
	return err
}

// SetPolicy replaces VM id's egress firewall (network.Manager.SetPolicy);
// nil is the default policy.
func (n *Network) SetPolicy(ctx context.Context, id string, p *microvm.EgressPolicy) error {
	np, err := Policy(p)
	if err != nil {
		return err
	}
	return n.m.SetPolicy(ctx, id, np)
}

// Cleanup removes the slots of VMs that keep rejects and other leftovers,
// and repairs the slots of VMs kept (network.Manager.Cleanup).
func (n *Network) Cleanup(ctx context.Context, keep func(id string) bool) error {
	_, err := n.m.Cleanup(ctx, keep)
	return err
}

// Policy converts an egress policy of a spec to package network's: nil is
// the zero (default) Policy; each Allow rule keeps its CIDR and protocol,
// and FromPort/ToPort become Ports. The result is validated
// (network.Policy.Validate); an error matches both microvm.ErrInvalidSpec
// and network.ErrInvalidPolicy.
func Policy(p *microvm.EgressPolicy) (network.Policy, error) {
	if p == nil {
		return network.Policy{}, nil
	}
	out := network.Policy{DenyAll: p.DenyAll}
	if len(p.Allow) > 0 {
		out.Allow = make([]network.Rule, len(p.Allow))
	}
	for i, r := range p.Allow {
		out.Allow[i] = network.Rule{
			CIDR:     r.CIDR,
			Protocol: r.Protocol,
			Ports:    network.PortRange{From: r.FromPort, To: r.ToPort},
		}
	}
	if err := out.Validate(); err != nil {
		return network.Policy{}, fmt.Errorf("%w: %w", microvm.ErrInvalidSpec, err)
	}
	return out, nil
}
