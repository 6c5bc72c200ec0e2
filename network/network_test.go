//go:build linux

package network

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/mvm-dev/microvm/network/internal/netnsutil"
	"github.com/mvm-dev/microvm/network/internal/nstest"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	reach = 5 * time.Second        // wait for an answer that must come
	drop  = 600 * time.Millisecond // wait for an answer that must not come
)

func at(ip string) string { return net.JoinHostPort(ip, nstest.Port) }

// upstreamIPs and hostIPs are where the test servers listen.
var (
	upstreamIPs = []string{nstest.UpstreamIP, nstest.UpstreamPriv, nstest.UpstreamPriv2, nstest.UpstreamCGNAT, nstest.UpstreamMeta}
	hostIPs     = []string{nstest.HostEgressIP, nstest.HostOwnIP}
)

func mustReach(t *testing.T, ns, dst, wantSrc string) {
	t.Helper()
	got, err := nstest.UDP(ns, dst, reach)
	if err != nil {
		t.Fatalf("udp to %s: %v", dst, err)
	}
	if wantSrc != "" && got != wantSrc {
		t.Fatalf("udp to %s: server saw source %s, want %s", dst, got, wantSrc)
	}
}

func mustReachTCP(t *testing.T, ns, dst, wantSrc string) {
	t.Helper()
	got, err := nstest.TCP(ns, dst, reach)
	if err != nil {
		t.Fatalf("tcp to %s: %v", dst, err)
	}
	if wantSrc != "" && got != wantSrc {
		t.Fatalf("tcp to %s: server saw source %s, want %s", dst, got, wantSrc)
	}
}

// mustNotReach checks that UDP to dst is dropped before srv sees it.
func mustNotReach(t *testing.T, ns, dst string, srv *nstest.Server) {
	t.Helper()
	before := len(srv.Seen())
	got, err := nstest.UDP(ns, dst, drop)
	if err == nil {
		t.Fatalf("udp to %s answered (server saw %s); want dropped", dst, got)
	}
	if !errors.Is(err, nstest.ErrNoAnswer) {
		t.Fatalf("udp to %s: %v; want no answer", dst, err)
	}
	if n := len(srv.Seen()); n != before {
		t.Fatalf("server at %s received %d datagrams; want them dropped on the way", dst, n-before)
	}
}

func mustNotReachTCP(t *testing.T, ns, dst string, srv *nstest.Server) {
	t.Helper()
	before := len(srv.Seen())
	got, err := nstest.TCP(ns, dst, drop)
	if err == nil {
		t.Fatalf("tcp to %s answered (server saw %s); want dropped", dst, got)
	}
	if !errors.Is(err, nstest.ErrNoAnswer) {
		t.Fatalf("tcp to %s: %v; want a dropped SYN (timeout)", dst, err)
	}
	if n := len(srv.Seen()); n != before {
		t.Fatalf("server at %s accepted %d connections; want them dropped", dst, n-before)
	}
}

func TestEgressDefaultPolicy(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	up := nstest.Serve(t, h.env.Up, upstreamIPs...)
	host := nstest.Serve(t, h.env.Host, hostIPs...)

	s := h.setup("vm-a", Options{})
	g := h.guest(s)

	// Allowed: a public address, masqueraded to the host's egress address.
	mustReach(t, g, at(nstest.UpstreamIP), nstest.HostEgressIP)
	mustReachTCP(t, g, at(nstest.UpstreamIP), nstest.HostEgressIP)
	// Denied: RFC 1918, CGNAT, the host's own addresses, link-local.
	mustNotReach(t, g, at(nstest.UpstreamPriv), up)
	mustNotReach(t, g, at(nstest.UpstreamPriv2), up)
	mustNotReachTCP(t, g, at(nstest.UpstreamPriv2), up)
	mustNotReach(t, g, at(nstest.UpstreamCGNAT), up)
	mustNotReach(t, g, at(nstest.HostOwnIP), host)
	mustNotReach(t, g, at(nstest.HostEgressIP), host)
	mustNotReach(t, g, at(nstest.UpstreamMeta), up)
	// The allowed destination still works after the drops.
	mustReach(t, g, at(nstest.UpstreamIP), nstest.HostEgressIP)
	for _, from := range up.Seen() {
		if !strings.HasPrefix(from, nstest.HostEgressIP+":") {
			t.Fatalf("upstream saw source %s; want only %s", from, nstest.HostEgressIP)
		}
	}

	// Control: allowing everything makes every one of those reachable, so
	// the drops above are the policy's doing, not the topology's.
	all := Policy{Allow: []Rule{{CIDR: netip.MustParsePrefix("0.0.0.0/0")}}}
	if err := h.m.SetPolicy(ctxT(t), "vm-a", all); err != nil {
		t.Fatal(err)
	}
	for _, ip := range upstreamIPs {
		mustReach(t, g, at(ip), nstest.HostEgressIP)
	}
	// ... but never the host itself (H8): an Allow rule does not open it.
	for _, ip := range hostIPs {
		mustNotReach(t, g, at(ip), host)
	}
	h.teardown("vm-a")
}

