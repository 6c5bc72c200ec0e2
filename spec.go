package microvm

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mvm-dev/microvm/image/store"
)

// Spec describes a microVM: what it boots, its drives, CPUs, memory,
// network, vsock and metadata. The zero value is not valid: Kernel,
// RootDrive.Path (or RootDrive.Image), VCPUs and MemoryMiB are required. Call [Spec.WithDefaults]
// for the documented defaults and [Spec.Validate] to check it; every
// runtime does both on Create.
//
// A Spec is plain data: it is stored as JSON in the registry and shown by
// `mvm inspect`, so its fields carry JSON names.
type Spec struct {
	// Kernel is the path of the guest kernel image (vmlinux or bzImage on
	// x86_64). Required.
	Kernel string `json:"kernel"`
	// Initrd is the path of an optional initial ramdisk.
	Initrd string `json:"initrd,omitempty"`
	// BootArgs is the kernel command line. Empty means [DefaultBootArgs].
	// A runtime may append arguments it owns (for example the ip= argument
	// of a managed network interface).
	BootArgs string `json:"boot_args,omitempty"`
	// RootDrive is the root block device. Its Path is required; its ID
	// defaults to "rootfs".
	RootDrive Drive `json:"root_drive"`
	// Drives are extra block devices, attached in order after the root
	// drive.
	Drives []Drive `json:"drives,omitempty"`
	// VCPUs is the number of virtual CPUs, 1 to [MaxVCPUs]; with SMT it
	// must be 1 or even. Required.
	VCPUs int `json:"vcpus"`
	// MemoryMiB is the guest memory in MiB, at least 1 and at most the
	// host's physical memory. Required.
	MemoryMiB int `json:"memory_mib"`
	// SMT enables simultaneous multithreading (x86_64 only).
	SMT bool `json:"smt,omitempty"`
	// HugePages backs guest memory with huge pages: "" (none) or "2M"
	// (MemoryMiB must then be even).
	HugePages HugePages `json:"huge_pages,omitempty"`
	// TrackDirtyPages makes the hypervisor track dirty pages, which diff
	// snapshots need. It costs some guest performance.
	TrackDirtyPages bool `json:"track_dirty_pages,omitempty"`
	// Network lists the guest's network interfaces.
	Network []NetworkInterface `json:"network,omitempty"`
	// Vsock adds a virtio-vsock device.
	Vsock *Vsock `json:"vsock,omitempty"`
	// MMDS configures the microVM metadata service and its initial data.
	MMDS *MMDS `json:"mmds,omitempty"`
	// Labels are free-form key/value pairs kept with the VM. Keys are 1 to
	// 128 characters, values at most 1024; at most 64 labels.
	Labels map[string]string `json:"labels,omitempty"`
}

// Limits and defaults of a [Spec].
const (
	// MaxVCPUs is the most vCPUs Firecracker gives a VM.
	MaxVCPUs = 32
	// MaxBootArgsLen is the longest kernel command line accepted:
	// Firecracker (v1.7 and newer, checked against the real binaries)
	// keeps the command line in 2048 bytes with its NUL, and x86 Linux
	// reads at most 2048 bytes of it. Arguments a runtime appends (such as
	// a managed interface's ip=) must fit too, or Firecracker refuses them.
	MaxBootArgsLen = 2047
	// DefaultBootArgs is the kernel command line used when Spec.BootArgs is
	// empty: serial console on ttyS0, reboot on a triple fault (so a guest
	// reboot ends the VM's process), and no legacy PS/2 probing.
	DefaultBootArgs = "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
	// DefaultRootDriveID is the id of the root drive when none is given.
	DefaultRootDriveID = "rootfs"
	// DefaultVsockCID is the guest's vsock context id when none is given.
	DefaultVsockCID = 3
	// DefaultMMDSAddress is the guest-visible address of the metadata
	// service when none is given.
	DefaultMMDSAddress = "169.254.169.254"
	// DefaultStopTimeout is how long Stop waits for the guest to shut down
	// before it ends the VM's process.
	DefaultStopTimeout = 10 * time.Second
	// maxLabels, maxLabelKey and maxLabelValue bound Spec.Labels.
	maxLabels     = 64
	maxLabelKey   = 128
	maxLabelValue = 1024
	// maxDeviceID bounds drive and interface ids.
	maxDeviceID = 64
)

