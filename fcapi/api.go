package fcapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
)

// newChecker starts the checks of one request.
func (c *Client) newChecker(op string) *checker {
	return &checker{op: op, target: c.target()}
}

// ---- Instance -------------------------------------------------------------

// InstanceInfo returns GET /: the instance id, its state and the VMM
// version.
func (c *Client) InstanceInfo(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.do(ctx, call{method: http.MethodGet, path: "/", out: &info})
	return info, err
}

// FirecrackerVersion returns GET /version: the parsed version and the raw
// string. When the string does not parse, the raw string is still
// returned with the parse error. It does not change the target version;
// call [Client.SetVersion] with the result.
func (c *Client) FirecrackerVersion(ctx context.Context) (Version, string, error) {
	var body versionBody
	if err := c.do(ctx, call{method: http.MethodGet, path: "/version", out: &body}); err != nil {
		return Version{}, "", err
	}
	v, err := ParseVersion(body.FirecrackerVersion)
	if err != nil {
		return Version{}, body.FirecrackerVersion, fmt.Errorf("fcapi: GET /version: %w", err)
	}
	return v, body.FirecrackerVersion, nil
}

// ---- Machine configuration ------------------------------------------------

// MachineConfig returns GET /machine-config (before any PUT: 1 vCPU,
// 128 MiB). It is a cheap readiness probe.
func (c *Client) MachineConfig(ctx context.Context) (MachineConfig, error) {
	var mc MachineConfig
	err := c.do(ctx, call{method: http.MethodGet, path: "/machine-config", out: &mc})
	return mc, err
}

// PutMachineConfig sends PUT /machine-config (pre-boot). Omitted optional
// fields are reset to Firecracker's defaults.
func (c *Client) PutMachineConfig(ctx context.Context, mc MachineConfig) error {
	ck := c.newChecker("PUT /machine-config")
	if mc.VCPUCount < 1 || mc.VCPUCount > 32 {
		ck.invalid("vcpu_count", "must be 1-32, got %d", mc.VCPUCount)
	}
	if mc.MemSizeMiB < 1 {
		ck.invalid("mem_size_mib", "must be > 0, got %d", mc.MemSizeMiB)
	}
	checkHugePages(ck, mc.HugePages)
	checkCPUTemplate(ck, mc.CPUTemplate)
	return c.send(ctx, ck, call{method: http.MethodPut, path: "/machine-config", body: mc})
}

// PatchMachineConfig sends PATCH /machine-config (pre-boot) with the set
// fields only; at least one must be set.
func (c *Client) PatchMachineConfig(ctx context.Context, u MachineConfigUpdate) error {
	ck := c.newChecker("PATCH /machine-config")
	if u == (MachineConfigUpdate{}) {
		ck.invalid("body", "at least one field must be set")
	}
	if u.VCPUCount != nil && (*u.VCPUCount < 1 || *u.VCPUCount > 32) {
		ck.invalid("vcpu_count", "must be 1-32, got %d", *u.VCPUCount)
	}
	if u.MemSizeMiB != nil && *u.MemSizeMiB < 1 {
		ck.invalid("mem_size_mib", "must be > 0, got %d", *u.MemSizeMiB)
	}
	checkHugePages(ck, u.HugePages)
	checkCPUTemplate(ck, u.CPUTemplate)
	return c.send(ctx, ck, call{method: http.MethodPatch, path: "/machine-config", body: u})
}

func checkHugePages(ck *checker, hp HugePages) {
	if hp == "" {
		return
	}
	oneOf(ck, "huge_pages", hp, HugePagesNone, HugePagesTransparent, HugePages2M)
	ck.need(FeatureMachineHugePages)
	if hp == HugePagesTransparent {
		ck.need(FeatureMachineHugePagesTransparent)
	}
}

var cpuTemplateFeatures = map[CPUTemplate]Feature{
	CPUTemplateNone: FeatureCPUTemplateNone,
	CPUTemplateT2S:  FeatureCPUTemplateT2S,
	CPUTemplateT2CL: FeatureCPUTemplateT2CL,
	CPUTemplateT2A:  FeatureCPUTemplateT2A,
	CPUTemplateV1N1: FeatureCPUTemplateV1N1,
}

