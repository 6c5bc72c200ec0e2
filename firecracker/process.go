package firecracker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// proc is a handle on one process the runtime supervises (a firecracker or
// a uffd page server): its pid, its start time (to tell it from a later
// process with the same pid) and a pidfd, which makes signals and waits
// immune to pid reuse. The pidfd is non-blocking and registered with Go's
// network poller, so waiting for an exit parks a goroutine, not a thread.
//
// A proc is used by one goroutine at a time; goroutines that wait for the
// same process each open their own handle (see attach).
type proc struct {
	pid       int
	startTime uint64 // /proc/<pid>/stat field 22, clock ticks since boot
	fd        *os.File
	rc        syscall.RawConn
}

// procStat is what the runtime reads of /proc/<pid>/stat.
type procStat struct {
	state     byte   // field 3: R, S, D, Z, X, ...
	startTime uint64 // field 22
}

// readProcStat reads /proc/<pid>/stat. The command name (field 2) may hold
// spaces and parentheses, so fields are counted after the last ')'.
func readProcStat(pid int) (procStat, error) {
	f, err := procStatFields(pid, 22)
	if err != nil {
		return procStat{}, err
	}
	st, err := strconv.ParseUint(f[22-3], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("/proc/%d/stat: start time: %w", pid, err)
	}
	return procStat{state: f[0][0], startTime: st}, nil
}

// procStatFields reads /proc/<pid>/stat and returns its fields after the
// command name, at least up to field last: f[0] is field 3 (the state,
// one character), so field n is f[n-3].
func procStatFields(pid, last int) ([]string, error) {
	raw, err := readProcFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return nil, fmt.Errorf("/proc/%d/stat: malformed", pid)
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < last-3+1 || len(f[0]) != 1 {
		return nil, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	return f, nil
}

// readProcFile reads a small /proc file with plain system calls (one
// read of up to 4 KiB), without the runtime poller's set-up for the
// descriptor, which costs more system calls than the read.
func readProcFile(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	buf := make([]byte, 4096)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: path, Err: err}
		}
		return buf[:n], nil
	}
}

// bootID identifies the current boot of the host; pids and start times are
// only meaningful within one boot.
var bootID = sync.OnceValue(func() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
})

// spawnSpec describes a process to start.
type spawnSpec struct {
	bin  string
	args []string
	dir  string     // working directory
	out  *os.File   // stdout and stderr; nil means /dev/null
	env  []string   // nil means the runtime's environment
	keep []*os.File // descriptors the process inherits (from fd 3 on)
}

// spawn starts a process detached from the caller: in a session of its own
// (so terminal signals to the caller's process group do not reach it), with
// stdin from /dev/null and stdout/stderr on spec.out (a file the runtime
// opened with O_APPEND, never a pipe, so the runtime may exit without
// breaking the process). Nothing ties the process to a context.
func spawn(spec spawnSpec) (*proc, error) {
	pidfd := -1
	cmd := &exec.Cmd{
		Path: spec.bin,
		Args: append([]string{spec.bin}, spec.args...),
		Dir:  spec.dir,
		Env:  spec.env,
		SysProcAttr: &syscall.SysProcAttr{
			Setsid: true,
			PidFD:  &pidfd,
		},
		ExtraFiles: spec.keep,
	}
	if spec.out != nil {
		cmd.Stdout, cmd.Stderr = spec.out, spec.out
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	pid := cmd.Process.Pid
	// The runtime waits through its own pidfd; os.Process keeps a
	// duplicate, which Release closes.
	cmd.Process.Release()
	st, err := readProcStat(pid)
	if err != nil {
		// Cannot happen short of /proc missing: a child keeps its
		// /proc entry until we reap it.
		p, perr := newProc(pid, 0, pidfd)
		if perr == nil {
			p.kill()
			p.close()
		}
		return nil, fmt.Errorf("read start time of pid %d: %w", pid, err)
	}
	p, err := newProc(pid, st.startTime, pidfd)
	if err == nil {
		reapLater(p)
	}
	return p, err
}

// newProc wraps a pidfd. It takes ownership of fd.
func newProc(pid int, startTime uint64, fd int) (*proc, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("pidfd of %d: %w", pid, err)
	}
	f := os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(pid))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("pidfd of %d: %w", pid, err)
	}
	return &proc{pid: pid, startTime: startTime, fd: f, rc: rc}, nil
}

// errGone reports that a recorded process no longer exists (or the pid now
// belongs to another process).
var errGone = errors.New("process is gone")

