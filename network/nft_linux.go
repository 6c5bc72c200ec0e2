//go:build linux

package network

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// nftables programs. Every change is one netlink batch, which the kernel
// applies as one transaction. A missing table is created with plain adds; a
// table that exists but may be damaged is replaced ("add table; delete
// table; add table {...}"); a policy change only flushes and refills the
// egress chain and the two sets, because deleting a table or base chain
// makes the commit wait for an RCU grace period (about 10 ms).
//
// Host namespace, table "inet <prefix>" (static for a Manager's config):
//
//	chain forward { type filter hook forward priority filter; policy accept;
//	    oifname "<prefix>-*" ct state established,related accept
//	    oifname "<prefix>-*" drop          # nothing forwarded opens a flow to a VM
//	}
//	chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//	    meta nfproto ipv4 ip saddr <pool> oifname "<egress>" masquerade
//	}
//
// Slot namespace, table "ip <prefix>_nat" (static for a slot):
//
//	chain prerouting { type nat hook prerouting priority dstnat;
//	    iifname "veth0" ip daddr <HostIP> dnat to 169.254.0.21 }
//	chain postrouting { type nat hook postrouting priority srcnat;
//	    oifname "veth0" ip saddr 169.254.0.21 snat to <HostIP> }
//
// Slot namespace, table "inet <prefix>_fw" (the Policy; replaced by SetPolicy):
//
//	set deny  { type ipv4_addr; flags interval; elements = { DefaultDenied, host addresses, pool } }
//	set allow { type ipv4_addr; flags interval; elements = { Allow rules without protocol } }
//	chain forward { type filter hook forward priority filter; policy accept;
//	    iifname "tap0" jump egress }
//	chain egress {
//	    ct direction reply accept            # answers to flows the host opened
//	    meta nfproto != ipv4 drop
//	    ip saddr != 169.254.0.21 drop        # no spoofing
//	    ip daddr @allow accept
//	    ip daddr <cidr> meta l4proto <p> th dport <ports> accept   # one per protocol rule
//	    drop                                 # DenyAll
//	    ip daddr @deny drop                  # otherwise
//	}
//	chain input { type filter hook input priority filter; policy accept;
//	    iifname "tap0" jump guest_in }
//	chain guest_in {
//	    meta nfproto ipv4 ip daddr 169.254.0.22 meta l4proto icmp accept   # ping the gateway
//	    drop
//	}

const (
	chainForward     = "forward"
	chainPostrouting = "postrouting"
	chainPrerouting  = "prerouting"
	chainEgress      = "egress"
	chainInput       = "input"
	chainGuestIn     = "guest_in"
	setDeny          = "deny"
	setAllow         = "allow"
)

func (m *Manager) hostTableName() string { return m.prefix }
func (m *Manager) natTableName() string  { return m.prefix + "_nat" }
func (m *Manager) fwTableName() string   { return m.prefix + "_fw" }

// replaceTable queues "add; delete; add" of t, so that the batch replaces
// it; with replace false it only adds it (the caller knows it is absent).
func replaceTable(c *nftables.Conn, t *nftables.Table, replace bool) *nftables.Table {
	if replace {
		c.AddTable(t)
		c.DelTable(t)
	}
	return c.AddTable(t)
}

// writeHostTable queues the host namespace table.
func (m *Manager) writeHostTable(c *nftables.Conn) {
	t := replaceTable(c, &nftables.Table{Name: m.hostTableName(), Family: nftables.TableFamilyINet}, true)
	accept := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	vmPrefix := []byte(m.prefix + "-") // interface name wildcard "<prefix>-*"
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: concat(
		matchIfname(expr.MetaKeyOIFNAME, vmPrefix),
		matchCtState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED),
		verdict(expr.VerdictAccept))})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: concat(
		matchIfname(expr.MetaKeyOIFNAME, vmPrefix),
		verdict(expr.VerdictDrop))})

	post := c.AddChain(&nftables.Chain{Name: chainPostrouting, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: concat(
		matchNFProto(unix.NFPROTO_IPV4),
		matchPrefix(ipSaddr, m.pool),
		matchIfname(expr.MetaKeyOIFNAME, ifname(m.egress)),
		[]expr.Any{&expr.Masq{}})})
}

