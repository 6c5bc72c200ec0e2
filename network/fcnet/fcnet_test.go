//go:build linux

package fcnet_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/network"
	"github.com/mvm-dev/microvm/network/fcnet"
)

func TestPolicy(t *testing.T) {
	p, err := fcnet.Policy(nil)
	if err != nil || p.DenyAll || len(p.Allow) != 0 {
		t.Fatalf("Policy(nil) = %+v, %v; want the zero Policy", p, err)
	}
	p, err = fcnet.Policy(&microvm.EgressPolicy{DenyAll: true, Allow: []microvm.EgressRule{
		{CIDR: netip.MustParsePrefix("10.1.2.0/24")},
		{CIDR: netip.MustParsePrefix("203.0.113.7/32"), Protocol: "tcp", FromPort: 443},
		{CIDR: netip.MustParsePrefix("0.0.0.0/0"), Protocol: "udp", FromPort: 5000, ToPort: 5010},
		{CIDR: netip.MustParsePrefix("192.0.2.0/24"), Protocol: "icmp"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := network.Policy{DenyAll: true, Allow: []network.Rule{
		{CIDR: netip.MustParsePrefix("10.1.2.0/24")},
		{CIDR: netip.MustParsePrefix("203.0.113.7/32"), Protocol: "tcp", Ports: network.PortRange{From: 443}},
		{CIDR: netip.MustParsePrefix("0.0.0.0/0"), Protocol: "udp", Ports: network.PortRange{From: 5000, To: 5010}},
		{CIDR: netip.MustParsePrefix("192.0.2.0/24"), Protocol: "icmp"},
	}}
	if fmt.Sprint(p) != fmt.Sprint(want) {
		t.Errorf("Policy = %+v\nwant %+v", p, want)
	}
	_, err = fcnet.Policy(&microvm.EgressPolicy{Allow: []microvm.EgressRule{{CIDR: netip.MustParsePrefix("2001:db8::/32")}}})
	if !errors.Is(err, microvm.ErrInvalidSpec) || !errors.Is(err, network.ErrInvalidPolicy) || !strings.Contains(err.Error(), "not IPv4") {
		t.Errorf("IPv6 rule: %v; want ErrInvalidSpec and ErrInvalidPolicy saying not IPv4", err)
	}
}

// TestLifecycle runs a VM with a managed interface through the Firecracker
// runtime and the stand-in: create (firecracker in the slot's namespace,
// opening the slot's TAP), start, live egress and rate-limit updates,
// stop and cold start, snapshot and three concurrent restores each in a
// slot of its own, destroy; nothing is left.
func TestLifecycle(t *testing.T) {
	for _, api := range []string{"v1.0", "latest"} {
		t.Run(api, func(t *testing.T) { testLifecycle(t, api) })
	}
}

func testLifecycle(t *testing.T, api string) {
	w := newWorldAPI(t, 0, api)
	ctx := ctxT(t)
	rt := w.rt

	vm, err := rt.Create(ctx, "web", testSpec(t))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	n := vm.Backend.Network
	if n == nil {
		t.Fatal("Create: VM.Backend.Network is empty")
	}
	if !strings.HasPrefix(n.NetNS, w.env.RunDir+"/"+testPrefix+"-") || n.TAP != network.TAPName ||
		n.GuestIP != network.GuestIP.String() || n.Gateway != network.GatewayIP.String() || n.GuestMAC != network.GuestMAC {
		t.Errorf("Backend.Network = %+v", *n)
	}
	if hip, err := netip.ParseAddr(n.HostIP); err != nil || !testPool.Contains(hip) {
		t.Errorf("HostIP %q is not in the pool %s", n.HostIP, testPool)
	}
	// The stand-in opened the TAP by name (TUNSETIFF) in the namespace it
	// was started in: the slot's, where tap0 exists.
	sameNetNS(t, vm.Backend.PID, n.NetNS)
	cfg := vmConfig(t, vm)
	if len(cfg.NetworkInterfaces) != 1 || cfg.NetworkInterfaces[0].HostDevName != network.TAPName ||
		!strings.EqualFold(cfg.NetworkInterfaces[0].GuestMAC, network.GuestMAC) {
		t.Errorf("network interfaces = %+v", cfg.NetworkInterfaces)
	}
	wantArg := "ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off"
	if cfg.BootSource == nil || !strings.HasSuffix(cfg.BootSource.BootArgs, " "+wantArg) {
		t.Errorf("boot args = %+v, want them to end with %q", cfg.BootSource, wantArg)
	}
	// No MMDS in the spec: MMDS V2 on the managed interface, with the facts.
	if cfg.MMDSConfig == nil || cfg.MMDSConfig.Version != "V2" || strings.Join(cfg.MMDSConfig.NetworkInterfaces, ",") != "eth0" {
		t.Errorf("mmds-config = %+v, want V2 on eth0", cfg.MMDSConfig)
	}
	checkFacts(t, vm, n.HostIP)

	if vm, err = rt.Start(ctx, "web"); err != nil || vm.Status != microvm.StatusRunning {
		t.Fatalf("Start: %v (%s)", err, vm.Status)
	}

	// Egress, live.
	pol := &microvm.EgressPolicy{DenyAll: true, Allow: []microvm.EgressRule{
		{CIDR: netip.MustParsePrefix("203.0.113.1/32"), Protocol: "udp", FromPort: 53},
	}}
	if vm, err = rt.SetEgressPolicy(ctx, "web", pol); err != nil {
		t.Fatalf("SetEgressPolicy: %v", err)
	}
	pol.Allow[0].FromPort = 99 // the runtime keeps its own copy
	if e := vm.Spec.Network[0].Egress; e == nil || !e.DenyAll || len(e.Allow) != 1 || e.Allow[0].FromPort != 53 {
		t.Errorf("spec egress after SetEgressPolicy = %+v", e)
	}
	var rec struct {
		Policy network.Policy `json:"policy"`
	}
	if err := w.reg.Get("netvm", "web", &rec); err != nil || !rec.Policy.DenyAll || len(rec.Policy.Allow) != 1 || rec.Policy.Allow[0].Ports.From != 53 {
		t.Errorf("the network's record of web: %+v, %v", rec, err)
	}
	_, err = rt.SetEgressPolicy(ctx, "web", &microvm.EgressPolicy{Allow: []microvm.EgressRule{{CIDR: netip.MustParsePrefix("10.0.0.0/8"), FromPort: 80}}})
	var se *microvm.SpecError
	if !errors.As(err, &se) || !se.Has("network[0].egress.allow[0].from_port") {
		t.Errorf("SetEgressPolicy with ports but no protocol: %v; want a SpecError naming network[0].egress.allow[0].from_port", err)
	}
	_, err = rt.SetEgressPolicy(ctx, "web", &microvm.EgressPolicy{Allow: []microvm.EgressRule{{CIDR: netip.MustParsePrefix("2001:db8::/32")}}})
	if !errors.Is(err, microvm.ErrInvalidSpec) {
		t.Errorf("SetEgressPolicy with an IPv6 rule: %v; want ErrInvalidSpec", err)
	}
	if got, _ := rt.Get(ctx, "web"); got.Spec.Network[0].Egress == nil || !got.Spec.Network[0].Egress.DenyAll {
		t.Errorf("a refused policy changed the spec: %+v", got.Spec.Network[0].Egress)
	}

	// Rate limits, live.
	mib := &microvm.TokenBucket{Size: 1 << 20, RefillTime: time.Second}
	vm, err = rt.UpdateRateLimits(ctx, "web", microvm.RateLimitUpdate{
		Drives:  map[string]microvm.LimiterUpdate{"rootfs": {Bandwidth: mib}},
		Network: map[string]microvm.NetLimiterUpdate{"eth0": {Tx: microvm.LimiterUpdate{Bandwidth: mib}}},
	})
	if err != nil {
		t.Fatalf("UpdateRateLimits: %v", err)
	}
	if rl := vm.Spec.RootDrive.RateLimiter; rl == nil || rl.Bandwidth == nil || rl.Bandwidth.Size != 1<<20 {
		t.Errorf("spec root drive limiter = %+v", rl)
	}
	cfg = vmConfig(t, vm)
	if rl := cfg.Drives[0].RateLimiter; rl == nil || rl.Bandwidth == nil || rl.Bandwidth.Size != 1<<20 || rl.Bandwidth.RefillTime != 1000 {
		t.Errorf("firecracker's root drive limiter = %+v", rl)
	}
	if rl := cfg.NetworkInterfaces[0].TxRateLimiter; rl == nil || rl.Bandwidth == nil || rl.Bandwidth.Size != 1<<20 {
		t.Errorf("firecracker's eth0 tx limiter = %+v", rl)
	}
	_, err = rt.UpdateRateLimits(ctx, "web", microvm.RateLimitUpdate{Drives: map[string]microvm.LimiterUpdate{"nope": {}}})
	if !errors.Is(err, microvm.ErrInvalidArgument) || !strings.Contains(err.Error(), `drive "nope"`) {
		t.Errorf("unknown drive: %v; want ErrInvalidArgument naming it", err)
	}

	// Stop and cold start: the same slot.
	if _, err := rt.Stop(ctx, "web", nil); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if vm, err = rt.Start(ctx, "web"); err != nil {
		t.Fatalf("Start after Stop: %v", err)
	}
	if vm.Backend.Network.HostIP != n.HostIP {
		t.Errorf("HostIP changed across a restart: %s -> %s", n.HostIP, vm.Backend.Network.HostIP)
	}
	sameNetNS(t, vm.Backend.PID, n.NetNS)
	if rl := vmConfig(t, vm).Drives[0].RateLimiter; rl == nil || rl.Bandwidth == nil || rl.Bandwidth.Size != 1<<20 {
		t.Errorf("root drive limiter after a restart = %+v", rl)
	}

	// Snapshot and three concurrent restores, each in its own slot.
	if _, err := rt.Snapshot(ctx, "web", "web-snap", nil); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	clones := []string{"c1", "c2", "c3"}
	views := make([]microvm.VM, len(clones))
	var wg sync.WaitGroup
	for i, id := range clones {
		wg.Go(func() {
			v, err := rt.Restore(ctx, id, "web-snap", nil)
			if err != nil {
				t.Errorf("Restore(%s): %v", id, err)
			}
			views[i] = v
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	seen := map[string]string{n.HostIP: "web"}
	for _, v := range views {
		cn := v.Backend.Network
		if cn == nil || v.Status != microvm.StatusRunning {
			t.Fatalf("clone %s: status %s, network %+v", v.ID, v.Status, cn)
		}
		if other, dup := seen[cn.HostIP]; dup {
			t.Errorf("clone %s has the HostIP %s of %s", v.ID, cn.HostIP, other)
		}
		seen[cn.HostIP] = v.ID
		sameNetNS(t, v.Backend.PID, cn.NetNS)
		if c := vmConfig(t, v); len(c.NetworkInterfaces) != 1 || c.NetworkInterfaces[0].HostDevName != network.TAPName {
			t.Errorf("clone %s: network interfaces %+v", v.ID, c.NetworkInterfaces)
		}
		if e := v.Spec.Network[0].Egress; e == nil || !e.DenyAll {
			t.Errorf("clone %s did not inherit the egress policy: %+v", v.ID, e)
		}
		var rec struct {
			Policy network.Policy `json:"policy"`
		}
		if err := w.reg.Get("netvm", v.ID, &rec); err != nil || !rec.Policy.DenyAll {
			t.Errorf("the network's record of %s: %+v, %v", v.ID, rec, err)
		}
		checkFacts(t, v, cn.HostIP)
	}

	for _, id := range append(clones, "web") {
		if _, err := rt.Destroy(ctx, id); err != nil {
			t.Fatalf("Destroy(%s): %v", id, err)
		}
	}
	w.checkNoSlots()
}

// checkFacts checks the guest's MMDS data holds the slot's facts under
// mvm.network.
func checkFacts(t testing.TB, vm microvm.VM, hostIP string) {
	t.Helper()
	var data struct {
		MVM struct {
			Network map[string]any `json:"network"`
		} `json:"mvm"`
	}
	if err := client(t, vm).MMDS(ctxT(t), &data); err != nil {
		t.Fatalf("GET /mmds of %s: %v", vm.ID, err)
	}
	f := data.MVM.Network
	if f["ip"] != network.GuestIP.String() || f["gateway"] != network.GatewayIP.String() || f["host_ip"] != hostIP ||
		f["mac"] != network.GuestMAC || f["interface"] != "eth0" || f["prefix_length"] != float64(30) {
		t.Errorf("MMDS facts of %s = %v", vm.ID, f)
	}
}

// TestMMDSMerge: with MMDS in the spec, the facts join the spec's data
// under mvm.network, and the spec's MMDS configuration is kept.
func TestMMDSMerge(t *testing.T) {
	w := newWorld(t, 0)
	ctx := ctxT(t)
	spec := testSpec(t)
	spec.MMDS = &microvm.MMDS{Version: "V1", Data: json.RawMessage(`{"app":{"role":"db"},"mvm":{"user":"kept","network":"replaced"}}`)}
	vm, err := w.rt.Create(ctx, "meta", spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	var data map[string]map[string]any
	if err := client(t, vm).MMDS(ctx, &data); err != nil {
		t.Fatal(err)
	}
	if data["app"]["role"] != "db" || data["mvm"]["user"] != "kept" {
		t.Errorf("the spec's data was not kept: %v", data)
	}
	checkFacts(t, vm, vm.Backend.Network.HostIP)
	if c := vmConfig(t, vm).MMDSConfig; c == nil || c.Version != "V1" {
		t.Errorf("mmds-config = %+v, want the spec's V1", c)
	}

	spec.MMDS.Data = json.RawMessage(`{"mvm":"not an object"}`)
	_, err = w.rt.Create(ctx, "meta2", spec)
	var se *microvm.SpecError
	if !errors.As(err, &se) || !se.Has("mmds.data") {
		t.Errorf("Create with a non-object mvm key: %v; want a SpecError naming mmds.data", err)
	}
}

// TestOpenCleansUp: a runtime opened with the network removes the slots of
// VMs it does not know, and a runtime without networking refuses to
// destroy a VM that holds a slot rather than leak it.
func TestOpenCleansUp(t *testing.T) {
	w := newWorld(t, 0)
	ctx := ctxT(t)
	if _, err := w.rt.Create(ctx, "kept", testSpec(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := w.m.Setup(ctx, "ghost", network.Options{}); err != nil {
		t.Fatal(err)
	}
	rt2 := w.open(fcnet.New(w.m))
	defer rt2.Close()
	if _, err := w.m.Slot("ghost"); !errors.Is(err, network.ErrNotFound) {
		t.Errorf("the slot of a VM without a record survived Open: %v", err)
	}
	if _, err := w.m.Slot("kept"); err != nil {
		t.Errorf("the slot of a live VM was removed by Open: %v", err)
	}

	bare := w.open(nil)
	defer bare.Close()
	if _, err := bare.Destroy(ctx, "kept"); !errors.Is(err, microvm.ErrUnsupported) || !errors.Is(err, firecracker.ErrNoNetwork) {
		t.Errorf("Destroy without networking: %v; want ErrUnsupported and ErrNoNetwork", err)
	}
	if _, err := bare.SetEgressPolicy(ctx, "kept", nil); !errors.Is(err, microvm.ErrUnsupported) {
		t.Errorf("SetEgressPolicy without networking: %v; want ErrUnsupported", err)
	}
	if vm, err := bare.Get(ctx, "kept"); err != nil || vm.Backend.PID == 0 {
		t.Errorf("the VM after a refused Destroy: %+v, %v", vm, err)
	}
}

// TestCreateFailureReleasesSlot: a Create that fails after the network was
// attached (firecracker refuses a second interface: "lo" is no TAP) leaves
// no slot, and the error is firecracker's.
func TestCreateFailureReleasesSlot(t *testing.T) {
	w := newWorld(t, 0)
	spec := testSpec(t)
	spec.Network = append(spec.Network, microvm.NetworkInterface{HostDevName: "lo"})
	_, err := w.rt.Create(ctxT(t), "bad", spec)
	if !errors.Is(err, microvm.ErrBackend) || !strings.Contains(err.Error(), "Invalid TUN/TAP Backend provided by lo") {
		t.Fatalf("Create: %v; want firecracker's refusal of lo", err)
	}
	w.checkNoSlots()
}
