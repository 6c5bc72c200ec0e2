//go:build linux

package uffdguest

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// RunCommands plays Firecracker in a child process, driven line by line from
// r; each command gets one reply line on w: "ok [result]" or "err <message>".
// It returns at "exit" or at the end of r. Commands (offsets and lengths are
// byte counts into Memory):
//
//	connect <socket> <memfile> <memsize> <pagesize> [regions=a,b,..] [wire=current|kib|none]
//	        [closeuffd] [nofd] [raw=<hex>] [features=<n>]
//	check <off> <len>        compare guest memory with the memory file
//	zero <off> <len>         check that guest memory reads as zeros
//	touch <off> <len>        read one byte of every 4 KiB page (replies "ok <ns> <sum>")
//	touchback <off> <len>    the same, last page first
//	write <off> <len> <byte> fill guest memory with a byte
//	expect <off> <len> <byte> check that guest memory holds that byte
//	dontneed <off> <len>     madvise(MADV_DONTNEED), like the balloon
//	unmap <off> <len>        munmap part of guest memory (UFFD_EVENT_UNMAP
//	                         with features=0x40); do not touch it afterwards
//	close                    Guest.Close
//	exit
//
// Every touch of guest memory faults through the handler, so the commands
// must run in a process other than the handler's.
func RunCommands(r io.Reader, w io.Writer) error {
	var g *Guest
	var file []byte
	defer func() {
		if g != nil {
			g.Close()
		}
		if file != nil {
			unix.Munmap(file)
		}
	}()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if f[0] == "exit" {
			fmt.Fprintln(w, "ok")
			return nil
		}
		res, err := func() (string, error) {
			if f[0] == "connect" {
				if g != nil {
					return "", errors.New("already connected")
				}
				var err error
				g, file, err = connectCmd(f[1:])
				return "", err
			}
			if g == nil {
				return "", errors.New("not connected")
			}
			if f[0] == "close" {
				err := g.Close()
				g = nil
				return "", err
			}
			return memCmd(g, file, f)
		}()
		if err != nil {
			fmt.Fprintf(w, "err %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
		} else {
			fmt.Fprintln(w, strings.TrimSpace("ok "+res))
		}
	}
	return sc.Err()
}

