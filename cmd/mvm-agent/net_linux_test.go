package main

import (
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNewNetNS runs fn on a thread switched into a fresh, unnamed network
// namespace (gone when its last descriptor closes), then switches back.
func inNewNetNS(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (network namespaces)")
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatalf("new netns: %v", err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			t.Fatalf("back to the original netns: %v", err) // the thread stays locked and dies
		}
		ns.Close()
	}()
	fn()
}

// TestConfigureNetwork applies ip= in a namespace where the kernel did
// nothing (as on a kernel without CONFIG_IP_PNP): lo and eth0 come up with
// the address and the default route, and a second run changes nothing.
func TestConfigureNetwork(t *testing.T) {
	inNewNetNS(t, func() {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}); err != nil {
			t.Fatalf("veth: %v", err)
		}
		peer, _ := netlink.LinkByName("peer0")
		netlink.LinkSetUp(peer)
		cmdline := "console=ttyS0 ip=10.9.0.2::10.9.0.1:255.255.255.0::eth0:off root=/dev/vda"
		for range 2 {
			msg, err := configureNetwork(cmdline)
			if err != nil {
				t.Fatalf("configureNetwork: %v", err)
			}
			if msg != "eth0 up with 10.9.0.2/24, default via 10.9.0.1" {
				t.Errorf("message = %q", msg)
			}
		}
		for _, name := range []string{"lo", "eth0"} {
			l, err := netlink.LinkByName(name)
			if err != nil || l.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("%s is not up: %v", name, err)
			}
		}
		eth0, _ := netlink.LinkByName("eth0")
		addrs, _ := netlink.AddrList(eth0, unix.AF_INET)
		if len(addrs) != 1 || addrs[0].IPNet.String() != "10.9.0.2/24" {
			t.Errorf("eth0 addresses = %v, want exactly 10.9.0.2/24", addrs)
		}
		routes, _ := netlink.RouteList(eth0, unix.AF_INET)
		defaults := 0
		for _, r := range routes {
			if isDefault(r.Dst) {
				defaults++
				if !r.Gw.Equal(net.ParseIP("10.9.0.1")) {
					t.Errorf("default route via %s, want 10.9.0.1", r.Gw)
				}
			}
		}
		if defaults != 1 {
			t.Errorf("%d default routes, want 1: %v", defaults, routes)
		}
	})
}

func TestConfigureNetworkErrors(t *testing.T) {
	inNewNetNS(t, func() {
		if msg, err := configureNetwork("console=ttyS0"); err != nil || !strings.Contains(msg, "no ip=") {
			t.Errorf("no ip= = %q, %v", msg, err)
		}
		if msg, err := configureNetwork("ip=dhcp"); err != nil || !strings.Contains(msg, "no static") {
			t.Errorf("ip=dhcp = %q, %v", msg, err)
		}
		if _, err := configureNetwork("ip=10.0.0.2::10.0.0.1:255.255.255.0::eth7:off"); err == nil || !strings.Contains(err.Error(), "eth7") {
			t.Errorf("missing device: %v, want an error naming eth7", err)
		}
		if _, err := configureNetwork("ip=10.0.0.2::10.0.0.1:255.0.255.0::eth0:off"); err == nil || !strings.Contains(err.Error(), "netmask") {
			t.Errorf("bad netmask: %v", err)
		}
	})
}
