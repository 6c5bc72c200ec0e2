//go:build linux

package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/mvm-dev/microvm/network/internal/netnsutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Manager sets up, polices and removes VM networks. It is safe for
// concurrent use, also by several processes sharing one Store, HostNS and
// RunDir: leases are allocated under a Store lock and each VM id is
// serialised by its own lock.
type Manager struct {
	store    Store
	log      *slog.Logger
	prefix   string
	runDir   string
	pool     netip.Prefix
	blocks   uint32 // slots in the pool
	egress   string
	poolSize int
	owner    owner

	hostAllow []Rule
	rest      time.Duration // how long a released HostIP rests
	fwdPerIf  atomic.Bool   // forwarding is enabled per interface (host veths, egress)
	// egressGone is set while the egress interface is missing from the
	// host namespace, so that its forwarding is not (or no longer) on:
	// the link watcher, or else the next Setup, that finds it back
	// rewrites the host first (egressReady).
	egressGone atomic.Bool
	hostMu     sync.Mutex // serialises writing host sets into slot tables

	hostNS netns.NsHandle
	hostNL *netlink.Handle

	// failHook, set only by tests, runs before each set-up step and can
	// fail it (errCrash: fail without rolling back, as a crash would).
	failHook func(step string) error

	ops sync.RWMutex // shared by operations, exclusive in Close

	mu     sync.Mutex
	closed bool
	cursor uint32         // next block to try, so released addresses rest a while
	pooled []*leaseRecord // warm slots ready to hand out
	refill chan struct{}  // wakes the refiller
	stop   context.CancelFunc
	done   chan struct{} // closed when the refiller has exited

	stopWatch context.CancelFunc
	watchDone chan struct{} // closed when the host address watcher has exited
}

