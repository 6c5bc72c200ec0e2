package fcapi_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/fcapi"
	"github.com/mvm-dev/microvm/internal/fcstandin"
	"golang.org/x/sys/unix"
)

// standin is one running stand-in firecracker process.
type standin struct {
	cmd    *exec.Cmd
	sock   string
	stderr *strings.Builder
	exited chan struct{}
}

// TestMain removes the stand-in binary built by fcstandin.Build.
func TestMain(m *testing.M) {
	code := m.Run()
	fcstandin.RemoveBuild()
	os.Exit(code)
}

func startStandin(t *testing.T, bin, spec, api, dir, id string) *standin {
	t.Helper()
	s := &standin{sock: filepath.Join(dir, id+".sock"), stderr: &strings.Builder{}, exited: make(chan struct{})}
	s.cmd = exec.Command(bin, "--api-sock", s.sock, "--id", id)
	s.cmd.Env = append(os.Environ(), "FCSTANDIN_API="+api, "FCSTANDIN_SPEC_DIR="+spec)
	s.cmd.Stderr = s.stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start stand-in: %v", err)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.exited
	})
	return s
}

// waitReady polls GET /machine-config until the socket answers. Socket
// missing (ENOENT) and refused (ECONNREFUSED) mean "not yet".
func waitReady(t *testing.T, s *standin, c *fcapi.Client) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, err := c.MachineConfig(context.Background())
		if err == nil {
			return
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("readiness probe: %v", err)
		}
		select {
		case <-s.exited:
			t.Fatalf("stand-in exited before its socket came up: %s", s.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("stand-in socket not ready: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func touch(t *testing.T, path string, size int64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return path
}

// canTap reports whether this process can create TAP devices.
func canTap() bool {
	if os.Geteuid() != 0 {
		return false
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// TestStandinBootSequence runs the runtime's full configuration sequence
// through the client against the stand-in firecracker, which validates
// every body against the official spec of the emulated version.
func TestStandinBootSequence(t *testing.T) {
	spec := fcstandin.SpecDir(t)
	bin := fcstandin.Build(t)
	for _, api := range []string{fcstandin.APIv10, fcstandin.APILatest} {
		t.Run(api, func(t *testing.T) { bootSequence(t, bin, spec, api) })
	}
}

func bootSequence(t *testing.T, bin, spec, api string) {
	dir, err := os.MkdirTemp("", "fcapi-it")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx := context.Background()
	id := "it-" + strings.ReplaceAll(api, ".", "")

	s := startStandin(t, bin, spec, api, dir, id)
	c := fcapi.New(s.sock, &fcapi.Options{Timeout: 10 * time.Second})
	defer c.Close()
	waitReady(t, s, c)

	// Probe the version and target it, as the runtime does.
	v, raw, err := c.FirecrackerVersion(ctx)
	if err != nil {
		t.Fatalf("FirecrackerVersion: %v", err)
	}
	c.SetVersion(v)
	wantLatest := api == fcstandin.APILatest
	if v.AtLeast(1, 1) != wantLatest {
		t.Fatalf("stand-in %s reports version %q", api, raw)
	}
	t.Logf("stand-in %s reports firecracker_version %q", api, raw)
	info, err := c.InstanceInfo(ctx)
	if err != nil || info.State != fcapi.StateNotStarted || info.ID != id {
		t.Fatalf("InstanceInfo = %+v, %v", info, err)
	}

	// The stand-in really checks bodies against the emulated spec: a field
	// v1.0 does not know is refused by it when the client does not gate
	// (newest target), and by the client itself when it targets v1.0.
	ungated := fcapi.New(s.sock, nil)
	defer ungated.Close()
	err = ungated.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: 128, HugePages: fcapi.HugePagesNone})
	var ae *fcapi.APIError
	if wantLatest {
		if err != nil {
			t.Fatalf("PutMachineConfig with huge_pages on latest: %v", err)
		}
	} else {
		if !errors.As(err, &ae) || ae.StatusCode != 400 || !strings.Contains(ae.FaultMessage, "huge_pages") {
			t.Fatalf("ungated huge_pages on v1.0: %v, want a 400 naming huge_pages", err)
		}
		t.Logf("v1.0 stand-in refused huge_pages: %v", err)
		if err := c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: 128, HugePages: fcapi.HugePagesNone}); !errors.Is(err, fcapi.ErrUnsupported) {
			t.Fatalf("gated huge_pages on v1.0: %v, want ErrUnsupported", err)
		}
	}

	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	logPath := touch(t, filepath.Join(dir, "fc.log"), 0)
	metricsPath := touch(t, filepath.Join(dir, "fc.metrics"), 0)
	kernel := touch(t, filepath.Join(dir, "vmlinux"), 4096)
	rootfs := touch(t, filepath.Join(dir, "rootfs.ext4"), 1<<20)
	data := touch(t, filepath.Join(dir, "data.ext4"), 1<<20)
	vsockPath := filepath.Join(dir, "v.sock")

	must("PutLogger", c.PutLogger(ctx, fcapi.Logger{LogPath: logPath, Level: fcapi.LogLevelDebug, ShowLevel: true, ShowLogOrigin: true}))
	// Newer fields are used wherever the target has them, so the stand-in
	// checks those models too.
	metrics := fcapi.Metrics{MetricsPath: metricsPath}
	if c.Supports(fcapi.FeatureMetricsEmitID) {
		metrics.EmitID, metrics.Properties = true, map[string]string{"test": "fcapi"}
	}
	must("PutMetrics", c.PutMetrics(ctx, metrics))
	must("PutMachineConfig", c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 2, MemSizeMiB: 256, TrackDirtyPages: true}))
	must("PatchMachineConfig", c.PatchMachineConfig(ctx, fcapi.MachineConfigUpdate{MemSizeMiB: ptr(128)}))
	mc, err := c.MachineConfig(ctx)
	if err != nil || mc.VCPUCount != 2 || mc.MemSizeMiB != 128 || !mc.TrackDirtyPages {
		t.Fatalf("MachineConfig = %+v, %v", mc, err)
	}
	must("PutBootSource", c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: kernel, BootArgs: "console=ttyS0 reboot=k panic=1"}))
	must("PutDrive rootfs", c.PutDrive(ctx, fcapi.Drive{DriveID: "rootfs", PathOnHost: rootfs, IsRootDevice: true}))
	must("PutDrive data", c.PutDrive(ctx, fcapi.Drive{DriveID: "data", PathOnHost: data, IsReadOnly: true, CacheType: fcapi.CacheTypeWriteback, IOEngine: fcapi.IOEngineSync,
		RateLimiter: &fcapi.RateLimiter{Bandwidth: &fcapi.TokenBucket{Size: 1 << 20, RefillTime: 100, OneTimeBurst: 1 << 20}}}))
	tap := ""
	if canTap() {
		t.Log("root with /dev/net/tun: configuring a network interface and MMDS")
		tap = fmt.Sprintf("fcit%d%s", os.Getpid()%100000, map[bool]string{true: "l", false: "o"}[wantLatest])
		ni := fcapi.NetworkInterface{IfaceID: "eth0", HostDevName: tap, GuestMAC: "06:00:AC:10:00:02",
			RxRateLimiter: &fcapi.RateLimiter{Ops: &fcapi.TokenBucket{Size: 1000, RefillTime: 1000}}}
		if c.Supports(fcapi.FeatureNetMTU) {
			ni.MTU = 1400
		}
		must("PutNetworkInterface", c.PutNetworkInterface(ctx, ni))
		must("PutMMDSConfig", c.PutMMDSConfig(ctx, fcapi.MMDSConfig{Version: fcapi.MMDSVersionV2, NetworkInterfaces: []string{"eth0"},
			IPv4Address: "169.254.169.254", IMDSCompat: c.Supports(fcapi.FeatureMMDSIMDSCompat)}))
	} else {
		t.Log("not root or no /dev/net/tun: skipping network interface and MMDS config")
	}
	must("PutMMDS", c.PutMMDS(ctx, map[string]any{"latest": map[string]any{"meta-data": map[string]string{"instance-id": id}}}))
	must("PatchMMDS", c.PatchMMDS(ctx, map[string]any{"latest": map[string]any{"user-data": "hello"}}))
	var mmds map[string]map[string]any
	must("MMDS", c.MMDS(ctx, &mmds))
	if mmds["latest"]["user-data"] != "hello" {
		t.Errorf("MMDS = %v", mmds)
	}
	must("PutVsock", c.PutVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: vsockPath}))
	must("PutBalloon", c.PutBalloon(ctx, fcapi.Balloon{AmountMiB: 16, DeflateOnOOM: true, StatsPollingIntervalS: 1,
		FreePageReporting: c.Supports(fcapi.FeatureBalloonFreePageReporting)}))
	if c.Supports(fcapi.FeatureSerial) {
		must("PutSerial", c.PutSerial(ctx, fcapi.SerialDevice{SerialOutPath: touch(t, filepath.Join(dir, "console.log"), 0),
			RateLimiter: &fcapi.TokenBucket{Size: 1 << 16, RefillTime: 1000}}))
	}
	if c.Supports(fcapi.FeatureEntropy) {
		must("PutEntropy", c.PutEntropy(ctx, fcapi.EntropyDevice{}))
	} else if err := c.PutEntropy(ctx, fcapi.EntropyDevice{}); !errors.Is(err, fcapi.ErrUnsupported) {
		t.Errorf("PutEntropy on %v: %v, want ErrUnsupported", v, err)
	}
	b, err := c.Balloon(ctx)
	if err != nil || b.AmountMiB != 16 || !b.DeflateOnOOM {
		t.Errorf("Balloon = %+v, %v", b, err)
	}

	cfg, err := c.VMConfig(ctx)
	must("VMConfig", err)
	if len(cfg.Drives) != 2 || cfg.BootSource == nil || cfg.BootSource.KernelImagePath != kernel || cfg.MachineConfig == nil || cfg.MachineConfig.MemSizeMiB != 128 ||
		cfg.Vsock == nil || cfg.Vsock.UDSPath != vsockPath || cfg.Balloon == nil {
		t.Errorf("VMConfig = %+v", cfg)
	}

	// Boot.
	must("InstanceStart", c.InstanceStart(ctx))
	if info, err := c.InstanceInfo(ctx); err != nil || info.State != fcapi.StateRunning {
		t.Fatalf("after start: %+v, %v", info, err)
	}
	// Pre-boot-only calls now fail with Firecracker's fault message.
	err = c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: 128})
	if !errors.As(err, &ae) || ae.StatusCode != 400 || ae.FaultMessage == "" {
		t.Errorf("PutMachineConfig after boot: %v, want a 400 APIError with a fault message", err)
	}

	// Post-boot updates.
	data2 := touch(t, filepath.Join(dir, "data2.ext4"), 2<<20)
	must("PatchDrive", c.PatchDrive(ctx, fcapi.PartialDrive{DriveID: "data", PathOnHost: data2}))
	if tap != "" {
		must("PatchNetworkInterface", c.PatchNetworkInterface(ctx, fcapi.PartialNetworkInterface{IfaceID: "eth0",
			TxRateLimiter: &fcapi.RateLimiter{Bandwidth: &fcapi.TokenBucket{Size: 0, RefillTime: 0}}}))
	}
	must("PatchBalloon", c.PatchBalloon(ctx, fcapi.BalloonUpdate{AmountMiB: 32}))
	must("PatchBalloonStats", c.PatchBalloonStats(ctx, fcapi.BalloonStatsUpdate{StatsPollingIntervalS: 2}))
	if _, err := c.BalloonStats(ctx); err != nil {
		t.Errorf("BalloonStats: %v", err)
	}
	must("FlushMetrics", c.FlushMetrics(ctx))

	// Snapshot.
	statePath, memPath := filepath.Join(dir, "vm.state"), filepath.Join(dir, "vm.mem")
	must("PauseVM", c.PauseVM(ctx))
	if info, err := c.InstanceInfo(ctx); err != nil || info.State != fcapi.StatePaused {
		t.Fatalf("after pause: %+v, %v", info, err)
	}
	must("CreateSnapshot", c.CreateSnapshot(ctx, fcapi.SnapshotCreateParams{SnapshotPath: statePath, MemFilePath: memPath, SnapshotType: fcapi.SnapshotTypeFull}))
	must("ResumeVM", c.ResumeVM(ctx))

	// Clean shutdown: the process exits after SendCtrlAltDel.
	must("SendCtrlAltDel", c.SendCtrlAltDel(ctx))
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("stand-in did not exit after SendCtrlAltDel")
	}
	c.Close()
	// Firecracker leaves its sockets behind; the vsock path must be free
	// for the restored VM.
	os.Remove(vsockPath)

	// Restore into a fresh process.
	s2 := startStandin(t, bin, spec, api, dir, id+"-r")
	c2 := fcapi.New(s2.sock, &fcapi.Options{Timeout: 10 * time.Second})
	defer c2.Close()
	waitReady(t, s2, c2)
	c2.SetVersion(v)
	must("PutLogger (restore)", c2.PutLogger(ctx, fcapi.Logger{LogPath: logPath, Level: fcapi.LogLevelInfo}))
	load := fcapi.SnapshotLoadParams{SnapshotPath: statePath, MemFilePath: memPath, TrackDirtyPages: true, ResumeVM: true}
	if c2.Supports(fcapi.FeatureSnapshotVsockOverride) {
		load.VsockOverride = &fcapi.VsockOverride{UDSPath: filepath.Join(dir, "v2.sock")}
		load.ClockRealtime = true
	}
	if tap != "" && c2.Supports(fcapi.FeatureSnapshotNetworkOverrides) {
		load.NetworkOverrides = []fcapi.NetworkOverride{{IfaceID: "eth0", HostDevName: tap + "r"}}
	}
	must("LoadSnapshot", c2.LoadSnapshot(ctx, load))
	if info, err := c2.InstanceInfo(ctx); err != nil || info.State != fcapi.StateRunning {
		t.Fatalf("after load: %+v, %v", info, err)
	}
	must("PauseVM (restored)", c2.PauseVM(ctx))
	must("ResumeVM (restored)", c2.ResumeVM(ctx))
}

func ptr[T any](v T) *T { return &v }