// HugePages selects the page size backing guest memory.
type HugePages string

// The huge-page settings.
const (
	HugePagesNone HugePages = ""
	HugePages2M   HugePages = "2M"
)

// Drive is a block device backed by a host file.
type Drive struct {
	// ID names the drive in the hypervisor: 1 to 64 characters of
	// [A-Za-z0-9_]. Defaults: "rootfs" for the root drive, "drive1",
	// "drive2", ... for extra drives.
	ID string `json:"id,omitempty"`
	// Path is the host file backing the drive. Exactly one of Path and
	// Image is required. A VM made from an image reports here the path
	// of its own clone of the image (set by the runtime; a spec given to
	// Create must not set both).
	Path string `json:"path"`
	// Image names an image of the runtime's image store (see package
	// image/store; the name follows store.ValidateName) instead of a
	// Path: Create gives the VM its own copy-on-write clone of it, in
	// the VM's directory, removed when the VM is destroyed.
	Image string `json:"image,omitempty"`
	// SizeBytes grows the clone of Image (file and ext4 file system) to
	// this size before boot; 0 keeps the image's size. It must be a
	// multiple of 4096, and is only valid with Image.
	SizeBytes int64 `json:"size_bytes,omitempty"`
	// ReadOnly attaches the drive read-only.
	ReadOnly bool `json:"read_only,omitempty"`
	// RateLimiter limits the drive's bandwidth and operations.
	RateLimiter *RateLimiter `json:"rate_limiter,omitempty"`
}

// RateLimiter limits a device with token buckets. A nil bucket means no
// limit of that kind.
type RateLimiter struct {
	// Bandwidth is in bytes.
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	// Ops is in operations (drives) or packets (network interfaces).
	Ops *TokenBucket `json:"ops,omitempty"`
}

// TokenBucket is a token bucket: Size tokens refilled over RefillTime, plus
// an initial OneTimeBurst. A Size of 0 disables the limit.
type TokenBucket struct {
	// Size is the bucket's capacity in tokens, >= 0.
	Size int64 `json:"size"`
	// OneTimeBurst is an extra initial budget, >= 0.
	OneTimeBurst int64 `json:"one_time_burst,omitempty"`
	// RefillTime is how long the bucket takes to refill completely; a
	// whole number of milliseconds, at least 1 ms when Size > 0.
	RefillTime time.Duration `json:"refill_time"`
}

// NetworkInterface is a guest network interface.
//
// A managed interface (HostDevName empty) gets its own network namespace,
// TAP device, host-side address and egress firewall from the runtime; at
// most one interface per VM may be managed, and the runtime must have
// networking configured. An unmanaged interface (HostDevName set) uses an
// existing TAP device as it is.
type NetworkInterface struct {
	// ID names the interface in the hypervisor: 1 to 64 characters of
	// [A-Za-z0-9_]. Defaults to "eth0", "eth1", ... in order.
	ID string `json:"id,omitempty"`
	// HostDevName is the host TAP device (at most 15 characters); empty
	// for a managed interface.
	HostDevName string `json:"host_dev_name,omitempty"`
	// GuestMAC is the guest's MAC address, a unicast "xx:xx:xx:xx:xx:xx".
	// Empty lets the hypervisor or the network manager choose.
	GuestMAC string `json:"guest_mac,omitempty"`
	// RxRateLimiter and TxRateLimiter limit the interface's traffic.
	RxRateLimiter *RateLimiter `json:"rx_rate_limiter,omitempty"`
	TxRateLimiter *RateLimiter `json:"tx_rate_limiter,omitempty"`
	// Egress is the egress firewall of a managed interface. Nil means the
	// default policy: the internet is allowed; the host, link-local,
	// loopback, private ranges, CGNAT and other VMs are denied.
	Egress *EgressPolicy `json:"egress,omitempty"`
}

