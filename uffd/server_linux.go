//go:build linux

package uffd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DefaultAcceptTimeout bounds the wait for Firecracker to connect and send
// its handshake when Config.AcceptTimeout is zero.
const DefaultAcceptTimeout = 10 * time.Second

// maxHandshake bounds the handshake message.
const maxHandshake = 64 << 10

// Config configures a Server.
type Config struct {
	// SocketPath is the unix socket to listen on: the backend_path of
	// PUT /snapshot/load. Its directory must exist; the path may exceed
	// sun_path's 108 bytes (the file name may not exceed 64), in which case
	// Firecracker must connect through a shorter relative path. A stale
	// socket file is replaced; any other existing file is an error. The socket is created
	// with mode 0600 (chown it for a jailed Firecracker) and removed once
	// the peer has connected or the accept timed out.
	SocketPath string
	// MemFile is the snapshot memory file (mem_file_path of
	// PUT /snapshot/create). It must not change while the VM runs.
	MemFile string
	// AcceptTimeout bounds the wait for the connection and the handshake
	// message. Zero means DefaultAcceptTimeout.
	AcceptTimeout time.Duration
	// Prefetch copies every page into guest memory in the background after
	// the handshake, so that the guest eventually runs without faults.
	Prefetch bool
	// Detach, with Prefetch, unregisters all guest memory from the
	// userfaultfd once every page is present. From then on the VM no longer
	// needs this handler: later faults (after the balloon frees memory) are
	// ordinary zero-fill faults handled by the kernel.
	Detach bool
	// Populate pre-faults the memory file mapping (MADV_POPULATE_READ) in the
	// background from Listen on, so that faults do not also take page-cache
	// faults on the source.
	Populate bool
	// PeerPID, when positive, is the only process allowed to connect
	// (checked with SO_PEERCRED).
	PeerPID int
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
}

// Stats counts what a Server has done. All fields are totals since the
// handshake.
type Stats struct {
	// Faults is the number of page-fault events served.
	Faults uint64
	// PagesCopied is the number of pages filled from the memory file, by
	// faults and by prefetch.
	PagesCopied uint64
	// ZeroPages is the number of pages filled with zeros: file holes, ranges
	// the guest removed, faults outside every region.
	ZeroPages uint64
	// Removes is the number of UFFD_EVENT_REMOVE (and UNMAP) events.
	Removes uint64
	// RemovedBytes is the total length of removed ranges.
	RemovedBytes uint64
	// AlreadyPresent counts copies that found the page already present
	// (EEXIST), for example a fault racing the prefetch.
	AlreadyPresent uint64
	// Retries counts copies retried because guest memory was changing
	// (EAGAIN while a remove event was pending).
	Retries uint64
	// Errors counts failed copies other than EEXIST and EAGAIN.
	Errors uint64
	// PrefetchedBytes is the file data copied by the background prefetch.
	PrefetchedBytes uint64
	// PrefetchDone reports whether the prefetch has finished.
	PrefetchDone bool
	// PrefetchDuration is how long the prefetch took, once done.
	PrefetchDuration time.Duration
	// Detached reports whether guest memory has been unregistered (see
	// Config.Detach).
	Detached bool
}

// Server serves the page faults of one restored VM. Create it with Listen,
// run it with Serve, release it with Close.
type Server struct {
	cfg    Config
	log    *slog.Logger
	lfd    int // listening socket, -1 once closed
	wakefd int // eventfd that interrupts Serve
	memfd  int
	mem    []byte
	size   int64

	populateDone chan struct{}
	ready        chan struct{}
	peerPID      atomic.Int32
	sess         atomic.Pointer[session]

	mu        sync.Mutex
	served    bool
	closed    bool
	serveDone chan struct{}
	closeErr  error
	cleaned   bool
}

// Listen validates cfg, opens and maps the memory file and starts listening
// on cfg.SocketPath. Once it returns, Firecracker may connect.
func Listen(cfg Config) (*Server, error) {
	if cfg.SocketPath == "" {
		return nil, fmt.Errorf("%w: SocketPath is empty", ErrConfig)
	}
	if base := filepath.Base(cfg.SocketPath); len(base) > 64 {
		return nil, fmt.Errorf("%w: SocketPath %q: file name must be at most 64 bytes", ErrConfig, cfg.SocketPath)
	}
	if cfg.MemFile == "" {
		return nil, fmt.Errorf("%w: MemFile is empty", ErrConfig)
	}
	if cfg.AcceptTimeout < 0 {
		return nil, fmt.Errorf("%w: AcceptTimeout %s: must not be negative", ErrConfig, cfg.AcceptTimeout)
	}
	if cfg.AcceptTimeout == 0 {
		cfg.AcceptTimeout = DefaultAcceptTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Server{cfg: cfg, log: log, lfd: -1, wakefd: -1, memfd: -1,
		populateDone: make(chan struct{}), ready: make(chan struct{}), serveDone: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			close(s.populateDone)
			s.cleanup()
		}
	}()

	if err := s.openMemFile(); err != nil {
		return nil, err
	}
	var err error
	s.wakefd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("uffd: eventfd: %w", err)
	}
	if err := s.listen(); err != nil {
		return nil, err
	}
	ok = true
	if cfg.Populate {
		go s.populate()
	} else {
		close(s.populateDone)
	}
	log.Debug("uffd: listening", "socket", cfg.SocketPath, "mem_file", cfg.MemFile, "size", s.size)
	return s, nil
}

