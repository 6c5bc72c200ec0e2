//go:build linux

package fcnet_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/internal/realfc"
	"github.com/mvm-dev/microvm/network"
	"github.com/mvm-dev/microvm/network/fcnet"
)

// TestJailedNetwork runs managed networking with the real jailer and
// firecracker v1.7: the jailer puts firecracker in the slot's namespace
// (--netns), the TAP is given to the VM's uid and gid (so that no other
// uid may attach to it) and the jailed firecracker opens it, and Destroy leaves no slot (checked by the
// world's cleanup), chroot or cgroup.
func TestJailedNetwork(t *testing.T) {
	dir := realfc.Dir(t)
	w := newWorldBin(t, 0, filepath.Join(dir, "firecracker-v1.7.0"))
	w.rt.Close()
	parent := "mvm-fcnet-test-" + strconv.Itoa(os.Getpid())
	w.jail = &firecracker.JailerConfig{Bin: filepath.Join(dir, "jailer-v1.7.0"), UIDBase: 820000, UIDCount: 8, ParentCgroup: parent}
	w.rt = w.open(fcnet.New(w.m))
	t.Cleanup(func() {
		for _, c := range []string{"cpu", "memory", "pids"} {
			os.Remove(filepath.Join("/sys/fs/cgroup", c, parent))
		}
	})
	ctx := ctxT(t)
	vm, err := w.rt.Create(ctx, "jailed-net", testSpecReal(t))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	n, j := vm.Backend.Network, vm.Backend.Jail
	if n == nil || j == nil {
		t.Fatalf("Backend: network %+v, jail %+v", n, j)
	}
	sameNetNS(t, vm.Backend.PID, n.NetNS)
	if !realfc.TAPOpenBy(vm.Backend.PID, network.TAPName) {
		t.Errorf("jailed firecracker (pid %d) holds no TAP file of %s", vm.Backend.PID, network.TAPName)
	}
	if owner, group := tapOwner(t, n.NetNS, n.TAP); owner != uint32(j.UID) || group != uint32(j.GID) {
		t.Errorf("TAP %s owned by %d:%d, want the VM's %d:%d", n.TAP, owner, group, j.UID, j.GID)
	}
	status, _ := os.ReadFile("/proc/" + strconv.Itoa(vm.Backend.PID) + "/status")
	if !strings.Contains(string(status), "\nUid:\t"+strconv.Itoa(j.UID)+"\t") {
		t.Errorf("firecracker does not run as the VM's uid %d", j.UID)
	}
	if _, err := w.rt.Destroy(ctx, "jailed-net"); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	for _, p := range append([]string{j.Chroot}, j.Cgroups...) {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left after Destroy", p)
		}
	}
}

// tapOwner returns the owner and group of the TAP device name in the
// namespace at nsPath.
func tapOwner(t *testing.T, nsPath, name string) (uint32, uint32) {
	t.Helper()
	ns, err := netns.GetFromPath(nsPath)
	if err != nil {
		t.Fatalf("open netns %s: %v", nsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink in %s: %v", nsPath, err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s in %s: %v", name, nsPath, err)
	}
	tap, ok := l.(*netlink.Tuntap)
	if !ok {
		t.Fatalf("%s in %s is a %s, not a TAP", name, nsPath, l.Type())
	}
	return tap.Owner, tap.Group
}
