//go:build linux

package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"

	"github.com/google/nftables"
	"github.com/mvm-dev/microvm/network/internal/netnsutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// build brings a leased slot to the state described in the package
// documentation. Every step is idempotent, so the same code builds a new
// slot, finishes a half-built one and repairs a damaged one. Before each
// step it checks ctx and runs the test failure hook.
func (m *Manager) build(ctx context.Context, l *leaseRecord, opts Options) error {
	hostIP, err := netip.ParseAddr(l.HostIP)
	if err != nil {
		return fmt.Errorf("network: lease %s: bad host_ip %q", l.Name, l.HostIP)
	}
	a := addrsOf(hostIP)
	path := m.nsPath(l.Name)
	step := func(name string) error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("network: set up %s: %w", l.Name, err)
		}
		return m.step(name)
	}
	wrap := func(what string, err error) error {
		return fmt.Errorf("network: set up %s: %s: %w", l.Name, what, err)
	}

	if err := step("netns"); err != nil {
		return err
	}
	if !netnsutil.IsNetNS(path) {
		if err := netnsutil.Remove(path); err != nil { // a file left unmounted by a crash
			return wrap("namespace", err)
		}
		if err := netnsutil.Create(path); err != nil {
			return wrap("namespace", err)
		}
	}
	ns, err := netnsutil.Open(path)
	if err != nil {
		return wrap("namespace", err)
	}
	defer ns.Close()
	nsNL, err := netlink.NewHandleAt(ns)
	if err != nil {
		return wrap("netlink in namespace", err)
	}
	defer nsNL.Close()

	if err := step("sysctl"); err != nil {
		return err
	}
	if err := writeSysctls(ns, slotSysctls); err != nil {
		return wrap("sysctl", err)
	}
	if lo, err := nsNL.LinkByName("lo"); err != nil {
		return wrap("loopback", err)
	} else if err := nsNL.LinkSetUp(lo); err != nil {
		return wrap("loopback up", err)
	}

	if err := step("tap"); err != nil {
		return err
	}
	tap, err := nsNL.LinkByName(TAPName)
	if isLinkNotFound(err) {
		if err := tapCtl(ns, true, opts.TAPUID, opts.TAPGID); err != nil {
			return wrap("create TAP "+TAPName, err)
		}
		tap, err = nsNL.LinkByName(TAPName)
	} else if tun, ok := tap.(*netlink.Tuntap); err == nil && ok && !tapOwnedBy(tun, opts.TAPUID, opts.TAPGID) {
		// Only when it differs: a TAP that Firecracker holds cannot be
		// attached to (EBUSY).
		err = tapCtl(ns, false, opts.TAPUID, opts.TAPGID)
	}
	if err != nil {
		return wrap("TAP "+TAPName, err)
	}
	if err := nsNL.AddrReplace(tap, nlAddr(GatewayIP, GuestPrefixLen)); err != nil {
		return wrap("TAP address", err)
	}
	if err := nsNL.LinkSetUp(tap); err != nil {
		return wrap("TAP up", err)
	}
	if err := writeSysctl(ns, "net/ipv4/conf/"+TAPName+"/send_redirects", "0"); err != nil {
		return wrap("TAP send_redirects", err)
	}

	if err := step("veth"); err != nil {
		return err
	}
	hostLink, nsLink, err := m.ensureVeth(ns, nsNL, l.Name)
	if err != nil {
		return wrap("veth pair", err)
	}
	if err := m.hostNL.AddrReplace(hostLink, nlAddr(a.VethHost, 31)); err != nil {
		return wrap("host veth address", err)
	}
	if err := m.hostNL.LinkSetUp(hostLink); err != nil {
		return wrap("host veth up", err)
	}
	if err := nsNL.AddrReplace(nsLink, nlAddr(a.VethNS, 31)); err != nil {
		return wrap("namespace veth address", err)
	}
	if err := nsNL.LinkSetUp(nsLink); err != nil {
		return wrap("namespace veth up", err)
	}
	if err := writeSysctl(ns, "net/ipv4/conf/"+NSVethName+"/send_redirects", "0"); err != nil {
		return wrap("namespace veth send_redirects", err)
	}
	if m.fwdPerIf.Load() {
		if err := writeSysctl(m.hostNS, "net/ipv4/conf/"+l.Name+"/forwarding", "1"); err != nil {
			return wrap("host veth forwarding", err)
		}
	}
	if err := nsNL.RouteReplace(&netlink.Route{LinkIndex: nsLink.Attrs().Index, Gw: a.VethHost.AsSlice(),
		Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}); err != nil {
		return wrap("namespace default route", err)
	}

	if err := step("route"); err != nil {
		return err
	}
	if err := m.hostNL.RouteReplace(&netlink.Route{LinkIndex: hostLink.Attrs().Index,
		Dst: ipNet(a.HostIP, 32), Gw: a.VethNS.AsSlice()}); err != nil {
		return wrap("host route to "+a.HostIP.String(), err)
	}

	if err := step("nat"); err != nil {
		return err
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return wrap("nftables", err)
	}
	tables, err := c.ListTables()
	if err != nil {
		return wrap("list nftables tables", err)
	}
	exists := func(name string) bool {
		return slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == name })
	}
	m.writeNATTable(c, a, exists(m.natTableName()))
	if err := c.Flush(); err != nil {
		return wrap("NAT table", err)
	}

	if err := step("firewall"); err != nil {
		return err
	}
	mode := fwCreate
	if exists(m.fwTableName()) {
		mode = fwReplace
	}
	if err := m.firewallIn(ns, a, opts.Policy, mode); err != nil {
		return wrap("firewall", err)
	}
	return nil
}