func checkCPUTemplate(ck *checker, t CPUTemplate) {
	if t == "" {
		return
	}
	oneOf(ck, "cpu_template", t, CPUTemplateC3, CPUTemplateT2, CPUTemplateT2S,
		CPUTemplateT2CL, CPUTemplateT2A, CPUTemplateV1N1, CPUTemplateNone)
	if f, ok := cpuTemplateFeatures[t]; ok {
		ck.need(f)
	}
}

// PutBootSource sends PUT /boot-source (pre-boot).
func (c *Client) PutBootSource(ctx context.Context, bs BootSource) error {
	ck := c.newChecker("PUT /boot-source")
	ck.required("kernel_image_path", bs.KernelImagePath)
	return c.send(ctx, ck, call{method: http.MethodPut, path: "/boot-source", body: bs})
}

// ---- Drives and network interfaces -----------------------------------------

// PutDrive sends PUT /drives/{drive_id} (pre-boot; post-boot it hot-plugs
// on a PCI-enabled Firecracker).
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	ck := c.newChecker("PUT /drives/{drive_id}")
	ck.id("drive_id", d.DriveID)
	if d.Socket == "" {
		ck.required("path_on_host", d.PathOnHost)
	} else {
		ck.need(FeatureDriveSocket)
		const rule = "must be unset for a vhost-user-block drive (socket is set)"
		switch {
		case d.PathOnHost != "":
			ck.invalid("path_on_host", rule)
		case d.IsReadOnly:
			ck.invalid("is_read_only", rule)
		case d.RateLimiter != nil:
			ck.invalid("rate_limiter", rule)
		case d.IOEngine != "":
			ck.invalid("io_engine", rule)
		}
	}
	oneOf(ck, "cache_type", d.CacheType, CacheTypeUnsafe, CacheTypeWriteback)
	oneOf(ck, "io_engine", d.IOEngine, IOEngineSync, IOEngineAsync)
	ck.rateLimiter("rate_limiter", d.RateLimiter)
	return c.send(ctx, ck, call{method: http.MethodPut, path: "/drives/" + d.DriveID, body: d})
}

// PatchDrive sends PATCH /drives/{drive_id} (post-boot): swap the backing
// file and/or the rate limiter.
func (c *Client) PatchDrive(ctx context.Context, d PartialDrive) error {
	ck := c.newChecker("PATCH /drives/{drive_id}")
	ck.id("drive_id", d.DriveID)
	ck.rateLimiter("rate_limiter", d.RateLimiter)
	return c.send(ctx, ck, call{method: http.MethodPatch, path: "/drives/" + d.DriveID, body: d})
}

// PutNetworkInterface sends PUT /network-interfaces/{iface_id} (pre-boot).
func (c *Client) PutNetworkInterface(ctx context.Context, ni NetworkInterface) error {
	ck := c.newChecker("PUT /network-interfaces/{iface_id}")
	ck.id("iface_id", ni.IfaceID)
	ck.required("host_dev_name", ni.HostDevName)
	if ni.GuestMAC != "" {
		if hw, err := net.ParseMAC(ni.GuestMAC); err != nil || len(hw) != 6 || len(ni.GuestMAC) != 17 || strings.Contains(ni.GuestMAC, "-") {
			ck.invalid("guest_mac", "%q: must be six hex bytes separated by ':'", ni.GuestMAC)
		}
	}
	if ni.MTU != 0 {
		if ni.MTU < 68 || ni.MTU > 65535 {
			ck.invalid("mtu", "must be 68-65535, got %d", ni.MTU)
		}
		ck.need(FeatureNetMTU)
	}
	ck.rateLimiter("rx_rate_limiter", ni.RxRateLimiter)
	ck.rateLimiter("tx_rate_limiter", ni.TxRateLimiter)
	return c.send(ctx, ck, call{method: http.MethodPut, path: "/network-interfaces/" + ni.IfaceID, body: ni})
}

