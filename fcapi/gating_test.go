package fcapi

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// gate is one version-gated use: call must be refused with ErrUnsupported
// naming feature on the minor release before the feature's minimum, and
// be sent on the minimum itself.
type gate struct {
	feature Feature
	min     string
	call    func(context.Context, *Client) error
}

var gates = []gate{
	{FeatureSnapshotMemBackend, "1.1.0", func(ctx context.Context, c *Client) error {
		return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s", MemBackend: &MemoryBackend{BackendType: MemBackendUffd, BackendPath: "/u.sock"}})
	}},
	{FeatureCPUTemplateNone, "1.1.0", func(ctx context.Context, c *Client) error {
		return c.PatchMachineConfig(ctx, MachineConfigUpdate{CPUTemplate: CPUTemplateNone})
	}},
	{FeatureCPUTemplateT2S, "1.2.0", func(ctx context.Context, c *Client) error {
		return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1, MemSizeMiB: 128, CPUTemplate: CPUTemplateT2S})
	}},
	{FeatureCPUTemplateT2CL, "1.3.0", func(ctx context.Context, c *Client) error {
		return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1, MemSizeMiB: 128, CPUTemplate: CPUTemplateT2CL})
	}},
	{FeatureCPUTemplateT2A, "1.3.0", func(ctx context.Context, c *Client) error {
		return c.PatchMachineConfig(ctx, MachineConfigUpdate{CPUTemplate: CPUTemplateT2A})
	}},
	{FeatureCPUTemplateV1N1, "1.4.0", func(ctx context.Context, c *Client) error {
		return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1, MemSizeMiB: 128, CPUTemplate: CPUTemplateV1N1})
	}},
	{FeatureEntropy, "1.4.0", func(ctx context.Context, c *Client) error {
		return c.PutEntropy(ctx, EntropyDevice{})
	}},
	{FeatureDriveSocket, "1.6.0", func(ctx context.Context, c *Client) error {
		return c.PutDrive(ctx, Drive{DriveID: "vu", Socket: "/vu.sock"})
	}},
	{FeatureLoggerModule, "1.6.0", func(ctx context.Context, c *Client) error {
		return c.PutLogger(ctx, Logger{LogPath: "/l", Module: "vmm"})
	}},
	{FeatureLoggerNoPath, "1.6.0", func(ctx context.Context, c *Client) error {
		return c.PutLogger(ctx, Logger{Level: LogLevelDebug})
	}},
	{FeatureLoggerLevelTraceOff, "1.6.0", func(ctx context.Context, c *Client) error {
		return c.PutLogger(ctx, Logger{LogPath: "/l", Level: "OFF"})
	}},
	{FeatureMachineHugePages, "1.7.0", func(ctx context.Context, c *Client) error {
		return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1, MemSizeMiB: 128, HugePages: HugePagesNone})
	}},
	{FeatureMachineHugePages, "1.7.0", func(ctx context.Context, c *Client) error {
		return c.PatchMachineConfig(ctx, MachineConfigUpdate{HugePages: HugePages2M})
	}},
	{FeatureSnapshotNetworkOverrides, "1.12.0", func(ctx context.Context, c *Client) error {
		return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m", NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "tap1"}}})
	}},
	{FeatureMMDSIMDSCompat, "1.14.0", func(ctx context.Context, c *Client) error {
		return c.PutMMDSConfig(ctx, MMDSConfig{NetworkInterfaces: []string{"eth0"}, IMDSCompat: true})
	}},
	{FeatureBalloonFreePageHinting, "1.14.0", func(ctx context.Context, c *Client) error {
		return c.PutBalloon(ctx, Balloon{AmountMiB: 1, FreePageHinting: true})
	}},
	{FeatureBalloonFreePageReporting, "1.14.0", func(ctx context.Context, c *Client) error {
		return c.PutBalloon(ctx, Balloon{AmountMiB: 1, FreePageReporting: true})
	}},
	{FeatureSerial, "1.14.0", func(ctx context.Context, c *Client) error {
		return c.PutSerial(ctx, SerialDevice{SerialOutPath: "/c"})
	}},
	{FeatureNetMTU, "1.16.0", func(ctx context.Context, c *Client) error {
		return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", MTU: 9000})
	}},
	{FeatureSnapshotVsockOverride, "1.16.0", func(ctx context.Context, c *Client) error {
		return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m", VsockOverride: &VsockOverride{UDSPath: "/v"}})
	}},
	{FeatureSnapshotClockRealtime, "1.16.0", func(ctx context.Context, c *Client) error {
		return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m", ClockRealtime: true})
	}},
	{FeatureSerialRateLimiter, "1.16.0", func(ctx context.Context, c *Client) error {
		return c.PutSerial(ctx, SerialDevice{RateLimiter: &TokenBucket{Size: 1, RefillTime: 1}})
	}},
	{FeatureMachineHugePagesTransparent, "1.17.0", func(ctx context.Context, c *Client) error {
		return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1, MemSizeMiB: 128, HugePages: HugePagesTransparent})
	}},
	{FeatureSnapshotHugePages, "1.17.0", func(ctx context.Context, c *Client) error {
		return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m", HugePages: SnapshotHugePagesNone})
	}},
	{FeatureMetricsEmitID, "1.17.0", func(ctx context.Context, c *Client) error {
		return c.PutMetrics(ctx, Metrics{MetricsPath: "/m", EmitID: true})
	}},
	{FeatureMetricsProperties, "1.17.0", func(ctx context.Context, c *Client) error {
		return c.PutMetrics(ctx, Metrics{MetricsPath: "/m", Properties: map[string]string{"k": "v"}})
	}},
}

