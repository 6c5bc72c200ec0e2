//go:build linux

package network

// Attacker tests: each plays a hostile guest through the slot's real TAP
// (nstest.RawGuest writes hand-made frames into it, as a guest kernel
// would through Firecracker) and watches what leaves the host with a
// sniffer upstream. Each failed on the code before the hardening (issue
// 14, holes H1-H11).

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/mvm-dev/microvm/network/internal/netnsutil"
	"github.com/mvm-dev/microvm/network/internal/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// rawGuest opens the slot's TAP as a hostile guest.
func (h *harness) rawGuest(s *Slot) *nstest.RawGuest {
	h.t.Helper()
	return nstest.OpenRawGuest(h.t, s.NetNSPath, s.TAPName)
}

// upSniffer captures what reaches the upstream namespace.
func (h *harness) upSniffer() *nstest.Sniffer { return nstest.Sniff(h.t, h.env.Up, "eth0") }

// udpPeer is a UDP socket in a namespace that records who wrote to it.
type udpPeer struct {
	c *net.UDPConn
}

func newUDPPeer(t *testing.T, ns, addr string) *udpPeer {
	t.Helper()
	var c *net.UDPConn
	if err := netnsutil.DoPath(ns, func() error {
		a, err := net.ResolveUDPAddr("udp4", addr)
		if err != nil {
			return err
		}
		c, err = net.ListenUDP("udp4", a)
		return err
	}); err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &udpPeer{c: c}
}

// recv waits for a datagram carrying marker and returns its sender.
func (p *udpPeer) recv(t *testing.T, marker string) *net.UDPAddr {
	t.Helper()
	buf := make([]byte, 2048)
	deadline := time.Now().Add(reach)
	for time.Now().Before(deadline) {
		p.c.SetReadDeadline(deadline)
		n, from, err := p.c.ReadFromUDP(buf)
		if err != nil {
			break
		}
		if strings.Contains(string(buf[:n]), marker) {
			return from
		}
	}
	t.Fatalf("peer did not receive %q", marker)
	return nil
}

func (p *udpPeer) send(t *testing.T, to *net.UDPAddr, msg string) {
	t.Helper()
	if _, err := p.c.WriteToUDP([]byte(msg), to); err != nil {
		t.Fatalf("send to %s: %v", to, err)
	}
}

// sendFor sends msg to `to` every 50 ms for d (a peer that keeps a flow
// alive).
func (p *udpPeer) sendFor(t *testing.T, to *net.UDPAddr, msg string, d time.Duration) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		p.send(t, to, msg)
	}
}

func udpTo(marker string) func([]byte) bool {
	return func(p []byte) bool { return nstest.Proto(p) == nstest.ProtoUDP && nstest.Contains(marker)(p) }
}

// hostConntrack lists the host namespace's conntrack entries that involve
// ip.
func hostConntrack(t *testing.T, hostNS string, ip netip.Addr) []string {
	t.Helper()
	var out []string
	nstest.Handle(t, hostNS, func(nh *netlink.Handle) error {
		flows, err := nh.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err != nil {
			return err
		}
		for _, f := range flows {
			for _, a := range []net.IP{f.Forward.SrcIP, f.Forward.DstIP, f.Reverse.SrcIP, f.Reverse.DstIP} {
				if a.Equal(ip.AsSlice()) {
					out = append(out, f.String())
					break
				}
			}
		}
		return nil
	})
	return out
}