// PatchNetworkInterface sends PATCH /network-interfaces/{iface_id}
// (post-boot): update the rate limiters.
func (c *Client) PatchNetworkInterface(ctx context.Context, ni PartialNetworkInterface) error {
	ck := c.newChecker("PATCH /network-interfaces/{iface_id}")
	ck.id("iface_id", ni.IfaceID)
	ck.rateLimiter("rx_rate_limiter", ni.RxRateLimiter)
	ck.rateLimiter("tx_rate_limiter", ni.TxRateLimiter)
	return c.send(ctx, ck, call{method: http.MethodPatch, path: "/network-interfaces/" + ni.IfaceID, body: ni})
}

// ---- vsock, entropy, serial -------------------------------------------------

// PutVsock sends PUT /vsock (pre-boot). Firecracker binds UDSPath now and
// fails if it exists.
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	ck := c.newChecker("PUT /vsock")
	if v.GuestCID < 3 {
		ck.invalid("guest_cid", "must be >= 3, got %d", v.GuestCID)
	}
	ck.required("uds_path", v.UDSPath)
	return c.send(ctx, ck, call{method: http.MethodPut, path: "/vsock", body: v})
}

// PutEntropy sends PUT /entropy (pre-boot; 1.4+). The zero EntropyDevice
// sends {}.
func (c *Client) PutEntropy(ctx context.Context, e EntropyDevice) error {
	ck := c.newChecker("PUT /entropy")
	ck.need(FeatureEntropy)
	ck.rateLimiter("rate_limiter", e.RateLimiter)
	return c.send(ctx, ck, call{method: http.MethodPut, path: "/entropy", body: e})
}

// PutSerial sends PUT /serial (pre-boot; 1.14+): where the guest console
// goes, optionally rate limited (1.16+).
func (c *Client) PutSerial(ctx context.Context, s SerialDevice) error {
	ck := c.newChecker("PUT /serial")
	ck.need(FeatureSerial)
	if s.RateLimiter != nil {
		ck.need(FeatureSerialRateLimiter)
		ck.tokenBucket("rate_limiter", s.RateLimiter)
	}
	return c.send(ctx, ck, call{method: http.MethodPut, path: "/serial", body: s})
}

// ---- MMDS -------------------------------------------------------------------

// mmdsBody encodes MMDS data: json.RawMessage and []byte are sent as is
// (they must hold valid JSON); anything else goes through json.Marshal.
func mmdsBody(ck *checker, data any) []byte {
	var raw []byte
	switch d := data.(type) {
	case nil:
		ck.invalid("body", "must not be nil")
		return nil
	case json.RawMessage:
		raw = d
	case []byte:
		raw = d
	default:
		b, err := json.Marshal(data)
		if err != nil {
			ck.invalid("body", "cannot be encoded as JSON: %v", err)
			return nil
		}
		return b
	}
	if !json.Valid(raw) {
		ck.invalid("body", "is not valid JSON")
		return nil
	}
	return raw
}

// PutMMDS sends PUT /mmds: replaces the whole MMDS data store with data
// (any value json.Marshal accepts; json.RawMessage or []byte are sent as
// is). Firecracker refuses a body over its payload limit (MaxPayloadBytes
// by default) with status 400, and data over its data-store limit (the
// same by default) with 400 or 413 depending on the release.
func (c *Client) PutMMDS(ctx context.Context, data any) error {
	ck := c.newChecker("PUT /mmds")
	body := mmdsBody(ck, data)
	return c.send(ctx, ck, call{method: http.MethodPut, path: "/mmds", rawBody: body})
}

// PatchMMDS sends PATCH /mmds: a JSON merge patch (RFC 7396) of the store.
func (c *Client) PatchMMDS(ctx context.Context, data any) error {
	ck := c.newChecker("PATCH /mmds")
	body := mmdsBody(ck, data)
	return c.send(ctx, ck, call{method: http.MethodPatch, path: "/mmds", rawBody: body})
}

// MMDS sends GET /mmds and decodes the store into out (a pointer, as for
// json.Unmarshal; a *json.RawMessage keeps it raw).
func (c *Client) MMDS(ctx context.Context, out any) error {
	if out == nil {
		return &FieldError{Op: "GET /mmds", Field: "out", Rule: "must be a non-nil pointer"}
	}
	return c.do(ctx, call{method: http.MethodGet, path: "/mmds", out: out})
}

