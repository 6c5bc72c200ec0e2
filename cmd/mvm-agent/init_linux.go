package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mvm-dev/microvm/agent"
)

// mount is one file system the agent mounts as PID 1.
type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// initMounts are mounted in order and unmounted in reverse at shutdown.
var initMounts = []mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "mode=0620,ptmxmode=0666"},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
}

// mountAll mounts initMounts; a target already mounted (the kernel mounts
// /dev itself with CONFIG_DEVTMPFS_MOUNT) is kept. Failures are logged,
// not fatal: the agent serves as much as it can.
func mountAll(logf func(string, ...any)) {
	for _, m := range initMounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			logf("mkdir %s: %v", m.target, err)
			continue
		}
		err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			logf("mount %s on %s: %v", m.fstype, m.target, err)
		}
	}
}

// reaper is the agent's reaper as PID 1 (nil otherwise): it reaps every
// child, orphans included, and hands the statuses of the commands the
// agent runs to their waiters.
var reaper *agent.Reaper

// shutdownSystem ends the guest: every other process is sent SIGTERM, then
// SIGKILL after up to 2 s; file systems are synced, what the agent mounted
// is unmounted, / is remounted read-only, and the machine is reset. It
// returns only if the reset fails. Only PID 1 calls it, after run started
// the reaper.
func shutdownSystem(logf func(string, ...any)) error {
	unix.Kill(-1, unix.SIGTERM)
	deadline := time.Now().Add(2 * time.Second)
	for !reaper.ReapAll() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	unix.Kill(-1, unix.SIGKILL)
	reaper.ReapAll()
	unix.Sync()
	for i := len(initMounts) - 1; i >= 0; i-- {
		t := initMounts[i].target
		if t == "/dev" || t == "/proc" {
			continue // the console is open on /dev; /proc costs nothing
		}
		if err := unix.Unmount(t, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			logf("unmount %s: %v", t, err)
		}
	}
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		logf("remount / read-only: %v", err)
	}
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		return fmt.Errorf("reboot: %w", err)
	}
	return nil
}

// catchCtrlAltDel makes the kernel send SIGINT to PID 1 on Ctrl-Alt-Del
// instead of rebooting at once.
func catchCtrlAltDel() error {
	return unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
}

// rawConsole puts the terminal f in raw mode (no echo, no line editing, no
// signals from input, no CR/NL translation on input) so request lines pass
// unchanged. Output keeps ONLCR, so the console stays readable.
func rawConsole(f *os.File) error {
	fd := int(f.Fd())
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	return unix.IoctlSetTermios(fd, unix.TCSETS, t)
}
