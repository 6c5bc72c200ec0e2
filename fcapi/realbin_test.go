package fcapi_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/fcapi"
	"github.com/mvm-dev/microvm/internal/realfc"
)

// TestRealPreBoot drives each real Firecracker build through the client's
// whole pre-boot API with every field the build has (the client gates the
// rest): logger, metrics, machine config and its PATCH, boot source,
// drives with cache types and rate limiters, a network interface (in a
// network namespace of its own, as root), MMDS config and data with PATCH,
// vsock, balloon, entropy and serial where the build has them, and GET
// /vm/config. The real binary accepts exactly what the client sends and
// refuses what the client gates, so the client's feature table is checked
// against reality.
func TestRealPreBoot(t *testing.T) {
	for _, b := range realfc.Binaries(t) {
		t.Run(b.Name(), func(t *testing.T) {
			t.Parallel()
			realPreBoot(t, b)
		})
	}
}

func realPreBoot(t *testing.T, b realfc.Binary) {
	ctx := context.Background()
	dir := t.TempDir()
	netns := canTap() // startReal then gives firecracker a network namespace of its own
	c := startReal(t, b, dir, "pre")
	v, raw, err := c.FirecrackerVersion(ctx)
	if err != nil || !strings.HasPrefix(raw, b.Version) {
		t.Fatalf("FirecrackerVersion = %q, %v; want %s", raw, err, b.Version)
	}
	c.SetVersion(v)
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s on %s: %v", what, b.Name(), err)
		}
	}
	logPath, metricsPath := touch(t, filepath.Join(dir, "fc.log"), 0), touch(t, filepath.Join(dir, "fc.metrics"), 0)
	kernel := realfc.Kernel(t)
	rootfs, data := touch(t, filepath.Join(dir, "rootfs.ext4"), 1<<20), touch(t, filepath.Join(dir, "data.ext4"), 1<<20)

	must("PutLogger", c.PutLogger(ctx, fcapi.Logger{LogPath: logPath, Level: fcapi.LogLevelDebug, ShowLevel: true, ShowLogOrigin: true}))
	metrics := fcapi.Metrics{MetricsPath: metricsPath}
	if c.Supports(fcapi.FeatureMetricsEmitID) {
		metrics.EmitID, metrics.Properties = true, map[string]string{"test": "fcapi"}
	}
	must("PutMetrics", c.PutMetrics(ctx, metrics))
	mc := fcapi.MachineConfig{VCPUCount: 2, MemSizeMiB: 256, SMT: true, TrackDirtyPages: true}
	if c.Supports(fcapi.FeatureMachineHugePages) {
		mc.HugePages = fcapi.HugePages2M
	} else if err := c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: 128, HugePages: fcapi.HugePages2M}); !errors.Is(err, fcapi.ErrUnsupported) {
		t.Errorf("huge_pages on %s: %v, want ErrUnsupported", b.Name(), err)
	}
	must("PutMachineConfig", c.PutMachineConfig(ctx, mc))
	must("PatchMachineConfig", c.PatchMachineConfig(ctx, fcapi.MachineConfigUpdate{MemSizeMiB: ptr(128)}))
	got, err := c.MachineConfig(ctx)
	if err != nil || got.VCPUCount != 2 || got.MemSizeMiB != 128 || !got.SMT || !got.TrackDirtyPages || got.HugePages != mc.HugePages && !(mc.HugePages == "" && got.HugePages == fcapi.HugePagesNone) {
		t.Errorf("MachineConfig = %+v, %v; want %+v with 128 MiB", got, err, mc)
	}
	must("PutBootSource", c.PutBootSource(ctx, fcapi.BootSource{KernelImagePath: kernel, BootArgs: "console=ttyS0 reboot=k panic=1"}))
	must("PutDrive rootfs", c.PutDrive(ctx, fcapi.Drive{DriveID: "rootfs", PathOnHost: rootfs, IsRootDevice: true}))
	must("PutDrive data", c.PutDrive(ctx, fcapi.Drive{DriveID: "data", PathOnHost: data, IsReadOnly: true, CacheType: fcapi.CacheTypeWriteback,
		IOEngine: fcapi.IOEngineSync, RateLimiter: &fcapi.RateLimiter{Bandwidth: &fcapi.TokenBucket{Size: 1 << 20, RefillTime: 100, OneTimeBurst: 1 << 20}}}))
	if netns {
		ni := fcapi.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:AC:10:00:02",
			RxRateLimiter: &fcapi.RateLimiter{Ops: &fcapi.TokenBucket{Size: 1000, RefillTime: 1000}}}
		if c.Supports(fcapi.FeatureNetMTU) {
			ni.MTU = 1400
		}
		must("PutNetworkInterface", c.PutNetworkInterface(ctx, ni))
		must("PutMMDSConfig", c.PutMMDSConfig(ctx, fcapi.MMDSConfig{Version: fcapi.MMDSVersionV2, NetworkInterfaces: []string{"eth0"},
			IPv4Address: "169.254.169.254", IMDSCompat: c.Supports(fcapi.FeatureMMDSIMDSCompat)}))
	} else {
		t.Log("not root or no /dev/net/tun: no network interface or MMDS config")
	}
	must("PutMMDS", c.PutMMDS(ctx, map[string]any{"latest": map[string]any{"meta-data": map[string]string{"instance-id": "pre"}}}))
	must("PatchMMDS", c.PatchMMDS(ctx, map[string]any{"latest": map[string]any{"user-data": "hello"}}))
	var mmds map[string]map[string]any
	must("MMDS", c.MMDS(ctx, &mmds))
	if mmds["latest"]["user-data"] != "hello" || mmds["latest"]["meta-data"] == nil {
		t.Errorf("MMDS = %v", mmds)
	}
	vsockPath := filepath.Join(dir, "v.sock")
	must("PutVsock", c.PutVsock(ctx, fcapi.Vsock{GuestCID: 3, UDSPath: vsockPath}))
	// v1.7 refuses a balloon with huge pages; v1.14 takes both.
	noBalloon := mc.HugePages != "" && !b.AtLeast(1, 8)
	err = c.PutBalloon(ctx, fcapi.Balloon{AmountMiB: 16, DeflateOnOOM: true, StatsPollingIntervalS: 1,
		FreePageReporting: c.Supports(fcapi.FeatureBalloonFreePageReporting)})
	var ae *fcapi.APIError
	switch {
	case noBalloon:
		if !errors.As(err, &ae) || ae.FaultMessage != "Balloon config error: Firecracker's huge pages support is incompatible with memory ballooning." {
			t.Errorf("PutBalloon with huge pages on %s: %v, want its refusal", b.Name(), err)
		}
	case err != nil:
		t.Fatalf("PutBalloon on %s: %v", b.Name(), err)
	default:
		if bal, err := c.Balloon(ctx); err != nil || bal.AmountMiB != 16 || !bal.DeflateOnOOM {
			t.Errorf("Balloon = %+v, %v", bal, err)
		}
	}
	if c.Supports(fcapi.FeatureSerial) {
		must("PutSerial", c.PutSerial(ctx, fcapi.SerialDevice{SerialOutPath: touch(t, filepath.Join(dir, "console.log"), 0)}))
	}
	if c.Supports(fcapi.FeatureEntropy) {
		must("PutEntropy", c.PutEntropy(ctx, fcapi.EntropyDevice{}))
	} else if err := c.PutEntropy(ctx, fcapi.EntropyDevice{}); !errors.Is(err, fcapi.ErrUnsupported) {
		t.Errorf("PutEntropy on %s: %v, want ErrUnsupported", b.Name(), err)
	}
	cfg, err := c.VMConfig(ctx)
	must("VMConfig", err)
	if len(cfg.Drives) != 2 || cfg.BootSource == nil || cfg.BootSource.KernelImagePath != kernel || cfg.MachineConfig == nil ||
		cfg.MachineConfig.MemSizeMiB != 128 || cfg.Vsock == nil || cfg.Vsock.UDSPath != vsockPath || (cfg.Balloon == nil) != noBalloon ||
		netns && (len(cfg.NetworkInterfaces) != 1 || cfg.MMDSConfig == nil) {
		t.Errorf("VMConfig = %+v", cfg)
	}
	if st, err := os.Stat(vsockPath); err != nil || st.Mode().Type() != os.ModeSocket {
		t.Errorf("vsock socket %s: %v", vsockPath, err)
	}
	if info, err := c.InstanceInfo(ctx); err != nil || info.State != fcapi.StateNotStarted || info.ID != "pre" {
		t.Errorf("InstanceInfo = %+v, %v", info, err)
	}
	if !realfc.KVM() {
		// Without KVM the boot fails: with a 400 naming KVM (newer), or the
		// process aborts (v1.0).
		err := c.InstanceStart(ctx)
		if err == nil || errors.As(err, &ae) && !strings.Contains(ae.FaultMessage, "KVM") && !strings.Contains(ae.FaultMessage, "Kvm") &&
			!strings.Contains(ae.FaultMessage, "Cannot load kernel") {
			t.Errorf("InstanceStart without KVM on %s: %v", b.Name(), err)
		}
	}
}