// PutMMDSConfig sends PUT /mmds/config (pre-boot, after the interfaces).
func (c *Client) PutMMDSConfig(ctx context.Context, mc MMDSConfig) error {
	ck := c.newChecker("PUT /mmds/config")
	if len(mc.NetworkInterfaces) == 0 {
		ck.invalid("network_interfaces", "must list at least one iface_id")
	}
	for i, id := range mc.NetworkInterfaces {
		ck.id(fmt.Sprintf("network_interfaces[%d]", i), id)
	}
	oneOf(ck, "version", mc.Version, MMDSVersionV1, MMDSVersionV2)
	if mc.IPv4Address != "" {
		ip := net.ParseIP(mc.IPv4Address)
		// Firecracker takes 169.254.1.0-169.254.254.255 (RFC 3927).
		if ip4 := ip.To4(); ip4 == nil || !ip4.IsLinkLocalUnicast() || ip4[2] == 0 || ip4[2] == 255 || strings.Contains(mc.IPv4Address, ":") {
			ck.invalid("ipv4_address", "%q: must be an IPv4 link-local address from 169.254.1.0 to 169.254.254.255", mc.IPv4Address)
		}
	}
	if mc.IMDSCompat {
		ck.need(FeatureMMDSIMDSCompat)
	}
	return c.send(ctx, ck, call{method: http.MethodPut, path: "/mmds/config", body: mc})
}

// ---- Logger and metrics ----------------------------------------------------

// PutLogger sends PUT /logger (pre-boot, once).
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	ck := c.newChecker("PUT /logger")
	if l.LogPath == "" {
		ck.need(FeatureLoggerNoPath)
	}
	if l.Level != "" {
		known := false
		for _, lv := range []string{LogLevelError, LogLevelWarning, LogLevelInfo, LogLevelDebug, LogLevelTrace, LogLevelOff} {
			if strings.EqualFold(l.Level, lv) {
				known = true
				if lv == LogLevelTrace || lv == LogLevelOff {
					ck.need(FeatureLoggerLevelTraceOff)
				}
			}
		}
		if !known {
			ck.invalid("level", "%q: must be one of Error, Warning, Info, Debug, Trace, Off", l.Level)
		}
	}
	if l.Module != "" {
		ck.need(FeatureLoggerModule)
	}
	return c.send(ctx, ck, call{method: http.MethodPut, path: "/logger", body: l})
}

// PutMetrics sends PUT /metrics (pre-boot, once).
func (c *Client) PutMetrics(ctx context.Context, m Metrics) error {
	ck := c.newChecker("PUT /metrics")
	ck.required("metrics_path", m.MetricsPath)
	if m.EmitID {
		ck.need(FeatureMetricsEmitID)
	}
	if len(m.Properties) > 0 {
		ck.need(FeatureMetricsProperties)
	}
	return c.send(ctx, ck, call{method: http.MethodPut, path: "/metrics", body: m})
}

// ---- Actions and VM state ----------------------------------------------------

func (c *Client) action(ctx context.Context, a string) error {
	return c.do(ctx, call{method: http.MethodPut, path: "/actions", body: actionBody{ActionType: a}})
}

// InstanceStart sends PUT /actions InstanceStart: boots the configured VM
// (once; pre-boot only).
func (c *Client) InstanceStart(ctx context.Context) error {
	return c.action(ctx, actionInstanceStart)
}

// SendCtrlAltDel sends PUT /actions SendCtrlAltDel (post-boot, x86 only):
// the guest's clean-shutdown path; Firecracker exits when the guest resets.
func (c *Client) SendCtrlAltDel(ctx context.Context) error {
	return c.action(ctx, actionSendCtrlAltDel)
}

// FlushMetrics sends PUT /actions FlushMetrics (post-boot).
func (c *Client) FlushMetrics(ctx context.Context) error {
	return c.action(ctx, actionFlushMetrics)
}

// PauseVM sends PATCH /vm {"state":"Paused"} (post-boot; idempotent).
func (c *Client) PauseVM(ctx context.Context) error {
	return c.do(ctx, call{method: http.MethodPatch, path: "/vm", body: vmStateBody{State: "Paused"}})
}

