//go:build linux

package network

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Store kinds and lock names (see the package documentation).
const (
	kindLease = "netlease" // id: slot name; value: leaseRecord
	kindVM    = "netvm"    // id: vm id; value: vmRecord
)

// Lease states. Whether a built lease belongs to a VM is not stored in the
// lease: a VM has a slot when its vm record names the lease and carries
// the lease's token. Claiming a warm slot is therefore one atomic write.
const (
	stateBuilding = "building" // being set up (or left half-built by a crash)
	stateBuilt    = "built"    // set up
)

// leaseRecord reserves one slot: its addresses are derived from HostIP and
// its device and namespace names from Name. Token is random per lease, so
// a stale vm record never matches a later lease of the same address.
type leaseRecord struct {
	Name     string    `json:"name"`
	HostIP   string    `json:"host_ip"`
	Token    string    `json:"token"`
	State    string    `json:"state"`
	Owner    owner     `json:"owner"`               // the Manager that built it
	BuiltFor string    `json:"built_for,omitempty"` // the VM a fresh Setup built it for; "" for the warm pool
	Created  time.Time `json:"created"`
}

// vmRecord gives a VM its slot and remembers the VM's options, so that a
// repair restores them.
type vmRecord struct {
	Slot   string `json:"slot"`
	Token  string `json:"token"`
	Policy Policy `json:"policy"`
	TAPUID uint32 `json:"tap_uid,omitempty"`
	TAPGID uint32 `json:"tap_gid,omitempty"`
}

func (vr *vmRecord) options() Options {
	return Options{Policy: vr.Policy, TAPUID: vr.TAPUID, TAPGID: vr.TAPGID}
}

func (vr *vmRecord) sameOptions(o Options) bool {
	return vr.Policy.equal(o.Policy) && vr.TAPUID == o.TAPUID && vr.TAPGID == o.TAPGID
}

func newToken() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// owner identifies the Manager that holds a building or pooled lease: a
// process (pid and start time, so a reused pid is not mistaken for it) and
// a Manager instance within it.
type owner struct {
	PID      int    `json:"pid"`
	Start    uint64 `json:"start"`
	Instance string `json:"instance"`
}

// liveInstances holds the instance ids of this process's open Managers.
var liveInstances sync.Map

var (
	selfStartOnce sync.Once
	selfStart     uint64
	selfStartErr  error
)

func newOwner() (owner, error) {
	selfStartOnce.Do(func() { selfStart, selfStartErr = procStart(os.Getpid()) })
	if selfStartErr != nil {
		return owner{}, fmt.Errorf("read own process start time: %w", selfStartErr)
	}
	return owner{PID: os.Getpid(), Start: selfStart, Instance: newToken()}, nil
}

// alive reports whether the Manager that owns a lease may still be using
// it.
func (o owner) alive() bool {
	if o.PID <= 0 {
		return false
	}
	if o.PID == os.Getpid() {
		_, ok := liveInstances.Load(o.Instance)
		return ok && o.Start == selfStart
	}
	start, err := procStart(o.PID)
	return err == nil && start == o.Start
}

