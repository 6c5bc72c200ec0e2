//go:build linux

// Package nstest builds throwaway network topologies for the network
// package's privileged tests: a "host" namespace, an "upstream" namespace
// that plays the internet, and stand-in guests. Everything lives in
// namespaces pinned under a test's temporary directory; nothing touches the
// machine's own namespace, interfaces, sysctls or rules, and every packet
// goes to an address inside those namespaces.
package nstest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/network/internal/netnsutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Addresses of the topology.
const (
	HostEgress    = "uplink"          // host-side interface towards upstream
	HostEgressIP  = "203.0.113.2"     // host's egress address (what upstream sees)
	HostOwnIP     = "198.51.100.7"    // another address of the host (public-looking)
	UpstreamIP    = "203.0.113.1"     // upstream's public-looking address
	UpstreamPriv  = "192.168.77.1"    // upstream's private (RFC 1918) address
	UpstreamPriv2 = "10.1.2.1"        // another private address, in 10.1.2.0/24
	UpstreamCGNAT = "100.64.10.1"     // a CGNAT address
	UpstreamMeta  = "169.254.169.254" // a link-local "metadata service"
	GuestIP       = "169.254.0.21"    // stand-in guest address
	GatewayIP     = "169.254.0.22"    // slot's TAP address
	GuestMAC      = "06:00:ac:10:00:02"
)

// RequireRoot skips t unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root (network namespaces, veth, nftables)")
	}
}

// Env is a host namespace wired to an upstream namespace.
type Env struct {
	t      testing.TB
	Dir    string // private directory of the test
	NSDir  string // where the test's own namespaces are pinned
	RunDir string // RunDir for the Manager under test
	Host   string // path of the host namespace
	Up     string // path of the upstream namespace

	mu     sync.Mutex
	extras []string // more namespaces to remove
}

// NewEnv builds the topology and registers its removal with t.Cleanup.
//
//	host ns:     lo 198.51.100.7/32; uplink 203.0.113.2/24 (default via 203.0.113.1)
//	upstream ns: lo 192.168.77.1/32, 10.1.2.1/32, 100.64.10.1/32, 169.254.169.254/32;
//	             eth0 203.0.113.1/24
//
// (The test kernel has no dummy devices, so extra addresses sit on lo.)
func NewEnv(t testing.TB) *Env {
	t.Helper()
	RequireRoot(t)
	dir, err := os.MkdirTemp("", "mvmnet-")
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{t: t, Dir: dir, NSDir: filepath.Join(dir, "ns"), RunDir: filepath.Join(dir, "run")}
	if err := os.Mkdir(e.NSDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.close)
	e.Host = e.NewNS("host")
	e.Up = e.NewNS("up")

	withHandle(t, e.Host, func(h *netlink.Handle) error {
		if err := linkUp(h, "lo"); err != nil {
			return err
		}
		return addrUp(h, "lo", HostOwnIP+"/32")
	})
	withHandle(t, e.Up, func(h *netlink.Handle) error {
		if err := linkUp(h, "lo"); err != nil {
			return err
		}
		for _, a := range []string{UpstreamPriv + "/32", UpstreamPriv2 + "/32", UpstreamCGNAT + "/32", UpstreamMeta + "/32"} {
			if err := addrUp(h, "lo", a); err != nil {
				return err
			}
		}
		return nil
	})
	e.PlugUplink()
	return e
}

// PlugUplink creates the host's egress interface as NewEnv does: the
// uplink veth to upstream's eth0, both addressed and up, and the host's
// default route through it. After UnplugUplink it brings back a new
// interface, with the namespace's default settings (forwarding among
// them).
func (e *Env) PlugUplink() {
	e.t.Helper()
	withHandle(e.t, e.Host, func(h *netlink.Handle) error {
		upNS, err := netnsutil.Open(e.Up)
		if err != nil {
			return err
		}
		defer upNS.Close()
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: HostEgress}, PeerName: "eth0",
			PeerNamespace: netlink.NsFd(int(upNS))}); err != nil {
			return fmt.Errorf("veth uplink: %w", err)
		}
		if err := addrUp(h, HostEgress, HostEgressIP+"/24"); err != nil {
			return err
		}
		l, err := h.LinkByName(HostEgress)
		if err != nil {
			return err
		}
		return h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(UpstreamIP).To4(),
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}})
	})
	withHandle(e.t, e.Up, func(h *netlink.Handle) error {
		return addrUp(h, "eth0", UpstreamIP+"/24")
	})
}