// startReal starts the real binary b on a fresh socket (in a network
// namespace of its own when root) and returns a client that does not gate
// (it sends every field), stopped at the end of the test.
func startReal(t *testing.T, b realfc.Binary, dir, id string) *fcapi.Client {
	t.Helper()
	sock := filepath.Join(dir, id+".sock")
	cmd := exec.Command(b.Path, "--api-sock", sock, "--id", id)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if canTap() {
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	c := fcapi.New(sock, &fcapi.Options{Timeout: 10 * time.Second})
	t.Cleanup(func() { c.Close() })
	waitReady(t, &standin{cmd: cmd, sock: sock, stderr: &out, exited: exited}, c)
	return c
}

// TestRealFeatureTable checks the client's feature table (the first
// release of each gated field, endpoint or value) against each real
// binary: sent without gating, a feature the table says the binary has is
// not refused as unknown, and one it says the binary lacks is.
func TestRealFeatureTable(t *testing.T) {
	tap := canTap()
	send := map[fcapi.Feature]func(ctx context.Context, c *fcapi.Client, dir string) error{
		fcapi.FeatureEntropy: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.PutEntropy(ctx, fcapi.EntropyDevice{})
		},
		fcapi.FeatureSerial: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.PutSerial(ctx, fcapi.SerialDevice{SerialOutPath: touch(t, filepath.Join(dir, "serial.out"), 0)})
		},
		fcapi.FeatureSerialRateLimiter: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.PutSerial(ctx, fcapi.SerialDevice{SerialOutPath: touch(t, filepath.Join(dir, "serial2.out"), 0),
				RateLimiter: &fcapi.TokenBucket{Size: 1 << 16, RefillTime: 1000}})
		},
		fcapi.FeatureMachineHugePages: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: 128, HugePages: fcapi.HugePages2M})
		},
		fcapi.FeatureMachineHugePagesTransparent: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: 128, HugePages: fcapi.HugePagesTransparent})
		},
		fcapi.FeatureCPUTemplateNone: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: 128, CPUTemplate: fcapi.CPUTemplateNone})
		},
		fcapi.FeatureCPUTemplateT2S: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: 128, CPUTemplate: fcapi.CPUTemplateT2S})
		},
		fcapi.FeatureCPUTemplateT2A: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.PutMachineConfig(ctx, fcapi.MachineConfig{VCPUCount: 1, MemSizeMiB: 128, CPUTemplate: fcapi.CPUTemplateT2A})
		},
		fcapi.FeatureLoggerModule: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.PutLogger(ctx, fcapi.Logger{LogPath: touch(t, filepath.Join(dir, "m.log"), 0), Module: "api_server"})
		},
		fcapi.FeatureLoggerLevelTraceOff: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.PutLogger(ctx, fcapi.Logger{LogPath: touch(t, filepath.Join(dir, "t.log"), 0), Level: fcapi.LogLevelTrace})
		},
		fcapi.FeatureMetricsEmitID: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.PutMetrics(ctx, fcapi.Metrics{MetricsPath: touch(t, filepath.Join(dir, "e.metrics"), 0), EmitID: true})
		},
		fcapi.FeatureBalloonFreePageReporting: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.PutBalloon(ctx, fcapi.Balloon{AmountMiB: 1, FreePageReporting: true})
		},
		fcapi.FeatureBalloonFreePageHinting: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.PutBalloon(ctx, fcapi.Balloon{AmountMiB: 1, FreePageHinting: true})
		},
		fcapi.FeatureSnapshotTrackDirtyPages: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{SnapshotPath: filepath.Join(dir, "none.state"),
				MemFilePath: filepath.Join(dir, "none.mem"), TrackDirtyPages: true})
		},
		fcapi.FeatureSnapshotClockRealtime: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{SnapshotPath: filepath.Join(dir, "none.state"),
				MemFilePath: filepath.Join(dir, "none.mem"), ClockRealtime: true})
		},
		fcapi.FeatureSnapshotVsockOverride: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{SnapshotPath: filepath.Join(dir, "none.state"),
				MemFilePath: filepath.Join(dir, "none.mem"), VsockOverride: &fcapi.VsockOverride{UDSPath: filepath.Join(dir, "o.sock")}})
		},
		fcapi.FeatureSnapshotNetworkOverrides: func(ctx context.Context, c *fcapi.Client, dir string) error {
			return c.LoadSnapshot(ctx, fcapi.SnapshotLoadParams{SnapshotPath: filepath.Join(dir, "none.state"),
				MemFilePath: filepath.Join(dir, "none.mem"), NetworkOverrides: []fcapi.NetworkOverride{{IfaceID: "eth0", HostDevName: "tap9"}}})
		},
	}
	if tap {
		nic := func(ctx context.Context, c *fcapi.Client, mtu int) error {
			return c.PutNetworkInterface(ctx, fcapi.NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", MTU: mtu})
		}
		send[fcapi.FeatureNetMTU] = func(ctx context.Context, c *fcapi.Client, dir string) error { return nic(ctx, c, 1400) }
		send[fcapi.FeatureMMDSIMDSCompat] = func(ctx context.Context, c *fcapi.Client, dir string) error {
			if err := nic(ctx, c, 0); err != nil {
				return fmt.Errorf("PutNetworkInterface: %w", err)
			}
			return c.PutMMDSConfig(ctx, fcapi.MMDSConfig{NetworkInterfaces: []string{"eth0"}, IMDSCompat: true})
		}
	}
	// Where an older binary takes a feature the client gates, and why the
	// gate stays: PUT /metrics ignores unknown fields (emit_id would be
	// dropped silently); v1.0 takes cpu_template "None" although its API
	// specification lists only C3 and T2 (None is the default: omitting the
	// field means the same).
	lenient := map[fcapi.Feature]bool{fcapi.FeatureMetricsEmitID: true, fcapi.FeatureCPUTemplateNone: true}
	for _, b := range realfc.Binaries(t) {
		t.Run(b.Name(), func(t *testing.T) {
			t.Parallel()
			v, err := fcapi.ParseVersion(b.Version)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range fcapi.Features() {
				fn := send[f]
				if fn == nil {
					continue
				}
				dir := t.TempDir()
				c := startReal(t, b, dir, "ft")
				err := fn(context.Background(), c, dir)
				var ae *fcapi.APIError
				unknown := errors.As(err, &ae) && (strings.Contains(ae.FaultMessage, "unknown field") ||
					strings.Contains(ae.FaultMessage, "unknown variant") || strings.Contains(ae.FaultMessage, "Invalid request method"))
				if err != nil && !errors.As(err, &ae) {
					t.Errorf("%s on %s: %v (not an API answer)", f, b.Name(), err)
					continue
				}
				has := fcapi.Supported(v, f)
				switch {
				case has && unknown:
					t.Errorf("%s: the client's table says %s has it, but firecracker refused it: %v", f, b.Name(), err)
				case !has && !unknown && !lenient[f]:
					t.Errorf("%s: the client's table says %s lacks it, but firecracker took it (%v)", f, b.Name(), err)
				}
			}
		})
	}
}

