package fcapi

import (
	"context"
	"encoding/json"
	"reflect"
	"strconv"
	"testing"
)

func ptr[T any](v T) *T { return &v }

func mustVersion(t testing.TB, s string) *Version {
	t.Helper()
	v, err := ParseVersion(s)
	if err != nil {
		t.Fatal(err)
	}
	return &v
}

// golden is one request the client must send byte for byte.
type golden struct {
	name   string
	target string // "" = newest
	call   func(context.Context, *Client) error
	method string
	path   string
	body   string // "" = no body
}

var goldens = []golden{
	// machine-config
	{name: "PutMachineConfig/min", call: func(ctx context.Context, c *Client) error {
		return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 2, MemSizeMiB: 256})
	}, method: "PUT", path: "/machine-config", body: `{"vcpu_count":2,"mem_size_mib":256}`},
	{name: "PutMachineConfig/full", call: func(ctx context.Context, c *Client) error {
		return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 2, MemSizeMiB: 256, SMT: true, TrackDirtyPages: true, HugePages: HugePages2M, CPUTemplate: CPUTemplateT2S})
	}, method: "PUT", path: "/machine-config", body: `{"vcpu_count":2,"mem_size_mib":256,"smt":true,"track_dirty_pages":true,"huge_pages":"2M","cpu_template":"T2S"}`},
	{name: "PutMachineConfig/v1.0", target: "1.0.0", call: func(ctx context.Context, c *Client) error {
		return c.PutMachineConfig(ctx, MachineConfig{VCPUCount: 1, MemSizeMiB: 128, CPUTemplate: CPUTemplateC3})
	}, method: "PUT", path: "/machine-config", body: `{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"C3"}`},
	{name: "PatchMachineConfig/mem", call: func(ctx context.Context, c *Client) error {
		return c.PatchMachineConfig(ctx, MachineConfigUpdate{MemSizeMiB: ptr(512)})
	}, method: "PATCH", path: "/machine-config", body: `{"mem_size_mib":512}`},
	{name: "PatchMachineConfig/false-is-sent", call: func(ctx context.Context, c *Client) error {
		return c.PatchMachineConfig(ctx, MachineConfigUpdate{SMT: ptr(false), TrackDirtyPages: ptr(false)})
	}, method: "PATCH", path: "/machine-config", body: `{"smt":false,"track_dirty_pages":false}`},
	{name: "PatchMachineConfig/all", call: func(ctx context.Context, c *Client) error {
		return c.PatchMachineConfig(ctx, MachineConfigUpdate{VCPUCount: ptr(4), MemSizeMiB: ptr(1024), SMT: ptr(true), TrackDirtyPages: ptr(true), HugePages: HugePagesNone, CPUTemplate: CPUTemplateNone})
	}, method: "PATCH", path: "/machine-config", body: `{"vcpu_count":4,"mem_size_mib":1024,"smt":true,"track_dirty_pages":true,"huge_pages":"None","cpu_template":"None"}`},

	// boot-source
	{name: "PutBootSource/min", call: func(ctx context.Context, c *Client) error {
		return c.PutBootSource(ctx, BootSource{KernelImagePath: "/k/vmlinux"})
	}, method: "PUT", path: "/boot-source", body: `{"kernel_image_path":"/k/vmlinux"}`},
	{name: "PutBootSource/full", call: func(ctx context.Context, c *Client) error {
		return c.PutBootSource(ctx, BootSource{KernelImagePath: "/k/vmlinux", BootArgs: "console=ttyS0 reboot=k", InitrdPath: "/k/initrd"})
	}, method: "PUT", path: "/boot-source", body: `{"kernel_image_path":"/k/vmlinux","boot_args":"console=ttyS0 reboot=k","initrd_path":"/k/initrd"}`},

	// drives
	{name: "PutDrive/virtio-min", call: func(ctx context.Context, c *Client) error {
		return c.PutDrive(ctx, Drive{DriveID: "rootfs", PathOnHost: "/img/root.ext4", IsRootDevice: true})
	}, method: "PUT", path: "/drives/rootfs", body: `{"drive_id":"rootfs","path_on_host":"/img/root.ext4","is_root_device":true,"is_read_only":false}`},
	{name: "PutDrive/virtio-full", call: func(ctx context.Context, c *Client) error {
		return c.PutDrive(ctx, Drive{
			DriveID: "data_1", PathOnHost: "/img/d.ext4", IsReadOnly: true, PartUUID: "abcd-01",
			CacheType: CacheTypeWriteback, IOEngine: IOEngineAsync,
			RateLimiter: &RateLimiter{Bandwidth: &TokenBucket{Size: 1 << 20, RefillTime: 100, OneTimeBurst: 4096}, Ops: &TokenBucket{Size: 100, RefillTime: 1000}},
		})
	}, method: "PUT", path: "/drives/data_1", body: `{"drive_id":"data_1","path_on_host":"/img/d.ext4","is_root_device":false,"is_read_only":true,"partuuid":"abcd-01","cache_type":"Writeback","rate_limiter":{"bandwidth":{"size":1048576,"refill_time":100,"one_time_burst":4096},"ops":{"size":100,"refill_time":1000}},"io_engine":"Async"}`},
	{name: "PutDrive/vhost-user", call: func(ctx context.Context, c *Client) error {
		return c.PutDrive(ctx, Drive{DriveID: "vu", Socket: "/run/vu.sock"})
	}, method: "PUT", path: "/drives/vu", body: `{"drive_id":"vu","is_root_device":false,"socket":"/run/vu.sock"}`},
	{name: "PatchDrive/path", call: func(ctx context.Context, c *Client) error {
		return c.PatchDrive(ctx, PartialDrive{DriveID: "rootfs", PathOnHost: "/img/new.ext4"})
	}, method: "PATCH", path: "/drives/rootfs", body: `{"drive_id":"rootfs","path_on_host":"/img/new.ext4"}`},
	{name: "PatchDrive/ratelimit", call: func(ctx context.Context, c *Client) error {
		return c.PatchDrive(ctx, PartialDrive{DriveID: "rootfs", RateLimiter: &RateLimiter{Ops: &TokenBucket{}}})
	}, method: "PATCH", path: "/drives/rootfs", body: `{"drive_id":"rootfs","rate_limiter":{"ops":{"size":0,"refill_time":0}}}`},

	// network interfaces
	{name: "PutNetworkInterface/min", call: func(ctx context.Context, c *Client) error {
		return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0"})
	}, method: "PUT", path: "/network-interfaces/eth0", body: `{"iface_id":"eth0","host_dev_name":"tap0"}`},
	{name: "PutNetworkInterface/full", call: func(ctx context.Context, c *Client) error {
		return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:AC:10:00:02", MTU: 1400,
			RxRateLimiter: &RateLimiter{Bandwidth: &TokenBucket{Size: 10, RefillTime: 1}}, TxRateLimiter: &RateLimiter{Ops: &TokenBucket{Size: 5, RefillTime: 2}}})
	}, method: "PUT", path: "/network-interfaces/eth0", body: `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:AC:10:00:02","mtu":1400,"rx_rate_limiter":{"bandwidth":{"size":10,"refill_time":1}},"tx_rate_limiter":{"ops":{"size":5,"refill_time":2}}}`},
	{name: "PatchNetworkInterface", call: func(ctx context.Context, c *Client) error {
		return c.PatchNetworkInterface(ctx, PartialNetworkInterface{IfaceID: "eth0", RxRateLimiter: &RateLimiter{Bandwidth: &TokenBucket{Size: 0, RefillTime: 0}}})
	}, method: "PATCH", path: "/network-interfaces/eth0", body: `{"iface_id":"eth0","rx_rate_limiter":{"bandwidth":{"size":0,"refill_time":0}}}`},

	// vsock, entropy, serial
	{name: "PutVsock", call: func(ctx context.Context, c *Client) error {
		return c.PutVsock(ctx, Vsock{GuestCID: 3, UDSPath: "/run/v.sock"})
	}, method: "PUT", path: "/vsock", body: `{"guest_cid":3,"uds_path":"/run/v.sock"}`},
	{name: "PutEntropy/default", call: func(ctx context.Context, c *Client) error {
		return c.PutEntropy(ctx, EntropyDevice{})
	}, method: "PUT", path: "/entropy", body: `{}`},
	{name: "PutEntropy/ratelimit", call: func(ctx context.Context, c *Client) error {
		return c.PutEntropy(ctx, EntropyDevice{RateLimiter: &RateLimiter{Bandwidth: &TokenBucket{Size: 1000, RefillTime: 100}}})
	}, method: "PUT", path: "/entropy", body: `{"rate_limiter":{"bandwidth":{"size":1000,"refill_time":100}}}`},
	{name: "PutSerial", call: func(ctx context.Context, c *Client) error {
		return c.PutSerial(ctx, SerialDevice{SerialOutPath: "/run/console.log", RateLimiter: &TokenBucket{Size: 4096, RefillTime: 1000}})
	}, method: "PUT", path: "/serial", body: `{"serial_out_path":"/run/console.log","rate_limiter":{"size":4096,"refill_time":1000}}`},

	// MMDS
	{name: "PutMMDS/map", call: func(ctx context.Context, c *Client) error {
		return c.PutMMDS(ctx, map[string]any{"latest": map[string]any{"meta-data": map[string]string{"id": "vm1"}}})
	}, method: "PUT", path: "/mmds", body: `{"latest":{"meta-data":{"id":"vm1"}}}`},
	{name: "PutMMDS/raw", call: func(ctx context.Context, c *Client) error {
		return c.PutMMDS(ctx, json.RawMessage(`{"a": [1, 2]}`))
	}, method: "PUT", path: "/mmds", body: `{"a": [1, 2]}`},
	{name: "PatchMMDS/bytes", call: func(ctx context.Context, c *Client) error {
		return c.PatchMMDS(ctx, []byte(`{"a":null}`))
	}, method: "PATCH", path: "/mmds", body: `{"a":null}`},
	{name: "PutMMDSConfig/min", call: func(ctx context.Context, c *Client) error {
		return c.PutMMDSConfig(ctx, MMDSConfig{NetworkInterfaces: []string{"eth0"}})
	}, method: "PUT", path: "/mmds/config", body: `{"network_interfaces":["eth0"]}`},
	{name: "PutMMDSConfig/full", call: func(ctx context.Context, c *Client) error {
		return c.PutMMDSConfig(ctx, MMDSConfig{Version: MMDSVersionV2, NetworkInterfaces: []string{"eth0", "eth1"}, IPv4Address: "169.254.170.2", IMDSCompat: true})
	}, method: "PUT", path: "/mmds/config", body: `{"version":"V2","network_interfaces":["eth0","eth1"],"ipv4_address":"169.254.170.2","imds_compat":true}`},

	// logger, metrics
	{name: "PutLogger/min", call: func(ctx context.Context, c *Client) error {
		return c.PutLogger(ctx, Logger{LogPath: "/run/fc.log"})
	}, method: "PUT", path: "/logger", body: `{"log_path":"/run/fc.log"}`},
	{name: "PutLogger/full", call: func(ctx context.Context, c *Client) error {
		return c.PutLogger(ctx, Logger{LogPath: "/run/fc.log", Level: "trace", ShowLevel: true, ShowLogOrigin: true, Module: "api_server::request"})
	}, method: "PUT", path: "/logger", body: `{"log_path":"/run/fc.log","level":"trace","show_level":true,"show_log_origin":true,"module":"api_server::request"}`},
	{name: "PutLogger/no-path", call: func(ctx context.Context, c *Client) error {
		return c.PutLogger(ctx, Logger{Level: LogLevelWarning})
	}, method: "PUT", path: "/logger", body: `{"level":"Warning"}`},
	{name: "PutMetrics/min", call: func(ctx context.Context, c *Client) error {
		return c.PutMetrics(ctx, Metrics{MetricsPath: "/run/fc.metrics"})
	}, method: "PUT", path: "/metrics", body: `{"metrics_path":"/run/fc.metrics"}`},
	{name: "PutMetrics/full", call: func(ctx context.Context, c *Client) error {
		return c.PutMetrics(ctx, Metrics{MetricsPath: "/run/fc.metrics", EmitID: true, Properties: map[string]string{"z": "1", "a": "2"}})
	}, method: "PUT", path: "/metrics", body: `{"metrics_path":"/run/fc.metrics","emit_id":true,"properties":{"a":"2","z":"1"}}`},

	// actions, vm
	{name: "InstanceStart", call: func(ctx context.Context, c *Client) error { return c.InstanceStart(ctx) },
		method: "PUT", path: "/actions", body: `{"action_type":"InstanceStart"}`},
	{name: "SendCtrlAltDel", call: func(ctx context.Context, c *Client) error { return c.SendCtrlAltDel(ctx) },
		method: "PUT", path: "/actions", body: `{"action_type":"SendCtrlAltDel"}`},
	{name: "FlushMetrics", call: func(ctx context.Context, c *Client) error { return c.FlushMetrics(ctx) },
		method: "PUT", path: "/actions", body: `{"action_type":"FlushMetrics"}`},
	{name: "PauseVM", call: func(ctx context.Context, c *Client) error { return c.PauseVM(ctx) },
		method: "PATCH", path: "/vm", body: `{"state":"Paused"}`},
	{name: "ResumeVM", call: func(ctx context.Context, c *Client) error { return c.ResumeVM(ctx) },
		method: "PATCH", path: "/vm", body: `{"state":"Resumed"}`},

	// snapshots
	{name: "CreateSnapshot/min", call: func(ctx context.Context, c *Client) error {
		return c.CreateSnapshot(ctx, SnapshotCreateParams{MemFilePath: "/s/mem", SnapshotPath: "/s/vm"})
	}, method: "PUT", path: "/snapshot/create", body: `{"mem_file_path":"/s/mem","snapshot_path":"/s/vm"}`},
	{name: "CreateSnapshot/diff", call: func(ctx context.Context, c *Client) error {
		return c.CreateSnapshot(ctx, SnapshotCreateParams{MemFilePath: "/s/mem", SnapshotPath: "/s/vm", SnapshotType: SnapshotTypeDiff})
	}, method: "PUT", path: "/snapshot/create", body: `{"mem_file_path":"/s/mem","snapshot_path":"/s/vm","snapshot_type":"Diff"}`},
	{name: "LoadSnapshot/newest-memfile", call: func(ctx context.Context, c *Client) error {
		return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s/vm", MemFilePath: "/s/mem"})
	}, method: "PUT", path: "/snapshot/load", body: `{"snapshot_path":"/s/vm","mem_backend":{"backend_type":"File","backend_path":"/s/mem"}}`},
	{name: "LoadSnapshot/newest-full", call: func(ctx context.Context, c *Client) error {
		return c.LoadSnapshot(ctx, SnapshotLoadParams{
			SnapshotPath: "/s/vm", MemBackend: &MemoryBackend{BackendType: MemBackendUffd, BackendPath: "/s/uffd.sock"},
			TrackDirtyPages: true, ResumeVM: true,
			NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "tap9"}},
			VsockOverride:    &VsockOverride{UDSPath: "/s/v.sock"}, ClockRealtime: true, HugePages: SnapshotHugePages2M,
		})
	}, method: "PUT", path: "/snapshot/load", body: `{"snapshot_path":"/s/vm","mem_backend":{"backend_type":"Uffd","backend_path":"/s/uffd.sock"},"track_dirty_pages":true,"resume_vm":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap9"}],"vsock_override":{"uds_path":"/s/v.sock"},"clock_realtime":true,"huge_pages":"2M"}`},
	{name: "LoadSnapshot/v1.0", target: "1.0.0", call: func(ctx context.Context, c *Client) error {
		return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s/vm", MemBackend: &MemoryBackend{BackendType: MemBackendFile, BackendPath: "/s/mem"}, TrackDirtyPages: true, ResumeVM: true})
	}, method: "PUT", path: "/snapshot/load", body: `{"snapshot_path":"/s/vm","mem_file_path":"/s/mem","enable_diff_snapshots":true,"resume_vm":true}`},
	{name: "LoadSnapshot/v1.1-memfile", target: "1.1.0", call: func(ctx context.Context, c *Client) error {
		return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s/vm", MemFilePath: "/s/mem"})
	}, method: "PUT", path: "/snapshot/load", body: `{"snapshot_path":"/s/vm","mem_backend":{"backend_type":"File","backend_path":"/s/mem"}}`},
	{name: "LoadSnapshot/v1.12-dirty", target: "1.12.1", call: func(ctx context.Context, c *Client) error {
		return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s/vm", MemFilePath: "/s/mem", TrackDirtyPages: true, NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "tap1"}}})
	}, method: "PUT", path: "/snapshot/load", body: `{"snapshot_path":"/s/vm","mem_backend":{"backend_type":"File","backend_path":"/s/mem"},"enable_diff_snapshots":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}]}`},
	{name: "LoadSnapshot/v1.13-dirty", target: "1.13.0", call: func(ctx context.Context, c *Client) error {
		return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s/vm", MemFilePath: "/s/mem", TrackDirtyPages: true})
	}, method: "PUT", path: "/snapshot/load", body: `{"snapshot_path":"/s/vm","mem_backend":{"backend_type":"File","backend_path":"/s/mem"},"track_dirty_pages":true}`},

	// balloon
	{name: "PutBalloon/min", call: func(ctx context.Context, c *Client) error {
		return c.PutBalloon(ctx, Balloon{})
	}, method: "PUT", path: "/balloon", body: `{"amount_mib":0,"deflate_on_oom":false}`},
	{name: "PutBalloon/full", call: func(ctx context.Context, c *Client) error {
		return c.PutBalloon(ctx, Balloon{AmountMiB: 64, DeflateOnOOM: true, StatsPollingIntervalS: 1, FreePageHinting: true, FreePageReporting: true})
	}, method: "PUT", path: "/balloon", body: `{"amount_mib":64,"deflate_on_oom":true,"stats_polling_interval_s":1,"free_page_hinting":true,"free_page_reporting":true}`},
	{name: "PatchBalloon", call: func(ctx context.Context, c *Client) error {
		return c.PatchBalloon(ctx, BalloonUpdate{AmountMiB: 0})
	}, method: "PATCH", path: "/balloon", body: `{"amount_mib":0}`},
	{name: "PatchBalloonStats", call: func(ctx context.Context, c *Client) error {
		return c.PatchBalloonStats(ctx, BalloonStatsUpdate{StatsPollingIntervalS: 5})
	}, method: "PATCH", path: "/balloon/statistics", body: `{"stats_polling_interval_s":5}`},
}

