package server

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// muslErrno holds the errno texts where musl's strerror (Firecracker's
// release builds link musl) differs from Go's.
var muslErrno = map[syscall.Errno]string{
	syscall.EBUSY:         "Resource busy",
	syscall.EADDRINUSE:    "Address in use",
	syscall.EADDRNOTAVAIL: "Address not available",
	syscall.ENOTTY:        "Not a tty",
	syscall.ENAMETOOLONG:  "Filename too long",
}

// osErr renders an errno like Rust's io::Error Display in Firecracker's
// musl builds: "No such file or directory (os error 2)".
func osErr(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		s, ok := muslErrno[errno]
		if !ok {
			s = errno.Error()
		}
		if s != "" {
			s = strings.ToUpper(s[:1]) + s[1:]
		}
		return fmt.Sprintf("%s (os error %d)", s, int(errno))
	}
	return err.Error()
}

// openTap opens host_dev_name the way Firecracker does: /dev/net/tun,
// TUNSETIFF with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, then the vnet header size.
// A failure is described in the words of the newest releases, or of v1.0
// when v10 is set (checked against the real binaries).
func openTap(name string, v10 bool) (*os.File, string) {
	const prefix = "Could not create the network device: Open tap device failed: "
	fault := func(newer, old string, err error) string {
		if v10 {
			if err != nil {
				old = fmt.Sprintf(old, rustOsDebug(err))
			}
			return "Could not create Network Device: " + old
		}
		return prefix + newer
	}
	if len(name) >= unix.IFNAMSIZ {
		return nil, fault("Invalid interface name", "TapOpen(InvalidIfname)", nil)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fault("Couldn't open /dev/net/tun: "+osErr(err), "TapOpen(OpenTun(%s))", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fault("Invalid interface name", "TapOpen(InvalidIfname)", nil)
	}
	ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fault(fmt.Sprintf("Error while creating ifreq structure: %s. Invalid TUN/TAP Backend provided by %s. Check our documentation on setting up the network devices.", osErr(err), name),
			"TapOpen(IoctlError(%s))", err)
	}
	hdr := int32(12) // sizeof(virtio_net_hdr_v1)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETVNETHDRSZ, uintptr(unsafe.Pointer(&hdr))); e != 0 {
		unix.Close(fd)
		return nil, fault("Error while setting the vnet header size: "+osErr(e), "TapSetVnetHdrSize(IoctlError(%s))", e)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), ""
}

// rustKinds are the io::ErrorKind names of the Rust release Firecracker
// v1.0 was built with (EBUSY was still Other then).
var rustKinds = map[syscall.Errno]string{
	syscall.EINVAL: "InvalidInput", syscall.EADDRINUSE: "AddrInUse", syscall.EADDRNOTAVAIL: "AddrNotAvailable",
	syscall.ENOENT: "NotFound", syscall.EACCES: "PermissionDenied", syscall.EPERM: "PermissionDenied",
	syscall.EEXIST: "AlreadyExists", syscall.ECONNREFUSED: "ConnectionRefused",
}

// rustOsDebug renders an errno like Rust's Debug of an io::Error, as v1.0
// shows it in fault messages: Os { code: 16, kind: Other, message: "Resource busy" }.
func rustOsDebug(err error) string {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return err.Error()
	}
	kind, ok := rustKinds[errno]
	if !ok {
		kind = "Other"
	}
	msg, ok := muslErrno[errno]
	if !ok {
		msg = errno.Error()
		msg = strings.ToUpper(msg[:1]) + msg[1:]
	}
	return fmt.Sprintf("Os { code: %d, kind: %s, message: %q }", int(errno), kind, msg)
}

// openBacking opens a drive/pmem backing file like Firecracker does at PUT:
// it must exist and be a regular file (or block device) openable with the
// requested access.
func openBacking(path string, readOnly bool) (*os.File, error) {
	flags := os.O_RDWR
	if readOnly {
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("%s %s", osErr(pe.Err), path)
		}
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s %s", osErr(err), path)
	}
	if !st.Mode().IsRegular() && st.Mode()&os.ModeDevice == 0 {
		f.Close()
		return nil, fmt.Errorf("%s %s", osErr(syscall.EINVAL), path)
	}
	return f, nil
}

// checkReadable verifies a kernel/initrd path can be opened for reading.
func checkReadable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return errors.New(osErr(pe.Err))
		}
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return errors.New(osErr(err))
	}
	if st.IsDir() {
		return errors.New(osErr(syscall.EISDIR))
	}
	return nil
}

// vsockDev is the host side of the virtio-vsock device: a unix listener on
// uds_path speaking Firecracker's host-initiated protocol, with an echo
// service standing in for the guest.
type vsockDev struct {
	path     string
	ln       *net.UnixListener
	gate     *runGate
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	nextPort uint32
	closed   bool
	started  bool
	wg       sync.WaitGroup
	onConn   func()
	// guestDir, from FCSTANDIN_VSOCK_GUEST, holds the guest's listeners
	// as unix sockets named <port>.sock: a connection to a port is
	// bridged to its socket (none: closed without an answer, as for a
	// guest port nobody listens on). Empty: the echo service.
	guestDir string
}