// H1: a VM's conntrack entries die with it, and its address rests: the
// next VM (made by a new Manager, as the next mvm command would) gets
// another one, and the old VM's peer reaches nobody.
func TestH1ReleasedAddressRestsAndLosesItsFlows(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	peer := newUDPPeer(t, h.env.Up, net.JoinHostPort(nstest.UpstreamIP, "7779"))
	a := h.setup("vm-a", Options{})
	ga := h.rawGuest(a)
	ga.Send(nstest.UDPPacket(nstest.GuestIP, 40001, nstest.UpstreamIP, 7779, 64, []byte("h1-out")))
	from := peer.recv(t, "h1-out")
	peer.send(t, from, "h1-reply")
	if !ga.WaitReceived(reach, udpTo("h1-reply")) {
		t.Fatal("control: the guest did not get its peer's answer")
	}
	if len(hostConntrack(t, h.env.Host, a.HostIP)) == 0 {
		t.Fatal("control: no host conntrack entry for the VM's flow")
	}
	ga.Close()
	h.teardown("vm-a")
	if left := hostConntrack(t, h.env.Host, a.HostIP); len(left) > 0 {
		t.Fatalf("host conntrack entries of %s outlived the VM: %v", a.HostIP, left)
	}

	m2 := h.newManager(nil) // the next mvm command
	defer m2.Close()
	b, err := m2.Setup(ctxT(t), "vm-b", Options{Policy: Policy{DenyAll: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Teardown(ctxT(t), "vm-b")
	if b.HostIP == a.HostIP {
		t.Fatalf("vm-b got vm-a's address %s at once; released addresses must rest", a.HostIP)
	}
	gb := h.rawGuest(b)
	peer.sendFor(t, from, "h1-late", drop)
	if got := gb.Received(udpTo("h1-late")); len(got) > 0 {
		t.Fatalf("vm-b received vm-a's old peer's traffic: %d packets", len(got))
	}

	// The rest is recorded in the Store: a third Manager also skips it.
	m3 := h.newManager(nil)
	defer m3.Close()
	c, err := m3.Setup(ctxT(t), "vm-c", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer m3.Teardown(ctxT(t), "vm-c")
	if c.HostIP == a.HostIP {
		t.Fatalf("vm-c got the resting address %s", a.HostIP)
	}
}

// H1, pool exhausted: the resting address is reused rather than failing,
// and without the old flows.
func TestH1RestingAddressReusedWhenPoolIsFull(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(c *Config) { c.Pool = netip.MustParsePrefix("10.200.0.0/29") }) // 2 slots
	a := h.setup("vm-a", Options{})
	b := h.setup("vm-b", Options{})
	h.teardown("vm-a")
	c := h.setup("vm-c", Options{})
	if c.HostIP != a.HostIP {
		t.Fatalf("vm-c got %s; want the only free (resting) address %s", c.HostIP, a.HostIP)
	}
	_ = b
	h.teardown("vm-b")
	h.teardown("vm-c")
}

// H2: a TCP segment that does not open a flow (mid-stream ACK) cannot
// create one in the slot (nf_conntrack_tcp_loose=0), so a flow cut by a
// policy change cannot be revived from outside.
func TestH2MidStreamSegmentCannotOpenFlow(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	s := h.setup("vm-a", Options{})
	defer h.teardown("vm-a")
	g := h.rawGuest(s)
	a := addrsOf(s.HostIP)
	send := func(flags byte, marker string) {
		pkt := nstest.TCPPacket(a.VethHost.String(), 5555, s.HostIP.String(), 22, 777, 888, flags, []byte(marker))
		if err := nstest.SendRaw(h.env.Host, pkt); err != nil {
			t.Fatal(err)
		}
	}
	send(nstest.ACK|nstest.PSH, "h2-midstream")
	time.Sleep(drop)
	if got := g.Received(nstest.Contains("h2-midstream")); len(got) > 0 {
		t.Fatal("a mid-stream segment opened a flow to the guest")
	}
	send(nstest.SYN, "h2-syn") // control: a real opening segment from the host passes
	if !g.WaitReceived(reach, nstest.Contains("h2-syn")) {
		t.Fatal("control: the host's SYN did not reach the guest")
	}
}

// H2/H3: a TCP connection the guest opened is cut by DenyAll in both
// directions, including the peer's later segments.
func TestH2TCPFlowCutByDenyAll(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	s := h.setup("vm-a", Options{})
	defer h.teardown("vm-a")
	g := h.rawGuest(s)
	up := h.upSniffer()
	var ln net.Listener
	if err := netnsutil.DoPath(h.env.Up, func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(nstest.UpstreamIP, "7780"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conns := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			conns <- c
		}
	}()
	const gport = 40002
	fromPeer := func(flags byte) func([]byte) bool {
		return func(p []byte) bool {
			sp, dp := nstest.Ports(p)
			return nstest.Proto(p) == nstest.ProtoTCP && sp == 7780 && dp == gport && nstest.L4(p)[13]&flags == flags
		}
	}
	g.Send(nstest.TCPPacket(nstest.GuestIP, gport, nstest.UpstreamIP, 7780, 1000, 0, nstest.SYN, nil))
	if !g.WaitReceived(reach, fromPeer(nstest.SYN|nstest.ACK)) {
		t.Fatal("control: no SYN-ACK")
	}
	synack := g.Received(fromPeer(nstest.SYN | nstest.ACK))[0]
	peerSeq := binary.BigEndian.Uint32(nstest.L4(synack)[4:])
	g.Send(nstest.TCPPacket(nstest.GuestIP, gport, nstest.UpstreamIP, 7780, 1001, peerSeq+1, nstest.ACK, nil))
	var c net.Conn
	select {
	case c = <-conns:
	case <-time.After(reach):
		t.Fatal("control: upstream accepted no connection")
	}
	defer c.Close()
	c.Write([]byte("h2-data-1"))
	if !g.WaitReceived(reach, nstest.Contains("h2-data-1")) {
		t.Fatal("control: the guest did not get the peer's data")
	}

	if err := h.m.SetPolicy(ctxT(t), "vm-a", Policy{DenyAll: true}); err != nil {
		t.Fatal(err)
	}
	// The guest's RST is dropped by the policy, as is its data.
	g.Send(nstest.TCPPacket(nstest.GuestIP, gport, nstest.UpstreamIP, 7780, 1001, peerSeq+10, nstest.RST, nil))
	g.Send(nstest.TCPPacket(nstest.GuestIP, gport, nstest.UpstreamIP, 7780, 1001, peerSeq+10, nstest.ACK|nstest.PSH, []byte("h2-guest")))
	c.Write([]byte("h2-data-2")) // the peer goes on (and retransmits)
	time.Sleep(3 * drop)
	if got := g.Received(nstest.Contains("h2-data-2")); len(got) > 0 {
		t.Fatalf("the peer's segments still reach the guest after DenyAll (%d)", len(got))
	}
	// After the peer's segments (which, with loose pick-up, would have
	// re-created the flow as the peer's), the guest's still do not pass.
	g.Send(nstest.TCPPacket(nstest.GuestIP, gport, nstest.UpstreamIP, 7780, 1001, peerSeq+10, nstest.ACK|nstest.PSH, []byte("h2-guest-late")))
	time.Sleep(drop)
	if got := up.Seen(nstest.Contains("h2-guest")); len(got) > 0 {
		t.Fatalf("the guest's data left after DenyAll (%d segments)", len(got))
	}
}

// H3: inbound UDP from a peer the guest talked to stops at DenyAll, even
// while the peer keeps the flow alive.
func TestH3InboundFromEarlierPeerCutByDenyAll(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	peer := newUDPPeer(t, h.env.Up, net.JoinHostPort(nstest.UpstreamIP, "7781"))
	s := h.setup("vm-a", Options{})
	defer h.teardown("vm-a")
	g := h.rawGuest(s)
	g.Send(nstest.UDPPacket(nstest.GuestIP, 40003, nstest.UpstreamIP, 7781, 64, []byte("h3-out")))
	from := peer.recv(t, "h3-out")
	peer.sendFor(t, from, "h3-before", 3*drop) // both directions seen: ASSURED
	if !g.WaitReceived(reach, udpTo("h3-before")) {
		t.Fatal("control: the guest did not get the peer's datagrams")
	}
	if err := h.m.SetPolicy(ctxT(t), "vm-a", Policy{DenyAll: true}); err != nil {
		t.Fatal(err)
	}
	peer.sendFor(t, from, "h3-after", 2*drop)
	if got := g.Received(udpTo("h3-after")); len(got) > 0 {
		t.Fatalf("the earlier peer still reaches the guest after DenyAll (%d datagrams)", len(got))
	}
}

// H4: ICMP the slot itself generates carries nothing to a forged source:
// the gateway answers pings only from the guest's address, rate-limited,
// and a TTL-expired packet with a forged source makes no time-exceeded.
func TestH4SlotICMPIsNoChannel(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	s := h.setup("vm-a", Options{Policy: Policy{DenyAll: true}})
	defer h.teardown("vm-a")
	g := h.rawGuest(s)
	up := h.upSniffer()
	x := nstest.UpstreamIP // the forged source: where the attacker wants data to go

	g.Send(nstest.ICMPPacket(x, nstest.GatewayIP, 64, 8, 0, 0x01000001, []byte("h4-echo-forged")))
	g.Send(nstest.UDPPacket(x, 40004, nstest.UpstreamIP, 7777, 1, []byte("h4-ttl-forged")))
	// Controls: the same from the guest's own address are answered to it.
	g.Send(nstest.ICMPPacket(nstest.GuestIP, nstest.GatewayIP, 64, 8, 0, 0x01000002, []byte("h4-echo-own")))
	g.Send(nstest.UDPPacket(nstest.GuestIP, 40004, nstest.UpstreamIP, 7777, 1, []byte("h4-ttl-own")))
	if !g.WaitReceived(reach, nstest.Contains("h4-echo-own")) {
		t.Fatal("control: the gateway did not answer the guest's ping")
	}
	if !g.WaitReceived(reach, func(p []byte) bool {
		return nstest.Proto(p) == nstest.ProtoICMP && nstest.L4(p)[0] == 11 && nstest.Contains("h4-ttl-own")(p)
	}) {
		t.Fatal("control: no time-exceeded for the guest's own TTL=1 packet")
	}
	time.Sleep(drop)
	for _, m := range []string{"h4-echo-forged", "h4-ttl-forged"} {
		if got := up.Seen(nstest.Contains(m)); len(got) > 0 {
			t.Fatalf("%s: the slot sent %d packets with the guest's payload to the forged source %s (src %s)", m, len(got), x, nstest.Src(got[0]))
		}
	}

	// Rate limit: a flood of pings is answered at most at the limit.
	const n = 200
	start := time.Now()
	for i := range n {
		g.Send(nstest.ICMPPacket(nstest.GuestIP, nstest.GatewayIP, 64, 8, 0, uint32(0x02000000+i), []byte("h4-flood")))
	}
	elapsed := time.Since(start)
	time.Sleep(drop)
	replies := len(g.Received(func(p []byte) bool {
		return nstest.Proto(p) == nstest.ProtoICMP && nstest.L4(p)[0] == 0 && nstest.Contains("h4-flood")(p)
	}))
	limit := pingBurst + int(float64(pingRate)*(elapsed.Seconds()+1))
	if replies == 0 || replies > limit {
		t.Fatalf("%d of %d pings answered in %v; want 1..%d (rate limit)", replies, n, elapsed, limit)
	}
}

// H5: packets conntrack finds invalid are dropped, never forwarded
// un-NATed; nothing leaves the host with the guest's link address.
func TestH5InvalidPacketsDropped(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	s := h.setup("vm-a", Options{})
	defer h.teardown("vm-a")
	g := h.rawGuest(s)
	up := h.upSniffer()

	g.Send(nstest.TCPPacket(nstest.GuestIP, 40005, nstest.UpstreamIP, 7782, 1, 0, nstest.SYN|nstest.FIN, []byte("h5-synfin")))
	bad := nstest.UDPPacket(nstest.GuestIP, 40005, nstest.UpstreamIP, 7782, 64, []byte("h5-badsum"))
	bad[20+6] ^= 0x55 // break the UDP checksum
	g.Send(bad)
	inner := nstest.UDPPacket(nstest.UpstreamIP, 9, nstest.GuestIP, 9, 64, []byte("h5-orphan"))
	g.Send(nstest.ICMPPacket(nstest.GuestIP, nstest.UpstreamIP, 64, 3, 3, 0, inner))
	g.Send(nstest.UDPPacket(nstest.GuestIP, 40006, nstest.UpstreamIP, 7782, 64, []byte("h5-valid")))
	if !up.WaitSeen(reach, nstest.Contains("h5-valid")) {
		t.Fatal("control: a valid datagram did not arrive")
	}
	time.Sleep(drop)
	for _, p := range up.Seen(nil) {
		if src := nstest.Src(p); src != nstest.HostEgressIP {
			t.Errorf("packet left the host with source %s (proto %d); want only %s", src, nstest.Proto(p), nstest.HostEgressIP)
		}
	}
	for _, m := range []string{"h5-synfin", "h5-badsum", "h5-orphan"} {
		if got := up.Seen(nstest.Contains(m)); len(got) > 0 {
			t.Errorf("%s: invalid packet forwarded", m)
		}
	}
}

// H6: datagrams to the broadcast address of the host's subnet do not
// reach host services, whatever the policy.
func TestH6BroadcastDoesNotReachHost(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	host := nstest.Serve(t, h.env.Host, "0.0.0.0")
	s := h.setup("vm-a", Options{})
	defer h.teardown("vm-a")
	g := h.rawGuest(s)
	for _, p := range []Policy{{}, {Allow: []Rule{{CIDR: netip.MustParsePrefix("0.0.0.0/0")}}}} {
		if err := h.m.SetPolicy(ctxT(t), "vm-a", p); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			g.Send(nstest.UDPPacket(nstest.GuestIP, uint16(40010+i), "203.0.113.255", 7777, 64, []byte("h6")))
		}
		time.Sleep(drop)
		if seen := host.Seen(); len(seen) > 0 {
			t.Fatalf("policy %+v: a host service got the guest's broadcast from %v", p, seen)
		}
		if got := g.Received(nstest.Contains("203.0.113.2")); len(got) > 0 {
			t.Fatal("the host's service answered the guest")
		}
	}
}

// H7: an address the host gains after a slot was built is denied too,
// and the slot's host set is refreshed with it.
func TestH7NewHostAddressDenied(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	host := nstest.Serve(t, h.env.Host, "0.0.0.0")
	s := h.setup("vm-a", Options{})
	defer h.teardown("vm-a")
	g := h.rawGuest(s)
	const newIP = "198.51.100.99"
	nstest.Handle(t, h.env.Host, func(nh *netlink.Handle) error {
		lo, err := nh.LinkByName("lo")
		if err != nil {
			return err
		}
		return nh.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(netip.MustParseAddr(newIP), 32)})
	})
	if !waitFor(reach, func() bool { return hostSetHas(t, s.NetNSPath, netip.MustParseAddr(newIP)) }) {
		t.Fatalf("the slot's host set never got the new host address %s", newIP)
	}
	for i := range 5 {
		g.Send(nstest.UDPPacket(nstest.GuestIP, uint16(40020+i), newIP, 7777, 64, []byte("h7")))
	}
	time.Sleep(drop)
	if seen := host.Seen(); len(seen) > 0 {
		t.Fatalf("the guest reached a host service on the new address %s: %v", newIP, seen)
	}
}