func TestAllowListOverridesDefaultDeny(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	up := nstest.Serve(t, h.env.Up, upstreamIPs...)
	host := nstest.Serve(t, h.env.Host, hostIPs...)
	p := Policy{Allow: []Rule{
		{CIDR: netip.MustParsePrefix("10.1.2.0/24")},
		{CIDR: netip.MustParsePrefix(nstest.UpstreamPriv + "/32"), Protocol: "udp", Ports: PortRange{From: 7000, To: 8000}},
		{CIDR: netip.MustParsePrefix(nstest.UpstreamCGNAT + "/32"), Protocol: "tcp", Ports: PortRange{From: 7777}},
	}}
	s := h.setup("vm-a", Options{Policy: p})
	g := h.guest(s)

	mustReach(t, g, at(nstest.UpstreamPriv2), nstest.HostEgressIP)    // whole /24, any protocol
	mustReachTCP(t, g, at(nstest.UpstreamPriv2), nstest.HostEgressIP) //
	mustReach(t, g, at(nstest.UpstreamPriv), nstest.HostEgressIP)     // udp 7000-8000
	mustNotReachTCP(t, g, at(nstest.UpstreamPriv), up)                // not tcp
	mustReachTCP(t, g, at(nstest.UpstreamCGNAT), nstest.HostEgressIP) // tcp 7777
	mustNotReach(t, g, at(nstest.UpstreamCGNAT), up)                  // not udp
	mustNotReach(t, g, at(nstest.HostOwnIP), host)                    // defaults still apply
	mustReach(t, g, at(nstest.UpstreamIP), nstest.HostEgressIP)       // internet still allowed
	h.teardown("vm-a")
}