// writeNATTable queues the slot namespace's NAT table, replacing an
// existing one if replace.
func (m *Manager) writeNATTable(c *nftables.Conn, a addrs, replace bool) {
	t := replaceTable(c, &nftables.Table{Name: m.natTableName(), Family: nftables.TableFamilyIPv4}, replace)
	accept := nftables.ChainPolicyAccept
	pre := c.AddChain(&nftables.Chain{Name: chainPrerouting, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: concat(
		matchIfname(expr.MetaKeyIIFNAME, ifname(NSVethName)),
		matchPrefix(ipDaddr, netip.PrefixFrom(a.HostIP, 32)),
		natTo(expr.NATTypeDestNAT, GuestIP))})
	post := c.AddChain(&nftables.Chain{Name: chainPostrouting, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: concat(
		matchIfname(expr.MetaKeyOIFNAME, ifname(NSVethName)),
		matchPrefix(ipSaddr, netip.PrefixFrom(GuestIP, 32)),
		natTo(expr.NATTypeSourceNAT, a.HostIP))})
}

// How writeFirewall changes the firewall table.
type fwMode int

const (
	fwCreate  fwMode = iota // the table is absent: create it
	fwReplace               // the table exists, maybe damaged: replace it
	fwUpdate                // the table is intact: change only the policy
)

// writeFirewall queues the slot namespace's firewall table for p; deny is
// the complete list of denied ranges (defaults, host addresses, pool).
func (m *Manager) writeFirewall(c *nftables.Conn, p Policy, deny []netip.Prefix, mode fwMode) error {
	t := &nftables.Table{Name: m.fwTableName(), Family: nftables.TableFamilyINet}
	if mode != fwUpdate {
		replaceTable(c, t, mode == fwReplace)
	}
	// Explicit set ids: the library's own allocator is a global counter that
	// is not safe for concurrent Conns.
	denySet := &nftables.Set{Table: t, ID: 1, Name: setDeny, KeyType: nftables.TypeIPAddr, Interval: true}
	allowSet := &nftables.Set{Table: t, ID: 2, Name: setAllow, KeyType: nftables.TypeIPAddr, Interval: true}
	var anyProto []netip.Prefix
	for _, r := range p.Allow {
		if r.Protocol == "" {
			anyProto = append(anyProto, r.CIDR)
		}
	}
	egress := &nftables.Chain{Name: chainEgress, Table: t}
	if mode == fwUpdate {
		c.FlushSet(denySet)
		c.FlushSet(allowSet)
		c.FlushChain(egress)
		if err := c.SetAddElements(denySet, intervalElements(deny)); err != nil {
			return fmt.Errorf("deny set: %w", err)
		}
		if err := c.SetAddElements(allowSet, intervalElements(anyProto)); err != nil {
			return fmt.Errorf("allow set: %w", err)
		}
	} else {
		if err := c.AddSet(denySet, intervalElements(deny)); err != nil {
			return fmt.Errorf("deny set: %w", err)
		}
		if err := c.AddSet(allowSet, intervalElements(anyProto)); err != nil {
			return fmt.Errorf("allow set: %w", err)
		}
		c.AddChain(egress)
	}

	rule := func(ex ...[]expr.Any) { c.AddRule(&nftables.Rule{Table: t, Chain: egress, Exprs: concat(ex...)}) }
	rule([]expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeyDIRECTION},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{ctDirReply}},
	}, verdict(expr.VerdictAccept))
	rule([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}, verdict(expr.VerdictDrop))
	rule([]expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipSaddr, Len: 4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: GuestIP.AsSlice()},
	}, verdict(expr.VerdictDrop))
	rule(lookupDaddr(allowSet), verdict(expr.VerdictAccept))
	for _, r := range p.Allow {
		if r.Protocol == "" {
			continue
		}
		rule(matchPrefix(ipDaddr, r.CIDR), matchProto(r.Protocol, r.Ports), verdict(expr.VerdictAccept))
	}
	if p.DenyAll {
		rule(verdict(expr.VerdictDrop))
	} else {
		rule(lookupDaddr(denySet), verdict(expr.VerdictDrop))
	}
	if mode == fwUpdate {
		return nil
	}

	accept := nftables.ChainPolicyAccept
	fwd := c.AddChain(&nftables.Chain{Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: concat(
		matchIfname(expr.MetaKeyIIFNAME, ifname(TAPName)),
		[]expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chainEgress}})})
	guestIn := c.AddChain(&nftables.Chain{Name: chainGuestIn, Table: t})
	input := c.AddChain(&nftables.Chain{Name: chainInput, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: input, Exprs: concat(
		matchIfname(expr.MetaKeyIIFNAME, ifname(TAPName)),
		[]expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chainGuestIn}})})
	c.AddRule(&nftables.Rule{Table: t, Chain: guestIn, Exprs: concat(
		matchNFProto(unix.NFPROTO_IPV4),
		matchPrefix(ipDaddr, netip.PrefixFrom(GatewayIP, 32)),
		matchProto("icmp", PortRange{}),
		verdict(expr.VerdictAccept))})
	c.AddRule(&nftables.Rule{Table: t, Chain: guestIn, Exprs: verdict(expr.VerdictDrop)})
	return nil
}