func TestVersionGates(t *testing.T) {
	fs := newFakeServer(t)
	covered := map[Feature]bool{}
	for _, g := range gates {
		covered[g.feature] = true
		min := *mustVersion(t, g.min)
		if mv := MinVersion(g.feature); mv != min {
			t.Errorf("MinVersion(%s) = %v, test table says %v", g.feature, mv, min)
		}
		before := Version{Major: min.Major, Minor: min.Minor - 1, Patch: 9}
		targets := []struct {
			v      *Version
			refuse bool
		}{
			{&Version{Major: 1}, true},
			{&before, true},
			{&min, false},
			{&Version{Major: min.Major, Minor: min.Minor, Pre: "dev"}, false}, // dev build of the release
			{&Version{Major: 1, Minor: 17}, false},
			{&Version{Major: 2}, false},
			{nil, false}, // newest
		}
		for _, tt := range targets {
			name := fmt.Sprintf("%s/%v", g.feature, tt.v)
			t.Run(name, func(t *testing.T) {
				fs.reset()
				c := fs.client(t, &Options{Version: tt.v})
				err := g.call(context.Background(), c)
				sent := len(fs.requests())
				if !tt.refuse {
					if err != nil || sent != 1 {
						t.Fatalf("err %v, %d requests sent; want success", err, sent)
					}
					return
				}
				if !errors.Is(err, ErrUnsupported) {
					t.Fatalf("err %v, want ErrUnsupported", err)
				}
				var ue *UnsupportedError
				if !errors.As(err, &ue) || ue.Feature != g.feature || ue.Min != min || ue.Target != *tt.v {
					t.Fatalf("err %#v, want UnsupportedError{Feature: %q, Min: %v, Target: %v}", err, g.feature, min, *tt.v)
				}
				msg := err.Error()
				if !strings.Contains(msg, string(g.feature)) || !strings.Contains(msg, fmt.Sprintf(">= %d.%d", min.Major, min.Minor)) {
					t.Errorf("message %q does not name the feature and the minimum", msg)
				}
				if sent != 0 {
					t.Errorf("%d requests sent for a refused call", sent)
				}
			})
		}
	}
	for _, f := range Features() {
		if !covered[f] && f != FeatureSnapshotTrackDirtyPages {
			t.Errorf("feature %q has no gate test", f)
		}
	}
}

func TestSetVersionChangesGate(t *testing.T) {
	fs := newFakeServer(t)
	c := fs.client(t, nil)
	ni := NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", MTU: 1500}
	if err := c.PutNetworkInterface(context.Background(), ni); err != nil {
		t.Fatalf("newest: %v", err)
	}
	c.SetVersion(Version{Major: 1, Minor: 15, Patch: 2})
	if err := c.PutNetworkInterface(context.Background(), ni); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("after SetVersion(1.15.2): %v, want ErrUnsupported", err)
	}
}