func TestDenyAllAndLiveUpdate(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	up := nstest.Serve(t, h.env.Up, upstreamIPs...)
	s := h.setup("vm-a", Options{})
	g := h.guest(s)
	ctx := ctxT(t)

	// One UDP flow (one socket, one source port) across policy changes:
	// an update must cut flows that are already established.
	flow, err := nstest.NewProbe(g, at(nstest.UpstreamIP))
	if err != nil {
		t.Fatal(err)
	}
	defer flow.Close()
	if _, err := flow.Ask(reach); err != nil {
		t.Fatalf("before update: %v", err)
	}

	if err := h.m.SetPolicy(ctx, "vm-a", Policy{DenyAll: true}); err != nil {
		t.Fatal(err)
	}
	if got, err := flow.Ask(drop); !errors.Is(err, nstest.ErrNoAnswer) {
		t.Fatalf("established flow after DenyAll: answer %q, err %v; want dropped", got, err)
	}
	mustNotReach(t, g, at(nstest.UpstreamIP), up)
	mustNotReachTCP(t, g, at(nstest.UpstreamIP), up)

	// DenyAll with an allow-list: only what is listed.
	p := Policy{DenyAll: true, Allow: []Rule{
		{CIDR: netip.MustParsePrefix(nstest.UpstreamIP + "/32"), Protocol: "tcp", Ports: PortRange{From: 7777}},
		{CIDR: netip.MustParsePrefix("192.168.77.0/24")},
	}}
	if err := h.m.SetPolicy(ctx, "vm-a", p); err != nil {
		t.Fatal(err)
	}
	mustReachTCP(t, g, at(nstest.UpstreamIP), nstest.HostEgressIP)
	mustNotReach(t, g, at(nstest.UpstreamIP), up)
	mustReach(t, g, at(nstest.UpstreamPriv), nstest.HostEgressIP)
	mustNotReach(t, g, at(nstest.UpstreamPriv2), up)

	// Back to the default: the same flow flows again.
	if err := h.m.SetPolicy(ctx, "vm-a", Policy{}); err != nil {
		t.Fatal(err)
	}
	if _, err := flow.Ask(reach); err != nil {
		t.Fatalf("after restoring the default: %v", err)
	}
	mustNotReach(t, g, at(nstest.UpstreamPriv), up)

	// The policy is persisted with the vm record.
	var vr vmRecord
	if err := h.store.Get(kindVM, "vm-a", &vr); err != nil {
		t.Fatal(err)
	}
	if !vr.Policy.equal(Policy{}) || vr.Slot != s.Name {
		t.Fatalf("stored record %+v; want slot %s with the default policy", vr, s.Name)
	}
	if w := h.logs.Warnings(); len(w) > 0 {
		t.Fatalf("warnings: %v (a policy update should not need a table replace)", w)
	}
	if err := h.m.SetPolicy(ctx, "nope", Policy{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetPolicy of unknown vm: %v; want ErrNotFound", err)
	}
	if err := h.m.SetPolicy(ctx, "vm-a", Policy{Allow: []Rule{{}}}); !errors.Is(err, ErrInvalidPolicy) {
		t.Fatalf("SetPolicy with invalid rule: %v; want ErrInvalidPolicy", err)
	}
	h.teardown("vm-a")
}

func TestVMsIsolatedAndReachableFromHost(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	a := h.setup("vm-a", Options{})
	// vm-b allows the whole pool: the host still refuses to forward
	// between VMs.
	b := h.setup("vm-b", Options{Policy: Policy{Allow: []Rule{{CIDR: testPool}}}})
	if a.HostIP == b.HostIP || a.Name == b.Name || a.NetNSPath == b.NetNSPath {
		t.Fatalf("slots collide: %+v %+v", a, b)
	}
	ga, gb := h.guest(a), h.guest(b)
	srvA := nstest.Serve(t, ga, nstest.GuestIP)
	srvB := nstest.Serve(t, gb, nstest.GuestIP)

	// The host reaches each guest through its unique address; the guest
	// sees the host's veth address as source.
	hostSide := addrsOf(a.HostIP).VethHost.String()
	mustReach(t, h.env.Host, at(a.HostIP.String()), hostSide)
	mustReachTCP(t, h.env.Host, at(a.HostIP.String()), hostSide)
	mustReachTCP(t, h.env.Host, at(b.HostIP.String()), addrsOf(b.HostIP).VethHost.String())

	// Neither guest reaches the other.
	mustNotReach(t, ga, at(b.HostIP.String()), srvB)
	mustNotReachTCP(t, ga, at(b.HostIP.String()), srvB)
	mustNotReach(t, gb, at(a.HostIP.String()), srvA)
	mustNotReachTCP(t, gb, at(a.HostIP.String()), srvA)

	// Upstream cannot open a connection to a guest even with a route to
	// the pool (only replies are forwarded towards VMs).
	nstest.Handle(t, h.env.Up, func(nh *netlink.Handle) error {
		l, err := nh.LinkByName("eth0")
		if err != nil {
			return err
		}
		return nh.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(testPool.Addr(), testPool.Bits()),
			Gw: net.ParseIP(nstest.HostEgressIP).To4()})
	})
	mustNotReachTCP(t, h.env.Up, at(a.HostIP.String()), srvA)

	// Control: with the host's forward rules, vm-a's egress chain and
	// vm-b's check of who opens flows flushed, a reaches b, so the drops
	// above are the rules' doing. (No policy can allow the pool: it holds
	// the host's veth ends.)
	flushChain := func(nsPath, table, chain string) {
		ns := nstest.Netns(t, nsPath)
		defer ns.Close()
		c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
		if err != nil {
			t.Fatal(err)
		}
		c.FlushChain(&nftables.Chain{Name: chain, Table: &nftables.Table{Name: table, Family: nftables.TableFamilyINet}})
		if err := c.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	flushChain(h.env.Host, testPrefix, chainForward)
	flushChain(a.NetNSPath, testPrefix+"_fw", chainEgress)
	flushChain(b.NetNSPath, testPrefix+"_fw", chainPrerouting)
	mustReach(t, ga, at(b.HostIP.String()), a.HostIP.String())

	h.teardown("vm-a")
	h.teardown("vm-b")
}