// EgressPolicy is a VM's egress firewall.
type EgressPolicy struct {
	// DenyAll drops all egress except what Allow lists.
	DenyAll bool `json:"deny_all,omitempty"`
	// Allow lists destinations that are allowed even when the default
	// policy or DenyAll would drop them; never the host itself or other
	// VMs, which no rule opens.
	Allow []EgressRule `json:"allow,omitempty"`
}

// EgressRule allows traffic to a destination network, optionally only one
// protocol and port range.
type EgressRule struct {
	// CIDR is the destination network. Required.
	CIDR netip.Prefix `json:"cidr"`
	// Protocol is "" (any), "tcp", "udp" or "icmp".
	Protocol string `json:"protocol,omitempty"`
	// FromPort and ToPort bound the destination ports (tcp and udp only);
	// both 0 means any port; ToPort 0 means FromPort alone.
	FromPort uint16 `json:"from_port,omitempty"`
	ToPort   uint16 `json:"to_port,omitempty"`
}

// Vsock is a virtio-vsock device. The host side is a unix socket.
type Vsock struct {
	// CID is the guest's context id, >= 3. Default [DefaultVsockCID].
	CID uint32 `json:"cid,omitempty"`
	// Path is the host unix socket; empty lets the runtime place it in the
	// VM's directory.
	Path string `json:"path,omitempty"`
}

// MMDS configures the microVM metadata service.
type MMDS struct {
	// Version is "V1" or "V2" (session tokens). Default "V2".
	Version string `json:"version,omitempty"`
	// Address is the guest-visible IPv4 address, link-local: 169.254.1.0
	// to 169.254.254.255 (RFC 3927). Default [DefaultMMDSAddress].
	Address string `json:"address,omitempty"`
	// Interfaces lists the ids of the network interfaces that may reach
	// the service. Default: all of the VM's interfaces.
	Interfaces []string `json:"interfaces,omitempty"`
	// Data is the initial metadata, a JSON object.
	Data json.RawMessage `json:"data,omitempty"`
}

// WithDefaults returns a copy of s with every default filled in. It is the
// one place defaults are decided:
//
//	BootArgs         DefaultBootArgs
//	RootDrive.ID     "rootfs"
//	Drives[i].ID     "drive1", "drive2", ...
//	Network[i].ID    "eth0", "eth1", ...
//	Vsock.CID        3
//	MMDS.Version     "V2"
//	MMDS.Address     169.254.169.254
//	MMDS.Interfaces  the ids of all network interfaces
//
// VCPUs and MemoryMiB have no default: 0 is refused by Validate.
// WithDefaults never changes a field that is set, and does not alias s's
// slices, maps or pointers.
func (s Spec) WithDefaults() Spec {
	s = s.Clone()
	if s.BootArgs == "" {
		s.BootArgs = DefaultBootArgs
	}
	if s.RootDrive.ID == "" {
		s.RootDrive.ID = DefaultRootDriveID
	}
	for i := range s.Drives {
		if s.Drives[i].ID == "" {
			s.Drives[i].ID = fmt.Sprintf("drive%d", i+1)
		}
	}
	for i := range s.Network {
		if s.Network[i].ID == "" {
			s.Network[i].ID = fmt.Sprintf("eth%d", i)
		}
	}
	if s.Vsock != nil && s.Vsock.CID == 0 {
		s.Vsock.CID = DefaultVsockCID
	}
	if s.MMDS != nil {
		if s.MMDS.Version == "" {
			s.MMDS.Version = "V2"
		}
		if s.MMDS.Address == "" {
			s.MMDS.Address = DefaultMMDSAddress
		}
		if len(s.MMDS.Interfaces) == 0 {
			for _, n := range s.Network {
				s.MMDS.Interfaces = append(s.MMDS.Interfaces, n.ID)
			}
		}
	}
	return s
}

