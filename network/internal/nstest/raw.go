//go:build linux

package nstest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/network/internal/netnsutil"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// vnetHdrLen is the size of struct virtio_net_hdr, which precedes every
// frame on a TAP opened with IFF_VNET_HDR (as Firecracker opens it).
const vnetHdrLen = 10

// RawGuest plays a hostile guest: it opens the slot's real TAP device (as
// Firecracker would) and writes hand-made Ethernet frames into it, so it
// can forge anything (sources, TTLs, flags, checksums). A goroutine reads
// what the slot sends towards the guest, answers ARP for GuestIP, and
// keeps the IPv4 packets for Received.
type RawGuest struct {
	t      testing.TB
	fd     int
	tapMAC net.HardwareAddr
	mac    net.HardwareAddr
	stop   atomic.Bool
	wg     sync.WaitGroup

	mu   sync.Mutex
	pkts [][]byte // IPv4 packets received, oldest first
}

// OpenRawGuest attaches to the TAP tapName inside the slot namespace at
// slotNS; it is closed at the test's cleanup.
func OpenRawGuest(t testing.TB, slotNS, tapName string) *RawGuest {
	t.Helper()
	g := &RawGuest{t: t, fd: -1}
	g.mac, _ = net.ParseMAC(GuestMAC)
	err := netnsutil.DoPath(slotNS, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(tapName)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF %s: %w", tapName, err)
		}
		g.fd = fd
		l, err := netlink.LinkByName(tapName)
		if err != nil {
			return err
		}
		g.tapMAC = l.Attrs().HardwareAddr
		return nil
	})
	if err != nil {
		if g.fd >= 0 {
			unix.Close(g.fd)
		}
		t.Fatalf("open TAP %s in %s: %v", tapName, slotNS, err)
	}
	g.wg.Go(g.readLoop)
	t.Cleanup(g.Close)
	return g
}

// Close stops the reader and closes the TAP.
func (g *RawGuest) Close() {
	if g.stop.Swap(true) {
		return
	}
	g.wg.Wait()
	unix.Close(g.fd)
}

func (g *RawGuest) readLoop() {
	buf := make([]byte, 65536)
	for !g.stop.Load() {
		fds := []unix.PollFd{{Fd: int32(g.fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, 20); err != nil || n == 0 {
			continue
		}
		n, err := unix.Read(g.fd, buf)
		if err != nil || n < vnetHdrLen+14 {
			continue
		}
		frame := buf[vnetHdrLen:n]
		switch binary.BigEndian.Uint16(frame[12:14]) {
		case unix.ETH_P_ARP:
			g.answerARP(frame[14:])
		case unix.ETH_P_IP:
			p := bytes.Clone(frame[14:])
			g.mu.Lock()
			g.pkts = append(g.pkts, p)
			g.mu.Unlock()
		}
	}
}

// answerARP replies to "who has GuestIP".
func (g *RawGuest) answerARP(a []byte) {
	if len(a) < 28 || binary.BigEndian.Uint16(a[6:8]) != 1 || !bytes.Equal(a[24:28], netip.MustParseAddr(GuestIP).AsSlice()) {
		return
	}
	r := make([]byte, 28)
	copy(r, a[:6])                       // htype, ptype, hlen, plen
	binary.BigEndian.PutUint16(r[6:], 2) // reply
	copy(r[8:14], g.mac)
	copy(r[14:18], a[24:28])
	copy(r[18:24], a[8:14])
	copy(r[24:28], a[14:18])
	g.writeFrame(net.HardwareAddr(a[8:14]), unix.ETH_P_ARP, r)
}

func (g *RawGuest) writeFrame(dst net.HardwareAddr, etype uint16, payload []byte) {
	f := make([]byte, vnetHdrLen+14+len(payload))
	e := f[vnetHdrLen:]
	copy(e[0:6], dst)
	copy(e[6:12], g.mac)
	binary.BigEndian.PutUint16(e[12:14], etype)
	copy(e[14:], payload)
	if _, err := unix.Write(g.fd, f); err != nil {
		g.t.Errorf("write frame into TAP: %v", err)
	}
}

// Send writes one IPv4 packet into the TAP, addressed to the TAP's MAC
// (the guest's gateway).
func (g *RawGuest) Send(ip []byte) { g.writeFrame(g.tapMAC, unix.ETH_P_IP, ip) }

// Received returns the IPv4 packets the slot sent to the guest that match.
func (g *RawGuest) Received(match func(ip []byte) bool) [][]byte {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out [][]byte
	for _, p := range g.pkts {
		if match == nil || match(p) {
			out = append(out, p)
		}
	}
	return out
}

// WaitReceived waits up to wait for a packet that matches and reports
// whether one came.
func (g *RawGuest) WaitReceived(wait time.Duration, match func(ip []byte) bool) bool {
	deadline := time.Now().Add(wait)
	for {
		if len(g.Received(match)) > 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Sniffer captures every IPv4 packet that arrives at an interface of a
// namespace, whatever its destination (an AF_PACKET socket).
type Sniffer struct {
	fd   int
	stop atomic.Bool
	wg   sync.WaitGroup
	mu   sync.Mutex
	pkts [][]byte
}

// Sniff starts capturing on ifName inside ns; it stops at cleanup.
func Sniff(t testing.TB, ns, ifName string) *Sniffer {
	t.Helper()
	s := &Sniffer{fd: -1}
	err := netnsutil.DoPath(ns, func() error {
		l, err := netlink.LinkByName(ifName)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, int(htons(unix.ETH_P_IP)))
		if err != nil {
			return err
		}
		s.fd = fd
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: l.Attrs().Index})
	})
	if err != nil {
		if s.fd >= 0 {
			unix.Close(s.fd)
		}
		t.Fatalf("sniff %s in %s: %v", ifName, ns, err)
	}
	s.wg.Go(func() {
		buf := make([]byte, 65536)
		for !s.stop.Load() {
			fds := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}}
			if n, err := unix.Poll(fds, 20); err != nil || n == 0 {
				continue
			}
			n, from, err := unix.Recvfrom(s.fd, buf, 0)
			if err != nil {
				continue
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			p := bytes.Clone(buf[:n])
			s.mu.Lock()
			s.pkts = append(s.pkts, p)
			s.mu.Unlock()
		}
	})
	t.Cleanup(func() {
		s.stop.Store(true)
		s.wg.Wait()
		unix.Close(s.fd)
	})
	return s
}