// slotSysctls are set in every slot namespace before its devices are
// made (the default/ entries then apply to them): forwarding; strict
// reverse-path filtering (a guest cannot use a source routed elsewhere);
// no ICMP redirects; ARP answered only for the address of the receiving
// interface; no IPv6; no TCP flow picked up mid-stream by conntrack (a
// peer's segment cannot re-create a flow that a policy change cut).
var slotSysctls = [][2]string{
	{"net/ipv4/ip_forward", "1"},
	{"net/ipv4/conf/all/rp_filter", "1"},
	{"net/ipv4/conf/default/rp_filter", "1"},
	{"net/ipv4/conf/all/send_redirects", "0"},
	{"net/ipv4/conf/default/send_redirects", "0"},
	{"net/ipv4/conf/all/accept_redirects", "0"},
	{"net/ipv4/conf/default/accept_redirects", "0"},
	{"net/ipv4/conf/all/arp_ignore", "1"},
	{"net/ipv4/conf/default/arp_ignore", "1"},
	{"net/ipv6/conf/all/disable_ipv6", "1"},
	{"net/ipv6/conf/default/disable_ipv6", "1"},
	{"net/netfilter/nf_conntrack_tcp_loose", "0"},
}

// ensureVeth returns the slot's veth pair, creating it (again) unless both
// ends exist and point at each other.
func (m *Manager) ensureVeth(ns netns.NsHandle, nsNL *netlink.Handle, name string) (netlink.Link, netlink.Link, error) {
	hl, herr := m.hostNL.LinkByName(name)
	nl, nerr := nsNL.LinkByName(NSVethName)
	if herr == nil && nerr == nil && hl.Type() == "veth" && hl.Attrs().ParentIndex == nl.Attrs().Index {
		return hl, nl, nil
	}
	for _, err := range []error{herr, nerr} {
		if err != nil && !isLinkNotFound(err) {
			return nil, nil, err
		}
	}
	if herr == nil {
		if err := m.hostNL.LinkDel(hl); err != nil && !isLinkNotFound(err) {
			return nil, nil, fmt.Errorf("remove stale %s: %w", name, err)
		}
	}
	if nerr == nil {
		if err := nsNL.LinkDel(nl); err != nil && !isLinkNotFound(err) {
			return nil, nil, fmt.Errorf("remove stale %s: %w", NSVethName, err)
		}
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name},
		PeerName:      NSVethName,
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := m.hostNL.LinkAdd(veth); err != nil {
		return nil, nil, fmt.Errorf("create %s <-> %s: %w", name, NSVethName, err)
	}
	hl, err := m.hostNL.LinkByName(name)
	if err != nil {
		return nil, nil, err
	}
	nl, err = nsNL.LinkByName(NSVethName)
	if err != nil {
		return nil, nil, err
	}
	return hl, nl, nil
}

