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
//	chain input { type filter hook input priority filter; policy accept;
//	    iifname "<prefix>-*" ct state established,related accept
//	    iifname "<prefix>-*" ip daddr <cidr> [meta l4proto <p> th dport <ports>] accept  # Config.HostAllow
//	    iifname "<prefix>-*" drop          # guests reach no host service
//	}
//	chain forward { type filter hook forward priority filter; policy accept;
//	    iifname "<prefix>-*" ct state invalid drop
//	    oifname "<prefix>-*" ct state invalid drop
//	    oifname "<prefix>-*" ct state established,related accept
//	    oifname "<prefix>-*" drop          # nothing forwarded opens a flow to a VM
//	    iifname "<prefix>-*" oifname != "<egress>" drop     # slots reach only the egress
//	    iifname "<prefix>-*" fib saddr . iif oif missing drop  # per-slot anti-spoofing
//	    iifname "<egress>" oifname != "<prefix>-*" drop     # only if mvm turned forwarding on
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
// Slot namespace, table "inet <prefix>_fw" (the Policy; refilled by SetPolicy):
//
//	set deny  { type ipv4_addr; flags interval; elements = { DefaultDenied } }
//	set host  { type ipv4_addr; flags interval; elements = { host's local and broadcast addresses } }
//	set allow { type ipv4_addr; flags interval; elements = { Allow rules without protocol } }
//	chain prerouting { type filter hook prerouting priority mangle; policy accept;
//	    ct state invalid drop
//	    iifname "tap0" meta nfproto != ipv4 drop
//	    iifname "tap0" ip saddr != 169.254.0.21 drop        # no spoofing, before routing
//	    iifname "veth0" ct state new ip saddr != <VethHost> ip saddr != @host drop  # only the host opens flows
//	}
//	chain forward { type filter hook forward priority filter; policy accept;
//	    iifname "tap0" jump egress }
//	chain egress {
//	    ct direction reply accept            # answers to flows the host opened
//	    ct status & confirmed == 0 limit rate over <NewFlowsPerSecond>/second burst <2x> packets drop
//	    ct status & confirmed == 0 ct count over <MaxFlows> drop   # first packets of flows only
//	    ip daddr <cidr> [meta l4proto <p> th dport <ports>] accept   # Config.HostAllow
//	    ip daddr @host drop                  # the host, whatever Allow says
//	    ip daddr <pool> drop                 # other VMs and the host's veth ends
//	    ip daddr @allow accept
//	    ip daddr <cidr> meta l4proto <p> th dport <ports> accept   # one per protocol rule
//	    drop                                 # DenyAll
//	    ip daddr @deny drop                  # otherwise
//	}
//	chain input { type filter hook input priority filter; policy accept;
//	    iifname "tap0" jump guest_in }
//	chain guest_in {
//	    ip saddr 169.254.0.21 ip daddr 169.254.0.22 icmp type echo-request limit rate 10/second burst 20 packets accept
//	    drop
//	}
//	chain postrouting { type filter hook postrouting priority srcnat + 10; policy accept;
//	    oifname "veth0" meta nfproto != ipv4 drop
//	    oifname "veth0" ip saddr != <HostIP> drop   # after SNAT: nothing else leaves
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
	setHost          = "host"
)