func TestGoldenBodies(t *testing.T) {
	fs := newFakeServer(t)
	for _, g := range goldens {
		t.Run(g.name, func(t *testing.T) {
			fs.reset()
			opts := &Options{}
			if g.target != "" {
				opts.Version = mustVersion(t, g.target)
			}
			c := fs.client(t, opts)
			if err := g.call(context.Background(), c); err != nil {
				t.Fatalf("call: %v", err)
			}
			reqs := fs.requests()
			if len(reqs) != 1 {
				t.Fatalf("server saw %d requests, want 1", len(reqs))
			}
			checkRequest(t, reqs[0], g.method, g.path, g.body)
		})
	}
}

// checkRequest asserts method, path, exact body and the framing rules.
func checkRequest(t *testing.T, r recorded, method, path, body string) {
	t.Helper()
	if r.Method != method || r.Path != path {
		t.Errorf("request %s %s, want %s %s", r.Method, r.Path, method, path)
	}
	if r.Body != body {
		t.Errorf("body\n got %s\nwant %s", r.Body, body)
	}
	if r.Host != "localhost" {
		t.Errorf("Host %q, want localhost", r.Host)
	}
	if len(r.TransferEncoding) != 0 {
		t.Errorf("Transfer-Encoding %v, want none", r.TransferEncoding)
	}
	if body == "" {
		if r.ContentLength != 0 || r.Header.Get("Content-Length") != "" {
			t.Errorf("bodiless request has Content-Length %q (%d)", r.Header.Get("Content-Length"), r.ContentLength)
		}
		return
	}
	if got := r.Header.Get("Content-Length"); got != strconv.Itoa(len(body)) {
		t.Errorf("Content-Length header %q, want %d", got, len(body))
	}
	if r.Header.Get("Content-Type") != "application/json" {
		t.Errorf("Content-Type %q, want application/json", r.Header.Get("Content-Type"))
	}
	if !json.Valid([]byte(r.Body)) {
		t.Errorf("body is not valid JSON: %s", r.Body)
	}
}

