package network

import (
	"fmt"
	"net/netip"
	"slices"
)

// MaxRules is the largest number of Allow rules a Policy may hold; it bounds
// the size of the nftables batch that installs the policy.
const MaxRules = 1024

// Policy is a VM's egress firewall. The zero Policy allows the internet and
// denies the sensitive ranges listed by DefaultDenied (private, CGNAT,
// link-local, loopback, multicast, reserved), the host's own addresses and
// the address pool (other VMs).
//
// Allow rules are checked first and win over every deny, so a caller can
// open 10.1.2.0/24 or one host port. With DenyAll, only what Allow lists is
// reachable. Replies to connections that the host opened towards the guest
// are always let out; every packet the guest originates (new or part of an
// existing flow) is checked, so a policy update also cuts established flows.
type Policy struct {
	// DenyAll drops everything Allow does not list.
	DenyAll bool `json:"deny_all,omitempty"`
	// Allow lists destinations the guest may reach.
	Allow []Rule `json:"allow,omitempty"`
}

// Rule allows traffic to a destination range, optionally limited to a
// protocol and destination ports.
type Rule struct {
	// CIDR is the IPv4 destination range, e.g. 10.1.2.0/24 or
	// 203.0.113.7/32; 0.0.0.0/0 is any destination. Required; host bits
	// must be zero.
	CIDR netip.Prefix `json:"cidr"`
	// Protocol is "" (any), "tcp", "udp" or "icmp".
	Protocol string `json:"protocol,omitempty"`
	// Ports limits tcp or udp to destination ports; the zero PortRange is
	// every port. Ports require Protocol "tcp" or "udp".
	Ports PortRange `json:"ports,omitzero"`
}

// PortRange is an inclusive range of ports. The zero value means every
// port; To == 0 with From > 0 means the single port From.
type PortRange struct {
	From uint16 `json:"from,omitempty"`
	To   uint16 `json:"to,omitempty"`
}

// IsZero reports whether r is the zero PortRange (every port).
func (r PortRange) IsZero() bool { return r.From == 0 && r.To == 0 }

// bounds returns the first and last port.
func (r PortRange) bounds() (uint16, uint16) {
	if r.To == 0 {
		return r.From, r.From
	}
	return r.From, r.To
}

// Validate reports every broken rule of p, each as a *FieldError naming the
// field (for example "Policy.Allow[1].Ports"); the result matches
// ErrInvalidPolicy.
func (p Policy) Validate() error {
	fe := fieldErrors{sentinel: ErrInvalidPolicy}
	if len(p.Allow) > MaxRules {
		fe.add("Policy.Allow", fmt.Sprintf("has %d rules; at most %d are allowed", len(p.Allow), MaxRules))
	}
	for i, r := range p.Allow {
		f := fmt.Sprintf("Policy.Allow[%d]", i)
		switch {
		case !r.CIDR.IsValid():
			fe.add(f+".CIDR", "is required (an IPv4 prefix such as 10.1.2.0/24; 0.0.0.0/0 for any)")
		case !r.CIDR.Addr().Is4():
			fe.add(f+".CIDR", fmt.Sprintf("%s is not IPv4; only IPv4 destinations are supported", r.CIDR))
		case r.CIDR.Masked() != r.CIDR:
			fe.add(f+".CIDR", fmt.Sprintf("%s has host bits set; use %s", r.CIDR, r.CIDR.Masked()))
		}
		switch r.Protocol {
		case "", "tcp", "udp", "icmp":
		default:
			fe.add(f+".Protocol", fmt.Sprintf("%q is not one of \"\", \"tcp\", \"udp\", \"icmp\"", r.Protocol))
		}
		if r.Ports.IsZero() {
			continue
		}
		switch {
		case r.Protocol != "tcp" && r.Protocol != "udp":
			fe.add(f+".Ports", fmt.Sprintf("ports need Protocol \"tcp\" or \"udp\" (Protocol is %q)", r.Protocol))
		case r.Ports.From == 0:
			fe.add(f+".Ports", fmt.Sprintf("range 0-%d starts at port 0; ports are 1-65535", r.Ports.To))
		case r.Ports.To != 0 && r.Ports.To < r.Ports.From:
			fe.add(f+".Ports", fmt.Sprintf("range %d-%d is reversed; From must not exceed To", r.Ports.From, r.Ports.To))
		}
	}
	return fe.err()
}

// equal reports whether p and q install the same rules.
func (p Policy) equal(q Policy) bool {
	return p.DenyAll == q.DenyAll && slices.Equal(p.Allow, q.Allow)
}

// DefaultDenied returns the destination ranges every policy denies unless
// an Allow rule lists them: "this network" 0.0.0.0/8, RFC 1918
// (10/8, 172.16/12, 192.168/16), CGNAT 100.64/10, loopback 127/8,
// link-local 169.254/16 (cloud metadata services live there), multicast
// 224/4 and reserved 240/4 (with the broadcast address). The host's own
// addresses and the pool are added per Manager.
func DefaultDenied() []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("100.64.0.0/10"),
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("224.0.0.0/4"),
		netip.MustParsePrefix("240.0.0.0/4"),
	}
}
