//go:build linux

package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/mvm-dev/microvm/network/internal/netnsutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Store kinds kept per prefix (id: the prefix).
const (
	kindHost = "nethost" // what mvm changed in the host namespace: hostRecord
	kindRest = "netrest" // when each HostIP was released: restRecord
)

// hostRecord remembers what mvm changed in the host namespace so that the
// last Manager to leave restores it.
type hostRecord struct {
	// Egress is the interface whose forwarding mvm turned on, and
	// EgressWas the value it had ("0" or "1").
	Egress    string `json:"egress"`
	EgressWas string `json:"egress_was"`
}

// enableForwarding makes the host namespace forward the slots' traffic.
// If the host already forwards globally (net.ipv4.ip_forward=1) nothing
// is changed. Otherwise forwarding is enabled only where it is needed:
// on each slot's veth (at build) and on the egress interface, whose
// previous value is recorded (nethost/<prefix>) and restored by the last
// Close. It reports whether forwarding from the egress interface to
// anything but a slot must be dropped (mvm turned it on). If global
// forwarding was turned on by someone else since, the record is dropped:
// forwarding is theirs. The caller holds the allocation lock.
func (m *Manager) enableForwarding() (bool, error) {
	global, err := readSysctl(m.hostNS, "net/ipv4/ip_forward")
	if err != nil {
		return false, fmt.Errorf("network: read host ip_forward: %w", err)
	}
	var rec hostRecord
	err = m.store.Get(kindHost, m.prefix, &rec)
	switch {
	case err == nil && global == "1":
		// Someone (an operator, Docker) turned global forwarding on
		// since: forwarding is theirs now; nothing to restore, and the
		// egress guard would break their routing.
		if err := m.store.Delete(kindHost, m.prefix); err != nil {
			return false, fmt.Errorf("network: remove %s/%s: %w", kindHost, m.prefix, err)
		}
		m.fwdPerIf.Store(false)
		return false, nil
	case err == nil:
	case !isNotFound(err):
		return false, fmt.Errorf("network: read %s/%s: %w", kindHost, m.prefix, err)
	default:
		if global == "1" {
			m.fwdPerIf.Store(false)
			return false, nil
		}
		was, err := readSysctl(m.hostNS, "net/ipv4/conf/"+m.egress+"/forwarding")
		if errors.Is(err, os.ErrNotExist) {
			// The interface is gone: nothing to turn on or record yet,
			// and no guard needed (nothing arrives from it). Setup
			// rewrites the host when it is back (egressReady).
			m.egressGone.Store(true)
			m.fwdPerIf.Store(true)
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("network: read forwarding of %s: %w", m.egress, err)
		}
		rec = hostRecord{Egress: m.egress, EgressWas: was}
		if err := m.store.Put(kindHost, m.prefix, &rec); err != nil {
			return false, fmt.Errorf("network: record host changes: %w", err)
		}
	}
	m.fwdPerIf.Store(true)
	err = writeSysctl(m.hostNS, "net/ipv4/conf/"+rec.Egress+"/forwarding", "1")
	if errors.Is(err, os.ErrNotExist) {
		// Gone: the record keeps the value to restore (moot while it is
		// gone: a returning interface takes the default); Setup turns
		// forwarding on again when it is back (egressReady).
		m.egressGone.Store(true)
	} else if err != nil {
		return false, fmt.Errorf("network: enable forwarding on %s: %w", rec.Egress, err)
	}
	return rec.EgressWas == "0", nil
}

// restoreForwarding undoes enableForwarding; the caller holds the
// allocation lock and has seen that no slot is left.
func (m *Manager) restoreForwarding() error {
	var rec hostRecord
	err := m.store.Get(kindHost, m.prefix, &rec)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("network: read %s/%s: %w", kindHost, m.prefix, err)
	}
	err = writeSysctl(m.hostNS, "net/ipv4/conf/"+rec.Egress+"/forwarding", rec.EgressWas)
	if err != nil && !errors.Is(err, os.ErrNotExist) { // the interface may be gone
		return fmt.Errorf("network: restore forwarding of %s: %w", rec.Egress, err)
	}
	if err := m.store.Delete(kindHost, m.prefix); err != nil {
		return fmt.Errorf("network: remove %s/%s: %w", kindHost, m.prefix, err)
	}
	return nil
}

