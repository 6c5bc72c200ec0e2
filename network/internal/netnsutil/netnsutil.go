//go:build linux

// Package netnsutil creates, pins, enters and removes Linux network
// namespaces without touching the namespace of any other thread.
//
// Every switch of namespace happens on a fresh goroutine locked to its OS
// thread. If the thread cannot be switched back, the goroutine exits while
// still locked, so the Go runtime destroys the thread instead of reusing it
// in the wrong namespace.
package netnsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Create makes a new network namespace and pins it by bind-mounting it on
// path, which must not exist. On error nothing is left at path.
func Create(path string) (err error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o444)
	if err != nil {
		return fmt.Errorf("create namespace file %s: %w", path, err)
	}
	unix.Close(fd)
	defer func() {
		if err != nil {
			os.Remove(path)
		}
	}()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare network namespace: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		merr := unix.Mount(src, path, "none", unix.MS_BIND, "")
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime kills it on return.
			if merr == nil {
				unix.Unmount(path, unix.MNT_DETACH)
			}
			errc <- fmt.Errorf("restore thread namespace: %w", err)
			return
		}
		runtime.UnlockOSThread()
		if merr != nil {
			merr = fmt.Errorf("bind-mount namespace on %s: %w", path, merr)
		}
		errc <- merr
	}()
	return <-errc
}

// Remove unpins the namespace at path (lazy unmount) and deletes the file.
// A missing file, or one that is not mounted, is not an error. The kernel
// frees the namespace once no process, socket or descriptor uses it.
func Remove(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove namespace file %s: %w", path, err)
	}
	return nil
}

// IsNetNS reports whether path is a pinned network namespace (a file on
// nsfs, as left by Create).
func IsNetNS(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.NSFS_MAGIC
}

// Open returns a handle on the namespace pinned at path. The caller closes
// it.
func Open(path string) (netns.NsHandle, error) {
	if !IsNetNS(path) {
		if _, err := os.Stat(path); err != nil {
			return netns.None(), fmt.Errorf("network namespace %s: %w", path, err)
		}
		return netns.None(), fmt.Errorf("network namespace %s: not a namespace (not mounted)", path)
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return netns.None(), fmt.Errorf("open network namespace %s: %w", path, err)
	}
	return h, nil
}

// Do runs fn on an OS thread switched into ns and returns its error. The
// thread is locked for the duration, so everything fn does on its own
// goroutine (open sockets, write /proc/sys/net, fork a child) happens in ns;
// goroutines that fn starts do not inherit it. A panic in fn is re-raised in
// the caller after the thread has been restored.
func Do(ns netns.NsHandle, fn func() error) error {
	type result struct {
		err   error
		panic any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("open current namespace: %w", err)}
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("enter network namespace: %w", err)}
			return
		}
		var res result
		func() {
			defer func() { res.panic = recover() }()
			res.err = fn()
		}()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime kills it on return.
			res.err = errors.Join(res.err, fmt.Errorf("restore thread namespace: %w", err))
			done <- res
			return
		}
		runtime.UnlockOSThread()
		done <- res
	}()
	res := <-done
	if res.panic != nil {
		panic(res.panic)
	}
	return res.err
}

// DoPath is Do for the namespace pinned at path.
func DoPath(path string, fn func() error) error {
	h, err := Open(path)
	if err != nil {
		return err
	}
	defer h.Close()
	return Do(h, fn)
}

// EnsureSharedDir creates dir if needed and makes it a mount point with
// shared propagation, as iproute2 does for /run/netns. Namespace bind
// mounts made under it then propagate their unmount to copies of the mount
// table that other processes create later (unshare -m, systemd
// PrivateTmp...), so those copies do not keep a deleted namespace alive.
func EnsureSharedDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("make %s a shared mount: %w", dir, err)
	}
	// Not a mount point yet: bind it onto itself, then share it.
	if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mount %s on itself: %w", dir, err)
	}
	if err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("make %s a shared mount: %w", dir, err)
	}
	return nil
}

// IsMountPoint reports whether dir is the mount point of some mount in this
// process's mount namespace.
func IsMountPoint(dir string) (bool, error) {
	raw, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMount(f[4]) == dir {
			return true, nil
		}
	}
	return false, nil
}

// unescapeMount undoes the octal escapes (\040 for space...) of
// /proc/self/mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			v := (int(s[i+1]-'0') << 6) | (int(s[i+2]-'0') << 3) | int(s[i+3]-'0')
			b.WriteByte(byte(v))
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
