package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/fcapi"
)

// This file holds what turns a Spec into a configured firecracker process:
// the file checks done before spawning, the spawn and readiness wait, and
// the pre-boot API sequence.

// checkFiles checks, before anything is spawned, that the files a spec
// names exist, are regular files (block devices too, for drives) and can
// be opened as firecracker will open them (read-write for writable
// drives). Every problem is reported at once, naming the spec field and
// the path, in a *microvm.SpecError.
func checkFiles(spec microvm.Spec) error {
	var problems []microvm.FieldError
	check := func(field, path string, write, blockOK bool) {
		if path == "" {
			return
		}
		if msg := checkFile(path, write, blockOK); msg != "" {
			problems = append(problems, microvm.FieldError{Field: field, Rule: msg})
		}
	}
	check("kernel", spec.Kernel, false, false)
	check("initrd", spec.Initrd, false, false)
	check("root_drive.path", spec.RootDrive.Path, !spec.RootDrive.ReadOnly, true)
	for i, d := range spec.Drives {
		check(fmt.Sprintf("drives[%d].path", i), d.Path, !d.ReadOnly, true)
	}
	if len(problems) > 0 {
		return &microvm.SpecError{Problems: problems}
	}
	return nil
}

// checkFile returns what is wrong with a file, or "".
func checkFile(path string, write, blockOK bool) string {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if _, lerr := os.Lstat(path); lerr == nil {
			return fmt.Sprintf("%s is a dangling symbolic link", path)
		}
		return fmt.Sprintf("%s does not exist", path)
	case err != nil:
		return fmt.Sprintf("%s cannot be read: %v", path, unwrapPathErr(err))
	case fi.IsDir():
		return fmt.Sprintf("%s is a directory, not a file", path)
	case !fi.Mode().IsRegular() && !(blockOK && fi.Mode()&fs.ModeDevice != 0 && fi.Mode()&fs.ModeCharDevice == 0):
		want := "a regular file"
		if blockOK {
			want = "a regular file or a block device"
		}
		return fmt.Sprintf("%s is not %s (mode %s)", path, want, fi.Mode().Type())
	}
	flag, how := os.O_RDONLY, "for reading"
	if write {
		flag, how = os.O_RDWR, "for reading and writing (set read_only for a read-only drive)"
	}
	f, err := os.OpenFile(path, flag|unix.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Sprintf("%s cannot be opened %s: %v", path, how, unwrapPathErr(err))
	}
	f.Close()
	return ""
}

func unwrapPathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// maxSockPath is the size of sockaddr_un.sun_path (the path plus its NUL).
const maxSockPath = 108

// How launch records the process it starts.
type launchRecord int

const (
	// recordNone writes nothing: the caller made the VM directory the
	// mark of a process that may exist (a Create without a managed
	// network, whose record is written once, configured; see strays.go).
	recordNone launchRecord = iota
	// recordPID writes rec with the new process (and the operation in
	// progress) before waiting for the API, without fsync: the pid only
	// matters while the process lives, which a crash of the host ends.
	recordPID
)

