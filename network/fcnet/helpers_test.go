//go:build linux

package fcnet_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/fcapi"
	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/internal/fcstandin"
	"github.com/mvm-dev/microvm/network"
	"github.com/mvm-dev/microvm/network/fcnet"
	"github.com/mvm-dev/microvm/network/internal/nstest"
)

// The tests' pool and prefix: the pool must not overlap the topology's
// addresses (203.0.113.0/24, 198.51.100.7).
var testPool = netip.MustParsePrefix("10.200.0.0/24")

const testPrefix = "fct"

func TestMain(m *testing.M) {
	own, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	code := m.Run()
	fcstandin.RemoveBuild()
	if err := nstest.ThreadsIn(own); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		code = 1
	}
	os.Exit(code)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// standin returns a firecracker binary for tests: a script that execs the
// stand-in with the reference specs, emulating the API version api
// ("v1.0" or "latest").
func standin(t testing.TB, api string) string {
	t.Helper()
	real := fcstandin.Build(t)
	specDir := fcstandin.SpecDir(t)
	bin := filepath.Join(t.TempDir(), "firecracker")
	script := fmt.Sprintf("#!/bin/sh\nexport FCSTANDIN_SPEC_DIR='%s' FCSTANDIN_API='%s'\nexec '%s' \"$@\"\n", specDir, api, real)
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// testSpec returns a small valid spec with real files and one managed
// interface.
func testSpec(t testing.TB) microvm.Spec {
	t.Helper()
	dir := t.TempDir()
	kernel, rootfs := filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4")
	if err := os.WriteFile(kernel, []byte("\x7fELF stand-in kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rootfs, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	return microvm.Spec{
		Kernel:    kernel,
		RootDrive: microvm.Drive{Path: rootfs},
		VCPUs:     1,
		MemoryMiB: 16,
		Network:   []microvm.NetworkInterface{{}},
	}
}

// world is a test host namespace with an upstream behind it, a Manager on
// it and a Firecracker runtime using the Manager.
type world struct {
	t     testing.TB
	env   *nstest.Env
	reg   *network.FileStore
	m     *network.Manager
	cfg   network.Config
	state string
	bin   string
	jail  *firecracker.JailerConfig // runtimes opened jailed when set
	rt    *firecracker.Runtime
}

// newWorld builds a world whose stand-in emulates the newest API; at
// cleanup it destroys every VM, closes the runtime and the Manager and
// checks that no namespace, link, nftables table or lease is left.
func newWorld(t testing.TB, poolSize int) *world { return newWorldAPI(t, poolSize, "latest") }

// newWorldAPI is newWorld with the stand-in emulating api.
func newWorldAPI(t testing.TB, poolSize int, api string) *world {
	t.Helper()
	return newWorldBin(t, poolSize, standin(t, api))
}

// newWorldBin is newWorld running the firecracker binary bin.
func newWorldBin(t testing.TB, poolSize int, bin string) *world {
	t.Helper()
	env := nstest.NewEnv(t)
	reg, err := network.OpenStore(filepath.Join(env.Dir, "netstate"))
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, env: env, reg: reg, state: t.TempDir(), bin: bin}
	w.cfg = network.Config{
		Store:           reg,
		HostNS:          env.Host,
		RunDir:          env.RunDir,
		Pool:            testPool,
		EgressInterface: nstest.HostEgress,
		NamePrefix:      testPrefix,
		PoolSize:        poolSize,
		Logger:          slog.New(slog.DiscardHandler),
	}
	w.m, err = network.New(ctxT(t), w.cfg)
	if err != nil {
		t.Fatalf("network.New: %v", err)
	}
	w.rt = w.open(fcnet.New(w.m))
	t.Cleanup(func() {
		ctx := context.Background()
		if vms, err := w.rt.List(ctx); err == nil {
			for _, vm := range vms {
				if _, err := w.rt.Destroy(ctx, vm.ID); err != nil {
					t.Errorf("cleanup: Destroy(%s): %v", vm.ID, err)
				}
			}
		}
		w.rt.Close()
		if t.Failed() {
			w.m.Cleanup(ctx, nil)
		}
		if err := w.m.Close(); err != nil { // removes the warm slots
			t.Errorf("Manager.Close: %v", err)
		}
		w.checkNoSlots()
		if tables := tables(t, env.Host); len(tables) > 0 {
			t.Errorf("nftables tables left in the host namespace: %v", tables)
		}
		reg.Close()
	})
	return w
}

// open opens another runtime over the world's state directory, with the
// given Network (nil for none). The caller closes it.
func (w *world) open(n firecracker.Network) *firecracker.Runtime {
	w.t.Helper()
	cfg := firecracker.Config{
		StateDir:       w.state,
		FirecrackerBin: w.bin,
		ReadyTimeout:   10 * time.Second,
		StopTimeout:    time.Second,
	}
	if n != nil {
		cfg.Network = n
	}
	cfg.Jailer = w.jail
	rt, err := firecracker.Open(ctxT(w.t), cfg)
	if err != nil {
		w.t.Fatalf("firecracker.Open: %v", err)
	}
	return rt
}

// checkNoSlots asserts that no slot namespace, host-side link, lease or
// vm record of the network is left.
func (w *world) checkNoSlots() {
	w.t.Helper()
	w.env.CheckNoSlots(w.t, testPrefix, w.reg.List, "netlease", "netvm")
}

// tables lists the nftables tables of the namespace at path.
func tables(t testing.TB, path string) []string { return nstest.Tables(t, path) }

// client returns an API client of the VM's firecracker.
func client(t testing.TB, vm microvm.VM) *fcapi.Client {
	t.Helper()
	c := fcapi.New(vm.Backend.APISocket, nil)
	t.Cleanup(func() { c.Close() })
	return c
}

// vmConfig is GET /vm/config of the VM.
func vmConfig(t testing.TB, vm microvm.VM) fcapi.FullVMConfig {
	t.Helper()
	cfg, err := client(t, vm).VMConfig(ctxT(t))
	if err != nil {
		t.Fatalf("GET /vm/config of %s: %v", vm.ID, err)
	}
	return cfg
}

// sameNetNS fails unless process pid runs in the namespace pinned at path.
func sameNetNS(t testing.TB, pid int, path string) {
	t.Helper()
	var a, b unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &a); err != nil {
		t.Fatalf("netns of pid %d: %v", pid, err)
	}
	if err := unix.Stat(path, &b); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	if a.Ino != b.Ino || a.Dev != b.Dev {
		t.Errorf("firecracker (pid %d) runs in netns %d:%d, want the slot's %s (%d:%d)", pid, a.Dev, a.Ino, path, b.Dev, b.Ino)
	}
}

// warmSlots counts the built slots no VM holds (the warm pool), from the
// Store's records.
func warmSlots(t testing.TB, reg *network.FileStore) int {
	t.Helper()
	held := map[string]bool{}
	vms, _ := reg.List("netvm")
	for _, id := range vms {
		var v struct {
			Slot string `json:"slot"`
		}
		if reg.Get("netvm", id, &v) == nil {
			held[v.Slot] = true
		}
	}
	leases, _ := reg.List("netlease")
	n := 0
	for _, id := range leases {
		var l struct {
			State string `json:"state"`
		}
		if reg.Get("netlease", id, &l) == nil && l.State == "built" && !held[id] {
			n++
		}
	}
	return n
}
