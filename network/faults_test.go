//go:build linux

package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/mvm-dev/microvm/network/internal/netnsutil"
	"github.com/mvm-dev/microvm/network/internal/nstest"
	"github.com/vishvananda/netlink"
)

func wantField(t *testing.T, err error, sentinel error, field string) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("error %v; want one matching %v", err, sentinel)
	}
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v is not a *FieldError", err)
	}
	if !strings.Contains(err.Error(), field) {
		t.Fatalf("error %q does not name %s", err, field)
	}
}

// TestConfigStatic covers the checks that need no kernel (no root).
func TestConfigStatic(t *testing.T) {
	store := newMemStore()
	ok := Config{Store: store, RunDir: "/run/x"}
	cases := []struct {
		name   string
		mutate func(*Config)
		field  string
	}{
		{"no store", func(c *Config) { c.Store = nil }, "Config.Store"},
		{"upper-case prefix", func(c *Config) { c.NamePrefix = "MVM" }, "Config.NamePrefix"},
		{"long prefix", func(c *Config) { c.NamePrefix = "toolong" }, "Config.NamePrefix"},
		{"digit first", func(c *Config) { c.NamePrefix = "1vm" }, "Config.NamePrefix"},
		{"dash in prefix", func(c *Config) { c.NamePrefix = "m-v" }, "Config.NamePrefix"},
		{"ipv6 pool", func(c *Config) { c.Pool = netip.MustParsePrefix("fd00::/64") }, "Config.Pool"},
		{"pool /31", func(c *Config) { c.Pool = netip.MustParsePrefix("10.0.0.0/31") }, "Config.Pool"},
		{"pool /7", func(c *Config) { c.Pool = netip.MustParsePrefix("10.0.0.0/7") }, "Config.Pool"},
		{"pool host bits", func(c *Config) { c.Pool = netip.MustParsePrefix("10.200.0.1/24") }, "Config.Pool"},
		{"pool loopback", func(c *Config) { c.Pool = netip.MustParsePrefix("127.0.0.0/16") }, "Config.Pool"},
		{"pool link-local", func(c *Config) { c.Pool = netip.MustParsePrefix("169.254.0.0/24") }, "Config.Pool"},
		{"relative run dir", func(c *Config) { c.RunDir = "run/netns" }, "Config.RunDir"},
		{"negative pool size", func(c *Config) { c.PoolSize = -1 }, "Config.PoolSize"},
		{"negative rest", func(c *Config) { c.AddressRest = -time.Second }, "Config.AddressRest"},
		{"host allow without CIDR", func(c *Config) { c.HostAllow = []Rule{{Protocol: "udp"}} }, "Config.HostAllow[0].CIDR"},
		{"host allow ports without protocol", func(c *Config) {
			c.HostAllow = []Rule{{CIDR: netip.MustParsePrefix("10.0.0.1/32"), Ports: PortRange{From: 53}}}
		}, "Config.HostAllow[0].Ports"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.mutate(&cfg)
			_, err := newManager(cfg)
			wantField(t, err, ErrInvalidConfig, tc.field)
		})
	}
	m, err := newManager(ok)
	if err != nil {
		t.Fatal(err)
	}
	if m.prefix != DefaultNamePrefix || m.pool != DefaultPool || m.blocks != 16384 {
		t.Fatalf("defaults: prefix %q pool %s blocks %d", m.prefix, m.pool, m.blocks)
	}
	// Every slot name of the largest pool and longest prefix fits IFNAMSIZ.
	if n := slotName("abcdef", netip.MustParseAddr("255.255.255.254")); len(n) > 15 {
		t.Fatalf("name %q is %d bytes", n, len(n))
	}
}