// AbsPaths returns a copy of s whose host paths (Kernel, Initrd, every
// drive's Path and Vsock.Path) are absolute: a relative path is joined to
// the caller's working directory, as it is when AbsPaths is called, so the
// spec means the same files wherever the hypervisor runs. Absolute and empty
// paths are kept as they are. Every runtime calls it on Create, before
// Validate, and stores the result. It fails only when s has a relative path
// and the working directory cannot be found; the [*SpecError] names each
// such field.
func (s Spec) AbsPaths() (Spec, error) {
	s = s.Clone()
	var wd string
	var wdErr error
	v := &validator{}
	abs := func(field string, p *string) {
		if *p == "" || filepath.IsAbs(*p) {
			return
		}
		if wd == "" && wdErr == nil {
			wd, wdErr = os.Getwd()
		}
		if wdErr != nil {
			v.add(field, fmt.Sprintf("is relative (%q) and the working directory cannot be found: %v", truncate(*p, 40), wdErr))
			return
		}
		*p = filepath.Join(wd, *p)
	}
	abs("kernel", &s.Kernel)
	abs("initrd", &s.Initrd)
	abs("root_drive.path", &s.RootDrive.Path)
	for i := range s.Drives {
		abs(fmt.Sprintf("drives[%d].path", i), &s.Drives[i].Path)
	}
	if s.Vsock != nil {
		abs("vsock.path", &s.Vsock.Path)
	}
	if err := v.err(); err != nil {
		return Spec{}, err
	}
	return s, nil
}

// Clone returns a deep copy of s.
func (s Spec) Clone() Spec {
	s.RootDrive = s.RootDrive.clone()
	if s.Drives != nil {
		d := make([]Drive, len(s.Drives))
		for i := range s.Drives {
			d[i] = s.Drives[i].clone()
		}
		s.Drives = d
	}
	if s.Network != nil {
		n := make([]NetworkInterface, len(s.Network))
		for i, ni := range s.Network {
			ni.RxRateLimiter = ni.RxRateLimiter.clone()
			ni.TxRateLimiter = ni.TxRateLimiter.clone()
			if ni.Egress != nil {
				e := *ni.Egress
				e.Allow = append([]EgressRule(nil), e.Allow...)
				ni.Egress = &e
			}
			n[i] = ni
		}
		s.Network = n
	}
	if s.Vsock != nil {
		v := *s.Vsock
		s.Vsock = &v
	}
	if s.MMDS != nil {
		m := *s.MMDS
		m.Interfaces = append([]string(nil), m.Interfaces...)
		m.Data = append(json.RawMessage(nil), m.Data...)
		s.MMDS = &m
	}
	if s.Labels != nil {
		l := make(map[string]string, len(s.Labels))
		for k, v := range s.Labels {
			l[k] = v
		}
		s.Labels = l
	}
	return s
}

func (d Drive) clone() Drive {
	d.RateLimiter = d.RateLimiter.clone()
	return d
}

func (r *RateLimiter) clone() *RateLimiter {
	if r == nil {
		return nil
	}
	c := RateLimiter{}
	if r.Bandwidth != nil {
		b := *r.Bandwidth
		c.Bandwidth = &b
	}
	if r.Ops != nil {
		o := *r.Ops
		c.Ops = &o
	}
	return &c
}