// readSysctl reads /proc/sys/<key> as seen from ns.
func readSysctl(ns netns.NsHandle, key string) (string, error) {
	var v string
	err := netnsutil.Do(ns, func() error {
		b, err := os.ReadFile("/proc/sys/" + key)
		v = strings.TrimSpace(string(b))
		return err
	})
	return v, err
}

// longestConntrackTimeout returns the longest conntrack timeout of ns
// (nf_conntrack_*timeout*, in seconds; tcp established: 5 days by
// default).
func longestConntrackTimeout(ns netns.NsHandle) (time.Duration, error) {
	var longest time.Duration
	err := netnsutil.Do(ns, func() error {
		const dir = "/proc/sys/net/netfilter"
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), "nf_conntrack_") || !strings.Contains(e.Name(), "timeout") {
				continue
			}
			b, err := os.ReadFile(dir + "/" + e.Name())
			if err != nil {
				continue
			}
			if n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil {
				longest = max(longest, time.Duration(n)*time.Second)
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read conntrack timeouts: %w", err)
	}
	if longest == 0 {
		longest = 5 * 24 * time.Hour // the kernel's tcp established default
	}
	return longest, nil
}

// restRecord holds when each recently released slot (by name) was
// released.
type restRecord struct {
	Released map[string]time.Time `json:"released"`
}

// loadRest reads the rest record, dropping entries that have rested long
// enough. The caller holds the allocation lock.
func (m *Manager) loadRest(now time.Time) (restRecord, error) {
	var r restRecord
	if err := m.store.Get(kindRest, m.prefix, &r); err != nil && !isNotFound(err) {
		return r, fmt.Errorf("network: read %s/%s: %w", kindRest, m.prefix, err)
	}
	for name, at := range r.Released {
		if now.Sub(at) >= m.rest || at.After(now.Add(time.Minute)) {
			delete(r.Released, name)
		}
	}
	return r, nil
}

// markReleased records that slot name's HostIP was released now, so that
// allocate lets it rest.
func (m *Manager) markReleased(ctx context.Context, name string) error {
	unlock, err := m.store.Lock(ctx, m.allocLock())
	if err != nil {
		return fmt.Errorf("network: lock %s: %w", m.allocLock(), err)
	}
	defer unlock()
	now := time.Now().UTC()
	r, err := m.loadRest(now)
	if err != nil {
		return err
	}
	if r.Released == nil {
		r.Released = map[string]time.Time{}
	}
	r.Released[name] = now
	if err := m.store.Put(kindRest, m.prefix, &r); err != nil {
		return fmt.Errorf("network: record released %s: %w", name, err)
	}
	return nil
}

// putLease writes a lease under the allocation lock: every write of a
// lease record is made under it, so that sweepTemps, holding it, knows
// that no lease write is in progress.
func (m *Manager) putLease(ctx context.Context, l *leaseRecord) error {
	unlock, err := m.store.Lock(ctx, m.allocLock())
	if err != nil {
		return fmt.Errorf("network: lock %s: %w", m.allocLock(), err)
	}
	defer unlock()
	return m.store.Put(kindLease, l.Name, l)
}

// TempSweeper is an optional Store capability ([*FileStore] has it):
// listing and removing the temporary files of a kind's records, as left
// by a process killed in the middle of a write. New and Cleanup use it to
// remove the package's own leftovers (netlease, netvm, nethost, netrest)
// at once, each while holding the lock under which every write of that
// record is made, so that a live process's write in progress is never
// touched.
type TempSweeper interface {
	TempIDs(kind string) ([]string, error)
	RemoveTemps(kind, id string) (int, error)
}