// TestConfigHost covers the checks against the host namespace.
func TestConfigHost(t *testing.T) {
	t.Parallel()
	env := nstest.NewEnv(t)
	store := newMemStore()
	base := Config{Store: store, HostNS: env.Host, RunDir: env.RunDir, Pool: testPool, NamePrefix: testPrefix}
	try := func(mutate func(*Config)) error {
		cfg := base
		mutate(&cfg)
		m, err := New(ctxT(t), cfg)
		if err == nil {
			m.Close()
		}
		return err
	}
	// Not an interface name (a missing one is no error: TestEgressGone).
	for _, bad := range []string{"no/pe0", "no:pe0", "no pe0", "..", "abcdefghijklmnop"} {
		wantField(t, try(func(c *Config) { c.EgressInterface = bad }), ErrInvalidConfig, "Config.EgressInterface")
	}
	wantField(t, try(func(c *Config) { c.HostNS = filepath.Join(env.Dir, "missing") }), ErrInvalidConfig, "Config.HostNS")
	wantField(t, try(func(c *Config) { c.HostNS = env.Dir }), ErrInvalidConfig, "Config.HostNS")
	// Overlaps the uplink's 203.0.113.0/24.
	wantField(t, try(func(c *Config) { c.Pool = netip.MustParsePrefix("203.0.112.0/23") }), ErrInvalidConfig, "Config.Pool")
	// Overlaps a route.
	nstest.Handle(t, env.Host, func(h *netlink.Handle) error {
		l, err := h.LinkByName(nstest.HostEgress)
		if err != nil {
			return err
		}
		return h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipNet(netip.MustParseAddr("10.200.0.128"), 25),
			Gw: net.ParseIP(nstest.UpstreamIP).To4()})
	})
	err := try(func(c *Config) {})
	wantField(t, err, ErrInvalidConfig, "Config.Pool")
	if !strings.Contains(err.Error(), "10.200.0.128/25") {
		t.Fatalf("error %q does not name the route", err)
	}
	// A namespace without a default route and no EgressInterface.
	bare := env.NewNS("bare")
	wantField(t, try(func(c *Config) { c.HostNS = bare; c.Pool = DefaultPool }), ErrInvalidConfig, "Config.EgressInterface")
	// Failed New left nothing behind.
	if tables := hostTables(t, env.Host); len(tables) > 0 {
		t.Fatalf("tables after failed New: %v", tables)
	}
	if ids, _ := store.List(kindLease); len(ids) > 0 {
		t.Fatalf("leases after failed New: %v", ids)
	}

	// The egress interface defaults to the default route's.
	m, err := New(ctxT(t), Config{Store: store, HostNS: env.Host, RunDir: env.RunDir, Pool: netip.MustParsePrefix("10.201.0.0/24"), NamePrefix: testPrefix})
	if err != nil {
		t.Fatal(err)
	}
	if m.egress != nstest.HostEgress {
		t.Fatalf("egress %q; want %q", m.egress, nstest.HostEgress)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if tables := hostTables(t, env.Host); len(tables) > 0 {
		t.Fatalf("tables after Close: %v", tables)
	}
}