// New validates cfg, installs the host namespace's nftables table and
// enables IPv4 forwarding there, and, when cfg.PoolSize > 0, starts a
// goroutine that keeps PoolSize slots pre-built. ctx bounds only New
// itself; the refiller lives until Close.
//
// Errors name the field: a missing Store, a bad NamePrefix, a pool that is
// not an IPv4 network of /8 to /30 or that overlaps an address or route of
// HostNS, an EgressInterface that is not an interface name or is a slot's
// veth. They match ErrInvalidConfig.
//
// An EgressInterface that HostNS lacks (unplugged, renamed) is not an
// error: New logs a warning and the Manager removes, lists, renames and
// polices existing VM networks as usual, while Setup of a VM without a
// network fails with ErrEgressMissing until the interface is back (no
// reopening needed).
func New(ctx context.Context, cfg Config) (*Manager, error) {
	m, err := newManager(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.HostNS == "" {
		// The calling thread's: an unlocked goroutine's thread is always
		// in the process's namespace, while /proc/self (the main thread)
		// may be switched by a goroutine locked to it.
		m.hostNS, err = netns.Get()
	} else if !netnsutil.IsNetNS(cfg.HostNS) {
		return nil, &FieldError{Field: "Config.HostNS", Rule: fmt.Sprintf("%q is not a network namespace (a pinned nsfs file or /proc/<pid>/ns/net)", cfg.HostNS), Err: ErrInvalidConfig}
	} else {
		m.hostNS, err = netns.GetFromPath(cfg.HostNS)
	}
	if err != nil {
		return nil, &FieldError{Field: "Config.HostNS", Rule: fmt.Sprintf("cannot open network namespace %q: %v", cfg.HostNS, err), Err: ErrInvalidConfig}
	}
	ok := false
	defer func() {
		if !ok {
			m.endWatch()
			m.closeHandles()
		}
	}()
	if m.hostNL, err = netlink.NewHandleAt(m.hostNS); err != nil {
		return nil, fmt.Errorf("network: netlink in host namespace: %w", err)
	}
	if err := m.validateHost(); err != nil {
		return nil, err
	}
	if err := netnsutil.EnsureSharedDir(m.runDir); err != nil {
		return nil, &FieldError{Field: "Config.RunDir", Rule: err.Error(), Err: ErrInvalidConfig}
	}
	if m.owner, err = newOwner(); err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	if m.rest == 0 {
		if m.rest, err = longestConntrackTimeout(m.hostNS); err != nil {
			return nil, fmt.Errorf("network: %w", err)
		}
		m.rest += time.Minute
	}
	if err := m.installHost(ctx); err != nil {
		return nil, err
	}
	if m.egressGone.Load() {
		m.log.Warn("network: egress interface is missing; existing VM networks work as before, new ones fail until it is back",
			"egress", m.egress)
	}
	if err := m.sweepTemps(ctx); err != nil {
		m.log.Warn("network: remove temporary files left by a crash", "err", err)
	}
	wctx, wcancel := context.WithCancel(context.Background())
	m.stopWatch, m.watchDone = wcancel, make(chan struct{})
	ready := make(chan error, 1)
	go m.watchHost(wctx, ready)
	if err := <-ready; err != nil { // the deferred endWatch stops it
		return nil, fmt.Errorf("network: watch host addresses: %w", err)
	}
	// Slots built by earlier processes get the host's addresses of now.
	if err := m.refreshHostSets(); err != nil {
		m.log.Warn("network: refresh host addresses in slot firewalls", "err", err)
	}
	ok = true
	liveInstances.Store(m.owner.Instance, struct{}{})
	if m.poolSize > 0 {
		bg, cancel := context.WithCancel(context.Background())
		m.stop, m.done = cancel, make(chan struct{})
		go m.refillLoop(bg)
	}
	return m, nil
}

// newManager applies defaults and checks the fields that need no kernel.
func newManager(cfg Config) (*Manager, error) {
	m := &Manager{
		store:     cfg.Store,
		log:       cfg.Logger,
		prefix:    cfg.NamePrefix,
		runDir:    cfg.RunDir,
		pool:      cfg.Pool,
		egress:    cfg.EgressInterface,
		poolSize:  cfg.PoolSize,
		rest:      cfg.AddressRest,
		hostAllow: slices.Clone(cfg.HostAllow),
		refill:    make(chan struct{}, 1),
		hostNS:    netns.None(),
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.prefix == "" {
		m.prefix = DefaultNamePrefix
	}
	if m.runDir == "" {
		m.runDir = DefaultRunDir
	}
	if !m.pool.IsValid() {
		m.pool = DefaultPool
	}
	if err := m.validateStatic(); err != nil {
		return nil, err
	}
	m.runDir = filepath.Clean(m.runDir)
	m.blocks = uint32(uint64(1) << (32 - m.pool.Bits()) / 4)
	return m, nil
}

// validateStatic checks the fields that need no kernel.
func (m *Manager) validateStatic() error {
	fe := fieldErrors{sentinel: ErrInvalidConfig}
	if m.store == nil {
		fe.add("Config.Store", "is required")
	}
	if err := validatePrefix(m.prefix); err != "" {
		fe.add("Config.NamePrefix", err)
	}
	if !filepath.IsAbs(m.runDir) {
		fe.add("Config.RunDir", fmt.Sprintf("%q must be an absolute path", m.runDir))
	}
	switch p := m.pool; {
	case !p.Addr().Is4():
		fe.add("Config.Pool", fmt.Sprintf("%s is not IPv4", p))
	case p.Bits() < 8 || p.Bits() > 30:
		fe.add("Config.Pool", fmt.Sprintf("%s must be /8 to /30 (each slot takes an aligned block of 4 addresses)", p))
	case p.Masked() != p:
		fe.add("Config.Pool", fmt.Sprintf("%s has host bits set; use %s", p, p.Masked()))
	default:
		for _, bad := range []string{"0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4"} {
			if b := netip.MustParsePrefix(bad); b.Overlaps(p) {
				fe.add("Config.Pool", fmt.Sprintf("%s overlaps the special-purpose range %s", p, b))
			}
		}
	}
	if m.egress != "" && !validIfname(m.egress) {
		fe.add("Config.EgressInterface", fmt.Sprintf("%q is not an interface name: 1-15 bytes, without '/', ':', whitespace or NUL, not \".\" or \"..\"", m.egress))
	}
	if m.poolSize < 0 {
		fe.add("Config.PoolSize", fmt.Sprintf("%d is negative", m.poolSize))
	}
	if m.rest < 0 {
		fe.add("Config.AddressRest", fmt.Sprintf("%s is negative", m.rest))
	}
	validateRules(&fe, "Config.HostAllow", m.hostAllow)
	if len(m.hostAllow) > MaxRules {
		fe.add("Config.HostAllow", fmt.Sprintf("has %d rules; at most %d are allowed", len(m.hostAllow), MaxRules))
	}
	return fe.err()
}

// validIfname reports whether the kernel would accept s as a network
// interface name (dev_valid_name).
func validIfname(s string) bool {
	if len(s) == 0 || len(s) > 15 || s == "." || s == ".." {
		return false
	}
	for _, c := range []byte(s) {
		if c == '/' || c == ':' || c == 0 || c == ' ' || (c >= '\t' && c <= '\r') {
			return false
		}
	}
	return true
}

func validatePrefix(p string) string {
	if len(p) < 1 || len(p) > 6 {
		return fmt.Sprintf("%q must be 1-6 characters (names are <prefix>-<8 hex> within the 15 of IFNAMSIZ)", p)
	}
	for i, c := range p {
		switch {
		case 'a' <= c && c <= 'z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return fmt.Sprintf("%q must be [a-z0-9] and start with a letter (bad character %q)", p, c)
		}
	}
	return ""
}

// validateHost resolves the egress interface and checks the pool against
// the host namespace's addresses and routes.
func (m *Manager) validateHost() error {
	links, err := m.hostNL.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("network: list host links: %w", err)
	}
	names := make(map[int]string, len(links))
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	routes, err := m.hostNL.RouteList(nil, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("network: list host routes: %w", err)
	}
	if m.egress == "" {
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst) {
				idx := r.LinkIndex
				if idx == 0 && len(r.MultiPath) > 0 {
					idx = r.MultiPath[0].LinkIndex
				}
				m.egress = names[idx]
				break
			}
		}
		if m.egress == "" {
			return &FieldError{Field: "Config.EgressInterface", Rule: "is empty and the host namespace has no IPv4 default route to take it from", Err: ErrInvalidConfig}
		}
	} else if _, err := m.hostNL.LinkByName(m.egress); err != nil {
		if !isLinkNotFound(err) {
			return &FieldError{Field: "Config.EgressInterface", Rule: fmt.Sprintf("cannot look up interface %q in the host namespace: %v", m.egress, err), Err: ErrInvalidConfig}
		}
		// Gone (a NIC unplugged, a bond renamed): existing networks must
		// stay removable; new ones fail until it is back.
		m.egressGone.Store(true)
	}
	if _, mine := m.ours(m.egress); mine {
		return &FieldError{Field: "Config.EgressInterface", Rule: fmt.Sprintf("%q is a slot's veth, not an egress interface", m.egress), Err: ErrInvalidConfig}
	}

	addrs, err := m.hostNL.AddrList(nil, netlink.FAMILY_V4)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("network: list host addresses: %w", err)
	}
	for _, a := range addrs {
		if _, mine := m.ours(names[a.LinkIndex]); mine {
			continue
		}
		if p, ok := prefixOf(a.IPNet); ok && p.Overlaps(m.pool) {
			return &FieldError{Field: "Config.Pool", Rule: fmt.Sprintf("%s overlaps address %s of %s in the host namespace", m.pool, p, names[a.LinkIndex]), Err: ErrInvalidConfig}
		}
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		if _, mine := m.ours(names[r.LinkIndex]); mine {
			continue
		}
		if p, ok := prefixOf(r.Dst); ok && p.Bits() > 0 && p.Overlaps(m.pool) {
			return &FieldError{Field: "Config.Pool", Rule: fmt.Sprintf("%s overlaps route %s via %s in the host namespace", m.pool, p, names[r.LinkIndex]), Err: ErrInvalidConfig}
		}
	}
	return nil
}