// sweepTemps removes the temporary files of the package's records; see
// TempSweeper. A VM whose lock is held elsewhere is skipped (its owner is
// alive and may be writing).
func (m *Manager) sweepTemps(ctx context.Context) error {
	ts, ok := m.store.(TempSweeper)
	if !ok {
		return nil
	}
	var errs []error
	func() {
		unlock, err := m.store.Lock(ctx, m.allocLock())
		if err != nil {
			errs = append(errs, fmt.Errorf("network: lock %s: %w", m.allocLock(), err))
			return
		}
		defer unlock()
		for _, kind := range []string{kindLease, kindHost, kindRest} {
			ids, err := ts.TempIDs(kind)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, id := range ids {
				if kind == kindLease {
					if _, ours := m.ours(id); !ours {
						continue // another prefix's: not under our lock
					}
				} else if id != m.prefix {
					continue
				}
				if _, err := ts.RemoveTemps(kind, id); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}()
	ids, err := ts.TempIDs(kindVM)
	if err != nil {
		errs = append(errs, err)
	}
	for _, id := range ids {
		if validateVMID(id) != nil {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		unlock, err := m.store.Lock(lctx, vmLock(id))
		cancel()
		if err != nil {
			continue // busy: a live process may be writing it
		}
		if _, err := ts.RemoveTemps(kindVM, id); err != nil {
			errs = append(errs, err)
		}
		unlock()
	}
	return errors.Join(errs...)
}

// refreshHostSets rewrites the host set of every built slot of this pool
// with the host namespace's addresses now.
func (m *Manager) refreshHostSets() error {
	m.hostMu.Lock()
	defer m.hostMu.Unlock()
	host, err := m.hostList()
	if err != nil {
		return err
	}
	ents, err := os.ReadDir(m.runDir)
	if err != nil {
		return fmt.Errorf("network: read %s: %w", m.runDir, err)
	}
	var errs []error
	for _, e := range ents {
		if _, ok := m.ours(e.Name()); !ok {
			continue
		}
		if err := m.writeHostSet(e.Name(), host); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (m *Manager) writeHostSet(name string, host []netip.Prefix) error {
	ns, err := netnsutil.Open(m.nsPath(name))
	if err != nil {
		return nil // removed meanwhile
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return err
	}
	t := &nftables.Table{Name: m.fwTableName(), Family: nftables.TableFamilyINet}
	s, err := c.GetSetByName(t, setHost)
	if err != nil {
		return nil // no firewall yet: its build reads the host list itself
	}
	c.FlushSet(s)
	if err := c.SetAddElements(s, intervalElements(host)); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("network: host set of %s: %w", name, err)
	}
	return nil
}

// watchHost refreshes the slots' host sets whenever an address of the
// host namespace changes (not counting the slots' own veth addresses),
// until ctx ends. Changes are gathered for a short while first. It also
// follows the egress interface's links by name (egressEvent).
func (m *Manager) watchHost(ctx context.Context, ready chan<- error) {
	defer close(m.watchDone)
	ch := make(chan netlink.AddrUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	ns := m.hostNS
	err := netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{Namespace: &ns,
		ErrorCallback: func(err error) { m.log.Warn("network: host address watch", "err", err) }})
	// Links too: the egress interface going and coming back.
	links := make(chan netlink.LinkUpdate, 64)
	if err == nil {
		err = netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: &ns,
			ErrorCallback: func(err error) { m.log.Warn("network: host link watch", "err", err) }})
	}
	ready <- err
	if err != nil {
		return
	}
	const settle = 50 * time.Millisecond
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case u, ok := <-ch:
			if !ok {
				return
			}
			if ip, ok := netip.AddrFromSlice(u.LinkAddress.IP.To4()); !ok || m.pool.Contains(ip) {
				continue
			}
			if timer == nil {
				timer = time.After(settle)
			}
		case u, ok := <-links:
			if !ok {
				return
			}
			if u.Link == nil || u.Link.Attrs().Name != m.egress {
				continue
			}
			m.egressEvent(ctx, u.Header.Type == unix.RTM_DELLINK)
		case <-timer:
			timer = nil
			if err := m.refreshHostSets(); err != nil {
				m.log.Warn("network: refresh host addresses in slot firewalls", "err", err)
			}
		}
	}
}

// egressEvent handles the egress interface's removal (gone) or its
// (re)appearance: a returning interface has the default forwarding
// setting, so the host is rewritten at once (forwarding on, the guard),
// and existing VMs' traffic flows again without waiting for a Setup.
func (m *Manager) egressEvent(ctx context.Context, gone bool) {
	if gone {
		if !m.egressGone.Swap(true) {
			m.log.Warn("network: egress interface removed; new VM networks fail until it is back", "egress", m.egress)
		}
		return
	}
	if !m.egressGone.Load() {
		return
	}
	err := m.egressReady(ctx)
	switch {
	case err == nil:
		m.log.Info("network: egress interface is back", "egress", m.egress)
		m.kick() // a waiting warm-pool refiller may go on
	case errors.Is(err, ErrEgressMissing), ctx.Err() != nil:
	default:
		m.log.Warn("network: egress interface is back but the host could not be rewritten; the next Setup retries", "egress", m.egress, "err", err)
	}
}