func waitFor(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}

// hostSetHas reports whether the slot's host set holds ip.
func hostSetHas(t *testing.T, slotNS string, ip netip.Addr) bool {
	ns := nstest.Netns(t, slotNS)
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	tb := &nftables.Table{Name: testPrefix + "_fw", Family: nftables.TableFamilyINet}
	set, err := c.GetSetByName(tb, setHost)
	if err != nil {
		return false
	}
	els, err := c.GetSetElements(set)
	if err != nil {
		return false
	}
	for _, e := range els {
		if !e.IntervalEnd && netip.AddrFrom4([4]byte(e.Key)) == ip {
			return true
		}
	}
	return false
}

// H8: Allow rules never open the host: not through the slots' veth
// addresses (in an allowed 10/8), not through its own addresses. Only
// Config.HostAllow does, and only what it lists.
func TestH8AllowRulesNeverOpenHost(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	host := nstest.Serve(t, h.env.Host, "0.0.0.0")
	a := h.setup("vm-a", Options{Policy: Policy{Allow: []Rule{{CIDR: netip.MustParsePrefix("10.0.0.0/8")}}}})
	b := h.setup("vm-b", Options{})
	g := h.rawGuest(a)
	targets := []string{addrsOf(a.HostIP).VethHost.String(), addrsOf(b.HostIP).VethHost.String()}
	send := func() {
		for i, ip := range targets {
			g.Send(nstest.UDPPacket(nstest.GuestIP, uint16(40030+i), ip, 7777, 64, []byte("h8")))
		}
		time.Sleep(drop)
		if seen := host.Seen(); len(seen) > 0 {
			t.Fatalf("a host service was reached: %v", seen)
		}
	}
	send()
	if err := h.m.SetPolicy(ctxT(t), "vm-a", Policy{Allow: []Rule{{CIDR: netip.MustParsePrefix("0.0.0.0/0")}}}); err != nil {
		t.Fatal(err)
	}
	targets = append(targets, nstest.HostEgressIP, nstest.HostOwnIP)
	send()
	h.teardown("vm-a")
	h.teardown("vm-b")
}