// destroy removes a slot's kernel objects: the host veth (its peer and the
// host route go with it) and the pinned namespace (its TAP and tables go
// when the last user of the namespace exits). Missing pieces are fine.
func (m *Manager) destroy(name string) error {
	var errs []error
	if l, err := m.hostNL.LinkByName(name); err == nil {
		if err := m.hostNL.LinkDel(l); err != nil && !isLinkNotFound(err) {
			errs = append(errs, fmt.Errorf("remove veth %s: %w", name, err))
		}
	} else if !isLinkNotFound(err) {
		errs = append(errs, fmt.Errorf("look up veth %s: %w", name, err))
	}
	// The slot's own entries go with its namespace, unless a process
	// (Firecracker) still holds it: flush them now.
	if ns, err := netnsutil.Open(m.nsPath(name)); err == nil {
		flushSlotConntrack(ns) // best effort: the entries time out
		ns.Close()
	}
	if err := netnsutil.Remove(m.nsPath(name)); err != nil {
		errs = append(errs, err)
	}
	if ip, ok := m.ours(name); ok {
		// Not an error that keeps the slot: its address rests anyway,
		// and the entries time out.
		if err := m.flushHostConntrack(ip); err != nil {
			m.log.Warn("network: remove slot: conntrack entries left", "slot", name, "err", err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("network: remove slot %s: %w", name, err)
	}
	return nil
}

// flushHostConntrack deletes the host namespace's conntrack entries of a
// slot: flows the guest opened (original source HostIP, before
// masquerade) and flows towards it (original destination HostIP).
func (m *Manager) flushHostConntrack(hostIP netip.Addr) error {
	var src, dst netlink.ConntrackFilter
	if err := src.AddIP(netlink.ConntrackOrigSrcIP, hostIP.AsSlice()); err != nil {
		return err
	}
	if err := dst.AddIP(netlink.ConntrackOrigDstIP, hostIP.AsSlice()); err != nil {
		return err
	}
	if _, err := m.hostNL.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, &src, &dst); err != nil {
		return fmt.Errorf("flush host conntrack entries of %s: %w", hostIP, err)
	}
	return nil
}

// flushConntrack deletes every conntrack entry of a slot, in its
// namespace and in the host namespace, so that no flow outlives a policy
// change: the next packet of any flow is checked as new.
func (m *Manager) flushConntrack(ns netns.NsHandle, hostIP netip.Addr) error {
	if err := flushSlotConntrack(ns); err != nil {
		return err
	}
	return m.flushHostConntrack(hostIP)
}

// flushSlotConntrack deletes every conntrack entry of the slot namespace ns.
func flushSlotConntrack(ns netns.NsHandle) error {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("conntrack in slot: %w", err)
	}
	defer h.Close()
	if err := h.ConntrackTableFlush(netlink.ConntrackTable); err != nil {
		return fmt.Errorf("flush slot conntrack: %w", err)
	}
	return nil
}

// healthy is a quick check that a slot's namespace and host veth exist.
func (m *Manager) healthy(name string) bool {
	if !netnsutil.IsNetNS(m.nsPath(name)) {
		return false
	}
	_, err := m.hostNL.LinkByName(name)
	return err == nil
}