// UnplugUplink deletes the host's egress interface (the uplink veth
// pair), as an unplugged NIC would vanish.
func (e *Env) UnplugUplink() {
	e.t.Helper()
	withHandle(e.t, e.Host, func(h *netlink.Handle) error {
		l, err := h.LinkByName(HostEgress)
		if err != nil {
			return err
		}
		return h.LinkDel(l)
	})
}

// NewNS pins a fresh namespace under NSDir, removed at cleanup.
func (e *Env) NewNS(name string) string {
	e.t.Helper()
	p := filepath.Join(e.NSDir, name)
	if err := netnsutil.Create(p); err != nil {
		e.t.Fatalf("create namespace %s: %v", name, err)
	}
	e.mu.Lock()
	e.extras = append(e.extras, p)
	e.mu.Unlock()
	return p
}

func (e *Env) close() {
	e.mu.Lock()
	extras := e.extras
	e.mu.Unlock()
	for i := len(extras) - 1; i >= 0; i-- {
		if err := netnsutil.Remove(extras[i]); err != nil {
			e.t.Errorf("cleanup: %v", err)
		}
	}
	// New made RunDir a mount point; undo it.
	if ok, _ := netnsutil.IsMountPoint(e.RunDir); ok {
		if err := unix.Unmount(e.RunDir, unix.MNT_DETACH); err != nil {
			e.t.Errorf("cleanup: unmount %s: %v", e.RunDir, err)
		}
	}
	if err := os.RemoveAll(e.Dir); err != nil {
		e.t.Errorf("cleanup: %v", err)
	}
}

// AttachGuest replaces the TAP of the slot namespace at slotNS with a veth
// pair whose other end is eth0 of a new "guest" namespace configured like a
// Firecracker guest (169.254.0.21/30, gateway 169.254.0.22, the slot MAC).
// A TAP has no carrier until Firecracker opens it; the veth lets real
// packets flow through the slot exactly where the guest's would.
func (e *Env) AttachGuest(slotNS, name string) string {
	e.t.Helper()
	guest := e.NewNS("guest-" + name)
	withHandle(e.t, slotNS, func(h *netlink.Handle) error {
		if l, err := h.LinkByName("tap0"); err == nil {
			if err := h.LinkDel(l); err != nil {
				return err
			}
		}
		g, err := netnsutil.Open(guest)
		if err != nil {
			return err
		}
		defer g.Close()
		mac, _ := net.ParseMAC(GuestMAC)
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tap0"}, PeerName: "eth0",
			PeerHardwareAddr: mac, PeerNamespace: netlink.NsFd(int(g))}); err != nil {
			return fmt.Errorf("veth tap0: %w", err)
		}
		return addrUp(h, "tap0", GatewayIP+"/30")
	})
	withHandle(e.t, guest, func(h *netlink.Handle) error {
		if err := linkUp(h, "lo"); err != nil {
			return err
		}
		if err := addrUp(h, "eth0", GuestIP+"/30"); err != nil {
			return err
		}
		l, _ := h.LinkByName("eth0")
		return h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(GatewayIP).To4(),
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}})
	})
	return guest
}

// withHandle runs fn with a netlink handle in the namespace at path.
func withHandle(t testing.TB, path string, fn func(h *netlink.Handle) error) {
	t.Helper()
	ns, err := netnsutil.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := fn(h); err != nil {
		t.Fatalf("configure %s: %v", path, err)
	}
}

// Links returns the link names in the namespace at path.
func Links(t testing.TB, path string) []string {
	t.Helper()
	var names []string
	withHandle(t, path, func(h *netlink.Handle) error {
		ls, err := h.LinkList()
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
		for _, l := range ls {
			names = append(names, l.Attrs().Name)
		}
		return nil
	})
	return names
}

// Handle runs fn with a netlink handle in the namespace at path.
func Handle(t testing.TB, path string, fn func(h *netlink.Handle) error) { withHandle(t, path, fn) }

func linkUp(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	return h.LinkSetUp(l)
}

func addrUp(h *netlink.Handle, name, cidr string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("address %s on %s: %w", cidr, name, err)
	}
	return h.LinkSetUp(l)
}

// ThreadsIn reports the threads of this process whose network namespace is
// not own (as read from /proc/self/ns/net before any test ran): a thread
// left behind in a namespace by a bug.
func ThreadsIn(own string) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	var bad []string
	for _, task := range tasks {
		l, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net")
		if err == nil && l != own {
			bad = append(bad, task.Name()+"="+l)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("threads in another network namespace: %s (own %s)", strings.Join(bad, ", "), own)
	}
	return nil
}

// Server is a UDP and TCP server inside a namespace that answers every
// datagram or connection with the peer's address as it saw it, and counts
// what it received.
type Server struct {
	udp  []net.PacketConn
	tcp  []net.Listener
	mu   sync.Mutex
	seen []string
	wg   sync.WaitGroup
}

