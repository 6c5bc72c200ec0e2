package firecracker_test

// The Firecracker runtime against each real Firecracker build in
// ../shared/firecracker (internal/realfc): everything Firecracker does
// before InstanceStart, with the real binary as the referee. Without
// /dev/kvm InstanceStart fails; the tests then check that it fails cleanly.
// With KVM they skip the "Start fails" checks (the KVM suite boots).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/fcapi"
	"github.com/mvm-dev/microvm/firecracker"
	"github.com/mvm-dev/microvm/internal/realfc"
)

// eachReal runs fn as a parallel subtest on each real binary.
func eachReal(t *testing.T, fn func(t *testing.T, b realfc.Binary)) {
	for _, b := range realfc.Binaries(t) {
		t.Run(b.Name(), func(t *testing.T) {
			t.Parallel()
			fn(t, b)
		})
	}
}

// realRuntime opens a runtime running the real binary b over a fresh state
// directory; at the end of the test it destroys every VM, closes the
// runtime and checks that no process is left.
func realRuntime(t *testing.T, b realfc.Binary, mod ...func(*firecracker.Config)) (*firecracker.Runtime, string) {
	t.Helper()
	state := t.TempDir()
	rt := open(t, state, b.Path, mod...)
	t.Cleanup(func() {
		destroyAll(t, rt)
		rt.Close()
		if pids := procsUnder(state); len(pids) > 0 {
			t.Errorf("processes left under %s: %v", state, pids)
		}
	})
	return rt, state
}

// realSpec is a small valid spec booting the real guest kernel.
func realSpec(t *testing.T) microvm.Spec {
	s := testSpec(t)
	s.Kernel = realfc.Kernel(t)
	s.MemoryMiB = 128
	return s
}

// apiGet is GET path on a firecracker API socket with a plain HTTP client
// (not fcapi: the answer is the referee's, undecoded), decoded into out.
func apiGet(t *testing.T, sock, path string, out any) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://localhost" + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", path, resp.Status, body)
	}
	if err := json.Unmarshal(body, out); err != nil {
		t.Fatalf("GET %s: %v in %s", path, err, body)
	}
}

// wantBackendMessage fails unless err carries a *microvm.BackendError from
// step whose fault message (the real binary's own words) contains part.
func wantBackendMessage(t *testing.T, err error, step, part string) {
	t.Helper()
	var be *microvm.BackendError
	if !errors.As(err, &be) {
		t.Fatalf("error %v carries no *microvm.BackendError", err)
	}
	if be.Op != step || !strings.Contains(be.Message, part) {
		t.Errorf("BackendError{Op: %q, Message: %q}, want Op %q and a message containing %q", be.Op, be.Message, step, part)
	}
	if !errors.Is(err, microvm.ErrBackend) {
		t.Errorf("error %v does not match ErrBackend", err)
	}
}

// TestRealEveryFeature creates a VM using every Spec feature on each real
// binary and checks, through the binary's own API, log and sockets, what
// firecracker got.
func TestRealEveryFeature(t *testing.T) {
	eachReal(t, func(t *testing.T, b realfc.Binary) {
		for _, mmdsVersion := range []string{"V1", "V2"} {
			t.Run("MMDS"+mmdsVersion, func(t *testing.T) {
				fn := newFakeNet(t)
				rt, _ := realRuntime(t, b, func(c *firecracker.Config) { c.Network = fn; c.Metrics = true })
				checkEveryFeature(t, b, rt, mmdsVersion)
			})
		}
	})
}