func connectCmd(a []string) (*Guest, []byte, error) {
	if len(a) < 4 {
		return nil, nil, errors.New("usage: connect <socket> <memfile> <memsize> <pagesize> [options]")
	}
	memSize, err1 := strconv.ParseInt(a[2], 10, 64)
	pageSize, err2 := strconv.Atoi(a[3])
	if err := errors.Join(err1, err2); err != nil {
		return nil, nil, err
	}
	var opts []Option
	for _, o := range a[4:] {
		k, v, _ := strings.Cut(o, "=")
		switch k {
		case "regions":
			var sizes []int64
			for _, s := range strings.Split(v, ",") {
				n, err := strconv.ParseInt(s, 10, 64)
				if err != nil {
					return nil, nil, fmt.Errorf("regions: %w", err)
				}
				sizes = append(sizes, n)
			}
			opts = append(opts, WithRegions(sizes...))
		case "wire":
			m := map[string]WireFormat{"current": WireCurrent, "kib": WirePageSizeKiB, "none": WireNoPageSize}
			wf, ok := m[v]
			if !ok {
				return nil, nil, fmt.Errorf("wire=%s: want current, kib or none", v)
			}
			opts = append(opts, WithWireFormat(wf))
		case "closeuffd":
			opts = append(opts, WithCloseUffdAfterSend())
		case "nofd":
			opts = append(opts, WithoutFD())
		case "raw":
			b, err := hex.DecodeString(v)
			if err != nil {
				return nil, nil, fmt.Errorf("raw: %w", err)
			}
			opts = append(opts, WithRawHandshake(b))
		case "features":
			n, err := strconv.ParseUint(v, 0, 64)
			if err != nil {
				return nil, nil, fmt.Errorf("features: %w", err)
			}
			opts = append(opts, WithFeatures(n))
		default:
			return nil, nil, fmt.Errorf("unknown connect option %q", o)
		}
	}
	var file []byte
	if a[1] != "-" {
		fd, err := unix.Open(a[1], unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, nil, fmt.Errorf("open memory file: %w", err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err == nil && st.Size > 0 {
			file, err = unix.Mmap(fd, 0, int(st.Size), unix.PROT_READ, unix.MAP_SHARED)
			if err != nil {
				file = nil
			}
		}
		unix.Close(fd)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	g, err := Connect(ctx, a[0], memSize, pageSize, opts...)
	if err != nil {
		if file != nil {
			unix.Munmap(file)
		}
		return nil, nil, err
	}
	return g, file, nil
}

func memCmd(g *Guest, file []byte, f []string) (string, error) {
	if len(f) < 3 {
		return "", fmt.Errorf("%s: want <off> <len>", f[0])
	}
	off, err1 := strconv.ParseInt(f[1], 10, 64)
	n, err2 := strconv.ParseInt(f[2], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return "", err
	}
	mem := g.Memory()
	if off < 0 || n < 0 || off+n > int64(len(mem)) {
		return "", fmt.Errorf("range [%d, +%d) outside %d bytes of guest memory", off, n, len(mem))
	}
	m := mem[off : off+n]
	byteArg := func() (byte, error) {
		if len(f) < 4 {
			return 0, fmt.Errorf("%s: want <off> <len> <byte>", f[0])
		}
		b, err := strconv.ParseUint(f[3], 0, 8)
		return byte(b), err
	}
	switch f[0] {
	case "check":
		if file == nil || off+n > int64(len(file)) {
			return "", errors.New("check: no memory file, or range beyond it")
		}
		want := file[off : off+n]
		for p := int64(0); p < n; p += 4096 {
			e := min(p+4096, n)
			if string(m[p:e]) != string(want[p:e]) {
				return "", fmt.Errorf("guest memory differs from the memory file in page at offset %d", off+p)
			}
		}
	case "zero", "expect":
		var b byte
		if f[0] == "expect" {
			var err error
			if b, err = byteArg(); err != nil {
				return "", err
			}
		}
		for i, c := range m {
			if c != b {
				return "", fmt.Errorf("byte at offset %d is %#x, want %#x", off+int64(i), c, b)
			}
		}
	case "touch":
		start := time.Now()
		var sum byte
		for p := int64(0); p < n; p += 4096 {
			sum += m[p]
		}
		return strconv.FormatInt(int64(time.Since(start)), 10) + " " + strconv.Itoa(int(sum)), nil
	case "touchback":
		start := time.Now()
		var sum byte
		for p := (n - 1) &^ 4095; p >= 0; p -= 4096 {
			sum += m[p]
		}
		return strconv.FormatInt(int64(time.Since(start)), 10) + " " + strconv.Itoa(int(sum)), nil
	case "write":
		b, err := byteArg()
		if err != nil {
			return "", err
		}
		for i := range m {
			m[i] = b
		}
	case "dontneed":
		return "", g.Dontneed(off, n)
	case "unmap":
		if off%int64(g.pageSize) != 0 || n%int64(g.pageSize) != 0 {
			return "", fmt.Errorf("unmap [%d, +%d): must be page aligned", off, n)
		}
		// unix.Munmap only takes whole mappings.
		if _, _, e := unix.Syscall(unix.SYS_MUNMAP, uintptr(unsafe.Pointer(&m[0])), uintptr(n), 0); e != 0 {
			return "", fmt.Errorf("munmap: %w", e)
		}
	default:
		return "", fmt.Errorf("unknown command %q", f[0])
	}
	return "", nil
}

// Child is a process running RunCommands, driven from the parent.
type Child struct {
	cmd     *exec.Cmd
	in      io.WriteCloser
	replies chan string
	stderr  *lockedWriter
}

// ErrNoReply reports that a child did not answer in time (typically
// because a thread is blocked on a page nobody serves).
var ErrNoReply = errors.New("uffdguest: no reply from child")

// StartChild starts exe with args and env (added to the environment); the
// program must call RunCommands on its stdin and stdout.
func StartChild(exe string, args, env []string) (*Child, error) {
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), env...)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	c := &Child{cmd: cmd, in: in, replies: make(chan string, 16), stderr: &lockedWriter{}}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.replies <- sc.Text()
		}
		close(c.replies)
	}()
	return c, nil
}

type lockedWriter struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// Stderr returns what the child has written to stderr so far.
func (c *Child) Stderr() string {
	c.stderr.mu.Lock()
	defer c.stderr.mu.Unlock()
	return c.stderr.b.String()
}

// Pid returns the child's pid.
func (c *Child) Pid() int { return c.cmd.Process.Pid }

// Do sends one command and waits up to timeout for its reply, returning the
// text after "ok".
func (c *Child) Do(timeout time.Duration, command string) (string, error) {
	if _, err := io.WriteString(c.in, command+"\n"); err != nil {
		return "", fmt.Errorf("uffdguest: send %q: %w", command, err)
	}
	return c.Reply(timeout)
}

// Reply waits up to timeout for the next reply line.
func (c *Child) Reply(timeout time.Duration) (string, error) {
	select {
	case line, ok := <-c.replies:
		if !ok {
			return "", fmt.Errorf("uffdguest: child exited")
		}
		if rest, ok := strings.CutPrefix(line, "ok"); ok {
			return strings.TrimSpace(rest), nil
		}
		return "", fmt.Errorf("uffdguest: child: %s", strings.TrimPrefix(line, "err "))
	case <-time.After(timeout):
		return "", ErrNoReply
	}
}

// Kill sends SIGKILL and waits for the child, up to timeout.
func (c *Child) Kill(timeout time.Duration) error {
	c.cmd.Process.Kill()
	return c.Wait(timeout)
}

// Wait closes the child's stdin and waits up to timeout for it to exit.
func (c *Child) Wait(timeout time.Duration) error {
	c.in.Close()
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		return fmt.Errorf("uffdguest: child %d did not exit within %s", c.Pid(), timeout)
	}
}