// Validate checks s and reports every problem at once in a [*SpecError]
// (matching [ErrInvalidSpec]) whose problems name each field and its rule.
// It checks values only; runtimes check that files exist. The one look at
// the file system: two drives of one image (the same file by device and
// inode where it exists, else the same cleaned path) are refused unless
// both are read-only, naming both fields. Call it on s.WithDefaults(): ids
// left empty are reported as missing.
func (s Spec) Validate() error {
	v := &validator{}
	v.path("kernel", s.Kernel, true)
	v.path("initrd", s.Initrd, false)
	if len(s.BootArgs) > MaxBootArgsLen {
		v.add("boot_args", fmt.Sprintf("must be at most %d bytes (got %d)", MaxBootArgsLen, len(s.BootArgs)))
	}
	if strings.ContainsAny(s.BootArgs, "\x00\n") {
		v.add("boot_args", "must not contain NUL or newline characters")
	}
	ids := map[string]string{}
	v.drive("root_drive", s.RootDrive, ids)
	for i, d := range s.Drives {
		v.drive(fmt.Sprintf("drives[%d]", i), d, ids)
	}
	v.sharedImages(s)
	switch {
	case s.VCPUs < 1 || s.VCPUs > MaxVCPUs:
		v.add("vcpus", fmt.Sprintf("must be between 1 and %d (got %d)", MaxVCPUs, s.VCPUs))
	case s.SMT && s.VCPUs > 1 && s.VCPUs%2 != 0:
		v.add("vcpus", fmt.Sprintf("must be 1 or even when smt is on (got %d)", s.VCPUs))
	}
	if s.MemoryMiB < 1 {
		v.add("memory_mib", fmt.Sprintf("must be at least 1 (got %d)", s.MemoryMiB))
	} else if host := hostMemoryMiB(); host > 0 && int64(s.MemoryMiB) > host {
		v.add("memory_mib", fmt.Sprintf("must fit in the host's %d MiB of memory (got %d)", host, s.MemoryMiB))
	}
	switch s.HugePages {
	case HugePagesNone:
	case HugePages2M:
		if s.MemoryMiB%2 != 0 {
			v.add("memory_mib", fmt.Sprintf("must be a multiple of 2 with 2M huge pages (got %d)", s.MemoryMiB))
		}
	default:
		v.add("huge_pages", fmt.Sprintf(`must be "" or "2M" (got %q)`, s.HugePages))
	}
	netIDs := map[string]bool{}
	managed := 0
	for i, n := range s.Network {
		f := fmt.Sprintf("network[%d]", i)
		if v.deviceID(f+".id", n.ID) {
			if netIDs[n.ID] {
				v.add(f+".id", fmt.Sprintf("must be unique (%q is used twice)", n.ID))
			}
			netIDs[n.ID] = true
		}
		if n.HostDevName == "" {
			managed++
			if managed == 2 {
				v.add(f+".host_dev_name", "must be set: at most one interface per VM may be managed")
			}
		} else {
			v.ifName(f+".host_dev_name", n.HostDevName)
			if n.Egress != nil {
				v.add(f+".egress", "is only allowed on a managed interface (host_dev_name empty)")
			}
		}
		if n.GuestMAC != "" {
			v.mac(f+".guest_mac", n.GuestMAC)
		}
		v.rateLimiter(f+".rx_rate_limiter", n.RxRateLimiter)
		v.rateLimiter(f+".tx_rate_limiter", n.TxRateLimiter)
		if n.Egress != nil {
			v.egress(f+".egress", n.Egress)
		}
	}
	if s.Vsock != nil {
		if s.Vsock.CID < 3 {
			v.add("vsock.cid", fmt.Sprintf("must be at least 3 (got %d)", s.Vsock.CID))
		}
		v.path("vsock.path", s.Vsock.Path, false)
		if len(s.Vsock.Path) > 107 {
			v.add("vsock.path", "must be at most 107 bytes (a unix socket path)")
		}
	}
	if s.MMDS != nil {
		v.mmds(s.MMDS, netIDs)
	}
	checkLabels(v, s.Labels)
	return v.err()
}

func checkLabels(v *validator, labels map[string]string) {
	if len(labels) > maxLabels {
		v.add("labels", fmt.Sprintf("must have at most %d entries (got %d)", maxLabels, len(labels)))
	}
	for k, val := range labels {
		if k == "" || len(k) > maxLabelKey {
			v.add("labels", fmt.Sprintf("keys must be 1 to %d bytes (got %d)", maxLabelKey, len(k)))
		}
		if len(val) > maxLabelValue {
			v.add("labels["+truncate(k, 40)+"]", fmt.Sprintf("must be at most %d bytes (got %d)", maxLabelValue, len(val)))
		}
	}
}

type validator struct{ problems []FieldError }

func (v *validator) add(field, rule string) {
	v.problems = append(v.problems, FieldError{Field: field, Rule: rule})
}

func (v *validator) err() error {
	if len(v.problems) == 0 {
		return nil
	}
	return &SpecError{Problems: v.problems}
}

func (v *validator) path(field, p string, required bool) {
	switch {
	case p == "" && required:
		v.add(field, "is required")
	case strings.ContainsRune(p, 0):
		v.add(field, "must not contain NUL characters")
	case len(p) > 4095:
		v.add(field, "must be at most 4095 bytes")
	}
}