// Gateway ping limit (packets per second, burst).
const (
	pingRate  = 10
	pingBurst = 20
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

// writeHostTable queues the host namespace table; egressGuard adds the
// rule that stops the host from routing egress traffic anywhere but to a
// slot (when mvm turned forwarding on for the egress interface).
func (m *Manager) writeHostTable(c *nftables.Conn, egressGuard bool) {
	t := replaceTable(c, &nftables.Table{Name: m.hostTableName(), Family: nftables.TableFamilyINet}, true)
	accept := nftables.ChainPolicyAccept
	vmPrefix := []byte(m.prefix + "-") // interface name wildcard "<prefix>-*"
	fromVM := matchIfname(expr.MetaKeyIIFNAME, vmPrefix)
	toVM := matchIfname(expr.MetaKeyOIFNAME, vmPrefix)

	in := c.AddChain(&nftables.Chain{Name: chainInput, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	inRule := func(ex ...[]expr.Any) { c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: concat(ex...)}) }
	inRule(fromVM, matchCtState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept))
	for _, r := range m.hostAllow {
		inRule(fromVM, matchNFProto(unix.NFPROTO_IPV4), matchPrefix(ipDaddr, r.CIDR), matchProto(r.Protocol, r.Ports), verdict(expr.VerdictAccept))
	}
	inRule(fromVM, verdict(expr.VerdictDrop))

	fwd := c.AddChain(&nftables.Chain{Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	rule := func(ex ...[]expr.Any) { c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: concat(ex...)}) }
	rule(fromVM, matchCtState(expr.CtStateBitINVALID), verdict(expr.VerdictDrop))
	rule(toVM, matchCtState(expr.CtStateBitINVALID), verdict(expr.VerdictDrop))
	rule(toVM, matchCtState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept))
	rule(toVM, verdict(expr.VerdictDrop))
	rule(fromVM, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname(m.egress)},
	}, verdict(expr.VerdictDrop))
	rule(fromVM, matchNFProto(unix.NFPROTO_IPV4), []expr.Any{
		&expr.Fib{Register: 1, FlagSADDR: true, FlagIIF: true, ResultOIF: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: make([]byte, 4)},
	}, verdict(expr.VerdictDrop))
	rule(fromVM, matchNFProto(unix.NFPROTO_IPV4), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipSaddr, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: maskOf(m.pool), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: m.pool.Addr().AsSlice()},
	}, verdict(expr.VerdictDrop))
	if egressGuard {
		rule(matchIfname(expr.MetaKeyIIFNAME, ifname(m.egress)), []expr.Any{
			&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: vmPrefix},
		}, verdict(expr.VerdictDrop))
	}

	post := c.AddChain(&nftables.Chain{Name: chainPostrouting, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: concat(
		matchNFProto(unix.NFPROTO_IPV4),
		matchPrefix(ipSaddr, m.pool),
		matchIfname(expr.MetaKeyOIFNAME, ifname(m.egress)),
		[]expr.Any{&expr.Masq{}})})
}

func maskOf(p netip.Prefix) []byte {
	return binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-p.Bits()))
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

