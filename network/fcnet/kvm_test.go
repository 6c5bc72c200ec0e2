//go:build linux

package fcnet_test

// The real-KVM cases of managed networking (the rest of the KVM suite is
// firecracker/kvm_test.go): real guests, booted from the project's agent
// image by each real firecracker, send real packets through their slot's
// TAP, NAT and egress firewall to the test's upstream namespace; they read
// MMDS, and ten clones of one snapshot run at once, each in its own
// network. Skipped with one line where /dev/kvm does not open.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/agent"
	"github.com/mvm-dev/microvm/internal/guesttest"
	"github.com/mvm-dev/microvm/network"
	"github.com/mvm-dev/microvm/network/fcnet"
	"github.com/mvm-dev/microvm/network/internal/nstest"
)

// kvmWorld is newWorld with a real firecracker instead of the stand-in.
func kvmWorld(t *testing.T, bin string) *world {
	t.Helper()
	w := newWorld(t, 0)
	if err := w.rt.Close(); err != nil {
		t.Fatal(err)
	}
	w.bin = bin
	w.rt = w.open(fcnet.New(w.m)) // newWorld's cleanup destroys this runtime's VMs
	return w
}

// netGuestSpec boots the agent image with one managed interface and a
// vsock device.
func netGuestSpec(kernel, rootfs string) microvm.Spec {
	return microvm.Spec{
		Kernel:    kernel,
		RootDrive: microvm.Drive{Path: rootfs, ReadOnly: true},
		VCPUs:     1,
		MemoryMiB: 128,
		Network:   []microvm.NetworkInterface{{}},
		Vsock:     &microvm.Vsock{},
	}
}

// TestKVMNetworkSpecOnRealBinaries runs everywhere, KVM or not: each real
// firecracker, started by the runtime in a slot's namespace, accepts the
// configuration TestKVMNetwork boots (the slot's TAP, the ip= argument,
// the implicit MMDS V2, vsock, the agent image).
func TestKVMNetworkSpecOnRealBinaries(t *testing.T) {
	nstest.RequireRoot(t)
	kernel := guesttest.Kernel(t)
	bins := guesttest.Firecrackers(t)
	rootfs := guesttest.Image(t)
	for _, v := range guesttest.Versions(bins) {
		t.Run(v, func(t *testing.T) {
			w := kvmWorld(t, bins[v])
			ctx := ctxT(t)
			vm, err := w.rt.Create(ctx, "net", netGuestSpec(kernel, rootfs))
			if err != nil {
				t.Fatalf("Create with firecracker %s: %v", v, err)
			}
			sameNetNS(t, vm.Backend.PID, vm.Backend.Network.NetNS)
			cfg := vmConfig(t, vm)
			wantArg := "ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off"
			if cfg.BootSource == nil || !strings.HasSuffix(cfg.BootSource.BootArgs, " "+wantArg) {
				t.Errorf("boot args = %+v, want them to end with %q", cfg.BootSource, wantArg)
			}
			if len(cfg.NetworkInterfaces) != 1 || cfg.NetworkInterfaces[0].HostDevName != network.TAPName {
				t.Errorf("network interfaces = %+v", cfg.NetworkInterfaces)
			}
			if cfg.MMDSConfig == nil || cfg.MMDSConfig.Version != "V2" {
				t.Errorf("mmds-config = %+v, want V2", cfg.MMDSConfig)
			}
			if _, err := w.rt.Destroy(ctx, "net"); err != nil {
				t.Fatalf("Destroy: %v", err)
			}
		})
	}
}

func TestKVMNetwork(t *testing.T) {
	guesttest.RequireKVM(t)
	nstest.RequireRoot(t)
	kernel := guesttest.Kernel(t)
	bins := guesttest.Firecrackers(t)
	rootfs := guesttest.Image(t)
	for _, v := range guesttest.Versions(bins) {
		t.Run(v, func(t *testing.T) { testKVMNetwork(t, bins[v], kernel, rootfs) })
	}
}

// upstream is ip:port of the upstream server (nstest.Serve).
func upstream(ip string) string { return net.JoinHostPort(ip, nstest.Port) }

// mustDial makes the guest connect to dst and expects the upstream server's
// answer: the source address it saw, the host's egress address (NAT).
func mustDial(t *testing.T, ctx context.Context, c *agent.Client, dst string) {
	t.Helper()
	r, err := c.Dial(ctx, agent.DialArgs{Addr: dst, Recv: true, TimeoutMS: 5000})
	if err != nil {
		t.Fatalf("dial op to %s: %v", dst, err)
	}
	if !r.OK || r.Reply != nstest.HostEgressIP {
		t.Fatalf("guest to %s: %+v; want an answer saying the source was %s (NAT)", dst, r, nstest.HostEgressIP)
	}
}

// mustBeDropped makes the guest connect to dst and expects a timeout: the
// firewall drops the packets (a reject or a route error would not time
// out).
func mustBeDropped(t *testing.T, ctx context.Context, c *agent.Client, dst string) {
	t.Helper()
	r, err := c.Dial(ctx, agent.DialArgs{Addr: dst, Recv: true, TimeoutMS: 1500})
	if err != nil {
		t.Fatalf("dial op to %s: %v", dst, err)
	}
	if r.OK || !r.Timeout {
		t.Fatalf("guest to %s: %+v; want the connection dropped (a timeout)", dst, r)
	}
}