// installHost (re)writes the host table and enables forwarding, under the
// allocation lock so that a concurrent Close elsewhere cannot remove the
// table in between.
func (m *Manager) installHost(ctx context.Context) error {
	unlock, err := m.store.Lock(ctx, m.allocLock())
	if err != nil {
		return fmt.Errorf("network: lock %s: %w", m.allocLock(), err)
	}
	defer unlock()
	return m.writeHost()
}

func (m *Manager) writeHost() error {
	guard, err := m.enableForwarding()
	if err != nil {
		return err
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(m.hostNS)))
	if err != nil {
		return fmt.Errorf("network: nftables in host namespace: %w", err)
	}
	m.writeHostTable(c, guard)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("network: install host table inet %s: %w", m.hostTableName(), err)
	}
	return nil
}

// ensureHost reinstalls the host table if something (a Close in another
// process that saw no leases) removed it. The caller holds the allocation
// lock.
func (m *Manager) ensureHost() error {
	c, err := nftables.New(nftables.WithNetNSFd(int(m.hostNS)))
	if err != nil {
		return fmt.Errorf("network: nftables in host namespace: %w", err)
	}
	if _, err := c.ListTableOfFamily(m.hostTableName(), nftables.TableFamilyINet); err == nil {
		return nil
	}
	return m.writeHost()
}