func TestGetDecoding(t *testing.T) {
	fs := newFakeServer(t)
	c := fs.client(t, nil)
	ctx := context.Background()

	fs.setReply("GET /", 200, `{"app_name":"Firecracker","id":"vm-1","state":"Not started","vmm_version":"1.10.1"}`)
	info, err := c.InstanceInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (InstanceInfo{AppName: "Firecracker", ID: "vm-1", State: StateNotStarted, VMMVersion: "1.10.1"}); info != want {
		t.Errorf("InstanceInfo = %+v, want %+v", info, want)
	}

	fs.setReply("GET /version", 200, `{"firecracker_version":"1.17.0-dev"}`)
	v, raw, err := c.FirecrackerVersion(ctx)
	if err != nil || raw != "1.17.0-dev" || v != (Version{1, 17, 0, "dev"}) {
		t.Errorf("FirecrackerVersion = %v, %q, %v", v, raw, err)
	}
	fs.setReply("GET /version", 200, `{"firecracker_version":"garbage"}`)
	if _, raw, err := c.FirecrackerVersion(ctx); err == nil || raw != "garbage" {
		t.Errorf("FirecrackerVersion(garbage) = %q, %v; want raw and an error", raw, err)
	}

	fs.setReply("GET /machine-config", 200, `{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}`)
	mc, err := c.MachineConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (MachineConfig{VCPUCount: 1, MemSizeMiB: 128, HugePages: HugePagesNone}); mc != want {
		t.Errorf("MachineConfig = %+v, want %+v", mc, want)
	}

	fs.setReply("GET /vm/config", 200, `{
		"balloon": {"amount_mib": 1, "deflate_on_oom": true, "stats_polling_interval_s": 0},
		"drives": [{"drive_id":"rootfs","partuuid":null,"is_root_device":true,"cache_type":"Unsafe","is_read_only":false,"path_on_host":"/r","rate_limiter":null,"io_engine":"Sync","socket":null}],
		"boot-source": {"kernel_image_path":"/k","boot_args":"console=ttyS0","initrd_path":null},
		"cpu-config": null,
		"logger": null,
		"machine-config": {"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false},
		"metrics": null,
		"mmds-config": {"version":"V2","network_interfaces":["eth0"],"ipv4_address":"169.254.169.254","imds_compat":false},
		"network-interfaces": [{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02","rx_rate_limiter":null,"tx_rate_limiter":null}],
		"vsock": {"guest_cid":3,"uds_path":"/v.sock"},
		"entropy": {"rate_limiter": null}
	}`)
	cfg, err := c.VMConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := FullVMConfig{
		Balloon:           &Balloon{AmountMiB: 1, DeflateOnOOM: true},
		Drives:            []Drive{{DriveID: "rootfs", IsRootDevice: true, CacheType: "Unsafe", PathOnHost: "/r", IOEngine: "Sync"}},
		BootSource:        &BootSource{KernelImagePath: "/k", BootArgs: "console=ttyS0"},
		MachineConfig:     &MachineConfig{VCPUCount: 2, MemSizeMiB: 256},
		MMDSConfig:        &MMDSConfig{Version: "V2", NetworkInterfaces: []string{"eth0"}, IPv4Address: "169.254.169.254"},
		NetworkInterfaces: []NetworkInterface{{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:ac:10:00:02"}},
		Vsock:             &Vsock{GuestCID: 3, UDSPath: "/v.sock"},
		Entropy:           &EntropyDevice{},
	}
	cfg.CPUConfig = nil // "null" is kept raw
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("VMConfig =\n%+v\nwant\n%+v", cfg, want)
	}

	fs.setReply("GET /balloon", 200, `{"amount_mib":64,"deflate_on_oom":true,"stats_polling_interval_s":1}`)
	b, err := c.Balloon(ctx)
	if err != nil || b != (Balloon{AmountMiB: 64, DeflateOnOOM: true, StatsPollingIntervalS: 1}) {
		t.Errorf("Balloon = %+v, %v", b, err)
	}

	fs.setReply("GET /balloon/statistics", 200, `{"target_pages":1,"actual_pages":2,"target_mib":3,"actual_mib":4,"swap_in":5,"oom_kill":6,"direct_reclaim":7}`)
	st, err := c.BalloonStats(ctx)
	if err != nil || st != (BalloonStats{TargetPages: 1, ActualPages: 2, TargetMiB: 3, ActualMiB: 4, SwapIn: 5, OOMKill: 6, DirectReclaim: 7}) {
		t.Errorf("BalloonStats = %+v, %v", st, err)
	}

	fs.setReply("GET /mmds", 200, `{"latest":{"id":"vm1"}}`)
	var m map[string]map[string]string
	if err := c.MMDS(ctx, &m); err != nil || m["latest"]["id"] != "vm1" {
		t.Errorf("MMDS = %v, %v", m, err)
	}
	var rawMMDS json.RawMessage
	if err := c.MMDS(ctx, &rawMMDS); err != nil || string(rawMMDS) != `{"latest":{"id":"vm1"}}` {
		t.Errorf("MMDS raw = %s, %v", rawMMDS, err)
	}

	// GETs carry no body.
	for _, r := range fs.requests() {
		if r.Method != "GET" {
			t.Errorf("unexpected %s %s", r.Method, r.Path)
		}
		checkRequest(t, r, "GET", r.Path, "")
	}
}

func TestGetBadJSON(t *testing.T) {
	fs := newFakeServer(t)
	c := fs.client(t, nil)
	fs.setReply("GET /machine-config", 200, `{"vcpu_count":`)
	if _, err := c.MachineConfig(context.Background()); err == nil {
		t.Fatal("truncated JSON decoded without error")
	}
	fs.setReply("GET /machine-config", 200, ``)
	if _, err := c.MachineConfig(context.Background()); err == nil {
		t.Fatal("empty 200 body decoded without error")
	}
}