// launch starts a firecracker for rec in its VM directory (created if
// missing), records the process in rec (and, with recordPID, in the
// registry), and waits until its API answers. On error nothing of the
// process is left running; the caller removes the VM directory when
// appropriate.
//
// spawned, when not nil, is called right after the spawn, with
// rec.Process set, before the wait for the API.
func (r *Runtime) launch(ctx context.Context, rec *vmRecord, how launchRecord, spawned func()) (*proc, *vmClient, error) {
	p := r.paths(rec.ID)
	if err := mkdirPrivate(p.dir); err != nil {
		return nil, nil, fmt.Errorf("create vm directory: %w", err)
	}
	// What the launcher will make is recorded before it is made.
	if err := r.launcher.prepare(ctx, rec); err != nil {
		return nil, nil, err
	}
	if rec.Jail != nil {
		if err := r.recordJail(ctx, rec); err != nil {
			return nil, nil, r.releaseFailedLaunch(rec, nil, err)
		}
	}
	l := r.layout(rec)
	// Firecracker refuses to bind over an existing socket and does not
	// remove its own on exit.
	for _, s := range []string{l.apiSock, l.uffdSock} {
		if err := removeIfExists(s); err != nil {
			return nil, nil, r.releaseFailedLaunch(rec, nil, fmt.Errorf("remove stale socket: %w", err))
		}
	}
	out, err := os.OpenFile(p.console, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, r.releaseFailedLaunch(rec, nil, fmt.Errorf("open console log: %w", err))
	}
	// A created or started VM holds its drive images for as long as its
	// process lives (see images.go). A restore does not: clones of one
	// snapshot share its drives.
	var locks []*os.File
	if rec.Op != opRestore && rec.Jail == nil {
		if locks, err = r.imageLocks(ctx, rec); err != nil {
			out.Close()
			return nil, nil, r.releaseFailedLaunch(rec, nil, err)
		}
	}
	proc, err := r.launcher.start(ctx, rec, l, out, locks)
	out.Close() // the process has its own descriptors
	closeAll(locks)
	if err != nil {
		return nil, nil, r.releaseFailedLaunch(rec, nil, err)
	}
	rec.Process = recordOf(proc)
	rec.Version = ""
	if spawned != nil {
		spawned()
	}
	if how == recordPID || rec.Jail != nil {
		rec.UpdatedAt = nowUTC()
		if err := r.reg.PutUnsynced(kindVM, rec.ID, rec); err != nil {
			return nil, nil, r.releaseFailedLaunch(rec, proc, fmt.Errorf("vm %q: write record: %w", rec.ID, err))
		}
	}
	c, err := r.waitReady(ctx, proc, rec)
	if err != nil {
		return nil, nil, r.releaseFailedLaunch(rec, proc, err)
	}
	return proc, c, nil
}

// releaseFailedLaunch releases what a launch that failed made (the
// process, when p is not nil, and what the launcher holds) and returns
// cause, with the release's failure added.
func (r *Runtime) releaseFailedLaunch(rec *vmRecord, p *proc, cause error) error {
	if err := r.release(rec, p, scopeProcess); err != nil {
		// The record keeps naming what is left: recovery ends it.
		return fmt.Errorf("%w (and releasing what the launch made failed: %v)", cause, err)
	}
	return cause
}

// waitReady waits for the API socket of a new process: it waits for the
// socket file (woken by inotify, see dirWatch), then probes GET /
// (retried while the socket refuses connections), all within ReadyTimeout
// and ctx. It fails early when the process exits. It sets rec.Version
// from the answer. When the same binary answered before (see
// knownVersion), a connection accepted replaces the probe: one request
// less per launch.
func (r *Runtime) waitReady(ctx context.Context, p *proc, rec *vmRecord) (*vmClient, error) {
	paths := r.layout(rec)
	ctx, cancel := context.WithTimeout(ctx, r.cfg.ReadyTimeout)
	defer cancel()
	exited := func() error {
		ei := p.reap()
		if !ei.known {
			ei = r.exitOf(*recordOf(p))
		}
		return fmt.Errorf("start firecracker: it ended before its API socket answered: %w", exitError(rec.ID, p.pid, ei, nil))
	}
	timedOut := func(what string) error {
		if err := context.Cause(ctx); errors.Is(err, context.DeadlineExceeded) && r.cfg.ReadyTimeout > 0 {
			return fmt.Errorf("start firecracker: %s within %s (ReadyTimeout): %w", what, r.cfg.ReadyTimeout, err)
		}
		return fmt.Errorf("start firecracker: %s: %w", what, ctx.Err())
	}
	done, err := r.waitSocket(ctx, p, paths.sockDir, paths.apiSock)
	if done {
		return nil, exited()
	}
	if err != nil {
		return nil, timedOut("API socket " + paths.apiSock + " did not appear")
	}
	c, err := r.client(rec, "")
	if err != nil {
		return nil, err
	}
	// The socket file appears at bind, a moment before listen: wait until
	// it accepts a connection, first in short sleeps (the runtime's timers
	// sleep at least 1 ms), then on the process.
	delay := time.Millisecond
	const maxDelay = 2 * time.Millisecond
	for spins := 0; ; {
		err := dialCheck(c.SocketPath())
		if err == nil || !errors.Is(err, unix.ECONNREFUSED) {
			break // accepted, or let GET / say what is wrong
		}
		if spins < fastRetries {
			spins++
			unix.Nanosleep(&unix.Timespec{Nsec: fastRetryNs}, nil)
			continue
		}
		if done, _ := p.wait(ctx, delay); done {
			c.Close()
			return nil, exited()
		}
		if ctx.Err() != nil {
			break
		}
		delay = min(2*delay, maxDelay)
	}
	if known, ok := r.knownVersion(r.binOf(rec)); ok {
		// The binary answered GET / at an earlier launch and has not
		// changed since: the version is the one it reported then, and the
		// connection accepted is readiness enough.
		if v, perr := fcapi.ParseVersion(known); perr == nil {
			c.SetVersion(v)
		}
		rec.Version = known
		return c, nil
	}
	for {
		info, err := c.InstanceInfo(ctx)
		if err == nil {
			if v, perr := fcapi.ParseVersion(info.VMMVersion); perr == nil {
				c.SetVersion(v)
				rec.Version = v.String()
			} else {
				rec.Version = info.VMMVersion
			}
			r.rememberVersion(r.binOf(rec), rec.Version)
			return c, nil
		}
		if p.exited() {
			c.Close()
			return nil, exited()
		}
		if ctx.Err() != nil {
			c.Close()
			return nil, timedOut("API socket " + paths.apiSock + " did not answer GET / (" + err.Error() + ")")
		}
		if done, _ := p.wait(ctx, delay); done {
			c.Close()
			return nil, exited()
		}
		delay = min(2*delay, maxDelay)
	}
}

