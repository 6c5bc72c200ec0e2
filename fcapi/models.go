package fcapi

import (
	"encoding/json"
)

// The types below mirror the JSON bodies of the Firecracker API
// (snake_case keys). Optional fields are omitted from the JSON when unset,
// so an older Firecracker never sees a field it does not know; fields that
// v1.0 requires are always sent. A bool whose false is the API default is a
// plain bool (false = omitted); pointers are used only where "unset" and
// the zero value differ (PATCH bodies).

// InstanceState is the state reported by GET /.
type InstanceState string

// Instance states.
const (
	StateNotStarted InstanceState = "Not started"
	StateRunning    InstanceState = "Running"
	StatePaused     InstanceState = "Paused"
)

// InstanceInfo is the answer of GET /.
type InstanceInfo struct {
	AppName    string        `json:"app_name"`
	ID         string        `json:"id"`
	State      InstanceState `json:"state"`
	VMMVersion string        `json:"vmm_version"`
}

// HugePages selects the backing of guest memory (machine-config).
type HugePages string

// Huge page settings of machine-config.
const (
	HugePagesNone        HugePages = "None"
	HugePagesTransparent HugePages = "Transparent" // 1.17+
	HugePages2M          HugePages = "2M"          // 1.7+
)

// CPUTemplate is a static CPU template (deprecated by Firecracker in
// favour of custom templates, still accepted).
type CPUTemplate string

// Static CPU templates.
const (
	CPUTemplateC3   CPUTemplate = "C3"
	CPUTemplateT2   CPUTemplate = "T2"
	CPUTemplateT2S  CPUTemplate = "T2S"  // 1.2+
	CPUTemplateT2CL CPUTemplate = "T2CL" // 1.3+
	CPUTemplateT2A  CPUTemplate = "T2A"  // 1.3+
	CPUTemplateV1N1 CPUTemplate = "V1N1" // 1.4+
	CPUTemplateNone CPUTemplate = "None" // 1.1+
)

// MachineConfig is the body of PUT /machine-config and the answer of
// GET /machine-config. PUT resets every omitted optional field to its
// default.
type MachineConfig struct {
	// VCPUCount: 1-32 (with SMT: 1 or even). Required.
	VCPUCount int `json:"vcpu_count"`
	// MemSizeMiB: guest memory in MiB, > 0. Required.
	MemSizeMiB int `json:"mem_size_mib"`
	// SMT enables simultaneous multithreading (x86 only).
	SMT bool `json:"smt,omitempty"`
	// TrackDirtyPages enables KVM dirty page tracking (diff snapshots).
	TrackDirtyPages bool `json:"track_dirty_pages,omitempty"`
	// HugePages: "" (default, omitted), None, 2M (1.7+), Transparent (1.17+).
	HugePages HugePages `json:"huge_pages,omitempty"`
	// CPUTemplate: static CPU template; "" omits it.
	CPUTemplate CPUTemplate `json:"cpu_template,omitempty"`
}

// MachineConfigUpdate is the body of PATCH /machine-config: only the set
// fields are sent, and at least one must be set.
type MachineConfigUpdate struct {
	VCPUCount       *int        `json:"vcpu_count,omitempty"`
	MemSizeMiB      *int        `json:"mem_size_mib,omitempty"`
	SMT             *bool       `json:"smt,omitempty"`
	TrackDirtyPages *bool       `json:"track_dirty_pages,omitempty"`
	HugePages       HugePages   `json:"huge_pages,omitempty"`
	CPUTemplate     CPUTemplate `json:"cpu_template,omitempty"`
}

// BootSource is the body of PUT /boot-source.
type BootSource struct {
	// KernelImagePath: host path of the guest kernel. Required.
	KernelImagePath string `json:"kernel_image_path"`
	// BootArgs: kernel command line; "" lets Firecracker use its default.
	BootArgs string `json:"boot_args,omitempty"`
	// InitrdPath: host path of an initrd; optional.
	InitrdPath string `json:"initrd_path,omitempty"`
}