// populate pre-faults the file mapping in chunks, so that Close need not
// wait for a whole large file to be read.
func (s *Server) populate() {
	defer close(s.populateDone)
	const chunk = 64 << 20
	for off := 0; off < len(s.mem); off += chunk {
		s.mu.Lock()
		closed := s.closed
		s.mu.Unlock()
		if closed {
			return
		}
		part := s.mem[off:min(off+chunk, len(s.mem))]
		if err := unix.Madvise(part, unix.MADV_POPULATE_READ); err != nil {
			// Before Linux 5.14: at least start the reads.
			_ = unix.Madvise(s.mem, unix.MADV_WILLNEED)
			return
		}
	}
}

func (s *Server) openMemFile() error {
	name := s.cfg.MemFile
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("%w: open memory file %s: %w", ErrMemFile, name, err)
	}
	s.memfd = fd
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("%w: stat memory file %s: %w", ErrMemFile, name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%w: memory file %s: not a regular file", ErrMemFile, name)
	}
	if st.Size <= 0 || st.Size%pageSize4K != 0 {
		return fmt.Errorf("%w: memory file %s: size %d: must be a positive multiple of 4096", ErrMemFile, name, st.Size)
	}
	if int64(int(st.Size)) != st.Size {
		return fmt.Errorf("%w: memory file %s: size %d does not fit the address space", ErrMemFile, name, st.Size)
	}
	s.size = st.Size
	s.mem, err = unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		s.mem = nil
		return fmt.Errorf("%w: mmap memory file %s (%d bytes): %w", ErrMemFile, name, st.Size, err)
	}
	return nil
}

func (s *Server) listen() error {
	path := s.cfg.SocketPath
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return fmt.Errorf("%w: SocketPath %s exists and is not a socket", ErrConfig, path)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("uffd: remove stale socket %s: %w", path, err)
		}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("uffd: socket: %w", err)
	}
	s.lfd = fd
	if err := bindLong(fd, path); err != nil {
		return fmt.Errorf("uffd: bind %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		os.Remove(path)
		return fmt.Errorf("uffd: chmod %s: %w", path, err)
	}
	if err := unix.Listen(fd, 1); err != nil {
		os.Remove(path)
		return fmt.Errorf("uffd: listen on %s: %w", path, err)
	}
	return nil
}

// bindLong binds fd to path, also when path is longer than sun_path (108
// bytes): then through /proc/self/fd/<dir>/<name>, which names the same
// directory in a few bytes. Firecracker connects with a path relative to
// its working directory in that case.
func bindLong(fd int, path string) error {
	if len(path) < len(unix.RawSockaddrUnix{}.Path) {
		return unix.Bind(fd, &unix.SockaddrUnix{Name: path})
	}
	dir, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open socket directory: %w", err)
	}
	defer unix.Close(dir)
	return unix.Bind(fd, &unix.SockaddrUnix{Name: fmt.Sprintf("/proc/self/fd/%d/%s", dir, filepath.Base(path))})
}

// closeListener stops listening and removes the socket file.
func (s *Server) closeListener() {
	if s.lfd >= 0 {
		unix.Close(s.lfd)
		s.lfd = -1
		if err := os.Remove(s.cfg.SocketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("uffd: remove socket", "socket", s.cfg.SocketPath, "err", err)
		}
	}
}

// Serve accepts Firecracker's connection, validates its handshake and
// serves page faults until the peer goes away (its connection hangs up or
// its process exits: Serve returns nil), ctx is done (ctx.Err()), Close is
// called (ErrClosed) or serving fails. Serve may be called once.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return ErrClosed
	case s.served:
		s.mu.Unlock()
		return fmt.Errorf("uffd: Serve called twice")
	}
	s.served = true
	s.mu.Unlock()
	defer close(s.serveDone)

	stop := context.AfterFunc(ctx, s.wakeup)
	defer stop()
	err := s.serve()
	if errors.Is(err, errWoken) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return ErrClosed
	}
	return err
}

