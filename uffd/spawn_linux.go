//go:build linux

package uffd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// BinaryName is the page server's executable name.
const BinaryName = "mvm-uffd"

// EnvBinary names the environment variable that overrides where FindBinary
// looks for mvm-uffd.
const EnvBinary = "MVM_UFFD_BIN"

// ErrBinaryNotFound reports that no mvm-uffd executable was found.
var ErrBinaryNotFound = errors.New("uffd: mvm-uffd binary not found")

// FindBinary locates mvm-uffd: $MVM_UFFD_BIN if set (it must then exist),
// else next to the running executable, else on $PATH.
func FindBinary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if err := checkExecutable(p); err != nil {
			return "", fmt.Errorf("%w: %s=%s: %w", ErrBinaryNotFound, EnvBinary, p, err)
		}
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), BinaryName)
		if checkExecutable(p) == nil {
			return p, nil
		}
	}
	p, err := exec.LookPath(BinaryName)
	if err != nil {
		return "", fmt.Errorf("%w: not in $%s, next to the executable, or on $PATH", ErrBinaryNotFound, EnvBinary)
	}
	return p, nil
}

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("not an executable file")
	}
	return nil
}

// LogPath returns where Spawn sends the output of the handler serving
// socketPath: "<socketPath>.log".
func LogPath(socketPath string) string { return socketLogPath(socketPath) }

// Spawn starts bin (mvm-uffd) for cfg, detached from the caller: in its own
// session, stdin from /dev/null, stdout and stderr appended to
// LogPath(cfg.SocketPath). It returns the handler's pid once the socket is
// listening, so PUT /snapshot/load may follow. ctx bounds only that wait;
// on failure the child is killed and the error quotes the end of its log.
// The handler outlives the caller; it exits when Firecracker does.
// cfg.Logger is not used (the child logs to the log file).
func Spawn(ctx context.Context, bin string, cfg Config) (pid int, err error) {
	if cfg.SocketPath == "" || cfg.MemFile == "" {
		return 0, fmt.Errorf("%w: SocketPath and MemFile must be set", ErrConfig)
	}
	if cfg.AcceptTimeout < 0 {
		return 0, fmt.Errorf("%w: AcceptTimeout %s: must not be negative", ErrConfig, cfg.AcceptTimeout)
	}
	args := []string{"--socket", cfg.SocketPath, "--mem-file", cfg.MemFile, "--ready-fd", "3"}
	if cfg.AcceptTimeout > 0 {
		args = append(args, "--accept-timeout", cfg.AcceptTimeout.String())
	}
	if !cfg.Prefetch {
		args = append(args, "--no-prefetch")
	}
	if !cfg.Detach {
		args = append(args, "--no-detach")
	}
	if cfg.Populate {
		args = append(args, "--populate")
	}
	if cfg.PeerPID > 0 {
		args = append(args, "--peer-pid", strconv.Itoa(cfg.PeerPID))
	}
	logPath := LogPath(cfg.SocketPath)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return 0, fmt.Errorf("uffd: spawn: open log file: %w", err)
	}
	defer logf.Close()
	rd, wr, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("uffd: spawn: pipe: %w", err)
	}
	defer rd.Close()

	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{wr}
	pidfd := -1
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, PidFD: &pidfd}
	err = cmd.Start()
	wr.Close()
	if err != nil {
		return 0, fmt.Errorf("uffd: spawn %s: %w", bin, err)
	}

	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(rd).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("unexpected readiness line %q", line)
		}
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		unix.Close(pidfd)
		if errors.Is(err, io.EOF) {
			err = errors.New("exited before listening")
		}
		return 0, fmt.Errorf("uffd: spawn %s for %s: %w%s", bin, cfg.SocketPath, err, logTail(logPath))
	}
	// Reap it when it exits, through its pidfd: the goroutine waits in
	// the network poller, not in a wait system call holding a thread.
	pid = cmd.Process.Pid
	cmd.Process.Release()
	reapOnExit(pid, pidfd)
	return pid, nil
}

// reapOnExit reaps the child behind pidfd (which it takes) when it exits.
func reapOnExit(pid, pidfd int) {
	if err := unix.SetNonblock(pidfd, true); err != nil {
		unix.Close(pidfd)
		return
	}
	f := os.NewFile(uintptr(pidfd), "pidfd:"+strconv.Itoa(pid))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return
	}
	go func() {
		defer f.Close()
		rc.Read(func(fd uintptr) bool {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, _ := unix.Poll(pfd, 0)
			return n > 0
		})
		rc.Control(func(fd uintptr) {
			var si unix.Siginfo
			for {
				_, _, e := unix.Syscall6(unix.SYS_WAITID, unix.P_PIDFD, fd, uintptr(unsafe.Pointer(&si)), unix.WEXITED|unix.WNOHANG, 0, 0)
				if e != unix.EINTR {
					return
				}
			}
		})
	}()
}

// logTail returns the last lines of a log file, formatted for an error.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	if len(b) > 2048 {
		b = b[len(b)-2048:]
	}
	return "; log " + path + ": " + strings.TrimSpace(string(b))
}