// ctDirReply is IP_CT_DIR_REPLY, the value of "ct direction" for replies.
const ctDirReply = 1

// IPv4 header offsets.
const (
	ipSaddr = 12
	ipDaddr = 16
)

func concat(parts ...[]expr.Any) []expr.Any { return slices.Concat(parts...) }

func verdict(k expr.VerdictKind) []expr.Any { return []expr.Any{&expr.Verdict{Kind: k}} }

// ifname returns an interface name as nftables compares it: padded with
// zeros to IFNAMSIZ. A shorter, unpadded value is a prefix match ("name*").
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

func matchIfname(key expr.MetaKey, name []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
	}
}

func matchNFProto(p byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p}},
	}
}

func matchCtState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// matchPrefix matches the IPv4 address at offset (ipSaddr or ipDaddr)
// against p; 0.0.0.0/0 matches everything and needs no expression.
func matchPrefix(offset uint32, p netip.Prefix) []expr.Any {
	if p.Bits() == 0 {
		return nil
	}
	ex := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}}
	if p.Bits() < 32 {
		mask := binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-p.Bits()))
		ex = append(ex, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)})
	}
	return append(ex, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Addr().AsSlice()})
}

func lookupDaddr(s *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipDaddr, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
	}
}

// matchProto matches the layer 4 protocol and, for tcp and udp, the
// destination port range.
func matchProto(proto string, ports PortRange) []expr.Any {
	var num byte
	switch proto {
	case "tcp":
		num = unix.IPPROTO_TCP
	case "udp":
		num = unix.IPPROTO_UDP
	case "icmp":
		num = unix.IPPROTO_ICMP
	default:
		return nil
	}
	ex := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{num}},
	}
	if ports.IsZero() {
		return ex
	}
	lo, hi := ports.bounds()
	ex = append(ex, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
	if lo == hi {
		return append(ex, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(lo)})
	}
	return append(ex, &expr.Range{Op: expr.CmpOpEq, Register: 1,
		FromData: binaryutil.BigEndian.PutUint16(lo), ToData: binaryutil.BigEndian.PutUint16(hi)})
}

func natTo(t expr.NATType, to netip.Addr) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: to.AsSlice()},
		&expr.NAT{Type: t, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
	}
}

// addrRange is an inclusive range of IPv4 addresses.
type addrRange struct{ lo, hi uint32 }

// mergeRanges turns prefixes into sorted, disjoint, non-adjacent ranges:
// the kernel rejects overlapping elements in an interval set.
func mergeRanges(ps []netip.Prefix) []addrRange {
	rs := make([]addrRange, 0, len(ps))
	for _, p := range ps {
		if !p.IsValid() || !p.Addr().Is4() {
			continue
		}
		p = p.Masked()
		lo := u32(p.Addr())
		hi := lo | uint32(uint64(1)<<(32-p.Bits())-1)
		rs = append(rs, addrRange{lo, hi})
	}
	slices.SortFunc(rs, func(a, b addrRange) int { return cmp.Compare(a.lo, b.lo) })
	out := rs[:0]
	for _, r := range rs {
		if n := len(out); n > 0 && (r.lo <= out[n-1].hi || out[n-1].hi != ^uint32(0) && r.lo == out[n-1].hi+1) {
			out[n-1].hi = max(out[n-1].hi, r.hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

// intervalElements returns the elements of an interval set holding ps: a
// start key per range and an interval-end key just past it (omitted for a
// range that ends at 255.255.255.255), preceded by an interval end at
// 0.0.0.0 when the first range starts above it.
func intervalElements(ps []netip.Prefix) []nftables.SetElement {
	var els []nftables.SetElement
	rs := mergeRanges(ps)
	if len(rs) > 0 && rs[0].lo != 0 {
		// As nft does: an interval end at 0.0.0.0 opens the set with a gap.
		els = append(els, nftables.SetElement{Key: make([]byte, 4), IntervalEnd: true})
	}
	for _, r := range rs {
		els = append(els, nftables.SetElement{Key: binary.BigEndian.AppendUint32(nil, r.lo)})
		if r.hi != ^uint32(0) {
			els = append(els, nftables.SetElement{Key: binary.BigEndian.AppendUint32(nil, r.hi+1), IntervalEnd: true})
		}
	}
	return els
}