func TestPolicyValidate(t *testing.T) {
	p := func(s string) netip.Prefix { return netip.MustParsePrefix(s) }
	bad := []struct {
		policy Policy
		field  string
	}{
		{Policy{Allow: []Rule{{}}}, "Policy.Allow[0].CIDR"},
		{Policy{Allow: []Rule{{CIDR: p("10.1.2.0/24")}, {CIDR: p("fd00::/8")}}}, "Policy.Allow[1].CIDR"},
		{Policy{Allow: []Rule{{CIDR: p("10.1.2.3/24")}}}, "Policy.Allow[0].CIDR"},
		{Policy{Allow: []Rule{{CIDR: p("::ffff:10.1.2.0/120")}}}, "Policy.Allow[0].CIDR"},
		{Policy{Allow: []Rule{{CIDR: p("10.0.0.0/8"), Protocol: "sctp"}}}, "Policy.Allow[0].Protocol"},
		{Policy{Allow: []Rule{{CIDR: p("10.0.0.0/8"), Protocol: "TCP"}}}, "Policy.Allow[0].Protocol"},
		{Policy{Allow: []Rule{{CIDR: p("10.0.0.0/8"), Ports: PortRange{From: 53}}}}, "Policy.Allow[0].Ports"},
		{Policy{Allow: []Rule{{CIDR: p("10.0.0.0/8"), Protocol: "icmp", Ports: PortRange{From: 1}}}}, "Policy.Allow[0].Ports"},
		{Policy{Allow: []Rule{{CIDR: p("10.0.0.0/8"), Protocol: "tcp", Ports: PortRange{To: 80}}}}, "Policy.Allow[0].Ports"},
		{Policy{Allow: []Rule{{CIDR: p("10.0.0.0/8"), Protocol: "udp", Ports: PortRange{From: 90, To: 80}}}}, "Policy.Allow[0].Ports"},
		{Policy{Allow: make([]Rule, MaxRules+1)}, "Policy.Allow"},
		{Policy{NewFlowsPerSecond: MaxNewFlowsPerSecond + 1}, "Policy.NewFlowsPerSecond"},
		{Policy{MaxFlows: MaxMaxFlows + 1}, "Policy.MaxFlows"},
	}
	for _, tc := range bad {
		wantField(t, tc.policy.Validate(), ErrInvalidPolicy, tc.field)
	}
	good := []Policy{
		{},
		{DenyAll: true},
		{NewFlowsPerSecond: MaxNewFlowsPerSecond, MaxFlows: MaxMaxFlows},
		{NewFlowsPerSecond: 1, MaxFlows: 1},
		{Allow: []Rule{
			{CIDR: p("0.0.0.0/0")},
			{CIDR: p("10.1.2.0/24"), Protocol: "tcp"},
			{CIDR: p("10.1.2.7/32"), Protocol: "udp", Ports: PortRange{From: 53}},
			{CIDR: p("192.168.0.0/16"), Protocol: "tcp", Ports: PortRange{From: 8000, To: 8100}},
			{CIDR: p("203.0.113.0/24"), Protocol: "icmp"},
		}},
	}
	for _, g := range good {
		if err := g.Validate(); err != nil {
			t.Fatalf("Validate(%+v): %v", g, err)
		}
	}
	// Several problems are all reported.
	err := Policy{Allow: []Rule{{}, {CIDR: p("10.0.0.0/8"), Protocol: "x"}}}.Validate()
	if !strings.Contains(err.Error(), "Allow[0].CIDR") || !strings.Contains(err.Error(), "Allow[1].Protocol") {
		t.Fatalf("joined error %q misses a problem", err)
	}
}

func TestPoolExhausted(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(c *Config) { c.Pool = netip.MustParsePrefix("10.200.0.0/29") }) // 2 slots
	h.setup("vm-a", Options{})
	h.setup("vm-b", Options{})
	if _, err := h.m.Setup(ctxT(t), "vm-c", Options{}); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("third Setup: %v; want ErrPoolExhausted", err)
	}
	if err := h.store.Get(kindVM, "vm-c", nil); !errors.Is(err, ErrRecordNotFound) {
		t.Fatalf("failed Setup left a record: %v", err)
	}
	h.teardown("vm-a")
	c := h.setup("vm-c", Options{})
	if !h.cfg.Pool.Contains(c.HostIP) {
		t.Fatal(c.HostIP)
	}
	h.teardown("vm-b")
	h.teardown("vm-c")
}