// ResumeVM sends PATCH /vm {"state":"Resumed"} (post-boot; idempotent).
func (c *Client) ResumeVM(ctx context.Context) error {
	return c.do(ctx, call{method: http.MethodPatch, path: "/vm", body: vmStateBody{State: "Resumed"}})
}

// VMConfig returns GET /vm/config, the full configuration.
func (c *Client) VMConfig(ctx context.Context) (FullVMConfig, error) {
	var cfg FullVMConfig
	err := c.do(ctx, call{method: http.MethodGet, path: "/vm/config", out: &cfg})
	return cfg, err
}

// ---- Snapshots ---------------------------------------------------------------

// CreateSnapshot sends PUT /snapshot/create (VM paused), bounded by the
// snapshot timeout.
func (c *Client) CreateSnapshot(ctx context.Context, p SnapshotCreateParams) error {
	ck := c.newChecker("PUT /snapshot/create")
	ck.required("mem_file_path", p.MemFilePath)
	ck.required("snapshot_path", p.SnapshotPath)
	oneOf(ck, "snapshot_type", p.SnapshotType, SnapshotTypeFull, SnapshotTypeDiff)
	return c.send(ctx, ck, call{method: http.MethodPut, path: "/snapshot/create", body: p, snapshot: true})
}

// LoadSnapshot sends PUT /snapshot/load (fresh process, before any
// boot-path resource), bounded by the snapshot timeout. The body is
// written for the target version:
//   - memory: targets with mem_backend (1.1+) get "mem_backend" (a
//     MemFilePath becomes {"backend_type":"File"}); older targets get
//     "mem_file_path", and a Uffd backend is refused with ErrUnsupported;
//   - TrackDirtyPages is sent as "track_dirty_pages" (1.13+) or as the
//     older "enable_diff_snapshots";
//   - network_overrides (1.12+), vsock_override and clock_realtime
//     (1.16+), huge_pages (1.17+) are refused with ErrUnsupported on older
//     targets.
//
// A failed load makes Firecracker exit.
func (c *Client) LoadSnapshot(ctx context.Context, p SnapshotLoadParams) error {
	ck := c.newChecker("PUT /snapshot/load")
	w, err := snapshotLoadBody(ck, p)
	if err != nil {
		return err
	}
	return c.do(ctx, call{method: http.MethodPut, path: "/snapshot/load", body: w, snapshot: true})
}

// snapshotLoadBody checks p and writes the body for the checker's target.
func snapshotLoadBody(ck *checker, p SnapshotLoadParams) (snapshotLoadWire, error) {
	w := snapshotLoadWire{SnapshotPath: p.SnapshotPath, ResumeVM: p.ResumeVM}
	ck.required("snapshot_path", p.SnapshotPath)
	switch {
	case p.MemBackend != nil && p.MemFilePath != "":
		ck.invalid("mem_backend", "exactly one of mem_backend and mem_file_path must be set, got both")
	case p.MemBackend == nil && p.MemFilePath == "":
		ck.invalid("mem_backend", "exactly one of mem_backend and mem_file_path must be set, got neither")
	case p.MemBackend != nil:
		ck.required("mem_backend.backend_type", p.MemBackend.BackendType)
		oneOf(ck, "mem_backend.backend_type", p.MemBackend.BackendType, MemBackendFile, MemBackendUffd)
		ck.required("mem_backend.backend_path", p.MemBackend.BackendPath)
	}
	if ck.err != nil {
		return w, ck.err
	}
	backend := p.MemBackend
	if backend == nil {
		backend = &MemoryBackend{BackendType: MemBackendFile, BackendPath: p.MemFilePath}
	}
	switch {
	case ck.supports(FeatureSnapshotMemBackend):
		mb := *backend
		w.MemBackend = &mb
	case backend.BackendType == MemBackendFile:
		w.MemFilePath = backend.BackendPath
	default: // Uffd on a target without mem_backend
		ck.need(FeatureSnapshotMemBackend)
	}
	if p.TrackDirtyPages {
		if ck.supports(FeatureSnapshotTrackDirtyPages) {
			w.TrackDirtyPages = true
		} else {
			w.EnableDiffSnapshots = true
		}
	}
	if len(p.NetworkOverrides) > 0 {
		ck.need(FeatureSnapshotNetworkOverrides)
		for i, o := range p.NetworkOverrides {
			ck.id(fmt.Sprintf("network_overrides[%d].iface_id", i), o.IfaceID)
			ck.required(fmt.Sprintf("network_overrides[%d].host_dev_name", i), o.HostDevName)
		}
		w.NetworkOverrides = p.NetworkOverrides
	}
	if p.VsockOverride != nil {
		ck.need(FeatureSnapshotVsockOverride)
		ck.required("vsock_override.uds_path", p.VsockOverride.UDSPath)
		w.VsockOverride = p.VsockOverride
	}
	if p.ClockRealtime {
		ck.need(FeatureSnapshotClockRealtime)
		w.ClockRealtime = true
	}
	if p.HugePages != "" {
		oneOf(ck, "huge_pages", p.HugePages, SnapshotHugePagesSnapshot, SnapshotHugePagesNone,
			SnapshotHugePagesTransparent, SnapshotHugePages2M)
		ck.need(FeatureSnapshotHugePages)
		if p.HugePages == SnapshotHugePages2M && backend.BackendType != MemBackendUffd {
			ck.invalid("huge_pages", `"2M" needs mem_backend of type "Uffd"`)
		}
		w.HugePages = p.HugePages
	}
	return w, ck.err
}