// binVersion is the version a firecracker binary reported, and the
// identity of the file that reported it.
type binVersion struct {
	bin     string
	version string
	file    os.FileInfo
}

// rememberVersion keeps the version a new process of bin reported.
func (r *Runtime) rememberVersion(bin, v string) {
	if fi, err := os.Stat(bin); err == nil {
		r.lastVersion.Store(&binVersion{bin: bin, version: v, file: fi})
	}
}

// knownVersion returns the version bin reported at an earlier launch, if
// it is the binary last probed and the file is still the same (device,
// inode, size, mtime).
func (r *Runtime) knownVersion(bin string) (string, bool) {
	bv := r.lastVersion.Load()
	if bv == nil || bv.bin != bin {
		return "", false
	}
	fi, err := os.Stat(bin)
	if err != nil || !os.SameFile(fi, bv.file) || fi.Size() != bv.file.Size() || !fi.ModTime().Equal(bv.file.ModTime()) {
		return "", false
	}
	return bv.version, true
}

// A socket that refuses connections right after it appeared is retried
// fastRetries times, fastRetryNs apart, before the waits on the process.
const (
	fastRetries = 40
	fastRetryNs = 50_000
)

// dialCheck connects to a unix socket and closes the connection: it
// fails with ECONNREFUSED while nothing listens on it yet.
func dialCheck(path string) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for {
		err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
		if err != unix.EINTR {
			return err
		}
	}
}

// vmClient is an API client of one VM plus what it holds open.
type vmClient struct {
	*fcapi.Client
	dir *os.File // keeps /proc/self/fd/<n> valid for long socket paths
}

// Close closes the client's connections and files.
func (c *vmClient) Close() {
	c.Client.Close()
	if c.dir != nil {
		c.dir.Close()
	}
}

// client returns an API client for rec's process, targeting version
// (the newest API when "" or unparsable). A socket path too long for a
// unix address is reached through /proc/self/fd and a descriptor of the
// directory holding it.
func (r *Runtime) client(rec *vmRecord, version string) (*vmClient, error) {
	p := r.layout(rec)
	opts := &fcapi.Options{Timeout: r.cfg.APITimeout, SnapshotTimeout: r.cfg.SnapshotTimeout}
	if v, err := fcapi.ParseVersion(version); err == nil {
		opts.Version = &v
	}
	if len(p.apiSock) < maxSockPath {
		return &vmClient{Client: fcapi.New(p.apiSock, opts)}, nil
	}
	dir, err := os.OpenFile(p.sockDir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, backendErr("connect", fmt.Errorf("open directory of the API socket: %w", err))
	}
	sock := "/proc/self/fd/" + strconv.Itoa(int(dir.Fd())) + "/" + fileAPISock
	return &vmClient{Client: fcapi.New(sock, opts), dir: dir}, nil
}