// egressReady checks that the egress interface is in the host namespace,
// failing with ErrEgressMissing if not. If it was missing before (at New
// or since), it rewrites the host first: forwarding on it (a returning
// interface has the default setting) and the host table's guard.
func (m *Manager) egressReady(ctx context.Context) error {
	if _, err := m.hostNL.LinkByName(m.egress); err != nil {
		if isLinkNotFound(err) {
			m.egressGone.Store(true)
			return &FieldError{Field: "Config.EgressInterface",
				Rule: fmt.Sprintf("no interface %q in the host namespace (unplugged, renamed or deleted?): a new VM network is masqueraded out of it; bring it back (existing VM networks can be removed meanwhile)", m.egress),
				Err:  ErrEgressMissing}
		}
		return fmt.Errorf("network: look up egress interface %q: %w", m.egress, err)
	}
	if !m.egressGone.Load() {
		return nil
	}
	unlock, err := m.store.Lock(ctx, m.allocLock())
	if err != nil {
		return fmt.Errorf("network: lock %s: %w", m.allocLock(), err)
	}
	defer unlock()
	if !m.egressGone.Load() {
		return nil // rewritten meanwhile (the watcher, another Setup)
	}
	m.egressGone.Store(false)
	if err := m.writeHost(); err != nil {
		m.egressGone.Store(true)
		return err
	}
	return nil
}

// EgressMissing reports whether the egress interface was missing from
// the host namespace when last looked for: by New, by a Setup that failed
// with ErrEgressMissing, or by the link watcher on its removal. Its
// return, seen by the watcher or a Setup, clears it. A rename away is
// seen only by the next Setup (the watcher follows the name).
func (m *Manager) EgressMissing() bool { return m.egressGone.Load() }

// EgressInterface returns the egress interface's name (the one of the
// default route when Config.EgressInterface was "").
func (m *Manager) EgressInterface() string { return m.egress }

// enter registers an operation; Close waits for registered ones.
func (m *Manager) enter() error {
	m.ops.RLock()
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		m.ops.RUnlock()
		return ErrClosed
	}
	return nil
}

func (m *Manager) leave() { m.ops.RUnlock() }

