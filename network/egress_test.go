//go:build linux

package network

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/network/internal/nstest"
)

// waitUntil polls cond until it holds, failing the test after 10 s (the
// watcher reacts to kernel events in the background).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func hasWarning(h *harness, parts ...string) bool {
	return slices.ContainsFunc(h.logs.Warnings(), func(w string) bool {
		for _, p := range parts {
			if !strings.Contains(w, p) {
				return false
			}
		}
		return true
	})
}

// TestEgressGone: with the egress interface gone, a Manager still opens;
// existing VM networks can be re-policed and removed completely; a new
// one fails with ErrEgressMissing naming the interface. Once it is back
// (a new interface, forwarding at its default), the watcher turns
// forwarding on again: a VM that kept its network through the outage
// reaches the upstream again, and Setup works on the same Manager.
func TestEgressGone(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	nstest.Serve(t, h.env.Up, nstest.UpstreamIP)
	old := h.setup("old", Options{})
	kept := h.guest(h.setup("kept", Options{}))
	mustReach(t, kept, at(nstest.UpstreamIP), nstest.HostEgressIP)
	h.env.UnplugUplink()
	// The running Manager noticed.
	waitUntil(t, "the running Manager's warning", func() bool { return hasWarning(h, "egress interface removed", nstest.HostEgress) })

	// Another process opens now (the CLI's mvm rm).
	m := h.newManager(nil)
	defer func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}()
	if !hasWarning(h, "egress interface is missing", nstest.HostEgress) || !m.EgressMissing() {
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
	// Existing networks: the policy can change, Slot answers, Teardown
	// removes everything.
	if err := m.SetPolicy(ctxT(t), "old", Policy{DenyAll: true}); err != nil {
		t.Fatalf("SetPolicy with the egress interface gone: %v", err)
	}
	if s, err := m.Slot("old"); err != nil || s.Name != old.Name {
		t.Fatalf("Slot(old) = %v, %v", s, err)
	}
	if err := m.Teardown(ctxT(t), "old"); err != nil {
		t.Fatalf("Teardown with the egress interface gone: %v", err)
	}
	if slices.Contains(nstest.Links(t, h.env.Host), old.Name) {
		t.Fatalf("link %s left after Teardown", old.Name)
	}
	if _, err := os.Stat(old.NetNSPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("namespace %s left after Teardown: %v", old.NetNSPath, err)
	}
	if ids, _ := h.store.List(kindLease); slices.Contains(ids, old.Name) {
		t.Fatalf("lease %s left after Teardown", old.Name)
	}

	h.env.PlugUplink()
	fwd := func() bool {
		return sysctlIn(t, h.env.Host, "net/ipv4/conf/"+nstest.HostEgress+"/forwarding") == "1"
	}
	waitUntil(t, "forwarding on the returned egress interface", fwd)
	mustReach(t, kept, at(nstest.UpstreamIP), nstest.HostEgressIP)
	s, err := m.Setup(ctxT(t), "new", Options{})
	if err != nil {
		t.Fatalf("Setup once the egress interface is back: %v", err)
	}
	if m.EgressMissing() {
		t.Error("EgressMissing after a successful Setup")
	}
	mustReach(t, h.guest(s), at(nstest.UpstreamIP), nstest.HostEgressIP)
	for _, id := range []string{"new", "kept"} {
		if err := m.Teardown(ctxT(t), id); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEgressBackSetup: without the watcher (a missed event), Setup
// itself finds the egress interface back and turns its forwarding on
// before building.
func TestEgressBackSetup(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	h.env.UnplugUplink()
	m := h.newManager(nil)
	defer m.Close()
	h.m.endWatch()
	m.endWatch()
	h.env.PlugUplink()
	if v := sysctlIn(t, h.env.Host, "net/ipv4/conf/"+nstest.HostEgress+"/forwarding"); v != "0" {
		t.Fatalf("returning interface has forwarding %s; the test needs the default 0", v)
	}
	s, err := m.Setup(ctxT(t), "vm", Options{})
	if err != nil {
		t.Fatalf("Setup once the egress interface is back: %v", err)
	}
	if v := sysctlIn(t, h.env.Host, "net/ipv4/conf/"+nstest.HostEgress+"/forwarding"); v != "1" {
		t.Fatalf("forwarding of the returned egress interface is %s after Setup; want 1", v)
	}
	nstest.Serve(t, h.env.Up, nstest.UpstreamIP)
	mustReach(t, h.guest(s), at(nstest.UpstreamIP), nstest.HostEgressIP)
	if err := m.Teardown(ctxT(t), "vm"); err != nil {
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
	h.env.UnplugUplink()
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
// with ErrEgressMissing rather than hand out a slot that cannot leave;
// once the interface is back the pool fills.
func TestEgressGoneWarmPool(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	h.env.UnplugUplink()
	m := h.newManager(func(c *Config) { c.PoolSize = 2 })
	if _, err := m.Setup(ctxT(t), "vm", Options{}); !errors.Is(err, ErrEgressMissing) {
		t.Fatalf("Setup: %v; want ErrEgressMissing", err)
	}
	if n := m.pooledCount(); n != 0 {
		t.Fatalf("%d warm slots built with the egress interface gone", n)
	}
	h.env.PlugUplink()
	waitUntil(t, "the warm pool to fill once the egress interface is back", func() bool { return m.pooledCount() == 2 })
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	h.checkNoSlots()
}