// TokenBucket is one bucket of a rate limiter.
type TokenBucket struct {
	// Size: total tokens (bytes or operations), >= 0.
	Size int64 `json:"size"`
	// RefillTime: milliseconds to refill the bucket, >= 0.
	RefillTime int64 `json:"refill_time"`
	// OneTimeBurst: initial extra tokens, >= 0; 0 omits it.
	OneTimeBurst int64 `json:"one_time_burst,omitempty"`
}

// RateLimiter limits bandwidth (bytes) and operations independently.
type RateLimiter struct {
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	Ops       *TokenBucket `json:"ops,omitempty"`
}

// Drive cache types.
const (
	CacheTypeUnsafe    = "Unsafe"
	CacheTypeWriteback = "Writeback"
)

// Drive IO engines.
const (
	IOEngineSync  = "Sync"
	IOEngineAsync = "Async"
)

// Drive is the body of PUT /drives/{drive_id}. A virtio-block drive has
// PathOnHost (and always sends is_read_only, which v1.0 requires); a
// vhost-user-block drive (1.6+) has Socket instead, and then PathOnHost,
// IsReadOnly, RateLimiter and IOEngine must be unset.
type Drive struct {
	// DriveID: letters, digits and '_'. Required; also the path id.
	DriveID string `json:"drive_id"`
	// PathOnHost: host path of the backing file (virtio-block).
	PathOnHost string `json:"path_on_host,omitempty"`
	// IsRootDevice: the guest boots from this drive. Always sent.
	IsRootDevice bool `json:"is_root_device"`
	// IsReadOnly: read-only drive. Sent for every virtio-block drive.
	IsReadOnly bool `json:"is_read_only"`
	// PartUUID: partition UUID of the root partition (root device only).
	PartUUID string `json:"partuuid,omitempty"`
	// CacheType: "Unsafe" (default) or "Writeback".
	CacheType string `json:"cache_type,omitempty"`
	// RateLimiter: optional virtio-block rate limiter.
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
	// IOEngine: "Sync" (default) or "Async" (io_uring, host >= 5.10.51).
	IOEngine string `json:"io_engine,omitempty"`
	// Socket: vhost-user-block backend socket (1.6+).
	Socket string `json:"socket,omitempty"`
}

// driveWire is the JSON form of Drive; is_read_only is omitted only for
// vhost-user-block drives.
type driveWire struct {
	DriveID      string       `json:"drive_id"`
	PathOnHost   string       `json:"path_on_host,omitempty"`
	IsRootDevice bool         `json:"is_root_device"`
	IsReadOnly   *bool        `json:"is_read_only,omitempty"`
	PartUUID     string       `json:"partuuid,omitempty"`
	CacheType    string       `json:"cache_type,omitempty"`
	RateLimiter  *RateLimiter `json:"rate_limiter,omitempty"`
	IOEngine     string       `json:"io_engine,omitempty"`
	Socket       string       `json:"socket,omitempty"`
}

// MarshalJSON encodes d, sending is_read_only for every virtio-block drive
// (Socket empty) and never for a vhost-user-block drive.
func (d Drive) MarshalJSON() ([]byte, error) {
	w := driveWire{
		DriveID:      d.DriveID,
		PathOnHost:   d.PathOnHost,
		IsRootDevice: d.IsRootDevice,
		PartUUID:     d.PartUUID,
		CacheType:    d.CacheType,
		RateLimiter:  d.RateLimiter,
		IOEngine:     d.IOEngine,
		Socket:       d.Socket,
	}
	if d.Socket == "" {
		ro := d.IsReadOnly
		w.IsReadOnly = &ro
	}
	return json.Marshal(w)
}