// Seen returns the captured packets that match.
func (s *Sniffer) Seen(match func(ip []byte) bool) [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out [][]byte
	for _, p := range s.pkts {
		if match == nil || match(p) {
			out = append(out, p)
		}
	}
	return out
}

// WaitSeen waits up to wait for a matching packet and reports whether one
// came.
func (s *Sniffer) WaitSeen(wait time.Duration, match func(ip []byte) bool) bool {
	deadline := time.Now().Add(wait)
	for {
		if len(s.Seen(match)) > 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// IPv4 protocol numbers.
const (
	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17
)

// TCP flags.
const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
)

// IPv4 builds an IPv4 packet (header checksum filled in).
func IPv4(src, dst string, proto byte, ttl byte, payload []byte) []byte {
	p := make([]byte, 20+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], uint16(time.Now().UnixNano()))
	p[6] = 0x40 // DF
	p[8] = ttl
	p[9] = proto
	copy(p[12:16], netip.MustParseAddr(src).AsSlice())
	copy(p[16:20], netip.MustParseAddr(dst).AsSlice())
	binary.BigEndian.PutUint16(p[10:], checksum(p[:20], 0))
	copy(p[20:], payload)
	return p
}

// UDPPacket builds an IPv4/UDP packet with a correct checksum.
func UDPPacket(src string, sport uint16, dst string, dport uint16, ttl byte, data []byte) []byte {
	u := make([]byte, 8+len(data))
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	copy(u[8:], data)
	cs := checksum(u, pseudo(src, dst, ProtoUDP, len(u)))
	if cs == 0 {
		cs = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], cs)
	return IPv4(src, dst, ProtoUDP, ttl, u)
}

// TCPPacket builds an IPv4/TCP packet with a correct checksum.
func TCPPacket(src string, sport uint16, dst string, dport uint16, seq, ack uint32, flags byte, data []byte) []byte {
	tc := make([]byte, 20+len(data))
	binary.BigEndian.PutUint16(tc[0:], sport)
	binary.BigEndian.PutUint16(tc[2:], dport)
	binary.BigEndian.PutUint32(tc[4:], seq)
	binary.BigEndian.PutUint32(tc[8:], ack)
	tc[12] = 5 << 4
	tc[13] = flags
	binary.BigEndian.PutUint16(tc[14:], 65535)
	copy(tc[20:], data)
	binary.BigEndian.PutUint16(tc[16:], checksum(tc, pseudo(src, dst, ProtoTCP, len(tc))))
	return IPv4(src, dst, ProtoTCP, 64, tc)
}

// ICMPPacket builds an IPv4/ICMP packet of type and code whose body
// (after the 4-byte rest-of-header) is data.
func ICMPPacket(src, dst string, ttl, typ, code byte, rest uint32, data []byte) []byte {
	ic := make([]byte, 8+len(data))
	ic[0], ic[1] = typ, code
	binary.BigEndian.PutUint32(ic[4:], rest)
	copy(ic[8:], data)
	binary.BigEndian.PutUint16(ic[2:], checksum(ic, 0))
	return IPv4(src, dst, ProtoICMP, ttl, ic)
}

func pseudo(src, dst string, proto byte, n int) uint32 {
	var sum uint32
	for _, a := range []string{src, dst} {
		b := netip.MustParseAddr(a).As4()
		sum += uint32(b[0])<<8 | uint32(b[1])
		sum += uint32(b[2])<<8 | uint32(b[3])
	}
	return sum + uint32(proto) + uint32(n)
}

func checksum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// Src, Dst and Proto read an IPv4 packet's header.
// SendRaw sends the hand-made IPv4 packet ip (header included) from a raw
// socket in the network namespace at nsPath, to the packet's destination.
func SendRaw(nsPath string, ip []byte) error {
	return netnsutil.DoPath(nsPath, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, ip, 0, &unix.SockaddrInet4{Addr: [4]byte(ip[16:20])})
	})
}

func Src(p []byte) string { return netip.AddrFrom4([4]byte(p[12:16])).String() }

// Dst returns the destination address of an IPv4 packet.
func Dst(p []byte) string { return netip.AddrFrom4([4]byte(p[16:20])).String() }

// Proto returns the protocol of an IPv4 packet.
func Proto(p []byte) byte { return p[9] }

// L4 returns the payload of an IPv4 packet (its transport header on).
func L4(p []byte) []byte {
	hl := int(p[0]&0x0f) * 4
	if len(p) < hl {
		return nil
	}
	return p[hl:]
}

// Ports returns the source and destination ports of a TCP or UDP packet.
func Ports(p []byte) (uint16, uint16) {
	l := L4(p)
	if len(l) < 4 {
		return 0, 0
	}
	return binary.BigEndian.Uint16(l[0:]), binary.BigEndian.Uint16(l[2:])
}

// Contains reports whether the packet carries marker anywhere.
func Contains(marker string) func([]byte) bool {
	return func(p []byte) bool { return bytes.Contains(p, []byte(marker)) }
}
