package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mvm-dev/microvm/internal/fcstandin"
	"golang.org/x/sys/unix"
)

// msgSerdePrefix starts every body-deserialization fault (serde's wording).
const msgSerdePrefix = "An error occurred when deserializing the json body of a request: "

type vmState int

const (
	stateNotStarted vmState = iota
	stateRunning
	statePaused
)

func (s vmState) String() string {
	switch s {
	case stateRunning:
		return "Running"
	case statePaused:
		return "Paused"
	}
	return "Not started"
}

// Body types (only what the stand-in needs to remember and echo).
type machineConfig struct {
	VcpuCount       int     `json:"vcpu_count"`
	MemSizeMib      int     `json:"mem_size_mib"`
	Smt             bool    `json:"smt"`
	CPUTemplate     *string `json:"cpu_template,omitempty"`
	TrackDirtyPages bool    `json:"track_dirty_pages"`
	HugePages       string  `json:"huge_pages,omitempty"`
}

type machineConfigUpdate struct {
	VcpuCount       *int    `json:"vcpu_count"`
	MemSizeMib      *int    `json:"mem_size_mib"`
	Smt             *bool   `json:"smt"`
	CPUTemplate     *string `json:"cpu_template"`
	TrackDirtyPages *bool   `json:"track_dirty_pages"`
	HugePages       *string `json:"huge_pages"`
}

type bootSource struct {
	KernelImagePath string  `json:"kernel_image_path"`
	BootArgs        *string `json:"boot_args,omitempty"`
	InitrdPath      *string `json:"initrd_path,omitempty"`
}

type driveConfig struct {
	DriveID      string          `json:"drive_id"`
	PathOnHost   *string         `json:"path_on_host,omitempty"`
	IsRootDevice bool            `json:"is_root_device"`
	Partuuid     *string         `json:"partuuid,omitempty"`
	IsReadOnly   *bool           `json:"is_read_only,omitempty"`
	CacheType    string          `json:"cache_type,omitempty"`
	RateLimiter  json.RawMessage `json:"rate_limiter,omitempty"`
	IoEngine     string          `json:"io_engine,omitempty"`
	Socket       *string         `json:"socket,omitempty"`
}