// writeFirewall queues the slot namespace's firewall table for p; a are
// the slot's addresses, deny the default denied ranges and host the host's
// own addresses (never reachable).
func (m *Manager) writeFirewall(c *nftables.Conn, p Policy, a addrs, deny, host []netip.Prefix, mode fwMode) error {
	t := &nftables.Table{Name: m.fwTableName(), Family: nftables.TableFamilyINet}
	if mode != fwUpdate {
		replaceTable(c, t, mode == fwReplace)
	}
	// Explicit set ids: the library's own allocator is a global counter that
	// is not safe for concurrent Conns.
	denySet := &nftables.Set{Table: t, ID: 1, Name: setDeny, KeyType: nftables.TypeIPAddr, Interval: true}
	allowSet := &nftables.Set{Table: t, ID: 2, Name: setAllow, KeyType: nftables.TypeIPAddr, Interval: true}
	hostSet := &nftables.Set{Table: t, ID: 3, Name: setHost, KeyType: nftables.TypeIPAddr, Interval: true}
	var anyProto []netip.Prefix
	for _, r := range p.Allow {
		if r.Protocol == "" {
			anyProto = append(anyProto, r.CIDR)
		}
	}
	egress := &nftables.Chain{Name: chainEgress, Table: t}
	sets := []struct {
		s   *nftables.Set
		els []netip.Prefix
	}{{denySet, deny}, {allowSet, anyProto}, {hostSet, host}}
	if mode == fwUpdate {
		c.FlushChain(egress)
		for _, x := range sets {
			c.FlushSet(x.s)
			if err := c.SetAddElements(x.s, intervalElements(x.els)); err != nil {
				return fmt.Errorf("%s set: %w", x.s.Name, err)
			}
		}
	} else {
		for _, x := range sets {
			if err := c.AddSet(x.s, intervalElements(x.els)); err != nil {
				return fmt.Errorf("%s set: %w", x.s.Name, err)
			}
		}
		c.AddChain(egress)
	}

	rule := func(ex ...[]expr.Any) { c.AddRule(&nftables.Rule{Table: t, Chain: egress, Exprs: concat(ex...)}) }
	rule([]expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeyDIRECTION},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{ctDirReply}},
	}, verdict(expr.VerdictAccept))
	rate, count := p.flowLimits()
	rule(matchUnconfirmed(),
		[]expr.Any{&expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(rate), Unit: expr.LimitTimeSecond, Burst: 2 * rate, Over: true}},
		verdict(expr.VerdictDrop))
	rule(matchUnconfirmed(),
		[]expr.Any{&expr.Connlimit{Count: count, Flags: connlimitInvert}},
		verdict(expr.VerdictDrop))
	for _, r := range m.hostAllow {
		rule(matchPrefix(ipDaddr, r.CIDR), matchProto(r.Protocol, r.Ports), verdict(expr.VerdictAccept))
	}
	rule(lookupDaddr(hostSet), verdict(expr.VerdictDrop))
	rule(matchPrefix(ipDaddr, m.pool), verdict(expr.VerdictDrop))
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
	pre := c.AddChain(&nftables.Chain{Name: chainPrerouting, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle, Policy: &accept})
	preRule := func(ex ...[]expr.Any) { c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: concat(ex...)}) }
	fromGuest := matchIfname(expr.MetaKeyIIFNAME, ifname(TAPName))
	preRule(matchCtState(expr.CtStateBitINVALID), verdict(expr.VerdictDrop))
	preRule(fromGuest, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}, verdict(expr.VerdictDrop))
	preRule(fromGuest, []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipSaddr, Len: 4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: GuestIP.AsSlice()},
	}, verdict(expr.VerdictDrop))
	preRule(matchIfname(expr.MetaKeyIIFNAME, ifname(NSVethName)), matchNFProto(unix.NFPROTO_IPV4),
		matchCtState(expr.CtStateBitNEW), []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipSaddr, Len: 4},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: a.VethHost.AsSlice()},
			&expr.Lookup{SourceRegister: 1, SetName: hostSet.Name, SetID: hostSet.ID, Invert: true},
		}, verdict(expr.VerdictDrop))

	fwd := c.AddChain(&nftables.Chain{Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: concat(
		fromGuest,
		[]expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chainEgress}})})
	guestIn := c.AddChain(&nftables.Chain{Name: chainGuestIn, Table: t})
	input := c.AddChain(&nftables.Chain{Name: chainInput, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: input, Exprs: concat(
		fromGuest,
		[]expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chainGuestIn}})})
	c.AddRule(&nftables.Rule{Table: t, Chain: guestIn, Exprs: concat(
		matchNFProto(unix.NFPROTO_IPV4),
		matchPrefix(ipSaddr, netip.PrefixFrom(GuestIP, 32)),
		matchPrefix(ipDaddr, netip.PrefixFrom(GatewayIP, 32)),
		matchProto("icmp", PortRange{}),
		[]expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{icmpEchoRequest}},
			&expr.Limit{Type: expr.LimitTypePkts, Rate: pingRate, Unit: expr.LimitTimeSecond, Burst: pingBurst},
		},
		verdict(expr.VerdictAccept))})
	c.AddRule(&nftables.Rule{Table: t, Chain: guestIn, Exprs: verdict(expr.VerdictDrop)})

	post := c.AddChain(&nftables.Chain{Name: chainPostrouting, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityRef(*nftables.ChainPriorityNATSource + 10), Policy: &accept})
	toHost := matchIfname(expr.MetaKeyOIFNAME, ifname(NSVethName))
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: concat(toHost, []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
	}, verdict(expr.VerdictDrop))})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: concat(toHost, []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipSaddr, Len: 4},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: a.HostIP.AsSlice()},
	}, verdict(expr.VerdictDrop))})
	return nil
}

// connlimitInvert is NFT_CONNLIMIT_F_INV: "ct count over N".
const connlimitInvert = 1

// icmpEchoRequest is the ICMP type of a ping.
const icmpEchoRequest = 8

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

// matchUnconfirmed matches the first packet of a flow (its conntrack
// entry is not confirmed yet): "ct status & confirmed == 0". Unlike "ct
// state new" it does not match the later packets of a flow that has seen
// no reply yet.
func matchUnconfirmed() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsConfirmed), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// ipsConfirmed is IPS_CONFIRMED, the conntrack status bit of an entry in
// the table.
const ipsConfirmed = 1 << 3

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
