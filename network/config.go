package network

import (
	"context"
	"log/slog"
	"net/netip"
	"time"
)

// Store persists leases and provides cross-process locks. [OpenStore]
// gives the one mvm uses, [*FileStore]. Create fails with an error
// wrapping [ErrRecordExists] when the record exists, Get with one wrapping
// [ErrRecordNotFound] when it does not, and Delete of a missing record
// returns nil.
type Store interface {
	Create(kind, id string, v any) error
	Put(kind, id string, v any) error
	Get(kind, id string, v any) error
	Delete(kind, id string) error
	List(kind string) ([]string, error)
	Lock(ctx context.Context, name string) (unlock func(), err error)
}

// Defaults applied by New to zero Config fields.
const (
	// DefaultRunDir is where slot namespaces are pinned.
	DefaultRunDir = "/run/mvm/netns"
	// DefaultNamePrefix starts every name the package creates.
	DefaultNamePrefix = "mvm"
)

// DefaultPool is the address pool used when Config.Pool is zero: 16384
// slots of four addresses.
var DefaultPool = netip.MustParsePrefix("10.200.0.0/16")

// Config configures a Manager. The zero value of every field but Store has
// a documented default.
type Config struct {
	// Store persists leases; required.
	Store Store
	// HostNS is the path of the network namespace that plays the host
	// (e.g. /run/netns/edge or /proc/1234/ns/net); "" is the namespace
	// of this process. The host side of each slot (veth end, route,
	// masquerade) lives there.
	HostNS string
	// RunDir is where slot namespaces are pinned, one file per slot;
	// "" means DefaultRunDir. New makes it a shared mount point, as
	// iproute2 does for /run/netns.
	RunDir string
	// Pool is the IPv4 range that host-side addresses are taken from, in
	// aligned blocks of four per slot; the zero Prefix means DefaultPool.
	// It must be a network address, /8 to /30, and must not overlap any
	// address or route of HostNS other than this package's own.
	Pool netip.Prefix
	// EgressInterface is the HostNS interface that guest traffic is
	// masqueraded through; "" means the interface of HostNS's IPv4
	// default route. It must be an interface name; if HostNS lacks it
	// (unplugged, renamed), New still opens, and only Setup of a VM
	// without a network fails (ErrEgressMissing) until it is back.
	EgressInterface string
	// NamePrefix starts every device, namespace and nftables table name,
	// so leftovers are recognisable; 1-6 characters of [a-z0-9] starting
	// with a letter. "" means DefaultNamePrefix.
	NamePrefix string
	// PoolSize is how many ready slots are kept pre-built so Setup need
	// not create a namespace; 0 disables the warm pool.
	PoolSize int
	// Logger receives background events (pool refills, cleanup); nil
	// discards them.
	Logger *slog.Logger
	// HostAllow lists the host services guests may reach (for example a
	// DNS resolver on the host: {CIDR: <host address>/32, Protocol:
	// "udp", Ports: {From: 53}}). Nothing else of the host (its own
	// addresses, broadcast addresses, or anything delivered locally) is
	// reachable from a guest, whatever the VM's Policy allows.
	HostAllow []Rule
	// AddressRest is how long a HostIP released by Teardown rests before
	// it is handed out again (unless every other address is taken), so
	// that no conntrack entry or peer's belief about the old VM reaches
	// the next one. 0 means the longest conntrack timeout of HostNS plus
	// a minute (5 days with the kernel's defaults). Rest times are kept
	// in the Store (netrest/<prefix>), so they hold across processes.
	AddressRest time.Duration
}

// Options are per-VM settings for Setup.
type Options struct {
	// Policy is the VM's egress firewall; the zero Policy allows the
	// internet and denies the sensitive ranges (see Policy).
	Policy Policy
	// TAPUID and TAPGID, when non-zero, make the TAP device owned by that
	// user and group so an unprivileged (jailed) Firecracker can open it.
	TAPUID uint32
	TAPGID uint32
}

// Report lists what Cleanup did.
type Report struct {
	// Removed are slots (namespace, veth, route, lease) removed because
	// no VM kept them: half-built slots, pooled slots of dead processes,
	// namespaces and links without a lease, and the slots of VMs not kept.
	Removed []string
	// RemovedVMs are the VMs whose network was removed because keep
	// returned false.
	RemovedVMs []string
	// Repaired are the VMs kept whose slot was found damaged (namespace,
	// device, address, route or table missing) and rebuilt.
	Repaired []string
	// StaleRecords are vm records removed because they pointed at no
	// lease.
	StaleRecords []string
}
