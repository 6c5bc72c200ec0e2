package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/internal/fcstandin"
	"github.com/mvm-dev/microvm/network"
)

func TestParseEgressRule(t *testing.T) {
	for in, want := range map[string]microvm.EgressRule{
		"10.1.2.0/24":                  {CIDR: netip.MustParsePrefix("10.1.2.0/24")},
		"203.0.113.7":                  {CIDR: netip.MustParsePrefix("203.0.113.7/32")},
		"0.0.0.0/0,any":                {CIDR: netip.MustParsePrefix("0.0.0.0/0")},
		"192.0.2.0/24,ICMP":            {CIDR: netip.MustParsePrefix("192.0.2.0/24"), Protocol: "icmp"},
		"203.0.113.7/32,tcp,443":       {CIDR: netip.MustParsePrefix("203.0.113.7/32"), Protocol: "tcp", FromPort: 443},
		"203.0.113.0/24,udp,5000-5010": {CIDR: netip.MustParsePrefix("203.0.113.0/24"), Protocol: "udp", FromPort: 5000, ToPort: 5010},
	} {
		got, err := parseEgressRule("--allow", in)
		if err != nil || got != want {
			t.Errorf("parseEgressRule(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "10.0.0.0", "10.0.0.0/33", "x", "10.0.0.0/8,sctp", "10.0.0.0/8,tcp,0", "10.0.0.0/8,tcp,70000", "10.0.0.0/8,tcp,1-x", "10.0.0.0/8,tcp,1,2"} {
		if in == "10.0.0.0" {
			continue // a bare address is fine
		}
		_, err := parseEgressRule("--allow", in)
		var u *usageError
		if !errors.As(err, &u) || !strings.Contains(err.Error(), "--allow") {
			t.Errorf("parseEgressRule(%q) = %v; want a usage error naming --allow", in, err)
		}
	}
}

func TestParseRate(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "1000": 1000, "10k": 10 << 10, "50M": 50 << 20, "2G": 2 << 30} {
		b, err := parseRate("--drive", in)
		got := int64(-1)
		if b != nil {
			got = b.Size
			if got > 0 && b.RefillTime != time.Second {
				t.Errorf("parseRate(%q): refill %s, want 1s", in, b.RefillTime)
			}
		}
		if err != nil || got != want {
			t.Errorf("parseRate(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5M", "10T", "M", "99999999999G"} {
		if _, err := parseRate("--rx", in); err == nil || !strings.Contains(err.Error(), "--rx") {
			t.Errorf("parseRate(%q) = %v; want an error naming --rx", in, err)
		}
	}
}

func TestRateUpdate(t *testing.T) {
	spec := microvm.Spec{
		RootDrive: microvm.Drive{ID: "rootfs"},
		Network:   []microvm.NetworkInterface{{ID: "ext", HostDevName: "tap1"}, {ID: "eth0"}},
	}
	u, err := rateUpdate(spec, []string{"rootfs:1M"}, []string{"2M"}, []string{"ext:0"})
	if err != nil {
		t.Fatal(err)
	}
	// Only the bandwidth buckets change: the runtime keeps the others.
	if d := u.Drives["rootfs"]; d.Bandwidth == nil || d.Bandwidth.Size != 1<<20 || d.Ops != nil {
		t.Errorf("rootfs: %+v (want 1 MiB/s, ops left alone)", d)
	}
	if n := u.Network["eth0"]; n.Rx.Bandwidth == nil || n.Rx.Bandwidth.Size != 2<<20 || n.Tx.Bandwidth != nil || n.Rx.Ops != nil {
		t.Errorf("eth0 (the managed interface, by default): %+v", n)
	}
	if n := u.Network["ext"]; n.Tx.Bandwidth == nil || n.Tx.Bandwidth.Size != 0 || n.Rx.Bandwidth != nil {
		t.Errorf("ext: %+v (want tx bandwidth removed: a size-0 bucket)", n)
	}
	spec.Network = append(spec.Network[:1], microvm.NetworkInterface{ID: "ext2", HostDevName: "tap2"})
	if _, err := rateUpdate(spec, nil, nil, []string{"1M"}); err == nil || !strings.Contains(err.Error(), "IFACE:RATE") {
		t.Errorf("--tx without an interface on a VM with two unmanaged ones: %v", err)
	}
	if _, err := rateUpdate(spec, []string{"1M"}, nil, nil); err == nil || !strings.Contains(err.Error(), "ID:RATE") {
		t.Errorf("--drive without an id: %v", err)
	}
}

func TestNetUsageErrors(t *testing.T) {
	t.Setenv("MVM_EGRESS_IFACE", "")
	for _, args := range [][]string{
		{"create", "x", "--kernel", "k", "--rootfs", "r", "--egress-deny-all"},
		{"create", "x", "--kernel", "k", "--rootfs", "r", "--net"},
		{"create", "x", "--kernel", "k", "--rootfs", "r", "--net", "--egress-allow", "nope", "--egress-iface", "eth0"},
		{"--egress-iface", "eth0", "--net-pool", "bogus", "ls"},
		{"--egress-iface", "eth0", "--net-pool", "2001:db8::/64", "ls"},
		{"--egress-iface", "eth0", "--net-pool-size", "-1", "ls"},
		{"egress", "x", "--allow", "10.0.0.0/8,tcp,0"},
		{"egress", "x"},
		{"ratelimit", "x"},
	} {
		code, _, stderr := mvm(t, args...)
		if code != 2 {
			t.Errorf("mvm %q: exit %d, want 2 (stderr %q)", args, code, stderr)
		}
	}
}

// netCLI runs mvm, with the stand-in firecracker, in a test host
// namespace whose egress interface "uplink" is wired to an upstream
// namespace; the kernel, root file system, state and run directories are
// its own.
type netCLI struct {
	t                                           *testing.T
	tmp, bin, fc, kernel, rootfs, state, runDir string
	host                                        int
}

func newNetCLI(t *testing.T) *netCLI {
	tmp := t.TempDir()
	nc := &netCLI{t: t, tmp: tmp, bin: buildMVM(t, tmp), fc: filepath.Join(tmp, "firecracker"),
		kernel: filepath.Join(tmp, "vmlinux"), rootfs: filepath.Join(tmp, "rootfs.ext4"),
		state: filepath.Join(tmp, "state"), runDir: filepath.Join(tmp, "run")}
	script := fmt.Sprintf("#!/bin/sh\nexport FCSTANDIN_SPEC_DIR='%s'\nexec '%s' \"$@\"\n", fcstandin.SpecDir(t), fcstandin.Build(t))
	if err := os.WriteFile(nc.fc, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(nc.kernel, []byte("\x7fELF stand-in kernel"), 0o644)
	os.WriteFile(nc.rootfs, make([]byte, 1<<20), 0o644)

	host, up := newNetNS(t), newNetNS(t)
	wireUplink(t, host, up)
	nc.host = host
	t.Cleanup(func() {
		if ok, _ := isMountPoint(nc.runDir); ok {
			unix.Unmount(nc.runDir, unix.MNT_DETACH)
		}
	})
	return nc
}

// try runs mvm in the host namespace with the network settings and JSON
// output.
func (nc *netCLI) try(args ...string) (stdout, stderr string, err error) {
	nc.t.Helper()
	all := append([]string{"--state-dir", nc.state, "--firecracker-bin", nc.fc, "--egress-iface", "uplink", "--net-run-dir", nc.runDir, "-o", "json"}, args...)
	cmd := exec.Command(nc.bin, all...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := startIn(nc.host, cmd); err != nil {
		nc.t.Fatalf("start mvm %q: %v", args, err)
	}
	err = cmd.Wait()
	return out.String(), errb.String(), err
}

// noneLeft checks that no VM network is left: no namespace in the run
// directory, no link of mvm's and no nftables table in the host namespace.
func (nc *netCLI) noneLeft() {
	t := nc.t
	t.Helper()
	if ents, _ := os.ReadDir(nc.runDir); len(ents) > 0 {
		t.Errorf("namespaces left in %s: %v", nc.runDir, ents)
	}
	withHandle(t, nc.host, func(h *netlink.Handle) {
		ls, _ := h.LinkList()
		for _, l := range ls {
			if strings.HasPrefix(l.Attrs().Name, network.DefaultNamePrefix) {
				t.Errorf("link left in the host namespace: %s", l.Attrs().Name)
			}
		}
	})
	c, err := nftables.New(nftables.WithNetNSFd(nc.host))
	if err != nil {
		t.Fatal(err)
	}
	if ts, err := c.ListTables(); err != nil || len(ts) > 0 {
		t.Errorf("nftables tables left in the host namespace: %d, %v", len(ts), err)
	}
}

// TestNetworkCLI runs separate mvm processes, each in a test host
// namespace wired to an "upstream" namespace: create a VM with --net,
// inspect it, start it, change its egress policy and its rate limits live,
// remove it, and find nothing left.
func TestNetworkCLI(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (network namespaces, TAP devices, nftables)")
	}
	nc := newNetCLI(t)
	tmp, mvmBin, kernel, rootfs, host, state, runDir := nc.tmp, nc.bin, nc.kernel, nc.rootfs, nc.host, nc.state, nc.runDir

	run := func(args ...string) (string, string) {
		t.Helper()
		out, errs, err := nc.try(args...)
		if err != nil {
			t.Fatalf("mvm %q: %v\n%s", args, err, errs)
		}
		return out, errs
	}
	decode := func(s string) microvm.VM {
		t.Helper()
		var vm microvm.VM
		if err := json.Unmarshal([]byte(s), &vm); err != nil {
			t.Fatalf("not a VM: %v\n%s", err, s)
		}
		return vm
	}

	vm := decode(first(run("create", "web", "--kernel", kernel, "--rootfs", rootfs, "--net", "--egress-allow", "203.0.113.1,udp,53")))
	n := vm.Backend.Network
	if n == nil || !strings.HasPrefix(n.NetNS, runDir+"/mvm-") || n.TAP != network.TAPName || n.GuestIP != network.GuestIP.String() {
		t.Fatalf("create: backend.network = %+v", n)
	}
	if hip, err := netip.ParseAddr(n.HostIP); err != nil || !network.DefaultPool.Contains(hip) {
		t.Errorf("host_ip %q is not in the default pool", n.HostIP)
	}
	var a, b unix.Stat_t
	if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", vm.Backend.PID), &a) != nil || unix.Stat(n.NetNS, &b) != nil || a.Ino != b.Ino {
		t.Errorf("firecracker (pid %d) does not run in the VM's namespace %s", vm.Backend.PID, n.NetNS)
	}

	vm = decode(first(run("inspect", "web")))
	if vm.Backend.Network == nil || *vm.Backend.Network != *n {
		t.Errorf("inspect: backend.network = %+v, want %+v", vm.Backend.Network, n)
	}
	if e := vm.Spec.Network[0].Egress; e == nil || len(e.Allow) != 1 || e.Allow[0].CIDR.String() != "203.0.113.1/32" || e.Allow[0].FromPort != 53 {
		t.Errorf("inspect: egress = %+v", e)
	}
	run("start", "web")

	vm = decode(first(run("egress", "web", "--deny-all", "--allow", "203.0.113.0/24,tcp,443-444")))
	if e := vm.Spec.Network[0].Egress; e == nil || !e.DenyAll || len(e.Allow) != 1 || e.Allow[0].ToPort != 444 {
		t.Errorf("egress: spec egress = %+v", e)
	}
	reg, err := network.OpenStore(filepath.Join(state, "network"))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	var rec struct {
		Policy network.Policy `json:"policy"`
	}
	if err := reg.Get("netvm", "web", &rec); err != nil || !rec.Policy.DenyAll || len(rec.Policy.Allow) != 1 || rec.Policy.Allow[0].Ports.To != 444 {
		t.Errorf("the network's record after egress: %+v, %v", rec, err)
	}

	vm = decode(first(run("ratelimit", "web", "--drive", "rootfs:1M", "--tx", "2M")))
	if rl := vm.Spec.RootDrive.RateLimiter; rl == nil || rl.Bandwidth == nil || rl.Bandwidth.Size != 1<<20 {
		t.Errorf("ratelimit: root drive limiter = %+v", rl)
	}
	if rl := vm.Spec.Network[0].TxRateLimiter; rl == nil || rl.Bandwidth == nil || rl.Bandwidth.Size != 2<<20 {
		t.Errorf("ratelimit: tx limiter = %+v", rl)
	}

	// rename: the stopped VM keeps its network (namespace, address,
	// policy) under its new name; the old name gets a network of its own.
	run("stop", "web")
	vm = decode(first(run("rename", "web", "api")))
	if vm.ID != "api" || vm.Backend.Network == nil || *vm.Backend.Network != *n {
		t.Fatalf("rename: %s, backend.network = %+v, want %+v", vm.ID, vm.Backend.Network, n)
	}
	rec.Policy = network.Policy{}
	if err := reg.Get("netvm", "api", &rec); err != nil || !rec.Policy.DenyAll || len(rec.Policy.Allow) != 1 {
		t.Errorf("the network's record after rename: %+v, %v", rec, err)
	}
	if err := reg.Get("netvm", "web", &rec); !errors.Is(err, network.ErrRecordNotFound) {
		t.Errorf("the network's record of the old name: %v", err)
	}
	vm = decode(first(run("egress", "api", "--allow", "198.51.100.0/24")))
	rec.Policy = network.Policy{}
	if err := reg.Get("netvm", "api", &rec); err != nil || rec.Policy.DenyAll || len(rec.Policy.Allow) != 1 || rec.Policy.Allow[0].CIDR.String() != "198.51.100.0/24" {
		t.Errorf("the network's record after egress of the new name: %+v, %v", rec, err)
	}
	vm = decode(first(run("start", "api")))
	if unix.Stat(fmt.Sprintf("/proc/%d/ns/net", vm.Backend.PID), &a) != nil || unix.Stat(n.NetNS, &b) != nil || a.Ino != b.Ino {
		t.Errorf("renamed VM's firecracker (pid %d) does not run in its namespace %s", vm.Backend.PID, n.NetNS)
	}
	rootfs2 := filepath.Join(tmp, "rootfs2.ext4")
	os.WriteFile(rootfs2, make([]byte, 1<<20), 0o644)
	again := decode(first(run("create", "web", "--kernel", kernel, "--rootfs", rootfs2, "--net")))
	if an := again.Backend.Network; an == nil || an.HostIP == n.HostIP || an.NetNS == n.NetNS {
		t.Errorf("a new VM under the old name: backend.network = %+v, want one of its own", an)
	}
	run("rm", "web")

	// The state directory remembers the network settings: a command with
	// another egress interface is refused (it would leak the VM's
	// network), and rm with no flag but --state-dir removes the VM's.
	cmd := exec.Command(mvmBin, "--state-dir", state, "--egress-iface", "eth9", "rm", "api")
	cmd.Env = append(os.Environ(), "MVM_EGRESS_IFACE=")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "mvm config set egress-iface eth9") {
		t.Errorf("rm with another --egress-iface: %v: %s", err, out)
	}
	// Nor can the setting change under the VM.
	cmd = exec.Command(mvmBin, "--state-dir", state, "config", "set", "egress-iface", "eth9")
	cmd.Env = append(os.Environ(), "MVM_EGRESS_IFACE=")
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := startIn(host, cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil || !strings.Contains(errb.String(), "destroy them first") {
		t.Errorf("config set egress-iface with a networked VM: %v: %s", err, errb.String())
	}
	cmd = exec.Command(mvmBin, "--state-dir", state, "rm", "api")
	cmd.Env = append(os.Environ(), "MVM_EGRESS_IFACE=", "MVM_FIRECRACKER_BIN=")
	errb.Reset()
	cmd.Stderr = &errb
	if err := startIn(host, cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("rm with no flag but --state-dir: %v: %s", err, errb.String())
	}
	nc.noneLeft()
	for _, kind := range []string{"netlease", "netvm"} {
		if ids, err := reg.List(kind); err != nil || len(ids) > 0 {
			t.Errorf("%s records left: %v, %v", kind, ids, err)
		}
	}
}

func first(a, _ string) string { return a }

// buildMVM builds this command into dir.
func buildMVM(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "mvm")
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		gobin = "go"
	}
	if out, err := exec.Command(gobin, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// newNetNS creates a network namespace, held by a descriptor that is
// closed (and the namespace with it, once empty) at cleanup.
func newNetNS(t *testing.T) int {
	t.Helper()
	type res struct {
		fd  int
		err error
	}
	c := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			c <- res{err: err}
			return
		}
		defer unix.Close(orig)
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			c <- res{err: err}
			return
		}
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if serr := unix.Setns(orig, unix.CLONE_NEWNET); serr != nil {
			c <- res{err: errors.Join(err, serr)} // stays locked: the thread ends
			return
		}
		runtime.UnlockOSThread()
		c <- res{fd, err}
	}()
	r := <-c
	if r.err != nil {
		t.Fatalf("new network namespace: %v", r.err)
	}
	t.Cleanup(func() { unix.Close(r.fd) })
	return r.fd
}