// deviceID checks a hypervisor resource id ([A-Za-z0-9_], 1-64) and reports
// whether it is valid.
func (v *validator) deviceID(field, id string) bool {
	if id == "" {
		v.add(field, "is required")
		return false
	}
	if len(id) > maxDeviceID {
		v.add(field, fmt.Sprintf("must be at most %d characters (got %d)", maxDeviceID, len(id)))
		return false
	}
	for _, r := range id {
		if r != '_' && !(isIDChar(r) && r != '-') {
			v.add(field, fmt.Sprintf("may contain only letters, digits and '_' (got %q)", truncate(id, 40)))
			return false
		}
	}
	return true
}

func (v *validator) drive(f string, d Drive, ids map[string]string) {
	if v.deviceID(f+".id", d.ID) {
		if other, dup := ids[d.ID]; dup {
			v.add(f+".id", fmt.Sprintf("must be unique (%q is also used by %s)", d.ID, other))
		}
		ids[d.ID] = f
	}
	v.path(f+".path", d.Path, d.Image == "")
	switch {
	case d.Image != "":
		if err := store.ValidateName(d.Image); err != nil {
			v.add(f+".image", fmt.Sprintf("%q: must be 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit", truncate(d.Image, 40)))
		}
		if d.SizeBytes < 0 || d.SizeBytes%4096 != 0 {
			v.add(f+".size_bytes", fmt.Sprintf("must be a multiple of 4096 and >= 0 (got %d)", d.SizeBytes))
		}
	case d.SizeBytes != 0:
		v.add(f+".size_bytes", "is only valid with image (a path is used as it is)")
	}
	v.rateLimiter(f+".rate_limiter", d.RateLimiter)
}

// sharedImages refuses one image behind two drives of the VM unless both
// are read-only: a guest writing through one drive corrupts what it reads
// through the other.
func (v *validator) sharedImages(s Spec) {
	if len(s.Drives) == 0 {
		return
	}
	type img struct {
		field string
		d     Drive
		st    os.FileInfo
	}
	all := []img{{field: "root_drive.path", d: s.RootDrive}}
	for i, d := range s.Drives {
		all = append(all, img{field: fmt.Sprintf("drives[%d].path", i), d: d})
	}
	for i := range all {
		if all[i].d.Path != "" {
			all[i].st, _ = os.Stat(all[i].d.Path)
		}
	}
	for j := 1; j < len(all); j++ {
		for i := range j {
			a, b := all[i], all[j]
			if a.d.Path == "" || b.d.Path == "" || (a.d.ReadOnly && b.d.ReadOnly) {
				continue
			}
			same := filepath.Clean(a.d.Path) == filepath.Clean(b.d.Path)
			if a.st != nil && b.st != nil {
				same = os.SameFile(a.st, b.st)
			}
			if same {
				v.add(b.field, fmt.Sprintf("is the same image as %s (%s): one image backs two drives only if both are read-only", a.field, a.d.Path))
				break
			}
		}
	}
}

func (v *validator) rateLimiter(f string, r *RateLimiter) {
	if r == nil {
		return
	}
	v.bucket(f+".bandwidth", r.Bandwidth)
	v.bucket(f+".ops", r.Ops)
}

func (v *validator) bucket(f string, b *TokenBucket) {
	if b == nil {
		return
	}
	if b.Size < 0 {
		v.add(f+".size", fmt.Sprintf("must be >= 0 (got %d)", b.Size))
	}
	if b.OneTimeBurst < 0 {
		v.add(f+".one_time_burst", fmt.Sprintf("must be >= 0 (got %d)", b.OneTimeBurst))
	}
	switch {
	case b.RefillTime < 0:
		v.add(f+".refill_time", fmt.Sprintf("must be >= 0 (got %s)", b.RefillTime))
	case b.RefillTime%time.Millisecond != 0:
		v.add(f+".refill_time", fmt.Sprintf("must be a whole number of milliseconds (got %s)", b.RefillTime))
	case b.Size > 0 && b.RefillTime == 0:
		v.add(f+".refill_time", "must be at least 1ms when size > 0")
	}
}

func (v *validator) ifName(f, name string) {
	if len(name) > 15 {
		v.add(f, fmt.Sprintf("must be at most 15 characters (got %d)", len(name)))
		return
	}
	for _, r := range name {
		if r <= ' ' || r == '/' || r == ':' || r > '~' {
			v.add(f, fmt.Sprintf("must be a network device name without spaces, '/' or ':' (got %q)", name))
			return
		}
	}
}

