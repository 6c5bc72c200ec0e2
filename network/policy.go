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
// Allow rules win over DefaultDenied, so a caller can open 10.1.2.0/24 or
// one port of a private server; they never open the host itself or the
// pool (only Config.HostAllow opens a host service). With DenyAll, only
// what Allow lists is reachable. Replies to connections that the host
// opened towards the guest are always let out; every packet the guest
// originates is checked, and a policy update flushes the VM's conntrack
// entries, so it cuts every established flow (in both directions).
type Policy struct {
	// DenyAll drops everything Allow does not list.
	DenyAll bool `json:"deny_all,omitempty"`
	// Allow lists destinations the guest may reach. An Allow rule never
	// opens the host itself (its own and broadcast addresses): only
	// Config.HostAllow does.
	Allow []Rule `json:"allow,omitempty"`
	// NewFlowsPerSecond caps the flows the guest may open per second
	// (with a burst of twice as many); further new flows are dropped.
	// 0 means DefaultNewFlowsPerSecond; at most MaxNewFlowsPerSecond.
	NewFlowsPerSecond uint32 `json:"new_flows_per_second,omitempty"`
	// MaxFlows caps the flows the guest may have open at once (conntrack
	// entries it originated); new flows past it are dropped. 0 means
	// DefaultMaxFlows; at most MaxMaxFlows.
	MaxFlows uint32 `json:"max_flows,omitempty"`
}

// Flow limits of a Policy.
const (
	// DefaultNewFlowsPerSecond is the new-flow rate a zero
	// Policy.NewFlowsPerSecond allows.
	DefaultNewFlowsPerSecond = 200
	// MaxNewFlowsPerSecond is the largest Policy.NewFlowsPerSecond.
	MaxNewFlowsPerSecond = 100000
	// DefaultMaxFlows is the concurrent-flow cap a zero Policy.MaxFlows
	// allows.
	DefaultMaxFlows = 4096
	// MaxMaxFlows is the largest Policy.MaxFlows.
	MaxMaxFlows = 1 << 20
)

// flowLimits returns the effective new-flow rate and concurrent-flow cap.
func (p Policy) flowLimits() (rate, count uint32) {
	rate, count = p.NewFlowsPerSecond, p.MaxFlows
	if rate == 0 {
		rate = DefaultNewFlowsPerSecond
	}
	if count == 0 {
		count = DefaultMaxFlows
	}
	return rate, count
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
	if p.NewFlowsPerSecond > MaxNewFlowsPerSecond {
		fe.add("Policy.NewFlowsPerSecond", fmt.Sprintf("%d is above the maximum %d (0 means the default %d)", p.NewFlowsPerSecond, MaxNewFlowsPerSecond, DefaultNewFlowsPerSecond))
	}
	if p.MaxFlows > MaxMaxFlows {
		fe.add("Policy.MaxFlows", fmt.Sprintf("%d is above the maximum %d (0 means the default %d)", p.MaxFlows, MaxMaxFlows, DefaultMaxFlows))
	}
	validateRules(&fe, "Policy.Allow", p.Allow)
	return fe.err()
}

// validateRules checks rules, naming them field[i].
func validateRules(fe *fieldErrors, field string, rules []Rule) {
	for i, r := range rules {
		f := fmt.Sprintf("%s[%d]", field, i)
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
}

// equal reports whether p and q are the same policy as written: equal
// policies install the same rules. Unequal ones may too (a zero flow limit
// and its default spelled out), which costs a needless rewrite, not a
// wrong firewall.
func (p Policy) equal(q Policy) bool {
	return p.DenyAll == q.DenyAll && slices.Equal(p.Allow, q.Allow) &&
		p.NewFlowsPerSecond == q.NewFlowsPerSecond && p.MaxFlows == q.MaxFlows
}

// DefaultDenied returns the destination ranges every policy denies unless
// an Allow rule lists them: the special-purpose ranges of RFC 6890 (and
// its IANA registry) that are not globally reachable: "this network"
// 0.0.0.0/8, RFC 1918 (10/8, 172.16/12, 192.168/16), CGNAT 100.64/10,
// loopback 127/8, link-local 169.254/16 (cloud metadata services live
// there), IETF protocol assignments 192.0.0.0/24, TEST-NET-1
// 192.0.2.0/24, benchmarking 198.18.0.0/15, multicast 224/4 and reserved
// 240/4 (with the limited broadcast address). The documentation ranges
// TEST-NET-2 198.51.100.0/24 and TEST-NET-3 203.0.113.0/24 are not
// denied: no network routes them, and the package's tests use them as
// "the internet". The pool and the host's own addresses are added per
// Manager; the host's addresses are denied even to Allow rules.
func DefaultDenied() []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("100.64.0.0/10"),
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("169.254.0.0/16"),
		netip.MustParsePrefix("172.16.0.0/12"),
		netip.MustParsePrefix("192.0.0.0/24"),
		netip.MustParsePrefix("192.0.2.0/24"),
		netip.MustParsePrefix("192.168.0.0/16"),
		netip.MustParsePrefix("198.18.0.0/15"),
		netip.MustParsePrefix("224.0.0.0/4"),
		netip.MustParsePrefix("240.0.0.0/4"),
	}
}