// procStart returns a process's start time in clock ticks since boot
// (field 22 of /proc/<pid>/stat).
func procStart(pid int) (uint64, error) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(raw)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); start time is field 22.
	if len(f) < 20 {
		return 0, errors.New("malformed /proc stat")
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// slotName returns the name of the slot whose HostIP is ip.
func slotName(prefix string, ip netip.Addr) string {
	b := ip.As4()
	return fmt.Sprintf("%s-%02x%02x%02x%02x", prefix, b[0], b[1], b[2], b[3])
}

// parseSlotName returns the HostIP encoded in a slot name of this prefix.
func parseSlotName(prefix, name string) (netip.Addr, bool) {
	rest, ok := strings.CutPrefix(name, prefix+"-")
	if !ok || len(rest) != 8 {
		return netip.Addr{}, false
	}
	var b [4]byte
	if _, err := hex.Decode(b[:], []byte(rest)); err != nil || strings.ToLower(rest) != rest {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(b), true
}

// addrs are the addresses of one slot, all inside one aligned /30 block of
// the pool: veth host end (block+0), veth namespace end (block+1), both
// /31, and HostIP (block+2), routed by the host via the namespace end.
type addrs struct {
	VethHost, VethNS, HostIP netip.Addr
}

func blockAddrs(pool netip.Prefix, index uint32) addrs {
	base := addU32(pool.Addr(), 4*index)
	return addrs{VethHost: base, VethNS: addU32(base, 1), HostIP: addU32(base, 2)}
}

func addrsOf(hostIP netip.Addr) addrs {
	base := addU32(hostIP, ^uint32(1)) // hostIP - 2
	return addrs{VethHost: base, VethNS: addU32(base, 1), HostIP: hostIP}
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func fromU32(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func addU32(a netip.Addr, n uint32) netip.Addr { return fromU32(u32(a) + n) }

// blockIndex returns the block of the pool whose HostIP is ip.
func blockIndex(pool netip.Prefix, ip netip.Addr) (uint32, bool) {
	if !ip.Is4() || !pool.Contains(ip) {
		return 0, false
	}
	off := u32(ip) - u32(pool.Addr())
	if off%4 != 2 {
		return 0, false
	}
	return off / 4, true
}

// ours reports whether name is a slot name of this Manager: its prefix and
// a HostIP of its pool.
func (m *Manager) ours(name string) (netip.Addr, bool) {
	ip, ok := parseSlotName(m.prefix, name)
	if !ok {
		return netip.Addr{}, false
	}
	_, ok = blockIndex(m.pool, ip)
	return ip, ok
}

func (m *Manager) nsPath(name string) string { return filepath.Join(m.runDir, name) }

func (m *Manager) allocLock() string { return "netalloc-" + m.prefix }

func vmLock(vmID string) string { return "netvm-" + vmID }

// lockVM takes the cross-process lock of one VM id.
func (m *Manager) lockVM(ctx context.Context, vmID string) (func(), error) {
	unlock, err := m.store.Lock(ctx, vmLock(vmID))
	if err != nil {
		return nil, fmt.Errorf("network: lock vm %q: %w", vmID, err)
	}
	return unlock, nil
}

// validateVMID checks a vm id against the rules of the store's ids.
func validateVMID(id string) error {
	const maxLen = 64
	bad := func(rule string) error {
		return &FieldError{Field: "vmID", Rule: fmt.Sprintf("%q %s", id, rule), Err: ErrInvalidVMID}
	}
	if id == "" || len(id) > maxLen {
		return bad(fmt.Sprintf("must be 1-%d characters of [A-Za-z0-9._-]", maxLen))
	}
	if id[0] == '.' || id[0] == '-' {
		return bad("must not start with '.' or '-'")
	}
	for _, c := range id {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return bad(fmt.Sprintf("must contain only [A-Za-z0-9._-] (bad character %q)", c))
		}
	}
	return nil
}

// Results of lookup.
const (
	noRecord    = iota // the VM has no record
	staleRecord        // its record names no lease, or a later lease of that address
	assigned           // record and lease match
)

// lookup reads vmID's record and lease. Errors other than "not found" are
// returned as they are.
func (m *Manager) lookup(vmID string) (vmRecord, leaseRecord, int, error) {
	var vr vmRecord
	var l leaseRecord
	err := m.store.Get(kindVM, vmID, &vr)
	if isNotFound(err) {
		return vr, l, noRecord, nil
	}
	if err != nil {
		return vr, l, 0, fmt.Errorf("network: vm %q: %w", vmID, err)
	}
	err = m.store.Get(kindLease, vr.Slot, &l)
	if isNotFound(err) || err == nil && (l.Token != vr.Token || vr.Token == "") {
		return vr, l, staleRecord, nil
	}
	if err != nil {
		return vr, l, 0, fmt.Errorf("network: vm %q: lease %s: %w", vmID, vr.Slot, err)
	}
	return vr, l, assigned, nil
}

// dropStale removes vmID's stale record (lookup said staleRecord); the
// caller holds the VM's lock.
func (m *Manager) dropStale(vmID string) error {
	if err := m.store.Delete(kindVM, vmID); err != nil {
		return fmt.Errorf("network: vm %q: remove stale record: %w", vmID, err)
	}
	return nil
}

func isNotFound(err error) bool { return errors.Is(err, ErrRecordNotFound) }
func isExists(err error) bool   { return errors.Is(err, ErrRecordExists) }