// Setup gives vmID a network and returns its Slot. With a warm pool it
// takes a pre-built slot, installs opts' policy and TAP owner if they
// differ from the defaults, and records the assignment in one Store write;
// otherwise it builds one: lease, namespace, sysctls, TAP, veth pair,
// routes, NAT and firewall tables.
//
// Setup is idempotent per vmID: if vmID already has a network, the same
// Slot is returned, repaired if parts of it were removed, with opts
// applied. A failed Setup leaves nothing behind. ctx bounds the call only.
//
// A VM without a network gets none while the egress interface is missing
// from the host namespace: the error is a *FieldError matching
// ErrEgressMissing. A VM that has one gets it back (its slot does not
// depend on the interface).
func (m *Manager) Setup(ctx context.Context, vmID string, opts Options) (*Slot, error) {
	if err := validateVMID(vmID); err != nil {
		return nil, err
	}
	if err := opts.Policy.Validate(); err != nil {
		return nil, err
	}
	if err := m.enter(); err != nil {
		return nil, err
	}
	defer m.leave()
	unlock, err := m.lockVM(ctx, vmID)
	if err != nil {
		return nil, err
	}
	defer unlock()

	vr, l, status, err := m.lookup(vmID)
	switch {
	case err != nil:
		return nil, err
	case status == assigned:
		return m.existing(ctx, vmID, &vr, &l, opts)
	case status == staleRecord:
		if err := m.dropStale(vmID); err != nil {
			return nil, err
		}
	}
	if err := m.egressReady(ctx); err != nil {
		return nil, err
	}
	for l := m.takePooled(); l != nil; l = m.takePooled() {
		if m.healthy(l.Name) {
			defer m.kick() // refill once this Setup is done
			return m.assignPooled(l, vmID, opts)
		}
		m.kick()
		m.log.Warn("network: warm slot was damaged; discarding it", "slot", l.Name)
		m.discard(l.Name)
	}
	return m.setupFresh(ctx, vmID, opts)
}

// existing returns the slot vmID already has, rebuilt in place (same
// addresses) if it is damaged or was left half-built, with opts applied.
func (m *Manager) existing(ctx context.Context, vmID string, vr *vmRecord, l *leaseRecord, opts Options) (*Slot, error) {
	if l.State != stateBuilt || !m.healthy(l.Name) {
		if err := m.build(ctx, l, opts); err != nil {
			return nil, err
		}
		l.State, l.Owner = stateBuilt, m.owner
		if err := m.putLease(ctx, l); err != nil {
			return nil, fmt.Errorf("network: vm %q: record lease: %w", vmID, err)
		}
	} else if !vr.sameOptions(opts) {
		if err := m.configure(l.Name, vr.options(), opts, false); err != nil {
			return nil, err
		}
	}
	if !vr.sameOptions(opts) {
		vr.Policy, vr.TAPUID, vr.TAPGID = opts.Policy, opts.TAPUID, opts.TAPGID
		if err := m.store.Put(kindVM, vmID, vr); err != nil {
			return nil, fmt.Errorf("network: vm %q: record: %w", vmID, err)
		}
	}
	return m.slotOf(vmID, l), nil
}

// configure changes a built slot's policy and TAP owner from old to opts;
// warm is set for a slot no VM has used yet (no flow to cut).
func (m *Manager) configure(name string, old, opts Options, warm bool) error {
	if !old.Policy.equal(opts.Policy) {
		if err := m.applyFirewall(name, opts.Policy, !warm); err != nil {
			return err
		}
	}
	if opts.TAPUID != old.TAPUID || opts.TAPGID != old.TAPGID {
		if err := m.tapOwner(name, opts.TAPUID, opts.TAPGID); err != nil {
			return err
		}
	}
	return nil
}

// assignPooled gives a warm slot to vmID: one Store write.
func (m *Manager) assignPooled(l *leaseRecord, vmID string, opts Options) (*Slot, error) {
	if err := m.configure(l.Name, Options{}, opts, true); err != nil {
		m.discard(l.Name)
		return nil, err
	}
	vr := vmRecord{Slot: l.Name, Token: l.Token, Policy: opts.Policy, TAPUID: opts.TAPUID, TAPGID: opts.TAPGID}
	if err := m.store.Create(kindVM, vmID, &vr); err != nil {
		m.discard(l.Name)
		return nil, fmt.Errorf("network: vm %q: record: %w", vmID, err)
	}
	return m.slotOf(vmID, l), nil
}