func TestInvalidArguments(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	ctx := ctxT(t)
	for _, id := range []string{"", "-x", ".x", "a/b", "a b", strings.Repeat("a", 65)} {
		if _, err := h.m.Setup(ctx, id, Options{}); !errors.Is(err, ErrInvalidVMID) {
			t.Fatalf("Setup(%q): %v", id, err)
		}
		if err := h.m.Teardown(ctx, id); !errors.Is(err, ErrInvalidVMID) {
			t.Fatalf("Teardown(%q): %v", id, err)
		}
		if err := h.m.SetPolicy(ctx, id, Policy{}); !errors.Is(err, ErrInvalidVMID) {
			t.Fatalf("SetPolicy(%q): %v", id, err)
		}
	}
	_, err := h.m.Setup(ctx, "vm-a", Options{Policy: Policy{Allow: []Rule{{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Ports: PortRange{From: 1}}}}})
	wantField(t, err, ErrInvalidPolicy, "Policy.Allow[0].Ports")
	h.checkNoSlots()
}

// deleteLink removes a link from a namespace behind the Manager's back.
func deleteLink(t *testing.T, ns, name string) {
	t.Helper()
	nstest.Handle(t, ns, func(nh *netlink.Handle) error {
		l, err := nh.LinkByName(name)
		if err != nil {
			return err
		}
		return nh.LinkDel(l)
	})
}

func TestDeletedBehindOurBack(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	ctx := ctxT(t)

	// Teardown copes with a missing host veth, and with a missing namespace.
	a := h.setup("vm-a", Options{})
	deleteLink(t, h.env.Host, a.VethHost)
	h.teardown("vm-a")
	b := h.setup("vm-b", Options{})
	if err := netnsutil.Remove(b.NetNSPath); err != nil {
		t.Fatal(err)
	}
	h.teardown("vm-b")
	h.checkNoSlots()

	// Cleanup repairs a kept VM whose pieces were removed, keeping its
	// addresses; traffic flows again.
	nstest.Serve(t, h.env.Up, upstreamIPs...)
	c := h.setup("vm-c", Options{Policy: Policy{Allow: []Rule{{CIDR: netip.MustParsePrefix("10.1.2.0/24")}}}})
	g := h.guest(c)
	mustReach(t, g, at(nstest.UpstreamPriv2), nstest.HostEgressIP)
	keep := func(id string) bool { return id == "vm-c" }
	repair := func(what string, damage func()) {
		t.Helper()
		damage()
		rep, err := h.m.Cleanup(ctx, keep)
		if err != nil {
			t.Fatalf("%s: Cleanup: %v", what, err)
		}
		if !slices.Equal(rep.Repaired, []string{"vm-c"}) || len(rep.Removed)+len(rep.RemovedVMs) > 0 {
			t.Fatalf("%s: report %+v; want vm-c repaired only", what, rep)
		}
		got, err := h.m.Slot("vm-c")
		if err != nil || *got != *c {
			t.Fatalf("%s: slot after repair %+v, %v; want %+v", what, got, err, c)
		}
		// Nothing more to do.
		if rep, err := h.m.Cleanup(ctx, keep); err != nil || len(rep.Repaired) > 0 {
			t.Fatalf("%s: second Cleanup %+v, %v", what, rep, err)
		}
	}
	repair("host veth", func() { deleteLink(t, h.env.Host, c.VethHost) })
	mustReach(t, g, at(nstest.UpstreamPriv2), nstest.HostEgressIP) // the stored policy came back too
	repair("host route", func() {
		nstest.Handle(t, h.env.Host, func(nh *netlink.Handle) error {
			return nh.RouteDel(&netlink.Route{Dst: ipNet(c.HostIP, 32)})
		})
	})
	repair("firewall table", func() {
		ns := nstest.Netns(t, c.NetNSPath)
		defer ns.Close()
		nc, _ := nftables.New(nftables.WithNetNSFd(int(ns)))
		nc.DelTable(&nftables.Table{Name: testPrefix + "_fw", Family: nftables.TableFamilyINet})
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	})
	mustReach(t, g, at(nstest.UpstreamPriv2), nstest.HostEgressIP)
	repair("namespace", func() {
		if err := netnsutil.Remove(c.NetNSPath); err != nil {
			t.Fatal(err)
		}
	})
	// The rebuilt namespace has a real TAP again.
	nstest.Handle(t, c.NetNSPath, func(nh *netlink.Handle) error {
		l, err := nh.LinkByName(TAPName)
		if err == nil && l.Type() != "tuntap" {
			err = fmt.Errorf("%s is a %s", TAPName, l.Type())
		}
		return err
	})

	// Setup of a damaged VM repairs it in place too.
	deleteLink(t, h.env.Host, c.VethHost)
	c2 := h.setup("vm-c", Options{Policy: Policy{Allow: []Rule{{CIDR: netip.MustParsePrefix("10.1.2.0/24")}}}})
	if *c2 != *c {
		t.Fatalf("Setup after damage gave %+v; want %+v", c2, c)
	}
	if ok, err := h.m.intact(h.lease(c.Name)); !ok || err != nil {
		t.Fatalf("slot not intact after Setup: %v", err)
	}
	h.teardown("vm-c")
}