// TestRealOversizedBodyLeavesNoStrayAnswers: each real firecracker
// refuses MMDS data over its payload limit and answers the rest of the
// body as further requests; the client sends such a body on a connection
// of its own, so those answers reach nobody (net/http would log them to
// the process's standard logger as unsolicited), and the next request
// works.
func TestRealOversizedBodyLeavesNoStrayAnswers(t *testing.T) {
	var logged syncBuffer
	log.SetOutput(&logged)
	t.Cleanup(func() { log.SetOutput(os.Stderr) })
	for _, b := range realfc.Binaries(t) {
		t.Run(b.Name(), func(t *testing.T) {
			ctx := context.Background()
			c := startReal(t, b, t.TempDir(), "big")
			big := map[string]string{"k": strings.Repeat("x", 60000)}
			var apiErr *fcapi.APIError
			if err := c.PutMMDS(ctx, big); !errors.As(err, &apiErr) || apiErr.StatusCode != 400 {
				t.Fatalf("PUT /mmds of 60 KB: %v, want status 400", err)
			}
			if err := c.PutMMDS(ctx, map[string]string{"k": "v"}); err != nil {
				t.Fatalf("the next request: %v", err)
			}
			var got map[string]string
			if err := c.MMDS(ctx, &got); err != nil || got["k"] != "v" {
				t.Fatalf("MMDS after: %v, %v", got, err)
			}
			time.Sleep(100 * time.Millisecond) // the stray answers follow at once
			if s := logged.String(); strings.Contains(s, "Unsolicited") {
				t.Errorf("stray answers reached net/http: %.200s", s)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