func (s *Server) serve() error {
	deadline := time.Now().Add(s.cfg.AcceptTimeout)
	conn, err := s.accept(deadline)
	s.closeListener()
	if err != nil {
		return err
	}
	sess, err := s.handshake(conn, deadline)
	if err != nil {
		unix.Close(conn)
		return err
	}
	s.sess.Store(sess)
	close(s.ready)
	s.log.Info("uffd: serving", "peer_pid", sess.peerPID, "regions", len(sess.regions), "page_size", sess.regions[0].PageSize,
		"mem_file", s.cfg.MemFile, "prefetch", s.cfg.Prefetch)
	return sess.run(s.cfg.Prefetch, s.cfg.Prefetch && s.cfg.Detach, s.wakefd)
}

// waitFD polls fd for events until the deadline, the wake eventfd or an
// error. It returns the revents of fd.
func (s *Server) waitFD(fd int, events int16, deadline time.Time, what string) (int16, error) {
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return 0, fmt.Errorf("%w: %s within %s", ErrAcceptTimeout, what, s.cfg.AcceptTimeout)
		}
		ms := int(left / time.Millisecond)
		if ms == 0 {
			ms = 1
		}
		pfds := []unix.PollFd{{Fd: int32(fd), Events: events}, {Fd: int32(s.wakefd), Events: unix.POLLIN}}
		_, err := unix.Poll(pfds, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("uffd: poll: %w", err)
		}
		if pfds[1].Revents != 0 {
			return 0, errWoken
		}
		if pfds[0].Revents != 0 {
			return pfds[0].Revents, nil
		}
	}
}

func (s *Server) accept(deadline time.Time) (int, error) {
	for {
		if _, err := s.waitFD(s.lfd, unix.POLLIN, deadline, "nobody connected to "+s.cfg.SocketPath); err != nil {
			return -1, err
		}
		nfd, _, err := unix.Accept4(s.lfd, unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) || errors.Is(err, unix.ECONNABORTED) {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("uffd: accept on %s: %w", s.cfg.SocketPath, err)
		}
		return nfd, nil
	}
}

// handshake reads and validates the region list and the userfaultfd.
func (s *Server) handshake(conn int, deadline time.Time) (*session, error) {
	cred, err := unix.GetsockoptUcred(conn, unix.SOL_SOCKET, unix.SO_PEERCRED)
	if err != nil {
		return nil, fmt.Errorf("uffd: SO_PEERCRED: %w", err)
	}
	if s.cfg.PeerPID > 0 && int(cred.Pid) != s.cfg.PeerPID {
		return nil, fmt.Errorf("%w: peer pid %d (uid %d) is not the expected Firecracker pid %d", ErrBadHandshake, cred.Pid, cred.Uid, s.cfg.PeerPID)
	}
	s.peerPID.Store(cred.Pid)

	var fds []int
	closeFDs := func(fds []int) {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	buf := make([]byte, maxHandshake)
	oob := make([]byte, unix.CmsgSpace(8*4))
	n := 0
	var regions []Region
	for {
		rev, err := s.waitFD(conn, unix.POLLIN, deadline, fmt.Sprintf("peer pid %d sent no complete handshake", cred.Pid))
		if err != nil {
			closeFDs(fds)
			return nil, err
		}
		m, oobn, flags, _, err := unix.Recvmsg(conn, buf[n:], oob, unix.MSG_CMSG_CLOEXEC)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			if rev&(unix.POLLHUP|unix.POLLERR) != 0 {
				err = io.ErrUnexpectedEOF
			} else {
				continue
			}
		}
		if err != nil {
			closeFDs(fds)
			return nil, fmt.Errorf("%w: read handshake from peer pid %d: %w", ErrBadHandshake, cred.Pid, err)
		}
		if oobn > 0 {
			got, perr := parseRights(oob[:oobn])
			fds = append(fds, got...)
			if perr != nil {
				closeFDs(fds)
				return nil, fmt.Errorf("%w: control message: %w", ErrBadHandshake, perr)
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			closeFDs(fds)
			return nil, fmt.Errorf("%w: too many file descriptors attached (control data truncated)", ErrBadHandshake)
		}
		n += m
		if m == 0 && n == 0 {
			closeFDs(fds)
			return nil, fmt.Errorf("%w: peer pid %d closed the connection without sending the handshake", ErrBadHandshake, cred.Pid)
		}
		regions, err = parseRegions(buf[:n], s.size)
		if err != nil && m > 0 && n < len(buf) && jsonIncomplete(buf[:n]) {
			continue // the rest of the message is still in flight
		}
		if err != nil && n == len(buf) {
			err = fmt.Errorf("%w: handshake exceeds %d bytes", ErrBadHandshake, maxHandshake)
		}
		if err != nil {
			closeFDs(fds)
			return nil, err
		}
		break
	}
	if len(fds) == 0 {
		return nil, fmt.Errorf("%w: no userfaultfd attached: want exactly one fd via SCM_RIGHTS", ErrBadHandshake)
	}
	uffd := fds[0]
	if len(fds) > 1 {
		s.log.Warn("uffd: ignoring extra file descriptors in handshake", "count", len(fds)-1)
		closeFDs(fds[1:])
	}
	if err := checkUserfaultfd(uffd); err != nil {
		unix.Close(uffd)
		return nil, err
	}
	sess, err := newSession(s, uffd, conn, int(cred.Pid), regions)
	if err != nil {
		unix.Close(uffd)
		return nil, err
	}
	return sess, nil
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for i := range msgs {
		if msgs[i].Header.Level != unix.SOL_SOCKET || msgs[i].Header.Type != unix.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			return fds, err
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// checkUserfaultfd verifies that fd is an initialised userfaultfd and makes
// it non-blocking (Firecracker creates it so; poll needs it).
func checkUserfaultfd(fd int) error {
	if link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd)); err == nil && !strings.Contains(link, "[userfaultfd]") {
		return fmt.Errorf("%w: the attached fd is %q, not a userfaultfd", ErrBadHandshake, link)
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("uffd: fcntl F_GETFL on userfaultfd: %w", err)
	}
	if fl&unix.O_NONBLOCK == 0 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_NONBLOCK); err != nil {
			return fmt.Errorf("uffd: make userfaultfd non-blocking: %w", err)
		}
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if _, err := unix.Poll(pfd, 0); err == nil && pfd[0].Revents&unix.POLLERR != 0 {
		return fmt.Errorf("%w: the userfaultfd is not initialised (the peer did not call UFFDIO_API)", ErrBadHandshake)
	}
	return nil
}