// setupFresh allocates and builds a new slot for vmID.
func (m *Manager) setupFresh(ctx context.Context, vmID string, opts Options) (*Slot, error) {
	l, err := m.allocate(ctx, vmID)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Slot, error) {
		if errors.Is(err, errCrash) {
			return nil, err
		}
		m.discard(l.Name)
		m.store.Delete(kindVM, vmID)
		return nil, err
	}
	if err := m.step("record"); err != nil {
		return fail(err)
	}
	vr := vmRecord{Slot: l.Name, Token: l.Token, Policy: opts.Policy, TAPUID: opts.TAPUID, TAPGID: opts.TAPGID}
	if err := m.store.Create(kindVM, vmID, &vr); err != nil {
		return fail(fmt.Errorf("network: vm %q: record: %w", vmID, err))
	}
	if err := m.build(ctx, l, opts); err != nil {
		return fail(err)
	}
	if err := m.step("commit"); err != nil {
		return fail(err)
	}
	l.State = stateBuilt
	if err := m.putLease(ctx, l); err != nil {
		return fail(fmt.Errorf("network: vm %q: record lease: %w", vmID, err))
	}
	return m.slotOf(vmID, l), nil
}

// allocate leases a free block of the pool, in state building; builtFor
// is the VM it is for ("" for the warm pool).
func (m *Manager) allocate(ctx context.Context, builtFor string) (*leaseRecord, error) {
	if err := m.step("lease"); err != nil {
		return nil, err
	}
	unlock, err := m.store.Lock(ctx, m.allocLock())
	if err != nil {
		return nil, fmt.Errorf("network: lock %s: %w", m.allocLock(), err)
	}
	defer unlock()
	ids, err := m.store.List(kindLease)
	if err != nil {
		return nil, fmt.Errorf("network: list leases: %w", err)
	}
	used := make(map[uint32]bool, len(ids))
	for _, id := range ids {
		if ip, ok := m.ours(id); ok {
			idx, _ := blockIndex(m.pool, ip)
			used[idx] = true
		}
	}
	rest, err := m.loadRest(time.Now())
	if err != nil {
		return nil, err
	}
	resting := make(map[uint32]time.Time, len(rest.Released))
	for name, at := range rest.Released {
		if ip, ok := m.ours(name); ok {
			idx, _ := blockIndex(m.pool, ip)
			resting[idx] = at
		}
	}
	m.mu.Lock()
	start := m.cursor
	m.mu.Unlock()
	// Addresses that are neither leased nor resting first; then, if none
	// of them could be leased, the one that has rested longest.
	order := make([]uint32, 0, m.blocks)
	for i := uint32(0); i < m.blocks; i++ {
		idx := (start + i) % m.blocks
		if _, ok := resting[idx]; !ok && !used[idx] {
			order = append(order, idx)
		}
	}
	var oldest time.Time
	oldestIdx := -1
	for idx, at := range resting {
		if !used[idx] && (oldestIdx < 0 || at.Before(oldest)) {
			oldest, oldestIdx = at, int(idx)
		}
	}
	if oldestIdx >= 0 {
		order = append(order, uint32(oldestIdx))
	}
	for _, idx := range order {
		a := blockAddrs(m.pool, idx)
		l := &leaseRecord{
			Name:     slotName(m.prefix, a.HostIP),
			HostIP:   a.HostIP.String(),
			Token:    newToken(),
			State:    stateBuilding,
			Owner:    m.owner,
			BuiltFor: builtFor,
			Created:  time.Now().UTC(),
		}
		err := m.store.Create(kindLease, l.Name, l)
		if isExists(err) { // written by someone not holding the lock
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("network: lease %s: %w", l.Name, err)
		}
		m.mu.Lock()
		m.cursor = (idx + 1) % m.blocks
		m.mu.Unlock()
		if _, ok := resting[idx]; ok {
			// Reused before its rest is over: make sure no flow of the
			// previous VM remains.
			if err := m.flushHostConntrack(a.HostIP); err != nil {
				m.store.Delete(kindLease, l.Name)
				return nil, fmt.Errorf("network: lease %s: %w", l.Name, err)
			}
		}
		if err := m.ensureHost(); err != nil {
			m.store.Delete(kindLease, l.Name)
			return nil, err
		}
		return l, nil
	}
	return nil, fmt.Errorf("%w: all %d slots of %s are leased", ErrPoolExhausted, m.blocks, m.pool)
}