func TestHostAllowOpensOnlyWhatItLists(t *testing.T) {
	t.Parallel()
	own := netip.MustParsePrefix(nstest.HostOwnIP + "/32")
	h := newHarness(t, func(c *Config) {
		c.HostAllow = []Rule{{CIDR: own, Protocol: "udp", Ports: PortRange{From: 7777}}}
	})
	host := nstest.Serve(t, h.env.Host, hostIPs...)
	s := h.setup("vm-a", Options{Policy: Policy{DenyAll: true}})
	g := h.guest(s)
	mustReach(t, g, at(nstest.HostOwnIP), s.HostIP.String())
	mustNotReachTCP(t, g, at(nstest.HostOwnIP), host)
	mustNotReach(t, g, at(nstest.HostEgressIP), host)
	h.teardown("vm-a")
}

// H9: guest traffic leaves only through the egress interface (where it is
// masqueraded), never un-NATed through another host interface.
func TestH9OnlyTheEgressInterface(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	side := h.env.NewNS("side")
	attach(t, h.env.Host, side, "side0", "100.64.99.2/24", "100.64.99.1/24")
	sideSniff := nstest.Sniff(t, side, "eth0")
	up := h.upSniffer()
	s := h.setup("vm-a", Options{Policy: Policy{Allow: []Rule{{CIDR: netip.MustParsePrefix("0.0.0.0/0")}}}})
	defer h.teardown("vm-a")
	g := h.rawGuest(s)
	g.Send(nstest.UDPPacket(nstest.GuestIP, 40040, "100.64.99.1", 7777, 64, []byte("h9-side")))
	g.Send(nstest.UDPPacket(nstest.GuestIP, 40041, nstest.UpstreamCGNAT, 7777, 64, []byte("h9-egress")))
	if !up.WaitSeen(reach, nstest.Contains("h9-egress")) {
		t.Fatal("control: allowed traffic did not leave through the egress interface")
	}
	if p := up.Seen(nstest.Contains("h9-egress"))[0]; nstest.Src(p) != nstest.HostEgressIP {
		t.Fatalf("egress traffic has source %s; want %s", nstest.Src(p), nstest.HostEgressIP)
	}
	time.Sleep(drop)
	if got := sideSniff.Seen(nstest.Contains("h9-side")); len(got) > 0 {
		t.Fatalf("guest traffic left through another host interface with source %s", nstest.Src(got[0]))
	}
}