func testKVMNetwork(t *testing.T, bin, kernel, rootfs string) {
	w := kvmWorld(t, bin)
	srv := nstest.Serve(t, w.env.Up, nstest.UpstreamIP, nstest.UpstreamPriv, nstest.UpstreamCGNAT)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	vm, err := w.rt.Create(ctx, "net", netGuestSpec(kernel, rootfs))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if _, err := w.rt.Start(ctx, "net"); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := guesttest.WaitConsole(ctx, w.rt, "net", agent.ReadyMarker); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"IP-Config: Complete", "mvm-agent: network: eth0 up with " + network.GuestIP.String() + "/30, default via " + network.GatewayIP.String()} {
		if ok, err := guesttest.ConsoleHas(ctx, w.rt, "net", want); err != nil || !ok {
			t.Errorf("console has no %q (%v)", want, err)
		}
	}
	c, err := guesttest.DialAgent(ctx, w.rt, "net")
	if err != nil {
		t.Fatalf("vsock: %v", err)
	}
	defer c.Close()

	// MMDS from inside the guest: the runtime's facts, with a V2 token.
	m, err := c.MMDS(ctx, agent.MMDSArgs{Path: "/mvm/network", JSON: true})
	if err != nil || m.Status != 200 {
		t.Fatalf("mmds from the guest: %+v, %v", m, err)
	}
	for _, want := range []string{`"ip":"` + network.GuestIP.String() + `"`, `"host_ip":"` + vm.Backend.Network.HostIP + `"`} {
		if !strings.Contains(strings.ReplaceAll(m.Body, " ", ""), want) {
			t.Errorf("mmds body %s has no %s", m.Body, want)
		}
	}
	if m, err := c.MMDS(ctx, agent.MMDSArgs{Path: "/mvm/network", Version: "V1"}); err != nil || m.Status == 200 {
		t.Errorf("mmds V1 request to a V2 service = %+v, %v; want it refused", m, err)
	}

	// NAT and the default egress policy, with real guest packets.
	mustDial(t, ctx, c, upstream(nstest.UpstreamIP))
	mustBeDropped(t, ctx, c, upstream(nstest.UpstreamPriv))
	mustBeDropped(t, ctx, c, upstream(nstest.UpstreamCGNAT))
	if seen := srv.Seen(); len(seen) != 1 {
		t.Errorf("upstream heard from %v; want one connection (the allowed one)", seen)
	}
	// A live policy change: only the private address, tcp 7777.
	_, err = w.rt.SetEgressPolicy(ctx, "net", &microvm.EgressPolicy{
		DenyAll: true,
		Allow:   []microvm.EgressRule{{CIDR: netip.MustParsePrefix(nstest.UpstreamPriv + "/32"), Protocol: "tcp", FromPort: 7777}},
	})
	if err != nil {
		t.Fatalf("SetEgressPolicy: %v", err)
	}
	mustDial(t, ctx, c, upstream(nstest.UpstreamPriv))
	mustBeDropped(t, ctx, c, upstream(nstest.UpstreamIP))
	if _, err := w.rt.SetEgressPolicy(ctx, "net", nil); err != nil {
		t.Fatalf("SetEgressPolicy(default): %v", err)
	}
	if v, err := c.Counter(ctx); err != nil || v != 1 {
		t.Fatalf("counter = %d, %v; want 1", v, err)
	}
	c.Close()

	// Ten clones of one snapshot at once, each with its own network.
	if _, err := w.rt.Snapshot(ctx, "net", "net-snap", nil); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	const clones = 10
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, clones)
	hostIPs := make([]string, clones)
	for i := range clones {
		wg.Go(func() {
			id := fmt.Sprintf("clone-%d", i)
			vm, err := w.rt.Restore(ctx, id, "net-snap", nil)
			if err != nil {
				errs <- fmt.Errorf("Restore(%s): %w", id, err)
				return
			}
			hostIPs[i] = vm.Backend.Network.HostIP
			c, err := guesttest.DialAgent(ctx, w.rt, id)
			if err != nil {
				errs <- fmt.Errorf("%s: vsock: %w", id, err)
				return
			}
			defer c.Close()
			if v, err := c.Counter(ctx); err != nil || v != 2 {
				errs <- fmt.Errorf("%s: counter = %d, %v; want 2 (continued from the snapshot)", id, v, err)
				return
			}
			r, err := c.Dial(ctx, agent.DialArgs{Addr: upstream(nstest.UpstreamIP), Recv: true, TimeoutMS: 5000})
			if err != nil || !r.OK || r.Reply != nstest.HostEgressIP {
				errs <- fmt.Errorf("%s: guest to upstream = %+v, %v", id, r, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d clones restored and answering over vsock and the network in %s", clones, time.Since(start).Round(time.Millisecond))
	seen := map[string]bool{}
	for i, ip := range hostIPs {
		if ip == "" || seen[ip] {
			t.Errorf("clone-%d host address %q is empty or shared", i, ip)
		}
		seen[ip] = true
	}
	vms, err := w.rt.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	running := 0
	for _, vm := range vms {
		if vm.Status == microvm.StatusRunning {
			running++
		}
	}
	if running != clones+1 {
		t.Errorf("%d VMs running, want %d (the source and its clones, at once)", running, clones+1)
	}
}
