//go:build linux

package network

import (
	"errors"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/mvm-dev/microvm/network/internal/netnsutil"
	"github.com/mvm-dev/microvm/network/internal/nstest"
	"github.com/vishvananda/netlink"
)

// delEgress deletes the host's egress interface (its uplink veth pair),
// as an unplugged NIC would vanish.
func delEgress(t *testing.T, env *nstest.Env) {
	t.Helper()
	nstest.Handle(t, env.Host, func(h *netlink.Handle) error {
		l, err := h.LinkByName(nstest.HostEgress)
		if err != nil {
			return err
		}
		return h.LinkDel(l)
	})
}

// addEgress brings the uplink back as nstest.NewEnv made it (a new
// interface: its forwarding setting is the default).
func addEgress(t *testing.T, env *nstest.Env) {
	t.Helper()
	nstest.Handle(t, env.Host, func(h *netlink.Handle) error {
		upNS, err := netnsutil.Open(env.Up)
		if err != nil {
			return err
		}
		defer upNS.Close()
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nstest.HostEgress}, PeerName: "eth0",
			PeerNamespace: netlink.NsFd(int(upNS))}); err != nil {
			return err
		}
		l, err := h.LinkByName(nstest.HostEgress)
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr(nstest.HostEgressIP + "/24")
		if err := h.AddrAdd(l, a); err != nil {
			return err
		}
		if err := h.LinkSetUp(l); err != nil {
			return err
		}
		return h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(nstest.UpstreamIP).To4(),
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}})
	})
	nstest.Handle(t, env.Up, func(h *netlink.Handle) error {
		l, err := h.LinkByName("eth0")
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr(nstest.UpstreamIP + "/24")
		if err := h.AddrAdd(l, a); err != nil {
			return err
		}
		return h.LinkSetUp(l)
	})
}

// TestEgressGone: with the egress interface gone, a Manager still opens;
// existing VM networks can be re-policed and removed completely; a new
// one fails with ErrEgressMissing naming the interface; once it is back,
// Setup works again on the same Manager, guest traffic included.
func TestEgressGone(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	old := h.setup("old", Options{})
	delEgress(t, h.env)

	// Another process opens now (the CLI's mvm rm).
	m := h.newManager(nil)
	defer func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	if !slices.ContainsFunc(h.logs.Warnings(), func(w string) bool {
		return strings.Contains(w, "egress interface is missing") && strings.Contains(w, nstest.HostEgress)
	}) {
		t.Errorf("no warning naming the missing egress interface: %q", h.logs.Warnings())
	}
	_, err := m.Setup(ctxT(t), "new", Options{})
	if !errors.Is(err, ErrEgressMissing) || !strings.Contains(err.Error(), `"`+nstest.HostEgress+`"`) {
		t.Fatalf("Setup with the egress interface gone: %v; want ErrEgressMissing naming %q", err, nstest.HostEgress)
	}
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "Config.EgressInterface" {
		t.Fatalf("Setup error %v is not a FieldError on Config.EgressInterface", err)
	}
	if ids, _ := h.store.List(kindVM); slices.Contains(ids, "new") {
		t.Fatal("failed Setup left a vm record")
	}
	// Existing networks: the policy can change, Slot answers.
	if err := m.SetPolicy(ctxT(t), "old", Policy{DenyAll: true}); err != nil {
		t.Fatalf("SetPolicy with the egress interface gone: %v", err)
	}
	if s, err := m.Slot("old"); err != nil || s.Name != old.Name {
		t.Fatalf("Slot(old) = %v, %v", s, err)
	}
	if err := m.Teardown(ctxT(t), "old"); err != nil {
		t.Fatalf("Teardown with the egress interface gone: %v", err)
	}
	h.checkNoSlots() // no namespace, host link, lease or vm record

	// Back (a new interface, forwarding at its default): Setup works on
	// the same Manager, and the guest reaches the upstream through NAT.
	addEgress(t, h.env)
	if v := sysctlIn(t, h.env.Host, "net/ipv4/conf/"+nstest.HostEgress+"/forwarding"); v != "0" {
		t.Fatalf("returning interface has forwarding %s; the test needs the default 0", v)
	}
	s, err := m.Setup(ctxT(t), "new", Options{})
	if err != nil {
		t.Fatalf("Setup once the egress interface is back: %v", err)
	}
	if v := sysctlIn(t, h.env.Host, "net/ipv4/conf/"+nstest.HostEgress+"/forwarding"); v != "1" {
		t.Fatalf("forwarding of the returned egress interface is %s after Setup; want 1", v)
	}
	nstest.Serve(t, h.env.Up, nstest.UpstreamIP)
	g := h.guest(s)
	mustReach(t, g, at(nstest.UpstreamIP), nstest.HostEgressIP)
	if err := m.Teardown(ctxT(t), "new"); err != nil {
		t.Fatal(err)
	}
}

// TestEgressGoneLastClose: the last Manager to close with the egress
// interface gone removes the host table and its record of the egress
// interface's forwarding (moot: a returning interface takes the default).
func TestEgressGoneLastClose(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	h.setup("a", Options{})
	delEgress(t, h.env)
	m := h.newManager(nil)
	if err := m.Teardown(ctxT(t), "a"); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatalf("Close with the egress interface gone: %v", err)
	}
	if err := h.m.Close(); err != nil { // the last one
		t.Fatalf("last Close with the egress interface gone: %v", err)
	}
	var rec hostRecord
	if err := h.store.Get(kindHost, testPrefix, &rec); !isNotFound(err) {
		t.Fatalf("host record after the last Close: %+v, %v", rec, err)
	}
	h.checkClean()
}

// TestEgressGoneWarmPool: a Manager with a warm pool opens with the
// egress interface gone, builds no warm slot meanwhile, and Setup fails
// with ErrEgressMissing rather than hand out a slot that cannot leave.
func TestEgressGoneWarmPool(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	delEgress(t, h.env)
	m := h.newManager(func(c *Config) { c.PoolSize = 2 })
	if _, err := m.Setup(ctxT(t), "vm", Options{}); !errors.Is(err, ErrEgressMissing) {
		t.Fatalf("Setup: %v; want ErrEgressMissing", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	h.checkNoSlots()
}