func checkEveryFeature(t *testing.T, b realfc.Binary, rt *firecracker.Runtime, mmdsVersion string) {
	ctx := t.Context()
	dir := t.TempDir()
	file := func(name string, size int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, size), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bucket := func(size int64) *microvm.TokenBucket {
		return &microvm.TokenBucket{Size: size, OneTimeBurst: 2 * size, RefillTime: 250 * time.Millisecond}
	}
	spec := microvm.Spec{
		Kernel:   realfc.Kernel(t),
		BootArgs: "console=ttyS0 reboot=k panic=1 mvm.test=every-feature",
		RootDrive: microvm.Drive{Path: file("rootfs.ext4", 1<<20),
			RateLimiter: &microvm.RateLimiter{Bandwidth: bucket(1 << 20), Ops: bucket(100)}},
		Drives: []microvm.Drive{
			{ID: "data", Path: file("data.img", 1<<20), RateLimiter: &microvm.RateLimiter{Ops: bucket(50)}},
			{ID: "ro", Path: file("ro.img", 1<<20), ReadOnly: true},
		},
		VCPUs: 2, MemoryMiB: 128, SMT: true, TrackDirtyPages: true,
		Network: []microvm.NetworkInterface{
			{ID: "mgmt", Egress: &microvm.EgressPolicy{DenyAll: true}},
			{ID: "ext", HostDevName: "ext0", GuestMAC: "06:00:ac:10:00:02",
				RxRateLimiter: &microvm.RateLimiter{Bandwidth: bucket(1 << 16)},
				TxRateLimiter: &microvm.RateLimiter{Ops: bucket(1000)}},
		},
		Vsock: &microvm.Vsock{CID: 42},
		MMDS: &microvm.MMDS{Version: mmdsVersion, Interfaces: []string{"ext"},
			Data: json.RawMessage(`{"latest":{"meta-data":{"instance-id":"i-every"}}}`)},
		Labels: map[string]string{"suite": "realbin"},
	}
	// Huge pages (from v1.7) with MMDS V2, an initrd with V1: v1.7
	// refuses the two together (see TestRealFaults).
	if mmdsVersion == "V2" && b.AtLeast(1, 7) {
		spec.HugePages = microvm.HugePages2M
	} else {
		spec.Initrd = file("initrd.img", 4096)
	}
	vm, err := rt.Create(ctx, "every", spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if vm.Status != microvm.StatusCreated || vm.Backend.PID == 0 || !strings.HasPrefix(vm.Backend.Version, b.Version) {
		t.Errorf("created VM: status %s, pid %d, version %q; want created, a process, version %s", vm.Status, vm.Backend.PID, vm.Backend.Version, b.Version)
	}

	var info fcapi.InstanceInfo
	apiGet(t, vm.Backend.APISocket, "/", &info)
	if info.ID != "every" || info.State != "Not started" || !strings.HasPrefix(info.VMMVersion, b.Version) {
		t.Errorf("GET / = %+v, want id every, Not started, version %s", info, b.Version)
	}
	var cfg fcapi.FullVMConfig
	apiGet(t, vm.Backend.APISocket, "/vm/config", &cfg)
	mc := cfg.MachineConfig
	if mc == nil || mc.VCPUCount != 2 || mc.MemSizeMiB != 128 || !mc.SMT || !mc.TrackDirtyPages {
		t.Errorf("machine-config = %+v, want 2 vCPUs, 128 MiB, smt, dirty-page tracking", mc)
	} else if spec.HugePages != "" && mc.HugePages != fcapi.HugePages2M {
		t.Errorf("machine-config huge_pages = %q, want 2M", mc.HugePages)
	}
	if bs := cfg.BootSource; bs == nil || bs.KernelImagePath != spec.Kernel || bs.InitrdPath != spec.Initrd ||
		!strings.HasPrefix(bs.BootArgs, spec.BootArgs+" ") || !strings.HasSuffix(bs.BootArgs, "ip=fake") {
		t.Errorf("boot-source = %+v, want the spec's kernel, initrd and boot args plus the network's", bs)
	}
	var drives []string
	for _, d := range cfg.Drives {
		rl := "-"
		if d.RateLimiter != nil {
			rl = ""
			if bw := d.RateLimiter.Bandwidth; bw != nil {
				rl = fmt.Sprintf("bw%d/%d/%d", bw.Size, bw.OneTimeBurst, bw.RefillTime)
			}
			if ops := d.RateLimiter.Ops; ops != nil {
				rl += fmt.Sprintf("ops%d/%d/%d", ops.Size, ops.OneTimeBurst, ops.RefillTime)
			}
		}
		drives = append(drives, fmt.Sprintf("%s %s root=%t ro=%t %s", d.DriveID, filepath.Base(d.PathOnHost), d.IsRootDevice, d.IsReadOnly, rl))
	}
	wantDrives := []string{
		"rootfs rootfs.ext4 root=true ro=false bw1048576/2097152/250ops100/200/250",
		"data data.img root=false ro=false ops50/100/250",
		"ro ro.img root=false ro=true -",
	}
	if !slices.Equal(drives, wantDrives) {
		t.Errorf("drives = %q\nwant %q", drives, wantDrives)
	}
	var nics []string
	for _, n := range cfg.NetworkInterfaces {
		rl := ""
		if n.RxRateLimiter != nil && n.RxRateLimiter.Bandwidth != nil {
			rl += fmt.Sprintf(" rx%d", n.RxRateLimiter.Bandwidth.Size)
		}
		if n.TxRateLimiter != nil && n.TxRateLimiter.Ops != nil {
			rl += fmt.Sprintf(" tx%d", n.TxRateLimiter.Ops.Size)
		}
		nics = append(nics, fmt.Sprintf("%s=%s %s%s", n.IfaceID, n.HostDevName, n.GuestMAC, rl))
	}
	wantNICs := []string{"mgmt=ftap0 06:00:00:00:00:01", "ext=ext0 06:00:ac:10:00:02 rx65536 tx1000"}
	if !slices.Equal(nics, wantNICs) {
		t.Errorf("network-interfaces = %q, want %q", nics, wantNICs)
	}
	for _, tap := range []string{"ftap0", "ext0"} {
		if !realfc.TAPOpenBy(vm.Backend.PID, tap) {
			t.Errorf("firecracker (pid %d) holds no TAP file of %s", vm.Backend.PID, tap)
		}
	}
	if v := cfg.Vsock; v == nil || v.GuestCID != 42 {
		t.Errorf("vsock = %+v, want cid 42", v)
	}
	if st, err := os.Stat(vm.Backend.VsockPath); err != nil || st.Mode().Type() != os.ModeSocket {
		t.Errorf("vsock socket %s: %v, want a socket firecracker bound", vm.Backend.VsockPath, err)
	}
	if m := cfg.MMDSConfig; m == nil || m.Version != mmdsVersion || !slices.Equal(m.NetworkInterfaces, []string{"ext"}) || m.IPv4Address != microvm.DefaultMMDSAddress {
		t.Errorf("mmds-config = %+v, want %s on ext at %s", m, mmdsVersion, microvm.DefaultMMDSAddress)
	}
	var mmds map[string]json.RawMessage
	apiGet(t, vm.Backend.APISocket, "/mmds", &mmds)
	if string(mmds["latest"]) != `{"meta-data":{"instance-id":"i-every"}}` {
		t.Errorf("GET /mmds = %s, want the spec's data", mmds)
	}
	// Metrics (Config.Metrics): GET /vm/config does not show them and
	// firecracker writes them only after boot, but it took the file (or
	// Create would have failed). Its log goes, unconfigured, to its stdout
	// (console.log) at its default level: Info from v1.7, where it shows
	// the configuration requests; Warning before, where it shows nothing.
	if st, err := os.Stat(filepath.Join(vm.Backend.Dir, "metrics.json")); err != nil || !st.Mode().IsRegular() {
		t.Errorf("metrics file: %v", err)
	}
	if vm.Backend.Log != vm.Backend.ConsoleLog {
		t.Errorf("Backend.Log = %s, want the console log %s (firecracker logs to its stdout)", vm.Backend.Log, vm.Backend.ConsoleLog)
	}
	if !strings.HasPrefix(b.Version, "1.0.") {
		log, err := os.ReadFile(vm.Backend.Log)
		metricsPut := `Put request on "/metrics" with body "{\"metrics_path\":\"` + filepath.Join(vm.Backend.Dir, "metrics.json")
		if err != nil || !strings.Contains(string(log), "/machine-config") || !strings.Contains(string(log), metricsPut) {
			t.Errorf("firecracker log %s (%v) does not show the configuration requests:\n%s", vm.Backend.Log, err, log)
		}
	}

	checkStartWithoutKVM(t, rt, "every")
	if _, err := rt.Destroy(ctx, "every"); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if _, err := os.Lstat(vm.Backend.Dir); err == nil {
		t.Errorf("VM directory %s left after Destroy", vm.Backend.Dir)
	}
}

// checkStartWithoutKVM, on a host without KVM, starts the created VM id and
// checks that Start fails with firecracker's reason, that the VM stays
// created with that reason in LastError and no process of a failed boot
// left running, and that the VM can still be destroyed. With KVM it does
// nothing (the spec's files are not a bootable guest; the KVM suite
// boots).
func checkStartWithoutKVM(t *testing.T, rt *firecracker.Runtime, id string) {
	t.Helper()
	if realfc.KVM() {
		return
	}
	ctx := t.Context()
	_, err := rt.Start(ctx, id)
	if err == nil {
		t.Fatal("Start without /dev/kvm succeeded")
	}
	var be *microvm.BackendError
	if !errors.As(err, &be) || be.Op != "boot" {
		t.Errorf("Start error %v carries no BackendError of the boot step", err)
	}
	// Newer releases answer 400 naming KVM (or, with huge pages, the
	// kernel load that fails without it); v1.0 aborts, and its last log
	// line says why.
	if msg := err.Error(); !strings.Contains(msg, "Kvm") && !strings.Contains(msg, "KVM") && !strings.Contains(msg, "Cannot load kernel") {
		t.Errorf("Start error does not say why the boot failed: %v", err)
	}
	vm, gerr := rt.Get(ctx, id)
	if gerr != nil {
		t.Fatalf("Get after a failed Start: %v", gerr)
	}
	if vm.Status != microvm.StatusCreated || vm.LastError == "" {
		t.Errorf("after a failed Start: %s, LastError %q; want created with the reason", vm.Status, vm.LastError)
	}
	if vm.Backend.PID != 0 && syscall.Kill(vm.Backend.PID, 0) != nil {
		t.Errorf("the VM reports pid %d, which is gone", vm.Backend.PID)
	}
	// A second Start fails the same way (no leftover of the first).
	if _, err := rt.Start(ctx, id); err == nil {
		t.Error("second Start without /dev/kvm succeeded")
	}
}

// faultTarget is a firecracker the fault table runs on: a real binary or
// the stand-in in one of its dialects.
type faultTarget struct {
	name, path string
	// api is the feature level: 10 (v1.0), 17 (v1.7) or 99 (newer).
	api int
}

// faultTargets are the real binaries and the stand-in's two dialects: the
// stand-in must give the real binaries' fault messages.
func faultTargets(t *testing.T) []faultTarget {
	var out []faultTarget
	for _, b := range realfc.Binaries(t) {
		api := 99
		switch {
		case !b.AtLeast(1, 1):
			api = 10
		case !b.AtLeast(1, 8):
			api = 17
		}
		out = append(out, faultTarget{b.Name(), b.Path, api})
	}
	return append(out,
		faultTarget{"standin-v1.0", standin(t, "FCSTANDIN_API=v1.0"), 10},
		faultTarget{"standin-latest", standin(t), 99})
}

// fault is one input of TestRealFaults.
type fault struct {
	name string
	mod  func(t *testing.T, s *microvm.Spec)
	// want gives the BackendError expected at a feature level: its step
	// and a part of firecracker's message; ok false: Create succeeds.
	want func(api int) (step, part string, ok bool)
	// minAPI is the first feature level the input applies to.
	minAPI int
}

// TestRealFaults gives each real binary (and the stand-in) inputs that
// pass mvm's checks but that firecracker refuses, and checks that Create
// fails with firecracker's own fault message in a *microvm.BackendError
// naming the step, leaving nothing behind.
func TestRealFaults(t *testing.T) {
	always := func(step, part string) func(int) (string, string, bool) {
		return func(int) (string, string, bool) { return step, part, true }
	}
	faults := []fault{
		{"vsock path is a file", func(t *testing.T, s *microvm.Spec) {
			p := filepath.Join(t.TempDir(), "v.sock")
			if err := os.WriteFile(p, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			s.Vsock = &microvm.Vsock{Path: p}
		}, always("configure vsock", "Address in use"), 0},
		{"mmds data too big", func(t *testing.T, s *microvm.Spec) {
			s.MMDS = &microvm.MMDS{Data: json.RawMessage(`{"k":"` + strings.Repeat("x", 60000) + `"}`)}
		}, always("set mmds data", "larger than the limit of 51200"), 0},
		{"host device not a tap", func(t *testing.T, s *microvm.Spec) {
			s.Network = append(s.Network, microvm.NetworkInterface{HostDevName: "lo"})
		}, always("configure network interfaces", "Invalid argument"), 0},
		{"tap used twice", func(t *testing.T, s *microvm.Spec) {
			s.Network = append(s.Network, microvm.NetworkInterface{HostDevName: "ftap0"})
		}, always("configure network interfaces", "Resource busy"), 0},
		{"mac used twice", func(t *testing.T, s *microvm.Spec) {
			s.Network = append(s.Network, microvm.NetworkInterface{HostDevName: "t1", GuestMAC: "06:00:00:00:00:01"})
		}, always("configure network interfaces", "already in use"), 0},
		// At the limit, plus the managed network's ip= argument: v1.7 and
		// newer refuse it, v1.0 takes it.
		{"boot args too long with the network's", func(t *testing.T, s *microvm.Spec) {
			s.BootArgs = strings.Repeat("a", microvm.MaxBootArgsLen)
		}, func(api int) (string, string, bool) {
			return "configure boot source", "Invalid cmdline capacity provided", api >= 17
		}, 0},
		{"huge pages with an initrd", func(t *testing.T, s *microvm.Spec) {
			s.HugePages, s.Initrd = microvm.HugePages2M, s.RootDrive.Path
		}, func(api int) (string, string, bool) {
			return "configure boot source", "huge pages support is incompatible with initrds", api == 17
		}, 17},
	}
	msgs := &faultMessages{m: map[[2]string]string{}}
	t.Run("targets", func(t *testing.T) {
		for _, ft := range faultTargets(t) {
			t.Run(ft.name, func(t *testing.T) {
				t.Parallel()
				runFaults(t, ft, faults, msgs)
			})
		}
	})
	// The stand-in's dialects say exactly what the real v1.0 and the
	// newest real binary say.
	bins := realfc.Binaries(t)
	for _, pair := range [][2]string{{"standin-v1.0", bins[0].Name()}, {"standin-latest", bins[len(bins)-1].Name()}} {
		for _, f := range faults {
			got, ok1 := msgs.m[[2]string{pair[0], f.name}]
			want, ok2 := msgs.m[[2]string{pair[1], f.name}]
			if ok1 && ok2 && got != want {
				t.Errorf("%s: %s says %q\n%s says %q", f.name, pair[0], got, pair[1], want)
			}
		}
	}
}

// faultMessages collects the fault messages of TestRealFaults by target
// and fault.
type faultMessages struct {
	mu sync.Mutex
	m  map[[2]string]string
}

func (f *faultMessages) put(target, fault, msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[[2]string{target, fault}] = msg
}

func runFaults(t *testing.T, ft faultTarget, faults []fault, msgs *faultMessages) {
	for _, f := range faults {
		t.Run(strings.ReplaceAll(f.name, " ", "_"), func(t *testing.T) {
			if ft.api < f.minAPI {
				t.Skipf("%s has no such feature", ft.name)
			}
			fn := newFakeNet(t)
			state := t.TempDir()
			rt := open(t, state, ft.path, func(c *firecracker.Config) { c.Network = fn })
			defer rt.Close()
			spec := realSpec(t)
			spec.Network = []microvm.NetworkInterface{{}} // managed: a namespace of the test's own
			f.mod(t, &spec)
			_, err := rt.Create(t.Context(), "f", spec)
			step, part, fails := f.want(ft.api)
			if !fails {
				if err != nil {
					t.Fatalf("Create: %v", err)
				}
				if _, err := rt.Destroy(t.Context(), "f"); err != nil {
					t.Fatalf("Destroy: %v", err)
				}
			} else {
				if err == nil {
					t.Fatal("Create succeeded")
				}
				wantBackendMessage(t, err, step, part)
				var be *microvm.BackendError
				if errors.As(err, &be) {
					msgs.put(ft.name, f.name, strings.ReplaceAll(be.Message, filepath.Dir(spec.RootDrive.Path), "DIR"))
				}
			}
			assertClean(t, state, "f")
		})
	}
}

// TestRealBootArgsLimit: every real binary takes a command line of
// microvm.MaxBootArgsLen bytes (and mvm refuses one byte more).
func TestRealBootArgsLimit(t *testing.T) {
	eachReal(t, func(t *testing.T, b realfc.Binary) {
		rt, _ := realRuntime(t, b)
		spec := realSpec(t)
		spec.BootArgs = strings.Repeat("a", microvm.MaxBootArgsLen)
		vm, err := rt.Create(t.Context(), "ba", spec)
		if err != nil {
			t.Fatalf("Create with %d bytes of boot args: %v", microvm.MaxBootArgsLen, err)
		}
		var cfg fcapi.FullVMConfig
		apiGet(t, vm.Backend.APISocket, "/vm/config", &cfg)
		if cfg.BootSource == nil || cfg.BootSource.BootArgs != spec.BootArgs {
			t.Errorf("firecracker did not get the %d-byte command line", microvm.MaxBootArgsLen)
		}
		spec.BootArgs += "a"
		if _, err := rt.Create(t.Context(), "ba2", spec); !errors.Is(err, microvm.ErrInvalidSpec) {
			t.Errorf("Create with %d bytes of boot args: %v, want ErrInvalidSpec", len(spec.BootArgs), err)
		}
	})
}

// TestRealHugePagesUnsupported: v1.0 has no huge pages; the client refuses
// the field before firecracker sees it, and nothing is left.
func TestRealHugePagesUnsupported(t *testing.T) {
	b := realfc.Binaries(t)[0]
	if b.AtLeast(1, 7) {
		t.Skipf("the oldest real binary, %s, has huge pages", b.Name())
	}
	rt, state := realRuntime(t, b)
	spec := realSpec(t)
	spec.HugePages = microvm.HugePages2M
	_, err := rt.Create(t.Context(), "hp", spec)
	if !errors.Is(err, microvm.ErrUnsupported) || !strings.Contains(err.Error(), "huge_pages needs firecracker >= 1.7") {
		t.Errorf("Create with huge pages on %s: %v, want ErrUnsupported naming the version", b.Name(), err)
	}
	assertClean(t, state, "hp")
}

// TestRealVsockPathInUse: a vsock path some process listens on (another
// VM's) is refused and left alone, on every real binary.
func TestRealVsockPathInUse(t *testing.T) {
	eachReal(t, func(t *testing.T, b realfc.Binary) {
		rt, state := realRuntime(t, b)
		sock := filepath.Join(t.TempDir(), "taken.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		spec := realSpec(t)
		spec.Vsock = &microvm.Vsock{Path: sock}
		_, err = rt.Create(t.Context(), "vs", spec)
		var be *microvm.BackendError
		if !errors.As(err, &be) || be.Op != "configure vsock" || !strings.Contains(err.Error(), "is in use") {
			t.Errorf("Create: %v, want a configure vsock error saying the path is in use", err)
		}
		if c, err := net.Dial("unix", sock); err != nil {
			t.Errorf("the listener's socket was taken over: %v", err)
		} else {
			c.Close()
		}
		assertClean(t, state, "vs")
	})
}

// TestRealRelativePaths creates a VM from paths relative to the working
// directory on each real binary: the runtime resolves them against the
// caller's directory once, so firecracker (which runs in the VM directory)
// gets absolute paths. Before the fix v1.0 answered "The kernel file
// cannot be opened".
func TestRealRelativePaths(t *testing.T) {
	bins := realfc.Binaries(t)
	kernel := realfc.Kernel(t)
	dir := t.TempDir()
	if err := os.Symlink(kernel, filepath.Join(dir, "vmlinux")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"rootfs.ext4", "data.img"} {
		if err := os.WriteFile(filepath.Join(dir, f), make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	for _, b := range bins {
		t.Run(b.Name(), func(t *testing.T) {
			rt, state := realRuntime(t, b)
			spec := microvm.Spec{
				Kernel: "vmlinux", RootDrive: microvm.Drive{Path: "./rootfs.ext4"},
				Drives: []microvm.Drive{{Path: "data.img", ReadOnly: true}},
				Vsock:  &microvm.Vsock{Path: "run/v.sock"},
				VCPUs:  1, MemoryMiB: 128,
			}
			vm, err := rt.Create(t.Context(), "rel", spec)
			if err != nil {
				t.Fatalf("Create with relative paths: %v", err)
			}
			want := []string{filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs.ext4"), filepath.Join(dir, "data.img"), filepath.Join(dir, "run/v.sock")}
			got := []string{vm.Spec.Kernel, vm.Spec.RootDrive.Path, vm.Spec.Drives[0].Path, vm.Spec.Vsock.Path}
			if !slices.Equal(got, want) {
				t.Errorf("stored paths %q, want %q", got, want)
			}
			var cfg fcapi.FullVMConfig
			apiGet(t, vm.Backend.APISocket, "/vm/config", &cfg)
			got = []string{cfg.BootSource.KernelImagePath, cfg.Drives[0].PathOnHost, cfg.Drives[1].PathOnHost, cfg.Vsock.UDSPath}
			if !slices.Equal(got, want) {
				t.Errorf("firecracker got paths %q, want %q", got, want)
			}
			if st, err := os.Stat(want[3]); err != nil || st.Mode().Type() != os.ModeSocket {
				t.Errorf("vsock socket not bound at %s: %v", want[3], err)
			}
			if _, err := rt.Destroy(t.Context(), "rel"); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(want[3]); err == nil {
				t.Errorf("vsock socket %s left after Destroy", want[3])
			}
			assertClean(t, state, "rel")
		})
	}
}

// TestRealCrashCreated kills the firecracker of a created VM on each real
// binary: the runtime notices, keeps the VM created with the exit in
// LastError and no process, removes the API socket, and the VM can be
// started again (which spawns a fresh process) and destroyed.
func TestRealCrashCreated(t *testing.T) {
	eachReal(t, func(t *testing.T, b realfc.Binary) {
		rt, state := realRuntime(t, b)
		ctx := t.Context()
		vm, err := rt.Create(ctx, "cr", realSpec(t))
		if err != nil {
			t.Fatal(err)
		}
		kill(t, rt, "cr")
		deadline := time.Now().Add(5 * time.Second)
		for {
			vm, err = rt.Get(ctx, "cr")
			if err != nil {
				t.Fatal(err)
			}
			if vm.Backend.PID == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the killed firecracker is still reported (pid %d) after 5s", vm.Backend.PID)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if vm.Status != microvm.StatusCreated || !strings.Contains(vm.LastError, "SIGKILL") {
			t.Errorf("after SIGKILL: %s, LastError %q; want created, naming SIGKILL", vm.Status, vm.LastError)
		}
		if _, err := os.Stat(vm.Backend.APISocket); err == nil {
			t.Errorf("the dead process's API socket %s is left", vm.Backend.APISocket)
		}
		checkStartWithoutKVM(t, rt, "cr")
		if _, err := rt.Destroy(ctx, "cr"); err != nil {
			t.Fatal(err)
		}
		assertClean(t, state, "cr")
	})
}

// TestRealAdoption: a VM created by another process (which exits) is
// adopted by Open with its live real firecracker (checked with GET /),
// across Close and Open in one process too; a firecracker killed while no
// runtime runs is found dead at the next Open.
func TestRealAdoption(t *testing.T) {
	eachReal(t, func(t *testing.T, b realfc.Binary) {
		state := t.TempDir()
		born := runChild(t, childJob{State: state, Bin: b.Path, ID: "ad", Spec: realSpec(t), Ops: []string{"create"}})
		if born.Status != microvm.StatusCreated || born.Backend.PID == 0 {
			t.Fatalf("child made VM %s with pid %d, want created", born.Status, born.Backend.PID)
		}
		for round := range 2 {
			rt := open(t, state, b.Path)
			vm, err := rt.Get(t.Context(), "ad")
			if err != nil {
				t.Fatal(err)
			}
			if vm.Status != microvm.StatusCreated || vm.Backend.PID != born.Backend.PID || vm.LastError != "" {
				t.Fatalf("round %d: adopted VM %s pid %d (%q), want created pid %d", round, vm.Status, vm.Backend.PID, vm.LastError, born.Backend.PID)
			}
			var info fcapi.InstanceInfo
			apiGet(t, vm.Backend.APISocket, "/", &info)
			if info.ID != "ad" || info.State != "Not started" {
				t.Errorf("round %d: GET / = %+v", round, info)
			}
			if err := rt.Close(); err != nil {
				t.Fatal(err)
			}
		}
		if err := syscall.Kill(born.Backend.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitGone(t, born.Backend.PID)
		rt := open(t, state, b.Path)
		defer rt.Close()
		vm, err := rt.Get(t.Context(), "ad")
		if err != nil {
			t.Fatal(err)
		}
		if vm.Status != microvm.StatusCreated || vm.Backend.PID != 0 || vm.LastError == "" {
			t.Errorf("VM killed while closed: %s pid %d LastError %q; want created, no pid, a reason", vm.Status, vm.Backend.PID, vm.LastError)
		}
		if _, err := rt.Destroy(t.Context(), "ad"); err != nil {
			t.Fatal(err)
		}
		assertClean(t, state, "ad")
	})
}

// TestRealRestoreForeignSnapshot: a snapshot made by another firecracker
// (the stand-in, whose versions are 1.0.0 and 1.17.0-dev) is refused by
// Restore on each real binary, with both memory backends, as incompatible
// and without leaving anything behind.
func TestRealRestoreForeignSnapshot(t *testing.T) {
	eachReal(t, func(t *testing.T, b realfc.Binary) {
		api := "latest"
		if !b.AtLeast(1, 1) {
			api = "v1.0"
		}
		state := t.TempDir()
		rt := open(t, state, standin(t, "FCSTANDIN_API="+api))
		if _, err := rt.Create(t.Context(), "src", realSpec(t)); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Start(t.Context(), "src"); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Snapshot(t.Context(), "src", "snap", nil); err != nil {
			t.Fatal(err)
		}
		if _, err := rt.Destroy(t.Context(), "src"); err != nil {
			t.Fatal(err)
		}
		rt.Close()
		rt = open(t, state, b.Path, func(c *firecracker.Config) { c.UffdBin = uffdBin(t) })
		defer rt.Close()
		for _, mb := range []microvm.MemoryBackend{microvm.MemoryBackendFile, microvm.MemoryBackendUffd} {
			_, err := rt.Restore(t.Context(), "r", "snap", &microvm.RestoreOptions{MemoryBackend: mb})
			if !errors.Is(err, microvm.ErrSnapshotCorrupt) || !strings.Contains(err.Error(), "incompatible") ||
				!strings.Contains(err.Error(), b.Version) {
				t.Errorf("Restore (%s) of a stand-in snapshot on %s: %v, want incompatible naming %s", mb, b.Name(), err, b.Version)
			}
			assertClean(t, state, "r")
		}
	})
}