// attach links namespace other to host by a veth pair: hostIf (address
// hostAddr) in host, eth0 (otherAddr) in other.
func attach(t *testing.T, host, other, hostIf, hostAddr, otherAddr string) {
	t.Helper()
	nstest.Handle(t, host, func(nh *netlink.Handle) error {
		o, err := netnsutil.Open(other)
		if err != nil {
			return err
		}
		defer o.Close()
		if err := nh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(o))}); err != nil {
			return err
		}
		l, err := nh.LinkByName(hostIf)
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr(hostAddr)
		if err := nh.AddrAdd(l, a); err != nil {
			return err
		}
		return nh.LinkSetUp(l)
	})
	nstest.Handle(t, other, func(nh *netlink.Handle) error {
		l, err := nh.LinkByName("eth0")
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr(otherAddr)
		if err := nh.AddrAdd(l, a); err != nil {
			return err
		}
		return nh.LinkSetUp(l)
	})
}

// The default deny list, exactly, and probed in every range: two
// addresses of each (near both ends) do not leave the host under the
// default policy, and do once an Allow rule lists the range (so the drop
// is the firewall's, not the routing's).
func TestDefaultDeniedEveryRangeProbed(t *testing.T) {
	t.Parallel()
	want := []string{"0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
		"172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4"}
	var got []string
	for _, p := range DefaultDenied() {
		got = append(got, p.String())
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("DefaultDenied() = %v; want %v", got, want)
	}

	h := newHarness(t, nil)
	up := h.upSniffer()
	s := h.setup("vm-a", Options{})
	defer h.teardown("vm-a")
	g := h.rawGuest(s)
	// The kernel itself never forwards these (martian or multicast
	// destinations), so only the deny half is checked for them.
	kernelDrops := map[string]bool{"0.0.0.0/8": true, "127.0.0.0/8": true, "224.0.0.0/4": true, "240.0.0.0/4": true}
	type probe struct {
		rng, ip string
	}
	var probes []probe
	for _, p := range DefaultDenied() {
		lo := u32(p.Addr())
		hi := lo | uint32(uint64(1)<<(32-p.Bits())-1)
		for _, v := range []uint32{lo + 1, hi - 1} {
			ip := fromU32(v)
			if testPool.Contains(ip) || ip == GuestIP || ip == GatewayIP {
				continue
			}
			probes = append(probes, probe{p.String(), ip.String()})
		}
	}
	sendAll := func(marker string) {
		for i, pr := range probes {
			g.Send(nstest.UDPPacket(nstest.GuestIP, uint16(41000+i), pr.ip, 7777, 64, []byte(marker+pr.ip)))
		}
	}
	sendAll("deny-")
	time.Sleep(drop)
	for _, pr := range probes {
		if got := up.Seen(nstest.Contains("deny-" + pr.ip)); len(got) > 0 {
			t.Errorf("%s (in denied %s) left the host under the default policy", pr.ip, pr.rng)
		}
	}
	var allow []Rule
	for _, p := range DefaultDenied() {
		allow = append(allow, Rule{CIDR: p})
	}
	if err := h.m.SetPolicy(ctxT(t), "vm-a", Policy{Allow: allow}); err != nil {
		t.Fatal(err)
	}
	sendAll("allow-")
	for _, pr := range probes {
		if kernelDrops[pr.rng] {
			continue
		}
		if !up.WaitSeen(reach, nstest.Contains("allow-"+pr.ip)) {
			t.Errorf("control: %s (in %s) did not leave once allowed", pr.ip, pr.rng)
		}
	}
}