type netConfig struct {
	IfaceID       string          `json:"iface_id"`
	HostDevName   string          `json:"host_dev_name"`
	GuestMac      *string         `json:"guest_mac,omitempty"`
	Mtu           *int            `json:"mtu,omitempty"`
	RxRateLimiter json.RawMessage `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter json.RawMessage `json:"tx_rate_limiter,omitempty"`
}

type vsockConfig struct {
	GuestCid int     `json:"guest_cid"`
	UdsPath  string  `json:"uds_path"`
	VsockID  *string `json:"vsock_id,omitempty"`
}

type balloonConfig struct {
	AmountMib             int   `json:"amount_mib"`
	DeflateOnOom          bool  `json:"deflate_on_oom"`
	StatsPollingIntervalS int   `json:"stats_polling_interval_s"`
	FreePageHinting       *bool `json:"free_page_hinting,omitempty"`
	FreePageReporting     *bool `json:"free_page_reporting,omitempty"`
}

type mmdsConfig struct {
	Version           string   `json:"version"`
	NetworkInterfaces []string `json:"network_interfaces"`
	Ipv4Address       string   `json:"ipv4_address"`
	ImdsCompat        *bool    `json:"imds_compat,omitempty"`
}

type pmemConfig struct {
	ID          string          `json:"id"`
	PathOnHost  string          `json:"path_on_host"`
	RootDevice  bool            `json:"root_device"`
	ReadOnly    bool            `json:"read_only"`
	RateLimiter json.RawMessage `json:"rate_limiter,omitempty"`
}

type hotplugConfig struct {
	TotalSizeMib int `json:"total_size_mib"`
	SlotSizeMib  int `json:"slot_size_mib"`
	BlockSizeMib int `json:"block_size_mib"`
}

// vmConfig is everything that describes the VM (persisted in snapshots).
type vmConfig struct {
	Machine   machineConfig   `json:"machine_config"`
	Boot      *bootSource     `json:"boot_source,omitempty"`
	Drives    []driveConfig   `json:"drives"`
	Nets      []netConfig     `json:"network_interfaces"`
	Vsock     *vsockConfig    `json:"vsock,omitempty"`
	Balloon   *balloonConfig  `json:"balloon,omitempty"`
	Mmds      *mmdsConfig     `json:"mmds_config,omitempty"`
	Entropy   json.RawMessage `json:"entropy,omitempty"`
	CPUConfig json.RawMessage `json:"cpu_config,omitempty"`
	Pmem      []pmemConfig    `json:"pmem,omitempty"`
	Hotplug   *hotplugConfig  `json:"memory_hotplug,omitempty"`
	Serial    json.RawMessage `json:"serial,omitempty"`
}

// vmm is the simulated Firecracker VMM.
type vmm struct {
	opts    Options
	api     string
	version string
	spec    *apiSpec
	stdout  io.Writer
	stderr  io.Writer
	outMu   sync.Mutex
	logger  *logger
	metrics *metrics
	exit    func(code int)

	state            vmState
	bootPath         bool
	restored         bool
	cfg              vmConfig
	driveFiles       map[string]*os.File
	pmemFiles        map[string]*os.File
	taps             map[string]*os.File
	vsock            *vsockDev
	gate             *runGate
	mmdsData         any
	mmdsInit         bool
	metricsSet       bool
	loggerSet        bool
	pendingStop      bool
	exitArmed        bool // FCSTANDIN_EXIT's timer runs
	stopping         bool
	mem              *guestMemory
	memBacking       *os.File // File backend of a restored VM
	uffdKeep         io.Closer
	bootCount        uint64
	restoredArgs     string
	hotplugRequested int
	startTime        time.Time
	sync.Mutex
}

func newVMM(o Options, spec *apiSpec, stdout, stderr io.Writer, exit func(int)) *vmm {
	v := &vmm{
		opts: o, api: spec.api, version: spec.version, spec: spec,
		stdout: stdout, stderr: stderr, exit: exit,
		cfg:        vmConfig{Machine: defaultMachine(spec.api)},
		driveFiles: map[string]*os.File{}, pmemFiles: map[string]*os.File{}, taps: map[string]*os.File{},
		gate: newRunGate(), metrics: newMetrics(o.ID), startTime: time.Now(),
	}
	v.logger = &logger{id: o.ID, level: lvlInfo, stdout: stdout, stdoutMu: &v.outMu,
		missed: func() { v.metrics.inc("logger", "missed_log_count", 1) }}
	return v
}

func defaultMachine(api string) machineConfig {
	m := machineConfig{VcpuCount: 1, MemSizeMib: 128}
	if api == fcstandin.APILatest {
		m.HugePages = "None"
	}
	return m
}

func (v *vmm) log(level int, thread, origin, msg string) { v.logger.log(level, thread, origin, msg) }

// console writes guest serial output (stdout unless PUT /serial set a
// path). The caller holds v's lock.
func (v *vmm) console(lines ...string) {
	if !v.consoleEnabled() {
		return
	}
	var w io.Writer = v.stdout
	var f *os.File
	if len(v.cfg.Serial) > 0 {
		var s struct {
			SerialOutPath *string `json:"serial_out_path"`
		}
		json.Unmarshal(v.cfg.Serial, &s)
		if s.SerialOutPath != nil {
			var err error
			f, err = os.OpenFile(*s.SerialOutPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err != nil {
				v.metrics.inc("uart", "error_count", 1)
				return
			}
			defer f.Close()
			w = f
		}
	}
	v.outMu.Lock()
	defer v.outMu.Unlock()
	for _, l := range lines {
		n, err := io.WriteString(w, l+"\r\n")
		v.metrics.inc("uart", "write_count", uint64(n))
		if err != nil {
			v.metrics.inc("uart", "missed_write_count", 1)
		}
	}
}

// consoleEnabled mirrors a Linux guest: the serial console prints only with
// console=ttyS0 and without 8250.nr_uarts=0 (which Firecracker's default
// boot_args contain).
func (v *vmm) consoleEnabled() bool {
	args := v.bootArgs()
	return strings.Contains(args, "console=ttyS0") && !strings.Contains(args, "8250.nr_uarts=0")
}

const defaultBootArgs = "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce"

func (v *vmm) bootArgs() string {
	if v.cfg.Boot == nil || v.cfg.Boot.BootArgs == nil {
		if v.restored {
			return v.restoredArgs
		}
		return defaultBootArgs
	}
	return *v.cfg.Boot.BootArgs
}

// fault builds a 400 {"fault_message": msg} response.
func (v *vmm) fault(msg string) response {
	v.log(lvlError, "fc_api", "src/firecracker/src/api_server/parsed_request.rs:1", "Received Error. Status code: 400 Bad Request. Message: "+msg)
	b, _ := json.Marshal(map[string]string{"fault_message": msg})
	return response{status: http.StatusBadRequest, body: b}
}

func (v *vmm) noContent() response {
	v.log(lvlInfo, "fc_api", "src/firecracker/src/api_server/parsed_request.rs:1", "The request was executed successfully. Status code: 204 No Content.")
	return response{status: http.StatusNoContent}
}

func (v *vmm) okJSON(x any) response {
	b, err := json.Marshal(x)
	if err != nil {
		return v.fault("Internal error: " + err.Error())
	}
	v.log(lvlInfo, "fc_api", "src/firecracker/src/api_server/parsed_request.rs:1", "The request was executed successfully. Status code: 200 OK.")
	return response{status: http.StatusOK, body: b}
}

func (v *vmm) deprecated(r response, msg string) response {
	if r.status < 300 {
		r.deprecation = true
		v.metrics.inc("deprecated_api", "deprecated_http_api_calls", 1)
		v.log(lvlWarn, "fc_api", "src/firecracker/src/api_server/mod.rs:1", msg)
	}
	return r
}

func (v *vmm) started() bool { return v.state != stateNotStarted }

// checkID applies Firecracker's path-id rule.
func checkID(id string) string {
	if id == "" {
		return fcstandin.MsgEmptyID
	}
	for _, c := range id {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return fcstandin.MsgInvalidID
		}
	}
	return ""
}

// decode parses a JSON body into dst after validating it against the spec
// operation (method, specPath). It returns a fault message or "".
func (v *vmm) decode(method, concretePath string, body []byte, dst any) string {
	var raw any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&raw); err != nil {
		return msgSerdePrefix + jsonSyntaxMessage(body, err) + "."
	}
	if dec.More() {
		line, col := lineCol(body, int(dec.InputOffset()))
		return msgSerdePrefix + fmt.Sprintf("trailing characters at line %d column %d.", line, col+1)
	}
	if msg := v.spec.validateBody(method, concretePath, body); msg != "" {
		return msgSerdePrefix + msg + "."
	}
	if dst != nil {
		if err := json.Unmarshal(body, dst); err != nil {
			return msgSerdePrefix + err.Error() + "."
		}
	}
	return ""
}

// handle routes one request like Firecracker's ParsedRequest::try_from.
func (v *vmm) handle(method, path string, body []byte) response {
	v.Lock()
	defer v.Unlock()
	v.crashOnRequest(method, path, body)
	if len(body) > 0 && method != http.MethodGet {
		v.log(lvlInfo, "fc_api", "src/firecracker/src/api_server/parsed_request.rs:1",
			fmt.Sprintf("The API server received a %s request on %q with body %q.", rustMethod(method), path, string(body)))
	} else {
		v.log(lvlInfo, "fc_api", "src/firecracker/src/api_server/parsed_request.rs:1",
			fmt.Sprintf("The API server received a %s request on %q.", rustMethod(method), path))
	}
	tokens := strings.Split(strings.TrimLeft(path, "/"), "/")
	if n := len(tokens); n > 0 && tokens[n-1] == "" {
		tokens = tokens[:n-1]
	}
	first, next := "", func(i int) string { return "" }
	if len(tokens) > 0 {
		first = tokens[0]
	}
	next = func(i int) string {
		if i < len(tokens) {
			return tokens[i]
		}
		return ""
	}
	has := func(i int) bool { return i < len(tokens) }
	invalid := func() response {
		return v.fault(fmt.Sprintf("Invalid request method and/or path: %s %s.", method, first))
	}
	// gate reports whether the spec version has the operation.
	gate := func(p string) bool { return v.spec.hasRoute(method, p) }
	hasBody := len(body) > 0

	switch method {
	case http.MethodGet:
		if hasBody {
			return v.fault(fcstandin.MsgGetBody)
		}
		switch first {
		case "":
			v.metrics.inc("get_api_requests", "instance_info_count", 1)
			return v.okJSON(struct {
				ID         string `json:"id"`
				State      string `json:"state"`
				VmmVersion string `json:"vmm_version"`
				AppName    string `json:"app_name"`
			}{v.opts.ID, v.state.String(), v.version, "Firecracker"})
		case "version":
			v.metrics.inc("get_api_requests", "vmm_version_count", 1)
			return v.okJSON(map[string]string{"firecracker_version": v.version})
		case "machine-config":
			v.metrics.inc("get_api_requests", "machine_cfg_count", 1)
			return v.okJSON(v.cfg.Machine)
		case "mmds":
			v.metrics.inc("get_api_requests", "mmds_count", 1)
			if !v.mmdsInit || v.mmdsData == nil {
				return v.okJSON(map[string]any{})
			}
			return v.okJSON(v.mmdsData)
		case "vm":
			if next(1) == "config" {
				return v.okJSON(v.fullConfig())
			}
		case "balloon":
			switch {
			case !has(1):
				return v.getBalloon()
			case next(1) == "statistics":
				return v.getBalloonStats()
			case next(1) == "hinting" && next(2) == "status" && gate("/balloon/hinting/status"):
				return v.balloonHinting("status", nil)
			default:
				return v.fault(fmt.Sprintf("Unrecognized GET request path `%s`.", next(1)))
			}
		case "hotplug":
			if next(1) == "memory" && gate("/hotplug/memory") {
				v.metrics.inc("get_api_requests", "hotplug_memory_count", 1)
				return v.getHotplug()
			}
		}
		return invalid()

	case http.MethodPut:
		if !hasBody {
			return v.fault(fcstandin.MsgEmptyPut)
		}
		switch first {
		case "actions":
			return v.putActions(body)
		case "boot-source":
			return v.putBootSource(body)
		case "machine-config":
			return v.putMachineConfig(body)
		case "drives":
			return v.putDrive(body, next(1), has(1))
		case "network-interfaces":
			return v.putNet(body, next(1), has(1))
		case "logger":
			return v.putLogger(body)
		case "metrics":
			return v.putMetrics(body)
		case "mmds":
			switch {
			case !has(1):
				return v.putMmds(body)
			case next(1) == "config":
				return v.putMmdsConfig(body)
			default:
				return v.fault(fmt.Sprintf("Invalid request method and/or path: PUT /mmds/%s.", next(1)))
			}
		case "vsock":
			return v.putVsock(body)
		case "balloon":
			return v.putBalloon(body)
		case "snapshot":
			switch {
			case !has(1):
				return v.fault("Missing snapshot operation type.")
			case next(1) == "create":
				return v.snapshotCreate(body)
			case next(1) == "load":
				return v.snapshotLoad(body)
			default:
				return v.fault(fmt.Sprintf("Invalid request method and/or path: PUT /snapshot/%s.", next(1)))
			}
		case "entropy":
			if gate("/entropy") {
				return v.putSimple(body, "/entropy", &v.cfg.Entropy, "", "")
			}
		case "cpu-config":
			if gate("/cpu-config") {
				return v.putSimple(body, "/cpu-config", &v.cfg.CPUConfig, "put_api_requests", "cpu_cfg")
			}
		case "serial":
			if gate("/serial") {
				return v.putSimple(body, "/serial", &v.cfg.Serial, "put_api_requests", "serial")
			}
		case "pmem":
			if gate("/pmem/x") {
				return v.putPmem(body, next(1), has(1))
			}
		case "hotplug":
			if next(1) == "memory" && gate("/hotplug/memory") {
				return v.putHotplug(body)
			}
		}
		return invalid()

	case http.MethodPatch:
		if first == "balloon" {
			return v.patchBalloon(body, tokens[1:])
		}
		if !hasBody {
			return v.fault(fcstandin.MsgEmptyPatch)
		}
		switch first {
		case "machine-config":
			return v.patchMachineConfig(body)
		case "drives":
			return v.patchDrive(body, next(1), has(1))
		case "network-interfaces":
			return v.patchNet(body, next(1), has(1))
		case "mmds":
			return v.patchMmds(body)
		case "vm":
			return v.patchVM(body)
		case "pmem":
			if gate("/pmem/x") {
				return v.patchPmem(body, next(1), has(1))
			}
		case "hotplug":
			if next(1) == "memory" && gate("/hotplug/memory") {
				return v.patchHotplug(body)
			}
		}
		return invalid()
	}
	if method == http.MethodDelete && (first == "drives" || first == "network-interfaces" || first == "pmem") {
		return v.hotUnplug(first, next(1), has(1))
	}
	return invalid()
}

// hotUnplug is DELETE /drives|network-interfaces|pmem/{id} (latest only, not
// in swagger): post-boot hot-unplug, which needs --enable-pci.
func (v *vmm) hotUnplug(kind, id string, hasID bool) response {
	if !hasID {
		return v.fault(fcstandin.MsgEmptyID)
	}
	if msg := checkID(id); msg != "" {
		return v.fault(msg)
	}
	if !v.started() {
		return v.fault(fcstandin.MsgPreBoot)
	}
	if !v.opts.EnablePCI {
		return v.fault("The requested operation is not supported: device hot-unplug needs the PCI transport (--enable-pci).")
	}
	switch kind {
	case "drives":
		for i, d := range v.cfg.Drives {
			if d.DriveID == id {
				v.cfg.Drives = append(v.cfg.Drives[:i], v.cfg.Drives[i+1:]...)
				if f := v.driveFiles[id]; f != nil {
					f.Close()
					delete(v.driveFiles, id)
				}
				return v.noContent()
			}
		}
	case "network-interfaces":
		for i, n := range v.cfg.Nets {
			if n.IfaceID == id {
				v.cfg.Nets = append(v.cfg.Nets[:i], v.cfg.Nets[i+1:]...)
				if f := v.taps[id]; f != nil {
					f.Close()
					delete(v.taps, id)
				}
				return v.noContent()
			}
		}
	case "pmem":
		for i, p := range v.cfg.Pmem {
			if p.ID == id {
				v.cfg.Pmem = append(v.cfg.Pmem[:i], v.cfg.Pmem[i+1:]...)
				if f := v.pmemFiles[id]; f != nil {
					f.Close()
					delete(v.pmemFiles, id)
				}
				return v.noContent()
			}
		}
	}
	return v.fault("Device manager error: Failed to find the device. Device not found: " + id)
}

func rustMethod(m string) string {
	switch m {
	case http.MethodGet:
		return "Get"
	case http.MethodPut:
		return "Put"
	case http.MethodPatch:
		return "Patch"
	}
	return m
}

// fullConfig renders GET /vm/config.
func (v *vmm) fullConfig() any {
	drives := make([]driveConfig, 0, len(v.cfg.Drives))
	for _, d := range v.cfg.Drives {
		drives = append(drives, normDrive(d, v.api))
	}
	nets := v.cfg.Nets
	if nets == nil {
		nets = []netConfig{}
	}
	machine := v.cfg.Machine
	var boot any
	if v.cfg.Boot != nil && !v.restored {
		boot = v.cfg.Boot
	}
	var mmds any
	if v.cfg.Mmds != nil {
		mmds = v.cfg.Mmds
	}
	out := map[string]any{
		"balloon": nilIfNil(v.cfg.Balloon), "drives": drives, "boot-source": boot,
		"logger": nil, "machine-config": machine, "metrics": nil, "mmds-config": mmds,
		"network-interfaces": nets, "vsock": nilIfNil(v.cfg.Vsock),
	}
	if v.api == fcstandin.APILatest {
		out["cpu-config"] = rawOrNil(v.cfg.CPUConfig)
		out["entropy"] = rawOrNil(v.cfg.Entropy)
		pm := v.cfg.Pmem
		if pm == nil {
			pm = []pmemConfig{}
		}
		out["pmem"] = pm
		out["memory-hotplug"] = nilIfNil(v.cfg.Hotplug)
	}
	return out
}

func nilIfNil[T any](p *T) any {
	if p == nil {
		return nil
	}
	return p
}

func rawOrNil(r json.RawMessage) any {
	if len(r) == 0 {
		return nil
	}
	return r
}

func normDrive(d driveConfig, api string) driveConfig {
	if d.Socket == nil {
		if d.CacheType == "" {
			d.CacheType = "Unsafe"
		}
		if d.IoEngine == "" {
			d.IoEngine = "Sync"
		}
	}
	return d
}

// ---- actions ----

func (v *vmm) putActions(body []byte) response {
	v.metrics.inc("put_api_requests", "actions_count", 1)
	var a struct {
		ActionType string `json:"action_type"`
	}
	if msg := v.decode("PUT", "/actions", body, &a); msg != "" {
		v.metrics.inc("put_api_requests", "actions_fails", 1)
		return v.fault(msg)
	}
	v.crashOnAction(a.ActionType)
	switch a.ActionType {
	case "InstanceStart":
		if v.started() {
			return v.fault(fcstandin.MsgPostBoot)
		}
		return v.instanceStart()
	case "FlushMetrics":
		if !v.started() {
			return v.fault(fcstandin.MsgPreBoot)
		}
		if _, err := v.flushMetrics(); err != nil {
			return v.fault("Internal VMM error: Metrics error: " + err.Error())
		}
		return v.noContent()
	case "SendCtrlAltDel":
		if !v.started() {
			return v.fault(fcstandin.MsgPreBoot)
		}
		v.metrics.inc("i8042", "write_count", 1)
		if v.opts.IgnoreStop {
			return v.noContent() // the guest does not react
		}
		if v.state == statePaused {
			v.pendingStop = true // the guest handles the key press once resumed
		} else {
			v.scheduleStop()
		}
		return v.noContent()
	}
	return v.fault("Invalid action type")
}

func (v *vmm) instanceStart() response {
	if v.cfg.Boot == nil {
		return v.fault(fcstandin.MsgNoKernel)
	}
	if err := checkReadable(v.cfg.Boot.KernelImagePath); err != nil {
		return v.fault("Start microvm error: Cannot load kernel due to invalid memory configuration or invalid kernel image: Failed to read the kernel image: " + err.Error())
	}
	for _, d := range v.cfg.Drives {
		if d.PathOnHost != nil {
			if _, err := os.Stat(*d.PathOnHost); err != nil {
				return v.fault(fmt.Sprintf("Start microvm error: Error configuring the block device %s: %s", d.DriveID, osErr(err)))
			}
		}
	}
	v.bootCount++
	v.mem = newGuestMemory(v.cfg.Machine.MemSizeMib, v.opts.ID, v.bootCount)
	v.setState(stateRunning)
	v.metrics.store("latencies_us", "vmm_resume_vm", 0)
	v.log(lvlInfo, "main", "src/vmm/src/builder.rs:1", "Successfully started microvm that was configured from one single json")
	go v.bootConsole()
	v.afterStartCrash()
	v.afterStartExit()
	return v.noContent()
}

// bootConsole prints boot-like serial output.
func (v *vmm) bootConsole() {
	v.Lock()
	id, mem, vcpus, args := v.opts.ID, v.cfg.Machine.MemSizeMib, v.cfg.Machine.VcpuCount, v.bootArgs()
	nd, nn := len(v.cfg.Drives), len(v.cfg.Nets)
	v.Unlock()
	lines := []string{
		"[    0.000000] Linux version 6.1.141 (fcstandin@mvm) (gcc (Debian 12.2.0-14) 12.2.0) #1 SMP PREEMPT_DYNAMIC",
		"[    0.000000] Command line: " + args,
		fmt.Sprintf("[    0.000000] fcstandin: simulated guest id=%s vcpus=%d mem=%dMiB", id, vcpus, mem),
		fmt.Sprintf("[    0.004000] smpboot: Allowing %d CPUs, 0 hotplug CPUs", vcpus),
	}
	for i := 0; i < nd; i++ {
		lines = append(lines, fmt.Sprintf("[    0.0%d0000] virtio_blk virtio%d: [vd%c] 2048 512-byte logical blocks", 4+i, i, 'a'+i))
	}
	for i := 0; i < nn; i++ {
		lines = append(lines, fmt.Sprintf("[    0.0%d1000] virtio_net virtio%d eth%d: registered", 5+i, nd+i, i))
	}
	lines = append(lines, "[    0.090000] Run /sbin/init as init process", "", "Welcome to the fcstandin guest", "", id+" login: ")
	for _, l := range lines {
		v.gate.waitRunning(0) // a paused guest prints nothing
		v.Lock()
		v.console(l)
		v.Unlock()
	}
}

func (v *vmm) setState(s vmState) {
	v.state = s
	v.gate.set(s == stateRunning)
	if s == stateRunning {
		if v.vsock != nil {
			v.vsock.start()
		}
		if v.pendingStop {
			v.pendingStop = false
			v.scheduleStop()
		}
		v.startPeriodicMetrics()
	}
}

// scheduleStop emulates the guest's reaction to Ctrl+Alt+Del with
// reboot=k: it resets the CPU and Firecracker exits with status 0.
func (v *vmm) scheduleStop() {
	if v.stopping {
		return
	}
	v.stopping = true
	delay := v.opts.StopDelay
	go func() {
		time.Sleep(delay)
		v.Lock()
		v.console("[    5.000000] reboot: Restarting system")
		v.log(lvlInfo, "main", "src/vmm/src/lib.rs:1", "Vmm is stopping.")
		v.flushMetrics()
		v.Unlock()
		v.exit(0)
	}()
}

var periodicOnce sync.Once

func (v *vmm) startPeriodicMetrics() {
	periodicOnce.Do(func() {
		go func() {
			t := time.NewTicker(metricsPeriod())
			defer t.Stop()
			for range t.C {
				v.Lock()
				v.flushMetrics()
				v.Unlock()
			}
		}()
	})
}

func (v *vmm) flushMetrics() (bool, error) {
	if v.started() {
		up := uint64(time.Since(v.startTime).Milliseconds())
		v.metrics.inc("vcpu", "exit_io_out", up/10+1)
		v.metrics.inc("vcpu", "exit_mmio_read", up/50+1)
		v.simulateGuestIO()
	}
	var extra []string
	for _, d := range v.cfg.Drives {
		extra = append(extra, "block_"+d.DriveID)
	}
	for _, n := range v.cfg.Nets {
		extra = append(extra, "net_"+n.IfaceID)
	}
	return v.metrics.flush(extra)
}

// ---- pre-boot configuration ----

func (v *vmm) putBootSource(body []byte) response {
	v.metrics.inc("put_api_requests", "boot_source_count", 1)
	var b bootSource
	if msg := v.decode("PUT", "/boot-source", body, &b); msg != "" {
		v.metrics.inc("put_api_requests", "boot_source_fails", 1)
		return v.fault(msg)
	}
	if v.started() {
		return v.fault(fcstandin.MsgPostBoot)
	}
	v.bootPath = true
	if err := checkReadable(b.KernelImagePath); err != nil {
		v.metrics.inc("put_api_requests", "boot_source_fails", 1)
		return v.fault("Boot source error: The kernel file cannot be opened: " + err.Error())
	}
	if b.InitrdPath != nil {
		if err := checkReadable(*b.InitrdPath); err != nil {
			return v.fault("Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. " + err.Error())
		}
		// Releases up to v1.7 refused an initrd with huge pages; the newest
		// (v1.14.2, checked against the real binary) accept it.
	}
	// Releases from v1.7 (checked against v1.7.0 and v1.14.2) keep the
	// command line in a 2048-byte buffer with its NUL; v1.0 takes more.
	if b.BootArgs != nil && len(*b.BootArgs) >= 2048 && v.api == fcstandin.APILatest {
		v.metrics.inc("put_api_requests", "boot_source_fails", 1)
		return v.fault("Boot source error: The kernel command line is invalid: Invalid cmdline capacity provided.")
	}
	v.cfg.Boot = &b
	return v.noContent()
}

func (v *vmm) putMachineConfig(body []byte) response {
	v.metrics.inc("put_api_requests", "machine_cfg_count", 1)
	var u machineConfigUpdate
	if msg := v.decode("PUT", "/machine-config", body, &u); msg != "" {
		v.metrics.inc("put_api_requests", "machine_cfg_fails", 1)
		return v.fault(msg)
	}
	if v.started() {
		return v.fault(fcstandin.MsgPostBoot)
	}
	v.bootPath = true
	// PUT semantics: omitted optional fields reset to their defaults.
	base := defaultMachine(v.api)
	return v.applyMachine(base, u, body)
}

func (v *vmm) patchMachineConfig(body []byte) response {
	v.metrics.inc("patch_api_requests", "machine_cfg_count", 1)
	var u machineConfigUpdate
	if msg := v.decode("PATCH", "/machine-config", body, &u); msg != "" {
		v.metrics.inc("patch_api_requests", "machine_cfg_fails", 1)
		return v.fault(msg)
	}
	if u == (machineConfigUpdate{}) {
		return v.fault(fcstandin.MsgEmptyPatch)
	}
	if v.started() {
		return v.fault(fcstandin.MsgPostBoot)
	}
	v.bootPath = true
	return v.applyMachine(v.cfg.Machine, u, body)
}

func (v *vmm) applyMachine(m machineConfig, u machineConfigUpdate, body []byte) response {
	if u.VcpuCount != nil {
		m.VcpuCount = *u.VcpuCount
	}
	if u.Smt != nil {
		m.Smt = *u.Smt
	}
	if u.MemSizeMib != nil {
		m.MemSizeMib = *u.MemSizeMib
	}
	if u.TrackDirtyPages != nil {
		m.TrackDirtyPages = *u.TrackDirtyPages
	}
	if u.HugePages != nil {
		m.HugePages = *u.HugePages
	}
	if u.CPUTemplate != nil {
		if *u.CPUTemplate == "None" {
			m.CPUTemplate = nil
		} else {
			t := *u.CPUTemplate
			m.CPUTemplate = &t
		}
	}
	if m.VcpuCount < 1 || m.VcpuCount > 32 || (m.Smt && m.VcpuCount > 1 && m.VcpuCount%2 == 1) {
		return v.fault(fcstandin.MsgVcpuCount)
	}
	if m.MemSizeMib == 0 || (m.HugePages == "2M" || m.HugePages == "Transparent") && m.MemSizeMib%2 != 0 {
		return v.fault(fcstandin.MsgMemSize)
	}
	// v1.7 refused huge pages with a balloon (and with an initrd); the
	// newest real binary (v1.14.2) takes both, and so does the stand-in.
	if v.cfg.Balloon != nil && m.MemSizeMib < v.cfg.Balloon.AmountMib {
		return v.fault("Machine config error: The memory size (MiB) is smaller than the previously set balloon device target size.")
	}
	v.cfg.Machine = m
	r := v.noContent()
	if u.CPUTemplate != nil && v.api == fcstandin.APILatest {
		r = v.deprecated(r, "PUT /machine-config: cpu_template field is deprecated.")
	}
	return r
}

func (v *vmm) putDrive(body []byte, id string, hasID bool) response {
	v.metrics.inc("put_api_requests", "drive_count", 1)
	fail := func(msg string) response { v.metrics.inc("put_api_requests", "drive_fails", 1); return v.fault(msg) }
	if !hasID {
		return fail(fcstandin.MsgEmptyID)
	}
	if msg := checkID(id); msg != "" {
		return fail(msg)
	}
	var d driveConfig
	if msg := v.decode("PUT", "/drives/"+id, body, &d); msg != "" {
		return fail(msg)
	}
	if d.DriveID != id {
		return fail(fcstandin.MsgIDMismatch)
	}
	if v.started() && !v.opts.EnablePCI {
		return v.fault(fcstandin.MsgPostBoot)
	}
	v.bootPath = true
	if d.Socket != nil {
		if d.PathOnHost != nil || d.IsReadOnly != nil || d.IoEngine != "" || len(d.RateLimiter) > 0 {
			return fail("Drive config error: Unable to create the vhost-user-block device: path_on_host, is_read_only, io_engine and rate_limiter must be omitted for vhost-user-block")
		}
		if st, err := os.Stat(*d.Socket); err != nil || st.Mode()&os.ModeSocket == 0 {
			return fail("Drive config error: Unable to create the vhost-user-block device: Vhost-user error: Cannot connect to the backend socket " + *d.Socket)
		}
	} else {
		if d.PathOnHost == nil || d.IsReadOnly == nil {
			return fail("Drive config error: Unable to create the virtio block device: path_on_host and is_read_only are required for a virtio-block drive")
		}
		if d.IoEngine == "Async" {
			return fail("Drive config error: Unable to create the virtio block device: Virtio backend error: Unable to create the io_uring engine: the stand-in host does not support io_uring block devices")
		}
	}
	// Root-device rule: at most one root device.
	for _, o := range v.cfg.Drives {
		if o.IsRootDevice && d.IsRootDevice && o.DriveID != d.DriveID {
			return fail("Drive config error: A root block device already exists!")
		}
	}
	var f *os.File
	if d.PathOnHost != nil {
		var err error
		if f, err = openBacking(*d.PathOnHost, *d.IsReadOnly); err != nil {
			return fail("Drive config error: Unable to create the virtio block device: Virtio backend error: Error manipulating the backing file: " + err.Error())
		}
	}
	if old := v.driveFiles[id]; old != nil {
		old.Close()
		delete(v.driveFiles, id)
	}
	if f != nil {
		v.driveFiles[id] = f
	}
	replaced := false
	for i, o := range v.cfg.Drives {
		if o.DriveID == id {
			v.cfg.Drives[i] = d
			replaced = true
		}
	}
	if !replaced {
		v.cfg.Drives = append(v.cfg.Drives, d)
	}
	// Root device first, like Firecracker's block list.
	for i, o := range v.cfg.Drives {
		if o.IsRootDevice && i != 0 {
			v.cfg.Drives[0], v.cfg.Drives[i] = v.cfg.Drives[i], v.cfg.Drives[0]
		}
	}
	return v.noContent()
}

func (v *vmm) patchDrive(body []byte, id string, hasID bool) response {
	v.metrics.inc("patch_api_requests", "drive_count", 1)
	fail := func(msg string) response { v.metrics.inc("patch_api_requests", "drive_fails", 1); return v.fault(msg) }
	if !hasID {
		return fail(fcstandin.MsgEmptyID)
	}
	if msg := checkID(id); msg != "" {
		return fail(msg)
	}
	var p struct {
		DriveID     string          `json:"drive_id"`
		PathOnHost  *string         `json:"path_on_host"`
		RateLimiter json.RawMessage `json:"rate_limiter"`
	}
	if msg := v.decode("PATCH", "/drives/"+id, body, &p); msg != "" {
		return fail(msg)
	}
	if p.DriveID != id {
		return fail(fcstandin.MsgIDMismatch)
	}
	if !v.started() {
		return v.fault(fcstandin.MsgPreBoot)
	}
	idx := -1
	for i, d := range v.cfg.Drives {
		if d.DriveID == id {
			idx = i
		}
	}
	if idx < 0 {
		return fail("Drive config error: Unable to patch the block device: Device manager error: Failed to find the device. Device not found: " + id)
	}
	d := v.cfg.Drives[idx]
	if p.PathOnHost != nil {
		ro := d.IsReadOnly != nil && *d.IsReadOnly
		f, err := openBacking(*p.PathOnHost, ro)
		if err != nil {
			return fail("Drive config error: Unable to patch the block device: Virtio backend error: Error manipulating the backing file: " + err.Error())
		}
		if old := v.driveFiles[id]; old != nil {
			old.Close()
		}
		v.driveFiles[id] = f
		path := *p.PathOnHost
		d.PathOnHost = &path
	}
	if len(p.RateLimiter) > 0 {
		d.RateLimiter = p.RateLimiter
	}
	v.cfg.Drives[idx] = d
	v.metrics.inc("block", "update_count", 1)
	return v.noContent()
}

var macRe = func(s string) bool {
	if len(s) != 17 {
		return false
	}
	for i, c := range s {
		if i%3 == 2 {
			if c != ':' {
				return false
			}
		} else if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

func (v *vmm) putNet(body []byte, id string, hasID bool) response {
	v.metrics.inc("put_api_requests", "network_count", 1)
	fail := func(msg string) response { v.metrics.inc("put_api_requests", "network_fails", 1); return v.fault(msg) }
	if !hasID {
		return fail(fcstandin.MsgEmptyID)
	}
	if msg := checkID(id); msg != "" {
		return fail(msg)
	}
	var n netConfig
	if msg := v.decode("PUT", "/network-interfaces/"+id, body, &n); msg != "" {
		return fail(msg)
	}
	if n.GuestMac != nil && !macRe(*n.GuestMac) {
		return fail(msgSerdePrefix + fmt.Sprintf("invalid MAC address: %s.", *n.GuestMac))
	}
	if n.IfaceID != id {
		return fail(fmt.Sprintf("The id from the path [%s] does not match the id from the body [%s]!", id, n.IfaceID))
	}
	if v.started() && !v.opts.EnablePCI {
		return v.fault(fcstandin.MsgPostBoot)
	}
	v.bootPath = true
	if n.GuestMac != nil {
		for _, o := range v.cfg.Nets {
			if o.IfaceID != id && o.GuestMac != nil && strings.EqualFold(*o.GuestMac, *n.GuestMac) {
				if v.api == fcstandin.APIv10 {
					return fail(fmt.Sprintf("The guest MAC address %s is already in use.", strings.ToLower(*n.GuestMac)))
				}
				return fail("Network config error: The MAC address is already in use: " + strings.ToLower(*n.GuestMac))
			}
		}
	}
	// An update drops the old device (and its TAP) first.
	if old := v.taps[id]; old != nil {
		old.Close()
		delete(v.taps, id)
		for i, o := range v.cfg.Nets {
			if o.IfaceID == id {
				v.cfg.Nets = append(v.cfg.Nets[:i], v.cfg.Nets[i+1:]...)
				break
			}
		}
	}
	tap, msg := openTap(n.HostDevName, v.api == fcstandin.APIv10)
	if msg != "" {
		if v.api == fcstandin.APIv10 {
			return fail(msg)
		}
		return fail("Network config error: " + msg)
	}
	v.taps[id] = tap
	v.cfg.Nets = append(v.cfg.Nets, n)
	return v.noContent()
}

func (v *vmm) patchNet(body []byte, id string, hasID bool) response {
	v.metrics.inc("patch_api_requests", "network_count", 1)
	fail := func(msg string) response {
		v.metrics.inc("patch_api_requests", "network_fails", 1)
		return v.fault(msg)
	}
	if !hasID {
		return fail(fcstandin.MsgEmptyID)
	}
	if msg := checkID(id); msg != "" {
		return fail(msg)
	}
	var p struct {
		IfaceID       string          `json:"iface_id"`
		RxRateLimiter json.RawMessage `json:"rx_rate_limiter"`
		TxRateLimiter json.RawMessage `json:"tx_rate_limiter"`
	}
	if msg := v.decode("PATCH", "/network-interfaces/"+id, body, &p); msg != "" {
		return fail(msg)
	}
	if p.IfaceID != id {
		return fail(fmt.Sprintf("The id from the path [%s] does not match the id from the body [%s]!", id, p.IfaceID))
	}
	if !v.started() {
		return v.fault(fcstandin.MsgPreBoot)
	}
	for i, n := range v.cfg.Nets {
		if n.IfaceID == id {
			if len(p.RxRateLimiter) > 0 {
				v.cfg.Nets[i].RxRateLimiter = p.RxRateLimiter
			}
			if len(p.TxRateLimiter) > 0 {
				v.cfg.Nets[i].TxRateLimiter = p.TxRateLimiter
			}
			return v.noContent()
		}
	}
	return fail("Network config error: Unable to update the net device: Device manager error: Failed to find the device. Device not found: " + id)
}

func (v *vmm) putLogger(body []byte) response {
	v.metrics.inc("put_api_requests", "logger_count", 1)
	fail := func(msg string) response { v.metrics.inc("put_api_requests", "logger_fails", 1); return v.fault(msg) }
	var l struct {
		LogPath       *string `json:"log_path"`
		Level         *string `json:"level"`
		ShowLevel     *bool   `json:"show_level"`
		ShowLogOrigin *bool   `json:"show_log_origin"`
		Module        *string `json:"module"`
	}
	if msg := v.decode("PUT", "/logger", body, &l); msg != "" {
		return fail(msg)
	}
	level := lvlInfo
	if v.api == fcstandin.APIv10 {
		level = lvlWarn
	}
	if l.Level != nil {
		lv, ok := parseLevel(*l.Level)
		if !ok {
			return fail(msgSerdePrefix + "Invalid LevelFilter.")
		}
		level = lv
	}
	if v.started() {
		return v.fault(fcstandin.MsgPostBoot)
	}
	if v.loggerSet {
		return fail(fcstandin.MsgLoggerTwice)
	}
	var target *os.File
	if l.LogPath != nil {
		f, err := openNonblockExisting(*l.LogPath)
		if err != nil {
			return fail("Logger error: Failed to open target file: " + osErr(err))
		}
		target = f
	}
	v.loggerSet = true
	v.logger.mu.Lock()
	v.logger.level = level
	if target != nil {
		v.logger.target = target
	}
	if l.ShowLevel != nil {
		v.logger.showLevel = *l.ShowLevel
	}
	if l.ShowLogOrigin != nil {
		v.logger.showOrigin = *l.ShowLogOrigin
	}
	if l.Module != nil {
		v.logger.module = *l.Module
	}
	v.logger.mu.Unlock()
	return v.noContent()
}

func (v *vmm) putMetrics(body []byte) response {
	v.metrics.inc("put_api_requests", "metrics_count", 1)
	fail := func(msg string) response { v.metrics.inc("put_api_requests", "metrics_fails", 1); return v.fault(msg) }
	var m struct {
		MetricsPath string            `json:"metrics_path"`
		EmitID      bool              `json:"emit_id"`
		Properties  map[string]string `json:"properties"`
	}
	if msg := v.decode("PUT", "/metrics", body, &m); msg != "" {
		return fail(msg)
	}
	if v.started() {
		return v.fault(fcstandin.MsgPostBoot)
	}
	if v.metricsSet {
		return fail(fcstandin.MsgMetricsTwice)
	}
	f, err := openNonblockExisting(m.MetricsPath)
	if err != nil {
		return fail("Metrics error: " + osErr(err))
	}
	v.metricsSet = true
	v.metrics.mu.Lock()
	v.metrics.file = f
	if v.api == fcstandin.APILatest { // emit_id and properties are 1.17-dev fields
		v.metrics.emitID = m.EmitID
		v.metrics.properties = m.Properties
	}
	v.metrics.mu.Unlock()
	return v.noContent()
}

func (v *vmm) putVsock(body []byte) response {
	v.metrics.inc("put_api_requests", "vsock_count", 1)
	fail := func(msg string) response { v.metrics.inc("put_api_requests", "vsock_fails", 1); return v.fault(msg) }
	var c vsockConfig
	if msg := v.decode("PUT", "/vsock", body, &c); msg != "" {
		return fail(msg)
	}
	if v.started() {
		return v.fault(fcstandin.MsgPostBoot)
	}
	v.bootPath = true
	if v.vsock != nil && v.vsock.path == c.UdsPath {
		v.vsock.close(true)
		v.vsock = nil
	}
	dev, err := bindVsock(c.UdsPath, v.gate)
	if err != nil {
		if v.api == fcstandin.APIv10 {
			return fail("Cannot create backend for vsock device: UnixBind(" + rustOsDebug(err) + ")")
		}
		return fail("Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: " + osErr(err))
	}
	if v.vsock != nil {
		v.vsock.close(true) // re-PUT replaces the device; the old socket file goes
	}
	dev.onConn = func() { v.metrics.inc("vsock", "conns_added", 1) }
	v.vsock = dev
	v.cfg.Vsock = &c
	r := v.noContent()
	if c.VsockID != nil && v.api == fcstandin.APILatest {
		r = v.deprecated(r, "PUT /vsock: vsock_id field is deprecated.")
	}
	return r
}

func (v *vmm) putBalloon(body []byte) response {
	var b balloonConfig
	if msg := v.decode("PUT", "/balloon", body, &b); msg != "" {
		return v.fault(msg)
	}
	if v.started() {
		return v.fault(fcstandin.MsgPostBoot)
	}
	v.bootPath = true
	if b.AmountMib > v.cfg.Machine.MemSizeMib {
		return v.fault("Balloon config error: Amount of pages requested is too large.")
	}
	v.cfg.Balloon = &b
	return v.noContent()
}

func (v *vmm) getBalloon() response {
	if v.cfg.Balloon == nil {
		if v.started() {
			return v.fault("Internal VMM error: Balloon: Device not found.")
		}
		if v.api == fcstandin.APIv10 {
			return v.fault("No balloon device found.")
		}
		return v.fault("Balloon config error: No balloon device found.")
	}
	return v.okJSON(v.cfg.Balloon)
}

func (v *vmm) getBalloonStats() response {
	if !v.started() {
		return v.fault(fcstandin.MsgPreBoot)
	}
	if v.cfg.Balloon == nil {
		return v.fault("Internal VMM error: Balloon: Device not found.")
	}
	if v.cfg.Balloon.StatsPollingIntervalS == 0 {
		return v.fault("Internal VMM error: Balloon: Statistics are not enabled.")
	}
	pages := v.cfg.Balloon.AmountMib * 256
	total := int64(v.cfg.Machine.MemSizeMib) << 20
	return v.okJSON(map[string]any{
		"target_pages": pages, "actual_pages": pages, "target_mib": v.cfg.Balloon.AmountMib, "actual_mib": v.cfg.Balloon.AmountMib,
		"total_memory": total, "free_memory": total / 2, "available_memory": total * 3 / 4,
		"swap_in": 0, "swap_out": 0, "major_faults": 12, "minor_faults": 3456,
	})
}

func (v *vmm) patchBalloon(body []byte, rest []string) response {
	sub := ""
	if len(rest) > 0 {
		sub = strings.Join(rest, "/")
	}
	switch sub {
	case "":
		if len(body) == 0 {
			return v.fault(fcstandin.MsgEmptyPatch)
		}
		var u struct {
			AmountMib int `json:"amount_mib"`
		}
		if msg := v.decode("PATCH", "/balloon", body, &u); msg != "" {
			return v.fault(msg)
		}
		if !v.started() {
			return v.fault(fcstandin.MsgPreBoot)
		}
		if v.cfg.Balloon == nil {
			return v.fault("Balloon update error: Balloon: Device not found.")
		}
		if u.AmountMib > v.cfg.Machine.MemSizeMib {
			return v.fault("Balloon update error: Balloon: Amount of pages requested is too large.")
		}
		v.cfg.Balloon.AmountMib = u.AmountMib
		return v.noContent()
	case "statistics":
		if len(body) == 0 {
			return v.fault(fcstandin.MsgEmptyPatch)
		}
		var u struct {
			Interval int `json:"stats_polling_interval_s"`
		}
		if msg := v.decode("PATCH", "/balloon/statistics", body, &u); msg != "" {
			return v.fault(msg)
		}
		if !v.started() {
			return v.fault(fcstandin.MsgPreBoot)
		}
		if v.cfg.Balloon == nil {
			return v.fault("Balloon update error: Balloon: Device not found.")
		}
		if (v.cfg.Balloon.StatsPollingIntervalS == 0) != (u.Interval == 0) {
			return v.fault("Balloon update error: Balloon: Cannot enable/disable the statistics after boot.")
		}
		v.cfg.Balloon.StatsPollingIntervalS = u.Interval
		return v.noContent()
	case "hinting/start", "hinting/stop":
		if !v.spec.hasRoute("PATCH", "/balloon/"+sub) {
			break
		}
		if len(body) > 0 && sub == "hinting/start" {
			if msg := v.decode("PATCH", "/balloon/hinting/start", body, nil); msg != "" {
				return v.fault(msg)
			}
		}
		return v.balloonHinting(strings.TrimPrefix(sub, "hinting/"), body)
	}
	if len(body) == 0 {
		return v.fault(fcstandin.MsgEmptyPatch)
	}
	return v.fault(fmt.Sprintf("Unrecognized PATCH request path `%s`.", sub))
}

func (v *vmm) balloonHinting(op string, _ []byte) response {
	if !v.started() {
		return v.fault(fcstandin.MsgPreBoot)
	}
	if v.cfg.Balloon == nil {
		return v.fault("Balloon update error: Balloon: Device not found.")
	}
	if v.cfg.Balloon.FreePageHinting == nil || !*v.cfg.Balloon.FreePageHinting {
		return v.fault("Balloon update error: Balloon: Free page hinting is not enabled.")
	}
	if op == "status" {
		return v.okJSON(map[string]int{"host_cmd": 2, "guest_cmd": 2})
	}
	return v.noContent()
}

func (v *vmm) putMmds(body []byte) response {
	v.metrics.inc("put_api_requests", "mmds_count", 1)
	var data any
	if msg := v.decode("PUT", "/mmds", body, &data); msg != "" {
		v.metrics.inc("put_api_requests", "mmds_fails", 1)
		return v.fault(msg)
	}
	if b, _ := json.Marshal(data); int64(len(b)) > v.opts.MMDSSizeLimit {
		return v.tooLarge()
	}
	v.mmdsData, v.mmdsInit = data, true
	return v.noContent()
}

func (v *vmm) tooLarge() response {
	v.log(lvlError, "fc_api", "src/firecracker/src/api_server/parsed_request.rs:1", "Received Error. Status code: 413 Payload too large. Message: "+fcstandin.MsgMmdsTooBig)
	b, _ := json.Marshal(map[string]string{"fault_message": fcstandin.MsgMmdsTooBig})
	return response{status: http.StatusRequestEntityTooLarge, body: b}
}

func (v *vmm) patchMmds(body []byte) response {
	v.metrics.inc("patch_api_requests", "mmds_count", 1)
	var patch any
	if msg := v.decode("PATCH", "/mmds", body, &patch); msg != "" {
		v.metrics.inc("patch_api_requests", "mmds_fails", 1)
		return v.fault(msg)
	}
	if !v.mmdsInit {
		return v.fault(fcstandin.MsgMmdsNotInit)
	}
	merged := mergePatch(deepCopyAny(v.mmdsData), patch)
	if b, _ := json.Marshal(merged); int64(len(b)) > v.opts.MMDSSizeLimit {
		return v.tooLarge()
	}
	v.mmdsData = merged
	return v.noContent()
}

// mergePatch applies an RFC 7396 JSON merge patch.
func mergePatch(target, patch any) any {
	pm, ok := patch.(map[string]any)
	if !ok {
		return patch
	}
	tm, ok := target.(map[string]any)
	if !ok {
		tm = map[string]any{}
	}
	for k, pv := range pm {
		if pv == nil {
			delete(tm, k)
			continue
		}
		tm[k] = mergePatch(tm[k], pv)
	}
	return tm
}

func deepCopyAny(v any) any {
	b, _ := json.Marshal(v)
	var out any
	json.Unmarshal(b, &out)
	return out
}

func (v *vmm) putMmdsConfig(body []byte) response {
	var c struct {
		Version           *string  `json:"version"`
		NetworkInterfaces []string `json:"network_interfaces"`
		Ipv4Address       *string  `json:"ipv4_address"`
		ImdsCompat        *bool    `json:"imds_compat"`
	}
	if msg := v.decode("PUT", "/mmds/config", body, &c); msg != "" {
		return v.fault(msg)
	}
	if v.started() {
		return v.fault(fcstandin.MsgPostBoot)
	}
	v.bootPath = true
	if len(c.NetworkInterfaces) == 0 {
		return v.fault("MMMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.")
	}
	for _, id := range c.NetworkInterfaces {
		found := false
		for _, n := range v.cfg.Nets {
			found = found || n.IfaceID == id
		}
		if !found {
			return v.fault("MMMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")
		}
	}
	addr := "169.254.169.254"
	if c.Ipv4Address != nil {
		ip := net.ParseIP(*c.Ipv4Address).To4()
		if ip == nil {
			return v.fault(msgSerdePrefix + "invalid IPv4 address syntax.")
		}
		// Like Firecracker (every release): 169.254.1.0-169.254.254.255.
		if !ip.IsLinkLocalUnicast() || ip[2] == 0 || ip[2] == 255 {
			if v.api == fcstandin.APIv10 {
				return v.fault("The MMDS IPv4 address is not link local.")
			}
			return v.fault("MMMDS config error: The MMDS IPv4 address is not link local.")
		}
		addr = ip.String()
	}
	cfg := &mmdsConfig{Version: "V1", NetworkInterfaces: c.NetworkInterfaces, Ipv4Address: addr, ImdsCompat: c.ImdsCompat}
	if c.Version != nil {
		cfg.Version = *c.Version
	}
	v.cfg.Mmds = cfg
	r := v.noContent()
	if cfg.Version == "V1" && v.api == fcstandin.APILatest {
		r = v.deprecated(r, "PUT /mmds/config: V1 is deprecated. Use V2 instead.")
	}
	return r
}

// putSimple stores a body whose only semantic is "pre-boot, remember it".
func (v *vmm) putSimple(body []byte, path string, dst *json.RawMessage, group, name string) response {
	if group != "" {
		v.metrics.inc(group, name+"_count", 1)
	}
	if msg := v.decode("PUT", path, body, nil); msg != "" {
		if group != "" {
			v.metrics.inc(group, name+"_fails", 1)
		}
		return v.fault(msg)
	}
	if v.started() {
		return v.fault(fcstandin.MsgPostBoot)
	}
	if path == "/entropy" {
		v.bootPath = true
	}
	if path == "/serial" {
		var s struct {
			SerialOutPath *string `json:"serial_out_path"`
		}
		json.Unmarshal(body, &s)
		if s.SerialOutPath != nil {
			f, err := os.OpenFile(*s.SerialOutPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
			if err != nil {
				return v.fault("Failed to open the serial output file: " + osErr(err))
			}
			f.Close()
		}
	}
	*dst = append(json.RawMessage(nil), body...)
	return v.noContent()
}

func (v *vmm) putPmem(body []byte, id string, hasID bool) response {
	v.metrics.inc("put_api_requests", "pmem_count", 1)
	fail := func(msg string) response { v.metrics.inc("put_api_requests", "pmem_fails", 1); return v.fault(msg) }
	if !hasID {
		return fail(fcstandin.MsgEmptyID)
	}
	if msg := checkID(id); msg != "" {
		return fail(msg)
	}
	var p pmemConfig
	if msg := v.decode("PUT", "/pmem/"+id, body, &p); msg != "" {
		return fail(msg)
	}
	if p.ID != id {
		return fail(fcstandin.MsgIDMismatch)
	}
	if v.started() && !v.opts.EnablePCI {
		return v.fault(fcstandin.MsgPostBoot)
	}
	v.bootPath = true
	for _, o := range v.cfg.Pmem {
		if o.RootDevice && p.RootDevice && o.ID != id {
			return fail("Pmem device error: Attempt to add pmem as a root device while the root device defined as a pmem device")
		}
	}
	f, err := openBacking(p.PathOnHost, p.ReadOnly)
	if err != nil {
		return fail("Pmem device error: Error accessing backing file: " + err.Error())
	}
	if old := v.pmemFiles[id]; old != nil {
		old.Close()
	}
	v.pmemFiles[id] = f
	for i, o := range v.cfg.Pmem {
		if o.ID == id {
			v.cfg.Pmem[i] = p
			return v.noContent()
		}
	}
	v.cfg.Pmem = append(v.cfg.Pmem, p)
	return v.noContent()
}

func (v *vmm) patchPmem(body []byte, id string, hasID bool) response {
	if !hasID {
		return v.fault(fcstandin.MsgEmptyID)
	}
	if msg := checkID(id); msg != "" {
		return v.fault(msg)
	}
	var p struct {
		ID          string          `json:"id"`
		RateLimiter json.RawMessage `json:"rate_limiter"`
	}
	if msg := v.decode("PATCH", "/pmem/"+id, body, &p); msg != "" {
		return v.fault(msg)
	}
	if p.ID != id {
		return v.fault(fcstandin.MsgIDMismatch)
	}
	if !v.started() {
		return v.fault(fcstandin.MsgPreBoot)
	}
	for i, o := range v.cfg.Pmem {
		if o.ID == id {
			if len(p.RateLimiter) > 0 {
				v.cfg.Pmem[i].RateLimiter = p.RateLimiter
			}
			return v.noContent()
		}
	}
	return v.fault("Pmem device error: Device not found: " + id)
}

func (v *vmm) putHotplug(body []byte) response {
	v.metrics.inc("put_api_requests", "hotplug_memory_count", 1)
	h := hotplugConfig{SlotSizeMib: 128, BlockSizeMib: 2}
	if msg := v.decode("PUT", "/hotplug/memory", body, &h); msg != "" {
		v.metrics.inc("put_api_requests", "hotplug_memory_fails", 1)
		return v.fault(msg)
	}
	if v.started() {
		return v.fault(fcstandin.MsgPostBoot)
	}
	v.bootPath = true
	if h.BlockSizeMib&(h.BlockSizeMib-1) != 0 {
		return v.fault("Memory hotplug config error: Block size must be a power of 2")
	}
	if h.SlotSizeMib%h.BlockSizeMib != 0 || h.TotalSizeMib%h.SlotSizeMib != 0 {
		return v.fault("Memory hotplug config error: Total size must be a multiple of slot size, and slot size a multiple of block size")
	}
	v.cfg.Hotplug = &h
	return v.noContent()
}

func (v *vmm) getHotplug() response {
	if !v.started() {
		return v.fault(fcstandin.MsgPreBoot)
	}
	if v.cfg.Hotplug == nil {
		return v.fault("Internal VMM error: Memory hotplug device not found.")
	}
	return v.okJSON(map[string]int{"total_size_mib": v.cfg.Hotplug.TotalSizeMib, "slot_size_mib": v.cfg.Hotplug.SlotSizeMib,
		"block_size_mib": v.cfg.Hotplug.BlockSizeMib, "plugged_size_mib": v.hotplugRequested, "requested_size_mib": v.hotplugRequested})
}

func (v *vmm) patchHotplug(body []byte) response {
	v.metrics.inc("patch_api_requests", "hotplug_memory_count", 1)
	var u struct {
		Requested int `json:"requested_size_mib"`
	}
	if msg := v.decode("PATCH", "/hotplug/memory", body, &u); msg != "" {
		v.metrics.inc("patch_api_requests", "hotplug_memory_fails", 1)
		return v.fault(msg)
	}
	if !v.started() {
		return v.fault(fcstandin.MsgPreBoot)
	}
	if v.cfg.Hotplug == nil {
		return v.fault("Memory hotplug update error: Memory hotplug device not found.")
	}
	if u.Requested > v.cfg.Hotplug.TotalSizeMib || u.Requested%v.cfg.Hotplug.BlockSizeMib != 0 {
		return v.fault("Memory hotplug update error: Invalid requested size")
	}
	v.hotplugRequested = u.Requested
	return v.noContent()
}

func (v *vmm) patchVM(body []byte) response {
	var s struct {
		State string `json:"state"`
	}
	if msg := v.decode("PATCH", "/vm", body, &s); msg != "" {
		return v.fault(msg)
	}
	if !v.started() {
		return v.fault(fcstandin.MsgPreBoot)
	}
	t0 := time.Now()
	if s.State == "Paused" {
		if v.state == stateRunning && v.mem != nil {
			v.mem.touch(v.cfg.Machine.TrackDirtyPages)
		}
		v.setState(statePaused)
		v.metrics.store("latencies_us", "pause_vm", uint64(time.Since(t0).Microseconds()))
		v.log(lvlInfo, "main", "src/vmm/src/rpc_interface.rs:1", fmt.Sprintf("'pause vm' VMM action took %d us.", time.Since(t0).Microseconds()))
	} else {
		v.setState(stateRunning)
		v.metrics.store("latencies_us", "resume_vm", uint64(time.Since(t0).Microseconds()))
		v.log(lvlInfo, "main", "src/vmm/src/rpc_interface.rs:1", fmt.Sprintf("'resume vm' VMM action took %d us.", time.Since(t0).Microseconds()))
	}
	return v.noContent()
}

// ---- crash on demand ----

func (v *vmm) crashOnRequest(method, path string, _ []byte) {
	for _, c := range v.opts.Crash {
		if c.method == method && c.path == path {
			v.crash(unix.SIGABRT, fmt.Sprintf("fcstandin: crash on demand at %s %s", method, path))
		}
	}
}

func (v *vmm) crashOnAction(action string) {
	for _, c := range v.opts.Crash {
		if c.action == action {
			v.crash(unix.SIGABRT, "fcstandin: crash on demand at action "+action)
		}
	}
}

func (v *vmm) afterStartCrash() {
	for _, c := range v.opts.Crash {
		if c.isAfter {
			d := c.after
			go func() {
				time.Sleep(d)
				v.outMu.Lock() // keep console lines whole
				die(v.stderr, unix.SIGSEGV, fmt.Sprintf("%s [%s:fc_vcpu 0] Shutting down VM after intercepting signal 11, code 1.",
					time.Now().Format("2006-01-02T15:04:05.000000000"), v.opts.ID))
			}()
		}
	}
}

// afterStartExit arms FCSTANDIN_EXIT: that long after the VM starts
// running, the process exits by itself. Status 0 is the guest resetting
// itself (reboot=k: "reboot: Restarting system" on the console, then the
// exit, as after Ctrl+Alt+Del); another status is Firecracker giving up
// on an error ("Vmm is stopping." and that status, paused or not). A
// paused guest resets only once resumed. The caller holds v's lock.
func (v *vmm) afterStartExit() {
	e := v.opts.Exit
	if e == nil || v.exitArmed {
		return
	}
	v.exitArmed = true
	go func() {
		time.Sleep(e.after)
		v.Lock()
		defer v.Unlock()
		if e.kvm {
			// Firecracker v1.7 when KVM stops a vCPU (as kvm-pvm does in
			// an unmodified guest's early boot): it logs the exit, stops
			// and exits with status 0, as after a guest reset.
			v.log(lvlError, "fc_vcpu 0", "src/vmm/src/vstate/vcpu/mod.rs:1", "Received KVM_EXIT_INTERNAL_ERROR signal")
			v.log(lvlInfo, "main", "src/vmm/src/lib.rs:1", "Vmm is stopping.")
			v.flushMetrics()
			v.exit(0)
			return
		}
		if e.code == 0 {
			if v.state == statePaused {
				v.pendingStop = true
			} else {
				v.scheduleStop()
			}
			return
		}
		v.log(lvlError, "fc_vcpu 0", "src/vmm/src/vstate/vcpu.rs:1", fmt.Sprintf("fcstandin: vCPU error on demand (FCSTANDIN_EXIT), exit status %d", e.code))
		v.log(lvlInfo, "main", "src/vmm/src/lib.rs:1", "Vmm is stopping.")
		v.flushMetrics()
		v.exit(e.code)
	}()
}

func (v *vmm) crash(sig unix.Signal, msg string) {
	v.metrics.inc("vmm", "panic_count", 1)
	v.flushMetrics()
	die(v.stderr, sig, panicLine("fc_vmm", msg))
}

func itoa(n int) string { return strconv.Itoa(n) }