// configure runs the pre-boot API sequence of a cold boot: logger,
// metrics, machine, boot source, drives, network interfaces (the managed
// one first), vsock, MMDS (configured on the managed interface when the
// spec has none but the network has facts for the guest).
// Errors are *microvm.BackendError naming the step.
func (r *Runtime) configure(ctx context.Context, c *vmClient, rec *vmRecord) error {
	spec := rec.Spec
	p := r.layout(rec)
	if err := r.configureOutput(ctx, c, rec); err != nil {
		return err
	}
	mc := fcapi.MachineConfig{
		VCPUCount:       spec.VCPUs,
		MemSizeMiB:      spec.MemoryMiB,
		SMT:             spec.SMT,
		TrackDirtyPages: spec.TrackDirtyPages,
	}
	if spec.HugePages == microvm.HugePages2M {
		mc.HugePages = fcapi.HugePages2M
	}
	if err := c.PutMachineConfig(ctx, mc); err != nil {
		return backendErr("configure machine", err)
	}
	bootArgs := spec.BootArgs
	if extra := r.netBootArgs(rec); extra != "" {
		bootArgs += " " + extra
	}
	if err := c.PutBootSource(ctx, fcapi.BootSource{
		KernelImagePath: p.fcFile(spec.Kernel),
		BootArgs:        bootArgs,
		InitrdPath:      p.fcFile(spec.Initrd),
	}); err != nil {
		return backendErr("configure boot source", err)
	}
	drives := append([]microvm.Drive{spec.RootDrive}, spec.Drives...)
	for i, d := range drives {
		if err := c.PutDrive(ctx, fcapi.Drive{
			DriveID:      d.ID,
			PathOnHost:   p.fcDrive(d),
			IsRootDevice: i == 0,
			IsReadOnly:   d.ReadOnly,
			RateLimiter:  rateLimiter(d.RateLimiter),
		}); err != nil {
			return backendErr("configure drives", err)
		}
	}
	for _, ni := range networkInterfaces(rec) {
		if err := c.PutNetworkInterface(ctx, ni); err != nil {
			return backendErr("configure network interfaces", err)
		}
	}
	if v := spec.Vsock; v != nil {
		uds, abs := vsockPath(p, v)
		if err := r.prepareVsock(ctx, rec, abs); err != nil {
			return backendErr("configure vsock", err)
		}
		if err := c.PutVsock(ctx, fcapi.Vsock{GuestCID: v.CID, UDSPath: uds}); err != nil {
			return backendErr("configure vsock", err)
		}
		rec.VsockPath = abs
	}
	mmds := implicitMMDS(rec)
	if m := spec.MMDS; m != nil {
		mmds = &fcapi.MMDSConfig{
			Version:           m.Version,
			NetworkInterfaces: m.Interfaces,
			IPv4Address:       m.Address,
		}
	}
	if mmds != nil {
		if err := c.PutMMDSConfig(ctx, *mmds); err != nil {
			return backendErr("configure mmds", err)
		}
	}
	return r.putMMDSData(ctx, c, rec)
}