func withHandle(t *testing.T, ns int, fn func(h *netlink.Handle)) {
	t.Helper()
	h, err := netlink.NewHandleAt(netns.NsHandle(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	fn(h)
}

// wireUplink links host and up with a veth pair: host "uplink"
// 203.0.113.2/24 with a default route via up's "eth0" 203.0.113.1/24.
func wireUplink(t *testing.T, host, up int) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("wire the uplink: %v", err)
		}
	}
	withHandle(t, host, func(h *netlink.Handle) {
		must(h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "uplink"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(up)}))
		l, err := h.LinkByName("uplink")
		must(err)
		addr, _ := netlink.ParseAddr("203.0.113.2/24")
		must(h.AddrAdd(l, addr))
		must(h.LinkSetUp(l))
		lo, err := h.LinkByName("lo")
		must(err)
		must(h.LinkSetUp(lo))
		must(h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP("203.0.113.1").To4(),
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}))
	})
	withHandle(t, up, func(h *netlink.Handle) {
		l, err := h.LinkByName("eth0")
		must(err)
		addr, _ := netlink.ParseAddr("203.0.113.1/24")
		must(h.AddrAdd(l, addr))
		must(h.LinkSetUp(l))
	})
}

// startIn starts cmd from a thread switched into the namespace ns, so the
// process is born there.
func startIn(ns int, cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		err = cmd.Start()
		if serr := unix.Setns(orig, unix.CLONE_NEWNET); serr != nil {
			errc <- errors.Join(err, serr) // stays locked: the thread ends
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// isMountPoint reports whether dir is a mount point of this process.
func isMountPoint(dir string) (bool, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true, nil
		}
	}
	return false, nil
}