// applyFirewall installs p as the firewall of the built slot name: one
// transaction that refills the egress chain and sets, or, if that fails
// (the table was damaged), one that replaces the whole table.
// With cut, every existing flow of the slot is then cut (conntrack flushed
// in the slot and the host namespace), so that the next packet of each is
// judged by p as a new one.
func (m *Manager) applyFirewall(name string, p Policy, cut bool) error {
	hostIP, ok := m.ours(name)
	if !ok {
		return fmt.Errorf("network: firewall of %s: not a slot of this pool", name)
	}
	ns, err := netnsutil.Open(m.nsPath(name))
	if err != nil {
		return fmt.Errorf("network: firewall of %s: %w", name, err)
	}
	defer ns.Close()
	a := addrsOf(hostIP)
	if err := m.firewallIn(ns, a, p, fwUpdate); err != nil {
		m.log.Warn("network: firewall update failed; replacing the table", "slot", name, "err", err)
		if err := m.firewallIn(ns, a, p, fwReplace); err != nil {
			return fmt.Errorf("network: firewall of %s: %w", name, err)
		}
	}
	if !cut {
		return nil
	}
	if err := m.flushConntrack(ns, hostIP); err != nil {
		return fmt.Errorf("network: firewall of %s: %w", name, err)
	}
	return nil
}

func (m *Manager) firewallIn(ns netns.NsHandle, a addrs, p Policy, mode fwMode) error {
	m.hostMu.Lock() // a refresh of the host set waits: it must see this table
	defer m.hostMu.Unlock()
	host, err := m.hostList()
	if err != nil {
		return err
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return err
	}
	if err := m.writeFirewall(c, p, a, DefaultDenied(), host, mode); err != nil {
		return err
	}
	return c.Flush()
}

// hostList returns the host namespace's own destinations, which no guest
// may reach: every local and broadcast route of its local routing table
// (its addresses, subnet broadcast addresses, 127/8) and the limited
// broadcast address, less the pool (the slots' veth ends, denied as part
// of the pool).
func (m *Manager) hostList() ([]netip.Prefix, error) {
	routes, err := m.hostNL.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_LOCAL}, netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list host local routes: %w", err)
	}
	host := []netip.Prefix{netip.MustParsePrefix("255.255.255.255/32")}
	for _, r := range routes {
		if r.Type != unix.RTN_LOCAL && r.Type != unix.RTN_BROADCAST || r.Dst == nil {
			continue
		}
		p, ok := prefixOf(r.Dst)
		if !ok || !p.Addr().Is4() || m.pool.Contains(p.Addr()) && p.Bits() >= m.pool.Bits() {
			continue
		}
		host = append(host, p)
	}
	return host, nil
}

// tapOwner sets the owner of a ready slot's TAP.
func (m *Manager) tapOwner(name string, uid, gid uint32) error {
	ns, err := netnsutil.Open(m.nsPath(name))
	if err != nil {
		return fmt.Errorf("network: TAP of %s: %w", name, err)
	}
	defer ns.Close()
	if err := tapCtl(ns, false, uid, gid); err != nil {
		return fmt.Errorf("network: TAP of %s: %w", name, err)
	}
	return nil
}

// tapCtl attaches to (create: creates, persistently) the TAP device inside
// ns and sets its owner and group. The flags match what Firecracker uses
// to open it (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).
func tapCtl(ns netns.NsHandle, create bool, uid, gid uint32) error {
	return netnsutil.Do(ns, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		defer unix.Close(fd)
		ifr, err := unix.NewIfreq(TAPName)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			return fmt.Errorf("TUNSETIFF %s: %w", TAPName, err)
		}
		if create {
			if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
				return fmt.Errorf("TUNSETPERSIST: %w", err)
			}
		}
		// A new TAP has no owner (only CAP_NET_ADMIN may attach); the
		// kernel cannot reset an owner to none, so resetting means root.
		if uid != 0 || !create {
			if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, int(uid)); err != nil {
				return fmt.Errorf("TUNSETOWNER %d: %w", uid, err)
			}
		}
		if gid != 0 || !create {
			if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, int(gid)); err != nil {
				return fmt.Errorf("TUNSETGROUP %d: %w", gid, err)
			}
		}
		return nil
	})
}

// tapOwnedBy reports whether a TAP has the owner and group tapCtl would
// give it (0 meaning none, or root).
func tapOwnedBy(t *netlink.Tuntap, uid, gid uint32) bool {
	norm := func(v uint32) uint32 {
		if v == ^uint32(0) { // the kernel's "none"
			return 0
		}
		return v
	}
	return norm(t.Owner) == uid && norm(t.Group) == gid
}