// PartialDrive is the body of PATCH /drives/{drive_id} (post-boot): a new
// backing file and/or rate limiter. With only DriveID set it asks a
// vhost-user drive to refresh its config.
type PartialDrive struct {
	DriveID     string       `json:"drive_id"`
	PathOnHost  string       `json:"path_on_host,omitempty"`
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// NetworkInterface is the body of PUT /network-interfaces/{iface_id}.
type NetworkInterface struct {
	// IfaceID: letters, digits and '_'. Required; also the path id.
	IfaceID string `json:"iface_id"`
	// HostDevName: name of the host TAP device. Required.
	HostDevName string `json:"host_dev_name"`
	// GuestMAC: e.g. "06:00:AC:10:00:02"; "" lets Firecracker pick.
	GuestMAC string `json:"guest_mac,omitempty"`
	// MTU advertised to the guest (68-65535; 1.16+); 0 omits it.
	MTU int `json:"mtu,omitempty"`
	// RxRateLimiter, TxRateLimiter: optional limits.
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// PartialNetworkInterface is the body of PATCH
// /network-interfaces/{iface_id} (post-boot): new rate limiters, merged
// with the existing ones (a bucket of size 0 and refill_time 0 disables a
// limit).
type PartialNetworkInterface struct {
	IfaceID       string       `json:"iface_id"`
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
}

// Vsock is the body of PUT /vsock. Firecracker binds UDSPath at this call
// and fails if the file exists.
type Vsock struct {
	// GuestCID: guest context id, >= 3. Required.
	GuestCID uint32 `json:"guest_cid"`
	// UDSPath: host unix socket path. Required.
	UDSPath string `json:"uds_path"`
}

// MMDS versions.
const (
	MMDSVersionV1 = "V1"
	MMDSVersionV2 = "V2"
)

// MMDSConfig is the body of PUT /mmds/config.
type MMDSConfig struct {
	// Version: "V1" (Firecracker's deprecated default) or "V2"; "" omits it.
	Version string `json:"version,omitempty"`
	// NetworkInterfaces: iface ids (already configured) that may reach the
	// MMDS. Required, non-empty.
	NetworkInterfaces []string `json:"network_interfaces"`
	// IPv4Address: link-local address; "" = 169.254.169.254.
	IPv4Address string `json:"ipv4_address,omitempty"`
	// IMDSCompat: always answer in IMDS text format (1.14+).
	IMDSCompat bool `json:"imds_compat,omitempty"`
}

// Log levels of PUT /logger (case-insensitive for Firecracker).
const (
	LogLevelError   = "Error"
	LogLevelWarning = "Warning"
	LogLevelInfo    = "Info"
	LogLevelDebug   = "Debug"
	LogLevelTrace   = "Trace" // 1.6+
	LogLevelOff     = "Off"   // 1.6+
)

// Logger is the body of PUT /logger (only once, pre-boot).
type Logger struct {
	// LogPath: FIFO or file for the log; required before 1.6, optional
	// after (stdout).
	LogPath string `json:"log_path,omitempty"`
	// Level: Error, Warning, Info (default since 1.5), Debug, Trace, Off.
	Level string `json:"level,omitempty"`
	// ShowLevel, ShowLogOrigin: decorate log lines.
	ShowLevel     bool `json:"show_level,omitempty"`
	ShowLogOrigin bool `json:"show_log_origin,omitempty"`
	// Module: only log messages of this module path prefix (1.6+).
	Module string `json:"module,omitempty"`
}

// Metrics is the body of PUT /metrics (only once, pre-boot).
type Metrics struct {
	// MetricsPath: FIFO or file for the metrics. Required.
	MetricsPath string `json:"metrics_path"`
	// EmitID: add the instance id to every metrics line (1.17+).
	EmitID bool `json:"emit_id,omitempty"`
	// Properties: extra key/values on every metrics line (1.17+).
	Properties map[string]string `json:"properties,omitempty"`
}

// Snapshot types.
const (
	SnapshotTypeFull = "Full"
	SnapshotTypeDiff = "Diff"
)

// SnapshotCreateParams is the body of PUT /snapshot/create (VM paused).
type SnapshotCreateParams struct {
	// MemFilePath: guest memory output file. Required.
	MemFilePath string `json:"mem_file_path"`
	// SnapshotPath: microVM state output file. Required.
	SnapshotPath string `json:"snapshot_path"`
	// SnapshotType: "Full" (default) or "Diff"; "" omits it.
	SnapshotType string `json:"snapshot_type,omitempty"`
}

// Memory backend types of snapshot load.
const (
	MemBackendFile = "File"
	MemBackendUffd = "Uffd"
)

// MemoryBackend says where guest memory comes from on snapshot load.
type MemoryBackend struct {
	// BackendType: "File" or "Uffd".
	BackendType string `json:"backend_type"`
	// BackendPath: the memory file (File) or the UFFD handler's unix
	// socket (Uffd).
	BackendPath string `json:"backend_path"`
}

// NetworkOverride replaces the TAP of an interface on snapshot load.
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// VsockOverride replaces the vsock UDS path on snapshot load.
type VsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// Huge page settings of snapshot load.
const (
	SnapshotHugePagesSnapshot    = "Snapshot"
	SnapshotHugePagesNone        = "None"
	SnapshotHugePagesTransparent = "Transparent"
	SnapshotHugePages2M          = "2M"
)

// SnapshotLoadParams is the input of PUT /snapshot/load. It is not sent
// as is: the client writes the body for the target version (see
// [Client.LoadSnapshot]).
type SnapshotLoadParams struct {
	// SnapshotPath: microVM state file. Required.
	SnapshotPath string
	// MemBackend: where guest memory comes from. Exactly one of MemBackend
	// and MemFilePath must be set.
	MemBackend *MemoryBackend
	// MemFilePath: the memory file; same as MemBackend{File, path}.
	MemFilePath string
	// TrackDirtyPages: enable dirty page tracking after load (sent as
	// track_dirty_pages on 1.13+, enable_diff_snapshots before).
	TrackDirtyPages bool
	// ResumeVM: resume the VM once loaded (else it stays Paused).
	ResumeVM bool
	// NetworkOverrides: new TAP per interface (1.12+).
	NetworkOverrides []NetworkOverride
	// VsockOverride: new vsock UDS path (1.16+).
	VsockOverride *VsockOverride
	// ClockRealtime: advance kvmclock by the wall time elapsed since the
	// snapshot (x86, host >= 5.16; 1.16+).
	ClockRealtime bool
	// HugePages: "" (= Snapshot), Snapshot, None, Transparent, 2M (needs
	// Uffd) (1.17+).
	HugePages string
}

// snapshotLoadWire is the JSON body of PUT /snapshot/load.
type snapshotLoadWire struct {
	SnapshotPath        string            `json:"snapshot_path"`
	MemFilePath         string            `json:"mem_file_path,omitempty"`
	MemBackend          *MemoryBackend    `json:"mem_backend,omitempty"`
	TrackDirtyPages     bool              `json:"track_dirty_pages,omitempty"`
	EnableDiffSnapshots bool              `json:"enable_diff_snapshots,omitempty"`
	ResumeVM            bool              `json:"resume_vm,omitempty"`
	NetworkOverrides    []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride       *VsockOverride    `json:"vsock_override,omitempty"`
	ClockRealtime       bool              `json:"clock_realtime,omitempty"`
	HugePages           string            `json:"huge_pages,omitempty"`
}

// Balloon is the body of PUT /balloon and the answer of GET /balloon.
type Balloon struct {
	// AmountMiB: target balloon size. Required (always sent).
	AmountMiB int `json:"amount_mib"`
	// DeflateOnOOM: deflate under guest memory pressure. Always sent.
	DeflateOnOOM bool `json:"deflate_on_oom"`
	// StatsPollingIntervalS: statistics interval in seconds; 0 = no
	// statistics (cannot be switched on after boot).
	StatsPollingIntervalS int `json:"stats_polling_interval_s,omitempty"`
	// FreePageHinting, FreePageReporting (1.14+).
	FreePageHinting   bool `json:"free_page_hinting,omitempty"`
	FreePageReporting bool `json:"free_page_reporting,omitempty"`
}

// BalloonUpdate is the body of PATCH /balloon (post-boot).
type BalloonUpdate struct {
	AmountMiB int `json:"amount_mib"`
}

// BalloonStatsUpdate is the body of PATCH /balloon/statistics (post-boot;
// only changes a non-zero interval).
type BalloonStatsUpdate struct {
	StatsPollingIntervalS int `json:"stats_polling_interval_s"`
}

// BalloonStats is the answer of GET /balloon/statistics. Counters the
// guest did not report are 0.
type BalloonStats struct {
	TargetPages        int64 `json:"target_pages"`
	ActualPages        int64 `json:"actual_pages"`
	TargetMiB          int64 `json:"target_mib"`
	ActualMiB          int64 `json:"actual_mib"`
	SwapIn             int64 `json:"swap_in,omitempty"`
	SwapOut            int64 `json:"swap_out,omitempty"`
	MajorFaults        int64 `json:"major_faults,omitempty"`
	MinorFaults        int64 `json:"minor_faults,omitempty"`
	FreeMemory         int64 `json:"free_memory,omitempty"`
	TotalMemory        int64 `json:"total_memory,omitempty"`
	AvailableMemory    int64 `json:"available_memory,omitempty"`
	DiskCaches         int64 `json:"disk_caches,omitempty"`
	HugetlbAllocations int64 `json:"hugetlb_allocations,omitempty"`
	HugetlbFailures    int64 `json:"hugetlb_failures,omitempty"`
	OOMKill            int64 `json:"oom_kill,omitempty"`
	AllocStall         int64 `json:"alloc_stall,omitempty"`
	AsyncScan          int64 `json:"async_scan,omitempty"`
	DirectScan         int64 `json:"direct_scan,omitempty"`
	AsyncReclaim       int64 `json:"async_reclaim,omitempty"`
	DirectReclaim      int64 `json:"direct_reclaim,omitempty"`
}

// EntropyDevice is the body of PUT /entropy (1.4+); the zero value sends
// {} (default device).
type EntropyDevice struct {
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// SerialDevice is the body of PUT /serial (1.14+).
type SerialDevice struct {
	// SerialOutPath: file or FIFO for the guest console (else stdout).
	SerialOutPath string `json:"serial_out_path,omitempty"`
	// RateLimiter: optional output limit in bytes (1.16+).
	RateLimiter *TokenBucket `json:"rate_limiter,omitempty"`
}

// Pmem is a virtio-pmem device as reported by GET /vm/config (1.14+).
type Pmem struct {
	ID          string       `json:"id"`
	PathOnHost  string       `json:"path_on_host"`
	RootDevice  bool         `json:"root_device,omitempty"`
	ReadOnly    bool         `json:"read_only,omitempty"`
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// MemoryHotplugConfig is the virtio-mem config as reported by
// GET /vm/config (1.14+).
type MemoryHotplugConfig struct {
	TotalSizeMiB int `json:"total_size_mib,omitempty"`
	SlotSizeMiB  int `json:"slot_size_mib,omitempty"`
	BlockSizeMiB int `json:"block_size_mib,omitempty"`
}

// FullVMConfig is the answer of GET /vm/config. Sections that are not
// configured are nil or empty. (Firecracker's code has used these
// kebab-case keys since v1.0, whatever the v1.0 swagger said.)
type FullVMConfig struct {
	Balloon           *Balloon             `json:"balloon,omitempty"`
	Drives            []Drive              `json:"drives,omitempty"`
	BootSource        *BootSource          `json:"boot-source,omitempty"`
	CPUConfig         json.RawMessage      `json:"cpu-config,omitempty"` // custom CPU template, raw
	Logger            *Logger              `json:"logger,omitempty"`
	MachineConfig     *MachineConfig       `json:"machine-config,omitempty"`
	Metrics           *Metrics             `json:"metrics,omitempty"`
	MemoryHotplug     *MemoryHotplugConfig `json:"memory-hotplug,omitempty"`
	MMDSConfig        *MMDSConfig          `json:"mmds-config,omitempty"`
	NetworkInterfaces []NetworkInterface   `json:"network-interfaces,omitempty"`
	Pmem              []Pmem               `json:"pmem,omitempty"`
	Vsock             *Vsock               `json:"vsock,omitempty"`
	Entropy           *EntropyDevice       `json:"entropy,omitempty"`
}

// Actions of PUT /actions.
const (
	actionInstanceStart  = "InstanceStart"
	actionSendCtrlAltDel = "SendCtrlAltDel"
	actionFlushMetrics   = "FlushMetrics"
)

// actionBody is the body of PUT /actions.
type actionBody struct {
	ActionType string `json:"action_type"`
}

// vmStateBody is the body of PATCH /vm.
type vmStateBody struct {
	State string `json:"state"`
}

// versionBody is the answer of GET /version.
type versionBody struct {
	FirecrackerVersion string `json:"firecracker_version"`
}

// faultBody is Firecracker's error body.
type faultBody struct {
	FaultMessage *string `json:"fault_message"`
}