// Both ends of a port range pass, one past each end does not; a single
// port passes alone.
func TestPortRangeEnds(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	up := h.upSniffer()
	dst := netip.MustParsePrefix(nstest.UpstreamIP + "/32")
	s := h.setup("vm-a", Options{Policy: Policy{DenyAll: true, Allow: []Rule{
		{CIDR: dst, Protocol: "udp", Ports: PortRange{From: 7000, To: 8000}},
		{CIDR: dst, Protocol: "tcp", Ports: PortRange{From: 9000}},
	}}})
	defer h.teardown("vm-a")
	g := h.rawGuest(s)
	type probe struct {
		proto string
		port  uint16
		pass  bool
	}
	probes := []probe{{"udp", 6999, false}, {"udp", 7000, true}, {"udp", 8000, true}, {"udp", 8001, false},
		{"tcp", 8999, false}, {"tcp", 9000, true}, {"tcp", 9001, false}, {"tcp", 7000, false}}
	for i, p := range probes {
		m := []byte(fmt.Sprintf("port-%s-%d", p.proto, p.port))
		if p.proto == "udp" {
			g.Send(nstest.UDPPacket(nstest.GuestIP, uint16(42000+i), nstest.UpstreamIP, p.port, 64, m))
		} else {
			g.Send(nstest.TCPPacket(nstest.GuestIP, uint16(42000+i), nstest.UpstreamIP, p.port, 1, 0, nstest.SYN, m))
		}
	}
	for _, p := range probes {
		m := fmt.Sprintf("port-%s-%d", p.proto, p.port)
		if p.pass && !up.WaitSeen(reach, nstest.Contains(m)) {
			t.Errorf("%s port %d is in the allowed range but was dropped", p.proto, p.port)
		}
	}
	time.Sleep(drop)
	for _, p := range probes {
		m := fmt.Sprintf("port-%s-%d", p.proto, p.port)
		if !p.pass && len(up.Seen(nstest.Contains(m))) > 0 {
			t.Errorf("%s port %d is outside the allowed range but passed", p.proto, p.port)
		}
	}
}