// step runs the test failure hook.
func (m *Manager) step(name string) error {
	if m.failHook == nil {
		return nil
	}
	if err := m.failHook(name); err != nil {
		return fmt.Errorf("network: step %s: %w", name, err)
	}
	return nil
}

// errCrash, returned by a test hook, makes a set-up step fail without any
// rollback, as if the process had died there.
var errCrash = errors.New("simulated crash")

// discard removes a slot's kernel objects and its lease, logging failures
// (used on error paths, where the original error is what is returned).
func (m *Manager) discard(name string) {
	if err := m.destroy(name); err != nil {
		m.log.Warn("network: remove slot after failure", "slot", name, "err", err)
		return // keep the lease: Cleanup retries
	}
	if err := m.store.Delete(kindLease, name); err != nil {
		m.log.Warn("network: remove lease after failure", "slot", name, "err", err)
	}
}

// Teardown removes vmID's network: the host-side veth (and with it the
// route), the namespace with its TAP and nftables tables, and the lease.
// It is idempotent: a VM without a network, or whose namespace or links
// were already removed behind our back, is not an error. ctx bounds the
// wait for the VM's lock.
func (m *Manager) Teardown(ctx context.Context, vmID string) error {
	if err := validateVMID(vmID); err != nil {
		return err
	}
	if err := m.enter(); err != nil {
		return err
	}
	defer m.leave()
	unlock, err := m.lockVM(ctx, vmID)
	if err != nil {
		return err
	}
	defer unlock()
	return m.teardownLocked(ctx, vmID)
}

func (m *Manager) teardownLocked(ctx context.Context, vmID string) error {
	_, l, status, err := m.lookup(vmID)
	if err != nil {
		return fmt.Errorf("network: teardown: %w", err)
	}
	if status == noRecord {
		return nil
	}
	if status == assigned {
		if err := m.destroy(l.Name); err != nil {
			return fmt.Errorf("network: teardown %q: %w", vmID, err)
		}
		// The address rests before its next use; recorded before the
		// lease goes, so it is never free without a rest time.
		if err := m.markReleased(ctx, l.Name); err != nil {
			return fmt.Errorf("network: teardown %q: %w", vmID, err)
		}
		if err := m.store.Delete(kindLease, l.Name); err != nil {
			return fmt.Errorf("network: teardown %q: %w", vmID, err)
		}
		m.kick() // an address is free: a waiting refiller may go on
	}
	if err := m.store.Delete(kindVM, vmID); err != nil {
		return fmt.Errorf("network: teardown %q: %w", vmID, err)
	}
	return nil
}

// SetPolicy replaces vmID's firewall with p in one atomic nftables
// transaction; it applies to the running VM at once, including flows that
// are already open. It fails with ErrNotFound if vmID has no network.
func (m *Manager) SetPolicy(ctx context.Context, vmID string, p Policy) error {
	if err := validateVMID(vmID); err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return err
	}
	if err := m.enter(); err != nil {
		return err
	}
	defer m.leave()
	unlock, err := m.lockVM(ctx, vmID)
	if err != nil {
		return err
	}
	defer unlock()
	vr, l, status, err := m.lookup(vmID)
	if err != nil {
		return fmt.Errorf("network: set policy: %w", err)
	}
	if status != assigned {
		return fmt.Errorf("%w: %q", ErrNotFound, vmID)
	}
	if err := m.applyFirewall(l.Name, p, true); err != nil {
		return err
	}
	vr.Policy = p
	if err := m.store.Put(kindVM, vmID, &vr); err != nil {
		return fmt.Errorf("network: set policy %q: record: %w", vmID, err)
	}
	return nil
}