// ---- Balloon -----------------------------------------------------------------

// PutBalloon sends PUT /balloon (pre-boot).
func (c *Client) PutBalloon(ctx context.Context, b Balloon) error {
	ck := c.newChecker("PUT /balloon")
	if b.AmountMiB < 0 {
		ck.invalid("amount_mib", "must be >= 0, got %d", b.AmountMiB)
	}
	if b.StatsPollingIntervalS < 0 {
		ck.invalid("stats_polling_interval_s", "must be >= 0, got %d", b.StatsPollingIntervalS)
	}
	if b.FreePageHinting {
		ck.need(FeatureBalloonFreePageHinting)
	}
	if b.FreePageReporting {
		ck.need(FeatureBalloonFreePageReporting)
	}
	return c.send(ctx, ck, call{method: http.MethodPut, path: "/balloon", body: b})
}

// PatchBalloon sends PATCH /balloon (post-boot): a new target size.
func (c *Client) PatchBalloon(ctx context.Context, u BalloonUpdate) error {
	ck := c.newChecker("PATCH /balloon")
	if u.AmountMiB < 0 {
		ck.invalid("amount_mib", "must be >= 0, got %d", u.AmountMiB)
	}
	return c.send(ctx, ck, call{method: http.MethodPatch, path: "/balloon", body: u})
}

// Balloon returns GET /balloon (400 when no balloon is configured).
func (c *Client) Balloon(ctx context.Context) (Balloon, error) {
	var b Balloon
	err := c.do(ctx, call{method: http.MethodGet, path: "/balloon", out: &b})
	return b, err
}

// BalloonStats returns GET /balloon/statistics (post-boot; 400 unless the
// balloon was created with a non-zero stats interval).
func (c *Client) BalloonStats(ctx context.Context) (BalloonStats, error) {
	var s BalloonStats
	err := c.do(ctx, call{method: http.MethodGet, path: "/balloon/statistics", out: &s})
	return s, err
}

// PatchBalloonStats sends PATCH /balloon/statistics (post-boot): a new
// non-zero polling interval (statistics cannot be switched on or off
// after boot).
func (c *Client) PatchBalloonStats(ctx context.Context, u BalloonStatsUpdate) error {
	ck := c.newChecker("PATCH /balloon/statistics")
	if u.StatsPollingIntervalS < 1 {
		ck.invalid("stats_polling_interval_s", "must be > 0 (statistics cannot be switched off after boot), got %d", u.StatsPollingIntervalS)
	}
	return c.send(ctx, ck, call{method: http.MethodPatch, path: "/balloon/statistics", body: u})
}