func TestTAPCreatedAndOpenable(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	s := h.setup("vm-tap", Options{TAPUID: 4242, TAPGID: 4343})
	if s.TAPName != TAPName || s.GuestMAC != GuestMAC || s.GuestIP != GuestIP || s.GatewayIP != GatewayIP {
		t.Fatalf("unexpected slot %+v", s)
	}
	if !strings.HasPrefix(s.Name, testPrefix+"-") || len(s.Name) > unix.IFNAMSIZ-1 || s.VethHost != s.Name {
		t.Fatalf("bad names %q %q", s.Name, s.VethHost)
	}
	nstest.Handle(t, s.NetNSPath, func(nh *netlink.Handle) error {
		l, err := nh.LinkByName(TAPName)
		if err != nil {
			return err
		}
		tun, ok := l.(*netlink.Tuntap)
		if !ok || tun.Mode != netlink.TUNTAP_MODE_TAP {
			t.Errorf("%s is %T %+v; want a TAP", TAPName, l, l)
		} else if tun.Owner != 4242 || tun.Group != 4343 {
			t.Errorf("TAP owner %d group %d; want 4242 4343", tun.Owner, tun.Group)
		}
		return nil
	})
	// Open it by name inside the namespace, as Firecracker does.
	err := s.Do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		ifr, err := unix.NewIfreq(s.TAPName)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			return err
		}
		// Inside the namespace: the slot's devices are visible, and the
		// host's uplink is not.
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		var names []string
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		if !slices.Contains(names, TAPName) || !slices.Contains(names, NSVethName) || slices.Contains(names, nstest.HostEgress) {
			t.Errorf("interfaces in slot namespace: %v", names)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("open TAP inside the slot: %v", err)
	}
	// The TAP survives its opener closing it (persistent).
	nstest.Handle(t, s.NetNSPath, func(nh *netlink.Handle) error {
		_, err := nh.LinkByName(TAPName)
		return err
	})
	// Forwarding is on in the slot; in the host namespace (where it was
	// off) only on the slot's veth and the egress interface.
	for _, c := range []struct{ ns, key, want string }{
		{s.NetNSPath, "ip_forward", "1"},
		{h.env.Host, "ip_forward", "0"},
		{h.env.Host, "conf/" + s.VethHost + "/forwarding", "1"},
		{h.env.Host, "conf/" + nstest.HostEgress + "/forwarding", "1"},
		{h.env.Host, "conf/lo/forwarding", "0"},
	} {
		var v []byte
		if err := netnsutil.DoPath(c.ns, func() (err error) {
			v, err = os.ReadFile("/proc/sys/net/ipv4/" + c.key)
			return err
		}); err != nil || strings.TrimSpace(string(v)) != c.want {
			t.Fatalf("%s in %s: %q, %v; want %s", c.key, c.ns, v, err, c.want)
		}
	}
	tables := nsTables(t, s.NetNSPath)
	if !slices.Equal(tables, []string{testPrefix + "_fw", testPrefix + "_nat"}) {
		t.Fatalf("tables in slot: %v", tables)
	}
	h.teardown("vm-tap")
}

func TestSetupIdempotent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	up := nstest.Serve(t, h.env.Up, upstreamIPs...)
	s1 := h.setup("vm-a", Options{})
	s2 := h.setup("vm-a", Options{Policy: Policy{DenyAll: true}})
	if *s1 != *s2 {
		t.Fatalf("second Setup returned %+v; want %+v", s2, s1)
	}
	g := h.guest(s2)
	mustNotReach(t, g, at(nstest.UpstreamIP), up) // the new policy applies
	got, err := h.m.Slot("vm-a")
	if err != nil || *got != *s1 {
		t.Fatalf("Slot: %+v, %v", got, err)
	}
	h.teardown("vm-a")
	h.teardown("vm-a") // idempotent
	if err := h.m.Teardown(ctxT(t), "never-existed"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.Slot("vm-a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Slot after Teardown: %v", err)
	}
}

func TestFiftyInParallel(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	const n = 50
	slots := make([]*Slot, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			slots[i], errs[i] = h.m.Setup(ctxT(t), "vm-"+string(rune('a'+i/26))+string(rune('a'+i%26)), Options{})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	ips, names := map[netip.Addr]bool{}, map[string]bool{}
	for _, s := range slots {
		if ips[s.HostIP] || names[s.Name] {
			t.Fatalf("collision on %s / %s", s.HostIP, s.Name)
		}
		ips[s.HostIP], names[s.Name] = true, true
		if !testPool.Contains(s.HostIP) {
			t.Fatalf("HostIP %s outside the pool", s.HostIP)
		}
		if _, err := os.Stat(s.NetNSPath); err != nil {
			t.Fatal(err)
		}
	}
	links := nstest.Links(t, h.env.Host)
	for name := range names {
		if !slices.Contains(links, name) {
			t.Fatalf("host veth %s missing", name)
		}
	}
	// A few of them carry traffic both ways.
	nstest.Serve(t, h.env.Up, upstreamIPs...)
	for _, s := range []*Slot{slots[0], slots[n/2], slots[n-1]} {
		g := h.guest(s)
		nstest.Serve(t, g, nstest.GuestIP)
		mustReach(t, h.env.Host, at(s.HostIP.String()), addrsOf(s.HostIP).VethHost.String())
		mustReach(t, g, at(nstest.UpstreamIP), nstest.HostEgressIP)
	}
	for i := range n {
		wg.Go(func() { errs[i] = h.m.Teardown(ctxT(t), slots[i].VMID) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}