// H10: new flows per second and concurrent flows are capped per VM.
func TestH10FlowLimits(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	up := h.upSniffer()
	s := h.setup("vm-a", Options{Policy: Policy{NewFlowsPerSecond: 20}})
	defer h.teardown("vm-a")
	g := h.rawGuest(s)
	flows := func(marker string) int {
		return len(up.Seen(nstest.Contains(marker)))
	}
	const n = 1000
	start := time.Now()
	for i := range n {
		g.Send(nstest.UDPPacket(nstest.GuestIP, uint16(20000+i), nstest.UpstreamIP, 7777, 64, []byte("h10-rate")))
	}
	elapsed := time.Since(start)
	time.Sleep(drop)
	limit := 2*20 + int(20*(elapsed.Seconds()+1))
	if got := flows("h10-rate"); got == 0 || got > limit {
		t.Fatalf("%d of %d new flows in %v passed; want 1..%d (20/s, burst 40)", got, n, elapsed, limit)
	}

	if err := h.m.SetPolicy(ctxT(t), "vm-a", Policy{NewFlowsPerSecond: MaxNewFlowsPerSecond, MaxFlows: 30}); err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		g.Send(nstest.UDPPacket(nstest.GuestIP, uint16(30000+i), nstest.UpstreamIP, 7777, 64, []byte("h10-count")))
	}
	time.Sleep(drop)
	if got := flows("h10-count"); got < 30 || got > 31 {
		t.Fatalf("%d of 200 concurrent flows passed; want 30 (MaxFlows)", got)
	}
	// An existing flow goes on past the cap.
	g.Send(nstest.UDPPacket(nstest.GuestIP, 30000, nstest.UpstreamIP, 7777, 64, []byte("h10-again")))
	if !up.WaitSeen(reach, nstest.Contains("h10-again")) {
		t.Fatal("an established flow was cut by the flow cap")
	}
}

// H11: the host's global ip_forward is left alone; forwarding is enabled
// on the slot veths and the egress interface only, the host does not
// become a router for the egress side, and the egress setting is restored
// by the last Close.
func TestH11ForwardingPerInterfaceAndRestored(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	side := h.env.NewNS("side")
	attach(t, h.env.Host, side, "side0", "192.168.200.2/24", "192.168.200.1/24")
	sideSniff := nstest.Sniff(t, side, "eth0")
	nstest.Handle(t, h.env.Up, func(nh *netlink.Handle) error {
		l, err := nh.LinkByName("eth0")
		if err != nil {
			return err
		}
		return nh.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(netip.MustParseAddr("192.168.200.0"), 24),
			Gw: net.ParseIP(nstest.HostEgressIP).To4()})
	})
	nstest.Serve(t, h.env.Up, nstest.UpstreamIP)
	s := h.setup("vm-a", Options{})
	g := h.guest(s)
	mustReach(t, g, at(nstest.UpstreamIP), nstest.HostEgressIP) // control: slot traffic is forwarded
	if v := sysctlIn(t, h.env.Host, "net/ipv4/ip_forward"); v != "0" {
		t.Fatalf("host ip_forward = %s; want it left at 0", v)
	}
	p := newUDPPeer(t, h.env.Up, net.JoinHostPort(nstest.UpstreamIP, "7783"))
	p.sendFor(t, &net.UDPAddr{IP: net.ParseIP("192.168.200.1"), Port: 7777}, "h11-through", drop)
	if got := sideSniff.Seen(nstest.Contains("h11-through")); len(got) > 0 {
		t.Fatal("the host forwarded upstream traffic to another interface: it became a router")
	}
	h.teardown("vm-a")
	if err := h.m.Close(); err != nil {
		t.Fatal(err)
	}
	if v := sysctlIn(t, h.env.Host, "net/ipv4/conf/"+nstest.HostEgress+"/forwarding"); v != "0" {
		t.Fatalf("egress forwarding = %s after the last Close; want it restored to 0", v)
	}
	var rec hostRecord
	if err := h.store.Get(kindHost, testPrefix, &rec); !isNotFound(err) {
		t.Fatalf("host change record left after the last Close: %+v, %v", rec, err)
	}
}