// TestNetworkCLIEgressGone: with the egress interface gone (a NIC
// unplugged), ls, inspect, stop and rm of a networked VM still work, with
// at most a one-line warning, and rm leaves nothing; create --net says
// that the interface is missing.
func TestNetworkCLIEgressGone(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (network namespaces, TAP devices, nftables)")
	}
	nc := newNetCLI(t)
	tmp, mvmBin, kernel, rootfs, host, state := nc.tmp, nc.bin, nc.kernel, nc.rootfs, nc.host, nc.state
	try := nc.try
	gone := false // the egress interface is gone: a warning is due
	run := func(args ...string) string {
		t.Helper()
		out, errs, err := try(args...)
		if err != nil {
			t.Fatalf("mvm %q: %v\n%s", args, err, errs)
		}
		if n := strings.Count(strings.TrimSpace(errs), "\n"); n > 0 {
			t.Errorf("mvm %q: more than a one-line warning:\n%s", args, errs)
		}
		if warned := strings.Contains(errs, "warning: egress interface uplink is missing"); warned != gone {
			t.Errorf("mvm %q with the egress interface gone=%v: stderr %q", args, gone, errs)
		}
		return out
	}
	run("create", "web", "--kernel", kernel, "--rootfs", rootfs, "--net")
	run("start", "web")

	withHandle(t, host, func(h *netlink.Handle) {
		l, err := h.LinkByName("uplink")
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkDel(l); err != nil {
			t.Fatal(err)
		}
	})
	gone = true

	if !strings.Contains(run("ls"), `"web"`) {
		t.Error("ls does not list web")
	}
	if vm := run("inspect", "web"); !strings.Contains(vm, `"running"`) {
		t.Errorf("inspect web: %s", vm)
	}
	rootfs2 := filepath.Join(tmp, "rootfs2.ext4")
	os.WriteFile(rootfs2, make([]byte, 1<<20), 0o644)
	_, errs, err := try("create", "db", "--kernel", kernel, "--rootfs", rootfs2, "--net")
	if err == nil || !strings.Contains(errs, `--egress-iface uplink: no interface "uplink" in the host namespace`) ||
		!strings.HasSuffix(strings.TrimSpace(errs), "egress interface missing") {
		t.Errorf("create --net with the egress interface gone: %v: %s", err, errs)
	}
	if out := run("ls"); strings.Contains(out, `"db"`) {
		t.Errorf("the failed create left db: %s", out)
	}
	run("stop", "web")
	run("rm", "web")

	nc.noneLeft()
	// With no VM network left, the setting can move to another interface.
	cmd := exec.Command(mvmBin, "--state-dir", state, "config", "set", "egress-iface", "lo")
	cmd.Env = append(os.Environ(), "MVM_EGRESS_IFACE=")
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := startIn(host, cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("config set egress-iface once the VMs are gone: %v: %s", err, errb.String())
	}
	reg, err := network.OpenStore(filepath.Join(state, "network"))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	for _, kind := range []string{"netlease", "netvm", "nethost"} {
		if ids, err := reg.List(kind); err != nil || len(ids) > 0 {
			t.Errorf("%s records left: %v, %v", kind, ids, err)
		}
	}
}