// Serve starts a Server inside the namespace at ns on port 7777 of each of
// ips; it stops at cleanup. UDP sockets are bound per address so that
// answers leave from the address that was asked.
func Serve(t testing.TB, ns string, ips ...string) *Server {
	t.Helper()
	s := &Server{}
	t.Cleanup(s.stop)
	err := netnsutil.DoPath(ns, func() error {
		for _, ip := range ips {
			addr := net.JoinHostPort(ip, Port)
			u, err := net.ListenPacket("udp4", addr)
			if err != nil {
				return err
			}
			s.udp = append(s.udp, u)
			l, err := net.Listen("tcp4", addr)
			if err != nil {
				return err
			}
			s.tcp = append(s.tcp, l)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("serve %v in %s: %v", ips, ns, err)
	}
	for _, u := range s.udp {
		s.wg.Go(func() {
			buf := make([]byte, 1500)
			for {
				_, from, err := u.ReadFrom(buf)
				if err != nil {
					return
				}
				s.record(from.String())
				u.WriteTo([]byte(from.(*net.UDPAddr).IP.String()), from)
			}
		})
	}
	for _, l := range s.tcp {
		s.wg.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				from := c.RemoteAddr().(*net.TCPAddr)
				s.record(from.String())
				c.Write([]byte(from.IP.String()))
				c.Close()
			}
		})
	}
	return s
}

// Port is the port Serve listens on.
const Port = "7777"

func (s *Server) stop() {
	for _, u := range s.udp {
		u.Close()
	}
	for _, l := range s.tcp {
		l.Close()
	}
	s.wg.Wait()
}

func (s *Server) record(from string) {
	s.mu.Lock()
	s.seen = append(s.seen, from)
	s.mu.Unlock()
}

// Seen returns the peers the server heard from.
func (s *Server) Seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.seen...)
}

// ErrNoAnswer reports a probe that got no answer within its time.
var ErrNoAnswer = errors.New("no answer")

// UDP sends datagrams from a new socket inside ns to dst (ip:port) until
// one is answered or wait has passed, and returns the answer: the source
// address the server saw.
func UDP(ns, dst string, wait time.Duration) (string, error) {
	p, err := NewProbe(ns, dst)
	if err != nil {
		return "", err
	}
	defer p.Close()
	return p.Ask(wait)
}

// Probe is a connected UDP socket inside a namespace: every Ask uses the
// same source port, so the datagrams belong to one conntrack flow.
type Probe struct {
	c   net.Conn
	dst string
}

// NewProbe opens a UDP socket inside ns, connected to dst.
func NewProbe(ns, dst string) (*Probe, error) {
	var c net.Conn
	if err := netnsutil.DoPath(ns, func() error {
		var err error
		c, err = net.Dial("udp4", dst)
		return err
	}); err != nil {
		return nil, err
	}
	return &Probe{c: c, dst: dst}, nil
}

// Close closes the socket.
func (p *Probe) Close() error { return p.c.Close() }

// Ask sends datagrams until one is answered or wait has passed.
func (p *Probe) Ask(wait time.Duration) (string, error) {
	buf := make([]byte, 64)
	// Drop answers to earlier datagrams still queued.
	for {
		p.c.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		if _, err := p.c.Read(buf); err != nil && (isTimeout(err) || !isTransient(err)) {
			break
		}
	}
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		if _, err := p.c.Write([]byte("ping")); err != nil && !isTransient(err) {
			return "", err
		}
		next := time.Now().Add(200 * time.Millisecond)
		if next.After(deadline) {
			next = deadline
		}
		p.c.SetReadDeadline(next)
		n, err := p.c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
		if !isTransient(err) {
			return "", err
		}
	}
	return "", fmt.Errorf("udp %s: %w", p.dst, ErrNoAnswer)
}

// TCP connects from inside ns to dst (ip:port) within wait and returns the
// server's answer: the source address it saw.
func TCP(ns, dst string, wait time.Duration) (string, error) {
	var c net.Conn
	err := netnsutil.DoPath(ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", dst, wait)
		return err
	})
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return "", fmt.Errorf("tcp %s: %w", dst, ErrNoAnswer)
		}
		return "", err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isTransient: ICMP errors surface on a connected UDP socket as
// ECONNREFUSED or EHOSTUNREACH; timeouts are retried too.
func isTransient(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.ENETUNREACH)
}

// Netns returns a handle on the namespace at path; the caller closes it.
func Netns(t testing.TB, path string) netns.NsHandle {
	t.Helper()
	h, err := netnsutil.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return h
}