// Slot returns vmID's network, or an error matching ErrNotFound.
func (m *Manager) Slot(vmID string) (*Slot, error) {
	if err := validateVMID(vmID); err != nil {
		return nil, err
	}
	_, l, status, err := m.lookup(vmID)
	if err != nil {
		return nil, err
	}
	if status != assigned {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, vmID)
	}
	return m.slotOf(vmID, &l), nil
}

// Close stops the pool refiller, removes the pooled slots no VM took and,
// if no lease of this pool remains in the Store, the host table. VM
// networks stay: they belong to VMs that outlive the Manager. Closing
// twice is not an error.
func (m *Manager) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	if m.stop != nil {
		m.stop()
		<-m.done
	}
	m.ops.Lock()
	defer m.ops.Unlock()
	m.mu.Lock()
	pooled := m.pooled
	m.pooled = nil
	m.mu.Unlock()
	var errs []error
	for _, l := range pooled {
		if err := m.destroy(l.Name); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := m.store.Delete(kindLease, l.Name); err != nil {
			errs = append(errs, err)
		}
	}
	m.endWatch()
	if err := m.removeHostIfUnused(); err != nil {
		errs = append(errs, err)
	}
	liveInstances.Delete(m.owner.Instance)
	m.closeHandles()
	return errors.Join(errs...)
}

// removeHostIfUnused deletes the host table, and restores the forwarding
// settings mvm changed, when the Store holds no lease of this pool.
func (m *Manager) removeHostIfUnused() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	unlock, err := m.store.Lock(ctx, m.allocLock())
	if err != nil {
		return fmt.Errorf("network: lock %s: %w", m.allocLock(), err)
	}
	defer unlock()
	ids, err := m.store.List(kindLease)
	if err != nil {
		return fmt.Errorf("network: list leases: %w", err)
	}
	for _, id := range ids {
		if _, ok := m.ours(id); ok {
			return nil
		}
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(m.hostNS)))
	if err != nil {
		return fmt.Errorf("network: nftables in host namespace: %w", err)
	}
	if t, err := c.ListTableOfFamily(m.hostTableName(), nftables.TableFamilyINet); err == nil {
		c.DelTable(t)
		if err := c.Flush(); err != nil {
			return fmt.Errorf("network: remove host table inet %s: %w", m.hostTableName(), err)
		}
	}
	return m.restoreForwarding()
}

// endWatch stops the host address watcher.
func (m *Manager) endWatch() {
	if m.stopWatch != nil {
		m.stopWatch()
		<-m.watchDone
		m.stopWatch = nil
	}
}

func (m *Manager) closeHandles() {
	if m.hostNL != nil {
		m.hostNL.Close()
		m.hostNL = nil
	}
	if m.hostNS.IsOpen() {
		m.hostNS.Close()
	}
}

// slotOf builds the Slot of a lease.
func (m *Manager) slotOf(vmID string, l *leaseRecord) *Slot {
	ip, _ := netip.ParseAddr(l.HostIP)
	return &Slot{
		VMID:        vmID,
		Name:        l.Name,
		NetNSPath:   m.nsPath(l.Name),
		TAPName:     TAPName,
		GuestIP:     GuestIP,
		GatewayIP:   GatewayIP,
		GuestPrefix: GuestPrefixLen,
		GuestMAC:    GuestMAC,
		HostIP:      ip,
		VethHost:    l.Name,
		VethNS:      NSVethName,
	}
}