// attach returns a handle on the running process pid if it is still the
// one that started at startTime during this boot; otherwise an error
// wrapping errGone. A zombie counts as gone.
func attach(pid int, startTime uint64, boot string) (*proc, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("pid %d: %w", pid, errGone)
	}
	if boot != "" && boot != bootID() {
		return nil, fmt.Errorf("pid %d was recorded in an earlier boot: %w", pid, errGone)
	}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ESRCH) {
		return nil, fmt.Errorf("pid %d: %w", pid, errGone)
	}
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	p, err := newProc(pid, startTime, fd)
	if err != nil {
		return nil, err
	}
	// The pidfd pins the process it was opened on. If that process is
	// still alive now, the pid was not reused in between, so /proc/<pid>
	// describes it.
	st, err := readProcStat(pid)
	if err != nil || st.startTime != startTime || st.state == 'Z' || st.state == 'X' || p.exited() {
		p.close()
		return nil, fmt.Errorf("pid %d (start time %d): %w", pid, startTime, errGone)
	}
	return p, nil
}

// exited reports whether the process has exited (zombies included),
// without blocking.
func (p *proc) exited() bool {
	var done bool
	p.rc.Control(func(fd uintptr) { done = pidfdReadable(int(fd)) })
	return done
}

func pidfdReadable(fd int) bool {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(pfd, 0)
		if err == unix.EINTR {
			continue
		}
		return n > 0 && pfd[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0
	}
}

// wait waits until the process exits, d elapses (d <= 0: no limit) or ctx
// is done. It reports whether the process exited; the error is ctx's.
func (p *proc) wait(ctx context.Context, d time.Duration) (bool, error) {
	if p.exited() {
		return true, nil
	}
	if d > 0 {
		p.fd.SetReadDeadline(time.Now().Add(d))
	} else {
		p.fd.SetReadDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { p.fd.SetReadDeadline(time.Unix(1, 0)) })
	var done bool
	err := p.rc.Read(func(fd uintptr) bool {
		done = pidfdReadable(int(fd))
		return done
	})
	stop()
	p.fd.SetReadDeadline(time.Time{})
	if done {
		return true, nil
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		// The handle was closed: treat as "not known to have exited".
		return false, err
	}
	return false, nil
}

// signal sends sig through the pidfd. A process that has already exited is
// not an error.
func (p *proc) signal(sig unix.Signal) error {
	var serr error
	if err := p.rc.Control(func(fd uintptr) { serr = unix.PidfdSendSignal(int(fd), sig, nil, 0) }); err != nil {
		return err
	}
	if serr == unix.ESRCH {
		return nil
	}
	return serr
}

// kill sends SIGKILL.
func (p *proc) kill() error { return p.signal(unix.SIGKILL) }

// exitInfo is how a process ended.
type exitInfo struct {
	known  bool   // false when the process was not our child (or was reaped elsewhere)
	code   int    // exit status, -1 when killed by a signal
	signal string // the signal's name when killed by one
}

// reap collects the exit status if the process is a child of this process
// and has exited. For other processes (adopted ones) the status is
// unknowable; known is then false.
func (p *proc) reap() exitInfo {
	var ei exitInfo
	p.rc.Control(func(fd uintptr) { ei = waitPidfd(int(fd)) })
	if !ei.known {
		ei = childExit(p.pid, p.startTime) // the reaper got there first
	}
	return ei
}

// siginfoChld is the head of siginfo_t as filled for SIGCHLD on Linux
// (64-bit and 32-bit layouts agree on these offsets).
type siginfoChld struct {
	signo  int32
	errno  int32
	code   int32
	_      int32
	pid    int32
	uid    uint32
	status int32
	_      [128 - 28]byte
}

// CLD_* codes of siginfo_t.si_code.
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

func waitPidfd(fd int) exitInfo {
	var si siginfoChld
	for {
		_, _, e := unix.Syscall6(unix.SYS_WAITID, unix.P_PIDFD, uintptr(fd), uintptr(unsafe.Pointer(&si)),
			unix.WEXITED|unix.WNOHANG, 0, 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 || si.pid == 0 {
			return exitInfo{code: -1}
		}
		break
	}
	switch si.code {
	case cldExited:
		return exitInfo{known: true, code: int(si.status)}
	case cldKilled, cldDumped:
		return exitInfo{known: true, code: -1, signal: unix.SignalName(unix.Signal(si.status))}
	}
	return exitInfo{code: -1}
}

// terminate ends the process: SIGKILL, then wait (bounded) for the exit,
// and reap it if it is our child. It reports whether the exit was
// confirmed.
func (p *proc) terminate(d time.Duration) bool {
	p.kill()
	ok, _ := p.wait(context.Background(), d)
	if ok {
		p.reap()
	}
	return ok
}

// close releases the pidfd.
func (p *proc) close() {
	if p != nil && p.fd != nil {
		p.fd.Close()
	}
}

// killRecorded ends a process known only from its record (pid, start time,
// boot), if it still exists, and waits up to d for it to exit.
func killRecorded(pid int, startTime uint64, boot string, d time.Duration) error {
	p, err := attach(pid, startTime, boot)
	if errors.Is(err, errGone) {
		return nil
	}
	if err != nil {
		return err
	}
	defer p.close()
	if !p.terminate(d) {
		return fmt.Errorf("process %d did not exit within %s after SIGKILL", pid, d)
	}
	return nil
}