// bindVsock binds and listens on path; it fails if the path exists.
func bindVsock(path string, gate *runGate) (*vsockDev, error) {
	addr := &net.UnixAddr{Name: path, Net: "unix"}
	ln, err := net.ListenUnix("unix", addr)
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) {
			var se *os.SyscallError
			if errors.As(oe.Err, &se) {
				return nil, se.Err
			}
		}
		return nil, err
	}
	ln.SetUnlinkOnClose(false)
	return &vsockDev{path: path, ln: ln, gate: gate, conns: map[net.Conn]struct{}{}, nextPort: 1 << 30, guestDir: os.Getenv("FCSTANDIN_VSOCK_GUEST")}, nil
}

// start begins accepting (Firecracker's muxer only runs once the device is
// activated, i.e. after boot; earlier connections wait in the backlog).
func (v *vsockDev) start() {
	v.mu.Lock()
	if v.started || v.closed {
		v.mu.Unlock()
		return
	}
	v.started = true
	v.mu.Unlock()
	v.wg.Add(1)
	go func() {
		defer v.wg.Done()
		for {
			c, err := v.ln.Accept()
			if err != nil {
				return
			}
			v.mu.Lock()
			if v.closed {
				v.mu.Unlock()
				c.Close()
				return
			}
			v.conns[c] = struct{}{}
			v.mu.Unlock()
			v.wg.Add(1)
			go v.serve(c)
		}
	}()
}

// resetConns drops every open connection (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
// at snapshot creation); the listener survives.
func (v *vsockDev) resetConns() {
	v.mu.Lock()
	defer v.mu.Unlock()
	for c := range v.conns {
		c.Close()
	}
}

// close stops the device; the socket file is left in place, like Firecracker.
func (v *vsockDev) close(unlink bool) {
	v.mu.Lock()
	v.closed = true
	for c := range v.conns {
		c.Close()
	}
	v.mu.Unlock()
	v.ln.Close()
	if unlink {
		os.Remove(v.path)
	}
}

func (v *vsockDev) drop(c net.Conn) {
	v.mu.Lock()
	delete(v.conns, c)
	v.mu.Unlock()
	c.Close()
}

// serve handles "CONNECT <port>\n"; a malformed request closes the
// connection without a reply. The guest answers within 2 s if it is running.
func (v *vsockDev) serve(c net.Conn) {
	defer v.wg.Done()
	defer v.drop(c)
	if v.onConn != nil {
		v.onConn()
	}
	// Read the command line byte by byte (at most 32 bytes), so no payload
	// byte is consumed.
	var line []byte
	one := make([]byte, 1)
	for {
		if len(line) >= 32 {
			return
		}
		n, err := c.Read(one)
		if err != nil || n == 0 {
			return
		}
		if one[0] == '\n' {
			break
		}
		line = append(line, one[0])
	}
	fields := strings.Fields(string(line))
	if len(fields) != 2 || !strings.EqualFold(fields[0], "CONNECT") {
		return
	}
	if _, err := strconv.ParseUint(fields[1], 10, 32); err != nil {
		return
	}
	if !v.gate.waitRunning(2 * time.Second) {
		return // the guest did not answer in CONN_REQUEST_TIMEOUT_MS
	}
	var guest net.Conn
	if v.guestDir != "" {
		g, err := net.Dial("unix", filepath.Join(v.guestDir, fields[1]+".sock"))
		if err != nil {
			return // no guest listener on that port: Firecracker resets
		}
		guest = g
		defer guest.Close()
	}
	v.mu.Lock()
	port := v.nextPort
	v.nextPort++
	v.mu.Unlock()
	if _, err := fmt.Fprintf(c, "OK %d\n", port); err != nil {
		return
	}
	if guest != nil {
		bridge(c, guest)
		return
	}
	// The guest service echoes everything back; it stalls while paused.
	r := bufio.NewReader(c)
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			v.gate.waitRunning(0)
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if cw, ok := c.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
			}
			return
		}
	}
}

// bridge copies both ways between the host connection and the guest
// listener's, passing each end-of-file on as a half-close, until both
// directions end or either side fails.
func bridge(host, guest net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, err := io.Copy(dst, src)
		if err == nil {
			if cw, ok := dst.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
		} else {
			host.Close()
			guest.Close()
		}
		done <- struct{}{}
	}
	go cp(guest, host)
	go cp(host, guest)
	<-done
	<-done
}

// runGate lets device goroutines wait until the vCPUs run.
type runGate struct {
	mu      sync.Mutex
	running bool
	ch      chan struct{} // closed when running
}

func newRunGate() *runGate { return &runGate{ch: make(chan struct{})} }

func (g *runGate) set(running bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if running == g.running {
		return
	}
	g.running = running
	if running {
		close(g.ch)
	} else {
		g.ch = make(chan struct{})
	}
}

// waitRunning waits until running; timeout 0 waits forever.
func (g *runGate) waitRunning(timeout time.Duration) bool {
	g.mu.Lock()
	if g.running {
		g.mu.Unlock()
		return true
	}
	ch := g.ch
	g.mu.Unlock()
	if timeout == 0 {
		<-ch
		return true
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}
