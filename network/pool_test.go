//go:build linux

package network

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/network/internal/nstest"
	"github.com/vishvananda/netlink"
)

// waitPooled waits until m holds n warm slots and returns their names.
func waitPooled(t *testing.T, m *Manager, n int) []string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		m.mu.Lock()
		var names []string
		for _, l := range m.pooled {
			names = append(names, l.Name)
		}
		m.mu.Unlock()
		if len(names) == n {
			return names
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("warm pool did not reach %d slots", n)
	return nil
}

func TestWarmPool(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(c *Config) { c.PoolSize = 3 })
	pooled := waitPooled(t, h.m, 3)
	for _, name := range pooled {
		if l := h.lease(name); l.State != stateBuilt || l.BuiltFor != "" || !l.Owner.alive() {
			t.Fatalf("pooled lease %+v", l)
		}
	}

	// Setup takes a pre-built slot; the pool refills.
	up := nstest.Serve(t, h.env.Up, upstreamIPs...)
	a := h.setup("vm-a", Options{})
	if !slices.Contains(pooled, a.Name) {
		t.Fatalf("Setup built %s; want one of the warm slots %v", a.Name, pooled)
	}
	var vr vmRecord
	if err := h.store.Get(kindVM, "vm-a", &vr); err != nil || vr.Slot != a.Name || vr.Token != h.lease(a.Name).Token {
		t.Fatalf("record after Setup %+v, %v", vr, err)
	}
	g := h.guest(a)
	mustReach(t, g, at(nstest.UpstreamIP), nstest.HostEgressIP)
	mustNotReach(t, g, at(nstest.UpstreamPriv), up)

	// A warm slot with a policy and TAP owner of its own.
	b := h.setup("vm-b", Options{Policy: Policy{DenyAll: true}, TAPUID: 1000, TAPGID: 1000})
	if !slices.Contains(pooled, b.Name) {
		t.Fatalf("Setup built %s; want a warm slot", b.Name)
	}
	nstest.Handle(t, b.NetNSPath, func(nh *netlink.Handle) error {
		l, err := nh.LinkByName(TAPName)
		if err != nil {
			return err
		}
		if tun := l.(*netlink.Tuntap); tun.Owner != 1000 || tun.Group != 1000 {
			t.Errorf("TAP owner %d/%d", tun.Owner, tun.Group)
		}
		return nil
	})
	gb := h.guest(b)
	mustNotReach(t, gb, at(nstest.UpstreamIP), up)

	refilled := waitPooled(t, h.m, 3)
	for _, name := range refilled {
		if name == a.Name || name == b.Name {
			t.Fatalf("pool holds a slot given away: %s", name)
		}
	}

	// Another Manager's Cleanup leaves a live Manager's warm slots alone.
	other := h.newManager(nil)
	rep, err := other.Cleanup(ctxT(t), func(id string) bool { return true })
	if err != nil || len(rep.Removed)+len(rep.RemovedVMs)+len(rep.Repaired) > 0 {
		t.Fatalf("Cleanup by another Manager: %+v, %v", rep, err)
	}
	for _, name := range refilled {
		if ok, err := h.m.intact(h.lease(name)); !ok || err != nil {
			t.Fatalf("warm slot %s damaged: %v", name, err)
		}
	}
	if err := other.Close(); err != nil {
		t.Fatal(err)
	}

	h.teardown("vm-a")
	h.teardown("vm-b")
	// Close (in the harness cleanup) removes the three warm slots.
}

func TestWarmPoolOfCrashedProcess(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	m1 := h.newManager(func(c *Config) { c.PoolSize = 2 })
	pooled := waitPooled(t, m1, 2)
	m1.simulateCrash()
	rep, err := h.m.Cleanup(ctxT(t), nil)
	slices.Sort(pooled)
	if err != nil || !slices.Equal(rep.Removed, pooled) {
		t.Fatalf("report %+v, %v; want %v removed", rep, err, pooled)
	}
	h.checkNoSlots()
}

func TestWarmPoolExhaustedAndClosed(t *testing.T) {
	t.Parallel()
	// Two addresses, a pool of four: the refiller waits for free addresses.
	h := newHarness(t, func(c *Config) { c.Pool = netip.MustParsePrefix("10.200.0.0/29"); c.PoolSize = 4 })
	waitPooled(t, h.m, 2)
	h.setup("vm-a", Options{})
	h.setup("vm-b", Options{})
	if _, err := h.m.Setup(ctxT(t), "vm-c", Options{}); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("Setup: %v; want ErrPoolExhausted", err)
	}
	h.teardown("vm-a")
	waitPooled(t, h.m, 1) // refilled when an address was freed
	h.teardown("vm-b")

	if err := h.m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.m.Setup(ctxT(t), "vm-d", Options{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Setup after Close: %v", err)
	}
	if err := h.m.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	h.checkClean()
}

func TestWarmSlotDamagedIsSkipped(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(c *Config) { c.PoolSize = 1 })
	pooled := waitPooled(t, h.m, 1)
	deleteLink(t, h.env.Host, pooled[0])
	s := h.setup("vm-a", Options{})
	if s.Name == pooled[0] {
		t.Fatalf("Setup handed out the damaged warm slot %s", s.Name)
	}
	if ok, err := h.m.intact(h.lease(s.Name)); !ok || err != nil {
		t.Fatalf("slot not intact: %v", err)
	}
	h.teardown("vm-a")
	waitPooled(t, h.m, 1)
}