func (v *validator) mac(f, mac string) {
	first, ok := parseMAC(mac)
	if !ok {
		v.add(f, fmt.Sprintf(`must be a MAC address "xx:xx:xx:xx:xx:xx" (got %q)`, truncate(mac, 40)))
		return
	}
	if first&1 != 0 {
		v.add(f, fmt.Sprintf("must be a unicast address (got multicast %q)", mac))
	}
}

// parseMAC accepts exactly six pairs of hex digits separated by ':' and
// returns the first octet. (fmt.Sscanf is not strict enough: its %x skips
// leading spaces and it ignores trailing input.)
func parseMAC(mac string) (first byte, ok bool) {
	if len(mac) != 17 {
		return 0, false
	}
	for i := 0; i < len(mac); i++ {
		c := mac[i]
		if i%3 == 2 {
			if c != ':' {
				return 0, false
			}
		} else if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return 0, false
		}
	}
	b, err := strconv.ParseUint(mac[:2], 16, 8)
	return byte(b), err == nil
}

func (v *validator) egress(f string, e *EgressPolicy) {
	for i, r := range e.Allow {
		rf := fmt.Sprintf("%s.allow[%d]", f, i)
		if !r.CIDR.IsValid() {
			v.add(rf+".cidr", "is required and must be a valid CIDR")
		} else if !r.CIDR.Addr().Is4() || r.CIDR.Addr().Is4In6() {
			v.add(rf+".cidr", fmt.Sprintf("must be an IPv4 network: managed networking is IPv4 only (got %s)", r.CIDR))
		} else if r.CIDR != r.CIDR.Masked() {
			v.add(rf+".cidr", fmt.Sprintf("must have no host bits set (got %s, want %s)", r.CIDR, r.CIDR.Masked()))
		}
		switch r.Protocol {
		case "", "tcp", "udp", "icmp":
		default:
			v.add(rf+".protocol", fmt.Sprintf(`must be "", "tcp", "udp" or "icmp" (got %q)`, r.Protocol))
		}
		if r.FromPort == 0 && r.ToPort == 0 {
			continue
		}
		if r.Protocol != "tcp" && r.Protocol != "udp" {
			v.add(rf+".from_port", "ports need protocol tcp or udp")
		}
		if r.FromPort == 0 {
			v.add(rf+".from_port", "must be set when to_port is set")
		} else if r.ToPort != 0 && r.ToPort < r.FromPort {
			v.add(rf+".to_port", fmt.Sprintf("must be >= from_port (got %d < %d)", r.ToPort, r.FromPort))
		}
	}
}

func (v *validator) mmds(m *MMDS, netIDs map[string]bool) {
	if m.Version != "V1" && m.Version != "V2" {
		v.add("mmds.version", fmt.Sprintf(`must be "V1" or "V2" (got %q)`, m.Version))
	}
	// RFC 3927 keeps 169.254.0.0/24 and 169.254.255.0/24 reserved, and
	// Firecracker refuses them ("The MMDS IPv4 address is not link local").
	if a, err := netip.ParseAddr(m.Address); err != nil || !a.Is4() || !netip.MustParsePrefix("169.254.0.0/16").Contains(a) ||
		a.As4()[2] == 0 || a.As4()[2] == 255 {
		v.add("mmds.address", fmt.Sprintf("must be a link-local IPv4 address from 169.254.1.0 to 169.254.254.255 (got %q)", truncate(m.Address, 40)))
	}
	if len(m.Interfaces) == 0 {
		v.add("mmds.interfaces", "needs at least one network interface")
	}
	for i, id := range m.Interfaces {
		if !netIDs[id] {
			v.add(fmt.Sprintf("mmds.interfaces[%d]", i), fmt.Sprintf("must name a network interface of the VM (got %q)", truncate(id, 40)))
		}
	}
	if len(m.Data) > 0 {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(m.Data, &obj); err != nil || obj == nil { // null decodes without error
			v.add("mmds.data", "must be a JSON object")
		}
	}
}