func (h *harness) lease(name string) *leaseRecord {
	h.t.Helper()
	var l leaseRecord
	if err := h.store.Get(kindLease, name, &l); err != nil {
		h.t.Fatal(err)
	}
	return &l
}

// buildSteps are the set-up steps, in order, that a failure can hit.
var buildSteps = []string{"lease", "record", "netns", "sysctl", "tap", "veth", "route", "nat", "firewall", "commit"}

func TestInjectedFailureLeavesNothing(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	injected := errors.New("injected")
	for _, step := range buildSteps {
		h.m.failHook = func(s string) error {
			if s == step {
				return injected
			}
			return nil
		}
		_, err := h.m.Setup(ctxT(t), "vm-a", Options{})
		if !errors.Is(err, injected) || !strings.Contains(err.Error(), step) {
			t.Fatalf("step %s: Setup error %v", step, err)
		}
		h.checkNoSlots()
	}
	h.m.failHook = nil
	h.setup("vm-a", Options{})
	h.teardown("vm-a")
}

func TestCrashLeftoversRemovedByFreshManager(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	for _, step := range buildSteps {
		m1 := h.newManager(nil)
		m1.failHook = func(s string) error {
			if s == step {
				return errCrash
			}
			return nil
		}
		if _, err := m1.Setup(ctxT(t), "vm-a", Options{}); !errors.Is(err, errCrash) {
			t.Fatalf("step %s: %v", step, err)
		}
		m1.simulateCrash()

		// A fresh Manager's Cleanup removes the half-built slot (the
		// lease of a dead owner) and the vm record pointing at it.
		rep, err := h.m.Cleanup(ctxT(t), nil)
		if err != nil {
			t.Fatalf("step %s: Cleanup: %v", step, err)
		}
		if step != "lease" && len(rep.Removed) != 1 {
			t.Fatalf("step %s: report %+v; want one slot removed", step, rep)
		}
		h.checkNoSlots()
	}

	// A crash half-way through a Setup whose VM the caller keeps: Cleanup
	// finishes building the slot.
	m1 := h.newManager(nil)
	m1.failHook = func(s string) error {
		if s == "nat" {
			return errCrash
		}
		return nil
	}
	if _, err := m1.Setup(ctxT(t), "vm-half", Options{Policy: Policy{DenyAll: true}}); !errors.Is(err, errCrash) {
		t.Fatal(err)
	}
	m1.simulateCrash()
	rep, err := h.m.Cleanup(ctxT(t), func(id string) bool { return id == "vm-half" })
	if err != nil || !slices.Equal(rep.Repaired, []string{"vm-half"}) || len(rep.Removed) > 0 {
		t.Fatalf("half-built kept vm: %+v, %v", rep, err)
	}
	half, err := h.m.Slot("vm-half")
	if err != nil {
		t.Fatal(err)
	}
	if l := h.lease(half.Name); l.State != stateBuilt {
		t.Fatalf("lease state %q after repair", l.State)
	} else if ok, err := h.m.intact(l); !ok || err != nil {
		t.Fatalf("half-built slot not finished: %v", err)
	}
	h.teardown("vm-half")

	// A crash after the slot was given to the VM: it is a VM network, kept
	// or removed as keep says.
	m1 = h.newManager(nil)
	s := func() *Slot {
		s, err := m1.Setup(ctxT(t), "vm-b", Options{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}()
	m1.simulateCrash()
	rep, err = h.m.Cleanup(ctxT(t), func(id string) bool { return id == "vm-b" })
	if err != nil || len(rep.Removed)+len(rep.RemovedVMs)+len(rep.Repaired) > 0 {
		t.Fatalf("kept vm: %+v, %v", rep, err)
	}
	if got, err := h.m.Slot("vm-b"); err != nil || *got != *s {
		t.Fatalf("slot of kept vm %+v, %v", got, err)
	}
	rep, err = h.m.Cleanup(ctxT(t), nil)
	if err != nil || !slices.Equal(rep.RemovedVMs, []string{"vm-b"}) || !slices.Equal(rep.Removed, []string{s.Name}) {
		t.Fatalf("vm not kept: %+v, %v", rep, err)
	}
	h.checkNoSlots()
}

func TestCleanupOrphans(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	ctx := ctxT(t)
	live := h.setup("vm-live", Options{})

	// A pinned namespace, an unmounted file and a host veth named like
	// slots of the pool, with no lease; and a vm record with no lease.
	orphanNS := slotName(testPrefix, netip.MustParseAddr("10.200.0.254"))
	orphanFile := slotName(testPrefix, netip.MustParseAddr("10.200.0.250"))
	orphanLink := slotName(testPrefix, netip.MustParseAddr("10.200.0.246"))
	if err := netnsutil.Create(filepath.Join(h.env.RunDir, orphanNS)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.env.RunDir, orphanFile), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	nstest.Handle(t, h.env.Host, func(nh *netlink.Handle) error {
		return nh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: orphanLink}, PeerName: "orphanpeer"})
	})
	if err := h.store.Put(kindVM, "vm-gone", vmRecord{Slot: slotName(testPrefix, netip.MustParseAddr("10.200.0.242"))}); err != nil {
		t.Fatal(err)
	}
	// Things that are not ours stay.
	foreign := filepath.Join(h.env.RunDir, "other-ns")
	if err := os.WriteFile(foreign, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	outside := slotName(testPrefix, netip.MustParseAddr("10.99.0.2")) // not in the pool
	if err := os.WriteFile(filepath.Join(h.env.RunDir, outside), nil, 0o444); err != nil {
		t.Fatal(err)
	}

	rep, err := h.m.Cleanup(ctx, func(id string) bool { return id == "vm-live" })
	if err != nil {
		t.Fatal(err)
	}
	want := []string{orphanLink, orphanFile, orphanNS}
	slices.Sort(want)
	if !slices.Equal(rep.Removed, want) || !slices.Equal(rep.StaleRecords, []string{"vm-gone"}) || len(rep.RemovedVMs)+len(rep.Repaired) > 0 {
		t.Fatalf("report %+v; want removed %v and stale vm-gone", rep, want)
	}
	if links := nstest.Links(t, h.env.Host); slices.Contains(links, "orphanpeer") || !slices.Contains(links, live.VethHost) {
		t.Fatalf("host links after cleanup: %v", links)
	}
	for _, p := range []string{foreign, filepath.Join(h.env.RunDir, outside)} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("cleanup removed %s: %v", p, err)
		}
		os.Remove(p)
	}
	if ok, err := h.m.intact(h.lease(live.Name)); !ok || err != nil {
		t.Fatalf("kept vm damaged by cleanup: %v", err)
	}
	h.teardown("vm-live")
}