// configureOutput points firecracker's metrics at metrics.json in the VM
// directory (the file created first: older versions do not create it)
// when Config.Metrics asks for them. Firecracker's log is not configured:
// unconfigured, firecracker logs to its stdout (console.log, where error
// reports quote it from) at its default level (Warning up to v1.6, Info
// later), and a configured logger only costs a request, a file and, at
// Info, a line for every API request.
func (r *Runtime) configureOutput(ctx context.Context, c *vmClient, rec *vmRecord) error {
	if !r.cfg.Metrics {
		return nil
	}
	p := r.layout(rec)
	r.relaunchMetrics(p) // totals keep the previous process's reports
	fh, err := os.OpenFile(p.metrics, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return backendErr("configure metrics", err)
	}
	fh.Close()
	if j := rec.Jail; j != nil {
		// Created by the runtime, written by the jailed uid.
		if err := os.Chown(p.metrics, j.UID, j.GID); err != nil {
			return backendErr("configure metrics", err)
		}
	}
	if err := c.PutMetrics(ctx, fcapi.Metrics{MetricsPath: p.fcSock(p.metrics)}); err != nil {
		return backendErr("configure metrics", err)
	}
	return nil
}

// putMMDSData stores the spec's initial metadata, with the facts of the
// managed network (see mmdsData).
func (r *Runtime) putMMDSData(ctx context.Context, c *vmClient, rec *vmRecord) error {
	data, err := mmdsData(rec)
	if err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	if err := c.PutMMDS(ctx, data); err != nil {
		return backendErr("set mmds data", err)
	}
	return nil
}

// vsockPath returns the uds_path to give firecracker and the absolute
// host path of a VM's vsock socket: the spec's path, or vsock.sock in the
// VM's socket directory. The default is given relative to firecracker's
// working directory (the VM directory, or the chroot's root): it always
// fits in a socket address, and a snapshot records it relative, so a VM
// restored from it binds its own directory's socket. A jailed process
// sees only its chroot: the default is /vsock.sock there (the same path
// in every clone's own chroot), and a spec path is taken inside it.
func vsockPath(p vmPaths, v *microvm.Vsock) (uds, abs string) {
	if v.Path == "" {
		if p.root != "" {
			return p.fcSock(p.vsock), p.vsock
		}
		return fileVsock, p.vsock
	}
	if p.root != "" {
		rel := filepath.Clean("/" + v.Path)
		return rel, filepath.Join(p.root, rel)
	}
	if filepath.IsAbs(v.Path) {
		return v.Path, v.Path
	}
	return v.Path, filepath.Join(p.dir, v.Path)
}

// prepareSocketPath makes path bindable: its parent directory exists and
// a stale socket left by an earlier process is removed. A socket some
// process still listens on (another VM's) is refused, not taken over;
// anything other than a socket at path is left alone (firecracker then
// reports it).
func prepareSocketPath(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create parent directory of %s: %w", path, err)
	}
	fi, err := os.Lstat(path)
	if err == nil && fi.Mode().Type() == fs.ModeSocket {
		d := net.Dialer{Timeout: time.Second}
		if c, derr := d.DialContext(ctx, "unix", path); derr == nil {
			c.Close()
			return fmt.Errorf("%s is in use: a process listens on it", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	return nil
}

// prepareVsock makes the vsock socket path abs bindable (see
// prepareSocketPath); for a jailed process, the directories made for it
// inside the chroot are given to the VM's uid, which binds the socket.
func (r *Runtime) prepareVsock(ctx context.Context, rec *vmRecord, abs string) error {
	if err := prepareSocketPath(ctx, abs); err != nil {
		return err
	}
	j := rec.Jail
	if j == nil {
		return nil
	}
	for dir := filepath.Dir(abs); strings.HasPrefix(dir, j.Root+"/"); dir = filepath.Dir(dir) {
		if err := os.Chown(dir, j.UID, j.GID); err != nil {
			return err
		}
	}
	return nil
}

// rateLimiter converts a spec rate limiter.
func rateLimiter(rl *microvm.RateLimiter) *fcapi.RateLimiter {
	if rl == nil || (rl.Bandwidth == nil && rl.Ops == nil) {
		return nil
	}
	return &fcapi.RateLimiter{Bandwidth: tokenBucket(rl.Bandwidth), Ops: tokenBucket(rl.Ops)}
}

func tokenBucket(b *microvm.TokenBucket) *fcapi.TokenBucket {
	if b == nil {
		return nil
	}
	return &fcapi.TokenBucket{Size: b.Size, RefillTime: b.RefillTime.Milliseconds(), OneTimeBurst: b.OneTimeBurst}
}