func sysctlIn(t *testing.T, ns, key string) string {
	t.Helper()
	var v []byte
	if err := netnsutil.DoPath(ns, func() (err error) {
		v, err = os.ReadFile("/proc/sys/" + key)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}

// The slot's kernel settings: strict rp_filter, no redirects, arp_ignore,
// no IPv6, no loose TCP pick-up.
func TestSlotSysctls(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	s := h.setup("vm-a", Options{})
	for _, kv := range slotSysctls {
		if v := sysctlIn(t, s.NetNSPath, kv[0]); v != kv[1] {
			t.Errorf("%s = %s in the slot; want %s", kv[0], v, kv[1])
		}
	}
	for _, dev := range []string{TAPName, NSVethName} {
		if v := sysctlIn(t, s.NetNSPath, "net/ipv4/conf/"+dev+"/send_redirects"); v != "0" {
			t.Errorf("%s send_redirects = %s", dev, v)
		}
		if v := sysctlIn(t, s.NetNSPath, "net/ipv6/conf/"+dev+"/disable_ipv6"); v != "1" {
			t.Errorf("%s disable_ipv6 = %s", dev, v)
		}
	}
	h.teardown("vm-a")
}

// A killed `mvm create --net` leaves temporary files of the package's
// records; New and Cleanup remove them, but not one whose VM lock is held
// (a live process may be writing it).
func TestTempFilesOfCrashedWritesSwept(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	dir := filepath.Join(h.env.Dir, "state")
	leaseTmp := filepath.Join(dir, kindLease, ".tmp-"+testPrefix+"-0ac80002-123456")
	vmTmp := filepath.Join(dir, kindVM, ".tmp-vm-dead-42")
	busyTmp := filepath.Join(dir, kindVM, ".tmp-vm-busy-43")
	otherTmp := filepath.Join(dir, kindLease, ".tmp-other-0ac80002-7") // another prefix's
	for _, p := range []string{leaseTmp, vmTmp, busyTmp, otherTmp} {
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	unlock, err := h.store.Lock(ctxT(t), vmLock("vm-busy"))
	if err != nil {
		t.Fatal(err)
	}
	m2 := h.newManager(nil)
	defer m2.Close()
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	if exists(leaseTmp) || exists(vmTmp) {
		t.Fatalf("New left the crashed writes' temporary files (lease %v, vm %v)", exists(leaseTmp), exists(vmTmp))
	}
	if !exists(busyTmp) {
		t.Fatal("New removed the temporary file of a VM whose lock is held")
	}
	if !exists(otherTmp) {
		t.Fatal("New removed another prefix's temporary lease file")
	}
	unlock()
	if _, err := m2.Cleanup(ctxT(t), nil); err != nil {
		t.Fatal(err)
	}
	if exists(busyTmp) {
		t.Fatal("Cleanup left a temporary file whose VM lock was free")
	}
	os.Remove(otherTmp)
}

// The host checks each slot's source itself (fib reverse path per veth):
// even with the slot's own post-NAT check gone, a packet from slot a with
// slot b's HostIP as source is not forwarded.
func TestHostAntiSpoofingPerSlot(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	up := h.upSniffer()
	a := h.setup("vm-a", Options{})
	defer h.teardown("vm-a")
	b := h.setup("vm-b", Options{})
	defer h.teardown("vm-b")
	ns := nstest.Netns(t, a.NetNSPath)
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		t.Fatal(err)
	}
	c.FlushChain(&nftables.Chain{Name: chainPostrouting, Table: &nftables.Table{Name: testPrefix + "_fw", Family: nftables.TableFamilyINet}})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	send := func(src netip.Addr, marker string) {
		pkt := nstest.UDPPacket(src.String(), 40050, nstest.UpstreamIP, 7777, 64, []byte(marker))
		if err := nstest.SendRaw(a.NetNSPath, pkt); err != nil {
			t.Fatal(err)
		}
	}
	send(a.HostIP, "spoof-own")
	if !up.WaitSeen(reach, nstest.Contains("spoof-own")) {
		t.Fatal("control: slot a's own source was not forwarded")
	}
	send(b.HostIP, "spoof-other")
	send(netip.MustParseAddr("10.200.0.250"), "spoof-pool")
	send(netip.MustParseAddr("192.168.1.1"), "spoof-outside")
	time.Sleep(drop)
	for _, m := range []string{"spoof-other", "spoof-pool", "spoof-outside"} {
		if got := up.Seen(nstest.Contains(m)); len(got) > 0 {
			t.Errorf("%s: the host forwarded a packet from slot a with a source not its own (%s)", m, nstest.Src(got[0]))
		}
	}
}

// If someone else turns global forwarding on while slots exist, it is
// theirs: the record of mvm's change goes, nothing is "restored" over it,
// and the egress guard (which would break their routing) goes.
func TestGlobalForwardingTurnedOnByOthersIsLeftAlone(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	s := h.setup("vm-a", Options{})
	var rec hostRecord
	if err := h.store.Get(kindHost, testPrefix, &rec); err != nil || rec.EgressWas != "0" || rec.Egress != nstest.HostEgress {
		t.Fatalf("host change record %+v, %v; want egress %s was 0", rec, err, nstest.HostEgress)
	}
	if err := netnsutil.DoPath(h.env.Host, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0)
	}); err != nil {
		t.Fatal(err)
	}
	m2 := h.newManager(nil) // the next command sees it
	if err := h.store.Get(kindHost, testPrefix, &rec); !isNotFound(err) {
		t.Fatalf("record kept after global forwarding was turned on: %+v, %v", rec, err)
	}
	if err := m2.Teardown(ctxT(t), s.VMID); err != nil {
		t.Fatal(err)
	}
	if err := m2.Close(); err != nil {
		t.Fatal(err)
	}
	if v := sysctlIn(t, h.env.Host, "net/ipv4/conf/"+nstest.HostEgress+"/forwarding"); v != "1" {
		t.Fatalf("egress forwarding = %s; want the operator's 1 left alone", v)
	}
}
