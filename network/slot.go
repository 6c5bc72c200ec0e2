package network

import (
	"net"
	"net/netip"
)

// The guest side of every slot is identical, so a snapshot taken in one slot
// restores in any other: same TAP name (Firecracker's snapshot records
// host_dev_name), same guest address, gateway and MAC (the guest's ARP cache
// stays valid after a restore).
const (
	// TAPName is the TAP device Firecracker opens, inside the slot's
	// namespace.
	TAPName = "tap0"
	// NSVethName is the slot-namespace end of the veth pair.
	NSVethName = "veth0"
	// GuestInterface is the guest's interface name used in BootArg.
	GuestInterface = "eth0"
	// GuestMAC is the guest NIC's MAC address (locally administered,
	// unicast); pass it as guest_mac to Firecracker.
	GuestMAC = "06:00:ac:10:00:02"
	// GuestPrefixLen is the prefix length of the guest link.
	GuestPrefixLen = 30
)

var (
	// GuestIP is the guest's address in every slot.
	GuestIP = netip.MustParseAddr("169.254.0.21")
	// GatewayIP is the address of the TAP device, the guest's gateway.
	GatewayIP = netip.MustParseAddr("169.254.0.22")
)

// Slot is the network of one VM.
type Slot struct {
	// VMID is the VM the slot belongs to.
	VMID string
	// Name is the slot's own name: prefix, '-' and the HostIP in 8 hex
	// digits ("mvm-0ac80002"). It names the namespace file and the
	// host-side veth.
	Name string
	// NetNSPath is the pinned network namespace to run Firecracker in
	// (see Do).
	NetNSPath string
	// TAPName is the TAP device inside the namespace (always TAPName).
	TAPName string
	// GuestIP, GatewayIP and GuestPrefix configure the guest's eth0.
	GuestIP     netip.Addr
	GatewayIP   netip.Addr
	GuestPrefix int
	// GuestMAC is the MAC to give Firecracker for the guest NIC.
	GuestMAC string
	// HostIP is the VM's unique address: the guest's traffic leaves the
	// namespace with this source address, and the host namespace reaches
	// the guest through it.
	HostIP netip.Addr
	// VethHost is the veth end in the host namespace (same as Name);
	// VethNS the end inside the slot namespace.
	VethHost string
	VethNS   string
}

// Netmask returns the guest netmask in dotted form, e.g. 255.255.255.252.
func (s *Slot) Netmask() string {
	return net.IP(net.CIDRMask(s.GuestPrefix, 32)).String()
}

// BootArg returns the kernel command-line argument that configures the
// guest's interface without DHCP:
// ip=<guest>::<gateway>:<netmask>::eth0:off.
func (s *Slot) BootArg() string {
	return "ip=" + s.GuestIP.String() + "::" + s.GatewayIP.String() + ":" + s.Netmask() + "::" + GuestInterface + ":off"
}

// Metadata returns the same facts as BootArg (plus the MAC and HostIP) as a
// map suitable for MMDS, e.g. under a "network" key.
func (s *Slot) Metadata() map[string]any {
	return map[string]any{
		"interface":     GuestInterface,
		"mac":           s.GuestMAC,
		"ip":            s.GuestIP.String(),
		"prefix_length": s.GuestPrefix,
		"netmask":       s.Netmask(),
		"gateway":       s.GatewayIP.String(),
		"host_ip":       s.HostIP.String(),
	}
}
