//go:build linux

package network

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/network/internal/netnsutil"
	"github.com/mvm-dev/microvm/network/internal/nstest"
)

const testPrefix = "mvmt"

var testPool = netip.MustParsePrefix("10.200.0.0/24")

// harness is one test's topology, store and Manager.
type harness struct {
	t     testing.TB
	env   *nstest.Env
	store Store // the Manager's store
	cfg   Config
	m     *Manager
	logs  *logRecorder
}

// logRecorder is a slog handler that keeps warnings.
type logRecorder struct {
	mu       sync.Mutex
	warnings []string
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecorder) WithGroup(string) slog.Handler            { return l }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	if r.Level >= slog.LevelWarn {
		l.mu.Lock()
		l.warnings = append(l.warnings, b.String())
		l.mu.Unlock()
	}
	return nil
}

func (l *logRecorder) Warnings() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.warnings)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newHarness builds the topology and a Manager on it; at cleanup it closes
// the Manager and checks that nothing is left.
func newHarness(t testing.TB, mutate func(*Config)) *harness {
	t.Helper()
	env := nstest.NewEnv(t)
	reg, err := OpenStore(filepath.Join(env.Dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, env: env, logs: &logRecorder{}}
	h.cfg = Config{
		Store:           reg,
		HostNS:          env.Host,
		RunDir:          env.RunDir,
		Pool:            testPool,
		EgressInterface: nstest.HostEgress,
		NamePrefix:      testPrefix,
		Logger:          slog.New(h.logs),
	}
	if mutate != nil {
		mutate(&h.cfg)
	}
	h.store = h.cfg.Store
	h.m = h.newManager(nil)
	t.Cleanup(func() {
		if t.Failed() {
			// Remove what the failed test left so its namespaces go away;
			// a passing test must leave nothing by itself.
			h.m.Cleanup(context.Background(), nil)
		}
		if err := h.m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		h.checkClean()
		reg.Close()
	})
	return h
}

// newManager opens another Manager on the harness's configuration (as
// another process would), with mutate applied to a copy of it. The caller
// closes it.
func (h *harness) newManager(mutate func(*Config)) *Manager {
	h.t.Helper()
	cfg := h.cfg
	if mutate != nil {
		mutate(&cfg)
	}
	m, err := New(ctxT(h.t), cfg)
	if err != nil {
		h.t.Fatalf("New: %v", err)
	}
	return m
}

// simulateCrash abandons m as a killed process would: the refiller stops,
// nothing is cleaned up, and its owner identity counts as dead.
func (m *Manager) simulateCrash() {
	m.mu.Lock()
	m.closed = true
	m.pooled = nil
	m.mu.Unlock()
	if m.stop != nil {
		m.stop()
		<-m.done
	}
	liveInstances.Delete(m.owner.Instance)
	m.ops.Lock()
	m.endWatch()
	m.closeHandles()
	m.ops.Unlock()
}

// checkClean asserts that no namespace, link, nftables table or lease is
// left once the Manager is closed.
func (h *harness) checkClean() {
	t := h.t
	t.Helper()
	h.checkNoSlots()
	if tables := hostTables(t, h.env.Host); len(tables) > 0 {
		t.Errorf("nftables tables left in host namespace: %v", tables)
	}
}

// checkNoSlots asserts that no slot namespace, host link, lease or vm
// record exists.
func (h *harness) checkNoSlots() {
	h.t.Helper()
	h.env.CheckNoSlots(h.t, testPrefix, h.store.List, kindLease, kindVM)
}

func TestMain(m *testing.M) {
	own, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ipNetns := func() []string {
		ents, _ := os.ReadDir("/run/netns")
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return names
	}
	before := ipNetns()
	code := m.Run()
	if after := ipNetns(); !slices.Equal(before, after) {
		fmt.Fprintf(os.Stderr, "FAIL: /run/netns changed from %v to %v\n", before, after)
		code = 1
	}
	// Checked once no test runs: parallel tests switch threads legitimately.
	if err := nstest.ThreadsIn(own); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		code = 1
	}
	os.Exit(code)
}

func hostTables(t testing.TB, nsPath string) []string { return nstest.Tables(t, nsPath) }

func nsTables(t testing.TB, nsPath string) []string { return hostTables(t, nsPath) }

// setup is Setup that fails the test on error.
func (h *harness) setup(vmID string, opts Options) *Slot {
	h.t.Helper()
	s, err := h.m.Setup(ctxT(h.t), vmID, opts)
	if err != nil {
		h.t.Fatalf("Setup(%s): %v", vmID, err)
	}
	return s
}

func (h *harness) teardown(vmID string) {
	h.t.Helper()
	if err := h.m.Teardown(ctxT(h.t), vmID); err != nil {
		h.t.Fatalf("Teardown(%s): %v", vmID, err)
	}
}

// guest wires a stand-in guest to the slot and returns its namespace.
func (h *harness) guest(s *Slot) string {
	h.t.Helper()
	return h.env.AttachGuest(s.NetNSPath, s.VMID)
}

var _ = netnsutil.IsNetNS