func (s *Server) wakeup() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.wakefd >= 0 {
		one := uint64(1)
		unix.Write(s.wakefd, (*[8]byte)(unsafe.Pointer(&one))[:])
	}
}

// Ready is closed once the handshake has been validated and faults are
// being served. It stays open if Serve fails before that, so wait on it
// together with Serve's result.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// PeerPID returns the pid of the connected peer (from SO_PEERCRED), or 0
// before a connection.
func (s *Server) PeerPID() int { return int(s.peerPID.Load()) }

// Regions returns the validated regions, or nil before the handshake.
func (s *Server) Regions() []Region {
	sess := s.sess.Load()
	if sess == nil {
		return nil
	}
	out := make([]Region, len(sess.regions))
	for i, r := range sess.regions {
		out[i] = r.Region
	}
	return out
}

// Stats returns a snapshot of the counters; zero before the handshake.
func (s *Server) Stats() Stats {
	sess := s.sess.Load()
	if sess == nil {
		return Stats{}
	}
	return sess.stats()
}

// KillPeer sends SIGKILL to the connected Firecracker process (through a
// pidfd, so a recycled pid is never hit). A VM whose handler has failed
// would otherwise hang on its next missing page.
func (s *Server) KillPeer() error {
	sess := s.sess.Load()
	if sess == nil {
		return fmt.Errorf("uffd: no peer connected")
	}
	if sess.pidfd < 0 {
		return unix.Kill(sess.peerPID, unix.SIGKILL)
	}
	return unix.PidfdSendSignal(sess.pidfd, unix.SIGKILL, nil, 0)
}

// Close stops Serve (which then returns ErrClosed), waits for it, and
// releases the socket, the userfaultfd and the memory file mapping. Close is
// idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	served := s.served
	s.mu.Unlock()
	s.wakeup()
	if served {
		<-s.serveDone
	}
	<-s.populateDone
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.cleaned {
		s.cleaned = true
		s.closeErr = s.cleanup()
	}
	return s.closeErr
}

func (s *Server) cleanup() error {
	var errs []error
	s.closeListener()
	if sess := s.sess.Load(); sess != nil {
		sess.close()
	}
	if s.mem != nil {
		if err := unix.Munmap(s.mem); err != nil {
			errs = append(errs, fmt.Errorf("munmap memory file: %w", err))
		}
		s.mem = nil
	}
	for _, fd := range []*int{&s.memfd, &s.wakefd} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("uffd: close: %w", errors.Join(errs...))
	}
	return nil
}

// socketLogPath is where Spawn sends the handler's output.
func socketLogPath(socket string) string {
	return filepath.Join(filepath.Dir(socket), filepath.Base(socket)+".log")
}