// writeSysctl writes /proc/sys/<key> as seen from ns: /proc/sys/net
// follows the network namespace of the thread that opens it.
func writeSysctl(ns netns.NsHandle, key, value string) error {
	return writeSysctls(ns, [][2]string{{key, value}})
}

// writeSysctls writes several keys in one switch into ns.
func writeSysctls(ns netns.NsHandle, kvs [][2]string) error {
	return netnsutil.Do(ns, func() error {
		for _, kv := range kvs {
			fd, err := unix.Open("/proc/sys/"+kv[0], unix.O_WRONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("%s: %w", kv[0], &os.PathError{Op: "open", Path: "/proc/sys/" + kv[0], Err: err})
			}
			_, err = unix.Write(fd, []byte(kv[1]))
			unix.Close(fd)
			if err != nil {
				return fmt.Errorf("write %s=%s: %w", kv[0], kv[1], err)
			}
		}
		return nil
	})
}

// isLinkNotFound reports a link that is not there: not found by name, or
// gone between the lookup and the call (ENODEV: a veth vanishes with its
// peer's namespace, asynchronously).
func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

func ipNet(a netip.Addr, bits int) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, a.BitLen())}
}

func nlAddr(a netip.Addr, bits int) *netlink.Addr { return &netlink.Addr{IPNet: ipNet(a, bits)} }

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(ip.Unmap(), ones).Masked(), true
}

func isZeroMask(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// intact reports whether every piece of a slot is in place: the pinned
// namespace, TAP and veth ends up with their addresses, both routes and the
// two nftables tables in the namespace.
func (m *Manager) intact(l *leaseRecord) (bool, error) {
	hostIP, err := netip.ParseAddr(l.HostIP)
	if err != nil {
		return false, fmt.Errorf("network: lease %s: bad host_ip %q", l.Name, l.HostIP)
	}
	a := addrsOf(hostIP)
	path := m.nsPath(l.Name)
	if !netnsutil.IsNetNS(path) {
		return false, nil
	}
	hl, err := m.hostNL.LinkByName(l.Name)
	if err != nil || !linkHas(m.hostNL, hl, a.VethHost) {
		return false, nil
	}
	routes, err := m.hostNL.RouteListFiltered(netlink.FAMILY_V4,
		&netlink.Route{Dst: ipNet(a.HostIP, 32), LinkIndex: hl.Attrs().Index}, netlink.RT_FILTER_DST|netlink.RT_FILTER_OIF)
	if err != nil || len(routes) == 0 {
		return false, nil
	}
	ns, err := netnsutil.Open(path)
	if err != nil {
		return false, nil
	}
	defer ns.Close()
	nsNL, err := netlink.NewHandleAt(ns)
	if err != nil {
		return false, fmt.Errorf("network: netlink in %s: %w", path, err)
	}
	defer nsNL.Close()
	tap, err := nsNL.LinkByName(TAPName)
	if err != nil || !linkHas(nsNL, tap, GatewayIP) {
		return false, nil
	}
	nl, err := nsNL.LinkByName(NSVethName)
	if err != nil || !linkHas(nsNL, nl, a.VethNS) || hl.Attrs().ParentIndex != nl.Attrs().Index {
		return false, nil
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return false, err
	}
	for _, t := range []struct {
		name string
		fam  nftables.TableFamily
	}{{m.natTableName(), nftables.TableFamilyIPv4}, {m.fwTableName(), nftables.TableFamilyINet}} {
		if _, err := c.ListTableOfFamily(t.name, t.fam); err != nil {
			return false, nil
		}
	}
	return true, nil
}

// linkHas reports whether link is up and holds address a.
func linkHas(h *netlink.Handle, link netlink.Link, a netip.Addr) bool {
	if link.Attrs().Flags&net.FlagUp == 0 {
		return false
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return false
	}
	for _, x := range addrs {
		if ip, ok := netip.AddrFromSlice(x.IP.To4()); ok && ip == a {
			return true
		}
	}
	return false
}