func TestFeaturesTable(t *testing.T) {
	fs := Features()
	if len(fs) != len(minVersions) {
		t.Fatalf("Features() has %d entries, table %d", len(fs), len(minVersions))
	}
	for i := 1; i < len(fs); i++ {
		if MinVersion(fs[i-1]).Compare(MinVersion(fs[i])) > 0 {
			t.Errorf("Features() not sorted: %s (%v) before %s (%v)", fs[i-1], MinVersion(fs[i-1]), fs[i], MinVersion(fs[i]))
		}
	}
	if MinVersion("something else") != (Version{Major: 1}) {
		t.Error("unknown feature is not 1.0.0")
	}
	if !Supported(Version{Major: 1, Minor: 12}, FeatureSnapshotNetworkOverrides) || Supported(Version{Major: 1, Minor: 11, Patch: 5}, FeatureSnapshotNetworkOverrides) {
		t.Error("Supported disagrees with the table")
	}
}

// TestValidation covers the rules checked before sending: every case is
// refused with a *FieldError naming the field, and nothing is sent.
func TestValidation(t *testing.T) {
	tests := []struct {
		name  string
		field string
		call  func(context.Context, *Client) error
	}{
		{"vcpu 0", "vcpu_count", func(ctx context.Context, c *Client) error {
			return c.PutMachineConfig(ctx, MachineConfig{MemSizeMiB: 128})
		}},
		{"vcpu 33", "vcpu_count", func(ctx context.Context, c *Client) error {
			return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 33, MemSizeMiB: 128})
		}},
		{"mem 0", "mem_size_mib", func(ctx context.Context, c *Client) error {
			return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1})
		}},
		{"bad huge_pages", "huge_pages", func(ctx context.Context, c *Client) error {
			return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1, MemSizeMiB: 128, HugePages: "1G"})
		}},
		{"bad cpu_template", "cpu_template", func(ctx context.Context, c *Client) error {
			return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1, MemSizeMiB: 128, CPUTemplate: "c3"})
		}},
		{"empty patch", "body", func(ctx context.Context, c *Client) error {
			return c.PatchMachineConfig(ctx, MachineConfigUpdate{})
		}},
		{"patch vcpu 0", "vcpu_count", func(ctx context.Context, c *Client) error {
			return c.PatchMachineConfig(ctx, MachineConfigUpdate{VCPUCount: ptr(0)})
		}},
		{"patch mem -1", "mem_size_mib", func(ctx context.Context, c *Client) error {
			return c.PatchMachineConfig(ctx, MachineConfigUpdate{MemSizeMiB: ptr(-1)})
		}},
		{"no kernel", "kernel_image_path", func(ctx context.Context, c *Client) error {
			return c.PutBootSource(ctx, BootSource{BootArgs: "x"})
		}},
		{"drive id empty", "drive_id", func(ctx context.Context, c *Client) error {
			return c.PutDrive(ctx, Drive{PathOnHost: "/r"})
		}},
		{"drive id dash", "drive_id", func(ctx context.Context, c *Client) error {
			return c.PutDrive(ctx, Drive{DriveID: "root-fs", PathOnHost: "/r"})
		}},
		{"drive id traversal", "drive_id", func(ctx context.Context, c *Client) error {
			return c.PutDrive(ctx, Drive{DriveID: "../vm", PathOnHost: "/r"})
		}},
		{"drive no path", "path_on_host", func(ctx context.Context, c *Client) error {
			return c.PutDrive(ctx, Drive{DriveID: "rootfs"})
		}},
		{"vhost-user with path", "path_on_host", func(ctx context.Context, c *Client) error {
			return c.PutDrive(ctx, Drive{DriveID: "vu", Socket: "/s", PathOnHost: "/r"})
		}},
		{"vhost-user read-only", "is_read_only", func(ctx context.Context, c *Client) error {
			return c.PutDrive(ctx, Drive{DriveID: "vu", Socket: "/s", IsReadOnly: true})
		}},
		{"vhost-user io_engine", "io_engine", func(ctx context.Context, c *Client) error {
			return c.PutDrive(ctx, Drive{DriveID: "vu", Socket: "/s", IOEngine: IOEngineSync})
		}},
		{"bad cache_type", "cache_type", func(ctx context.Context, c *Client) error {
			return c.PutDrive(ctx, Drive{DriveID: "d", PathOnHost: "/r", CacheType: "None"})
		}},
		{"negative bucket", "rate_limiter.bandwidth.size", func(ctx context.Context, c *Client) error {
			return c.PutDrive(ctx, Drive{DriveID: "d", PathOnHost: "/r", RateLimiter: &RateLimiter{Bandwidth: &TokenBucket{Size: -1}}})
		}},
		{"patch drive bad id", "drive_id", func(ctx context.Context, c *Client) error {
			return c.PatchDrive(ctx, PartialDrive{DriveID: "a/b"})
		}},
		{"iface id", "iface_id", func(ctx context.Context, c *Client) error {
			return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth 0", HostDevName: "tap0"})
		}},
		{"no tap", "host_dev_name", func(ctx context.Context, c *Client) error {
			return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0"})
		}},
		{"bad mac", "guest_mac", func(ctx context.Context, c *Client) error {
			return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06-00-AC-10-00-02"})
		}},
		{"mtu 67", "mtu", func(ctx context.Context, c *Client) error {
			return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", MTU: 67})
		}},
		{"tx bucket", "tx_rate_limiter.ops.refill_time", func(ctx context.Context, c *Client) error {
			return c.PatchNetworkInterface(ctx, PartialNetworkInterface{IfaceID: "eth0", TxRateLimiter: &RateLimiter{Ops: &TokenBucket{RefillTime: -5}}})
		}},
		{"cid 2", "guest_cid", func(ctx context.Context, c *Client) error {
			return c.PutVsock(ctx, Vsock{GuestCID: 2, UDSPath: "/v"})
		}},
		{"no uds", "uds_path", func(ctx context.Context, c *Client) error {
			return c.PutVsock(ctx, Vsock{GuestCID: 3})
		}},
		{"mmds nil", "body", func(ctx context.Context, c *Client) error {
			return c.PutMMDS(ctx, nil)
		}},
		{"mmds bad raw", "body", func(ctx context.Context, c *Client) error {
			return c.PatchMMDS(ctx, json_raw(`{"a":`))
		}},
		{"mmds unencodable", "body", func(ctx context.Context, c *Client) error {
			return c.PutMMDS(ctx, map[string]any{"f": func() {}})
		}},
		{"mmds out nil", "out", func(ctx context.Context, c *Client) error {
			return c.MMDS(ctx, nil)
		}},
		{"mmds config no ifaces", "network_interfaces", func(ctx context.Context, c *Client) error {
			return c.PutMMDSConfig(ctx, MMDSConfig{Version: MMDSVersionV2})
		}},
		{"mmds config bad iface", "network_interfaces[1]", func(ctx context.Context, c *Client) error {
			return c.PutMMDSConfig(ctx, MMDSConfig{NetworkInterfaces: []string{"eth0", ""}})
		}},
		{"mmds config version", "version", func(ctx context.Context, c *Client) error {
			return c.PutMMDSConfig(ctx, MMDSConfig{NetworkInterfaces: []string{"eth0"}, Version: "V3"})
		}},
		{"mmds config ip", "ipv4_address", func(ctx context.Context, c *Client) error {
			return c.PutMMDSConfig(ctx, MMDSConfig{NetworkInterfaces: []string{"eth0"}, IPv4Address: "10.0.0.1"})
		}},
		{"logger level", "level", func(ctx context.Context, c *Client) error {
			return c.PutLogger(ctx, Logger{LogPath: "/l", Level: "verbose"})
		}},
		{"metrics path", "metrics_path", func(ctx context.Context, c *Client) error {
			return c.PutMetrics(ctx, Metrics{})
		}},
		{"create no mem", "mem_file_path", func(ctx context.Context, c *Client) error {
			return c.CreateSnapshot(ctx, SnapshotCreateParams{SnapshotPath: "/s"})
		}},
		{"create type", "snapshot_type", func(ctx context.Context, c *Client) error {
			return c.CreateSnapshot(ctx, SnapshotCreateParams{SnapshotPath: "/s", MemFilePath: "/m", SnapshotType: "Incremental"})
		}},
		{"load no state", "snapshot_path", func(ctx context.Context, c *Client) error {
			return c.LoadSnapshot(ctx, SnapshotLoadParams{MemFilePath: "/m"})
		}},
		{"load both mem", "mem_backend", func(ctx context.Context, c *Client) error {
			return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m", MemBackend: &MemoryBackend{BackendType: MemBackendFile, BackendPath: "/m"}})
		}},
		{"load no mem", "mem_backend", func(ctx context.Context, c *Client) error {
			return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s"})
		}},
		{"load backend type", "mem_backend.backend_type", func(ctx context.Context, c *Client) error {
			return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s", MemBackend: &MemoryBackend{BackendType: "Memfd", BackendPath: "/m"}})
		}},
		{"load backend path", "mem_backend.backend_path", func(ctx context.Context, c *Client) error {
			return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s", MemBackend: &MemoryBackend{BackendType: MemBackendUffd}})
		}},
		{"load override iface", "network_overrides[0].iface_id", func(ctx context.Context, c *Client) error {
			return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m", NetworkOverrides: []NetworkOverride{{HostDevName: "tap"}}})
		}},
		{"load override tap", "network_overrides[0].host_dev_name", func(ctx context.Context, c *Client) error {
			return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m", NetworkOverrides: []NetworkOverride{{IfaceID: "eth0"}}})
		}},
		{"load vsock override", "vsock_override.uds_path", func(ctx context.Context, c *Client) error {
			return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m", VsockOverride: &VsockOverride{}})
		}},
		{"load 2M needs uffd", "huge_pages", func(ctx context.Context, c *Client) error {
			return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m", HugePages: SnapshotHugePages2M})
		}},
		{"load huge_pages value", "huge_pages", func(ctx context.Context, c *Client) error {
			return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s", MemFilePath: "/m", HugePages: "1G"})
		}},
		{"balloon amount", "amount_mib", func(ctx context.Context, c *Client) error {
			return c.PutBalloon(ctx, Balloon{AmountMiB: -1})
		}},
		{"balloon interval", "stats_polling_interval_s", func(ctx context.Context, c *Client) error {
			return c.PutBalloon(ctx, Balloon{StatsPollingIntervalS: -1})
		}},
		{"patch balloon", "amount_mib", func(ctx context.Context, c *Client) error {
			return c.PatchBalloon(ctx, BalloonUpdate{AmountMiB: -3})
		}},
		{"patch stats 0", "stats_polling_interval_s", func(ctx context.Context, c *Client) error {
			return c.PatchBalloonStats(ctx, BalloonStatsUpdate{})
		}},
		{"entropy bucket", "rate_limiter.ops.one_time_burst", func(ctx context.Context, c *Client) error {
			return c.PutEntropy(ctx, EntropyDevice{RateLimiter: &RateLimiter{Ops: &TokenBucket{OneTimeBurst: -1}}})
		}},
		{"serial bucket", "rate_limiter.size", func(ctx context.Context, c *Client) error {
			return c.PutSerial(ctx, SerialDevice{RateLimiter: &TokenBucket{Size: -1}})
		}},
	}
	fs := newFakeServer(t)
	c := fs.client(t, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs.reset()
			err := tt.call(context.Background(), c)
			if !errors.Is(err, ErrInvalidArgument) {
				t.Fatalf("err %v, want ErrInvalidArgument", err)
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("err %v, want a FieldError for %q", err, tt.field)
			}
			if !strings.Contains(err.Error(), tt.field) || fe.Op == "" || fe.Rule == "" {
				t.Errorf("message %q lacks the op, field or rule", err)
			}
			if n := len(fs.requests()); n != 0 {
				t.Errorf("%d requests sent for an invalid body", n)
			}
		})
	}
}

func json_raw(s string) []byte { return []byte(s) }
