package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
)

// execProc is a running exec.
type execProc struct {
	id   string
	pid  int
	pty  *os.File // the terminal's master, TTY only
	mu   sync.Mutex
	done bool
}

// signal sends sig to the command's process group, unless it has ended.
func (p *execProc) signal(sig unix.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return errors.New("the command has ended")
	}
	return unix.Kill(-p.pid, sig)
}

func (p *execProc) finish() {
	p.mu.Lock()
	p.done = true
	p.mu.Unlock()
}

func (s *Service) killAll() {
	s.execMu.Lock()
	defer s.execMu.Unlock()
	for _, p := range s.execs {
		p.signal(unix.SIGKILL)
	}
}

// lookPath finds file in the PATH of env, like a shell would.
func lookPath(file string, env []string, dir string) (string, error) {
	check := func(p string) error {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return fmt.Errorf("%s is not an executable file", p)
		}
		return nil
	}
	if strings.Contains(file, "/") {
		p := file
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if err := check(p); err != nil {
			return "", err
		}
		return file, nil
	}
	path := DefaultPath
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, file)
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		if check(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q not found in PATH %s", file, path)
}

// credential resolves ExecSpec.User: a name, a uid or uid:gid.
func credential(spec string) (*syscall.Credential, string, error) {
	name, group, hasGroup := strings.Cut(spec, ":")
	var u *user.User
	var err error
	if _, nerr := strconv.ParseUint(name, 10, 31); nerr == nil {
		u, err = user.LookupId(name)
		if err != nil {
			u = &user.User{Uid: name, Gid: name, HomeDir: "/"}
		}
	} else {
		u, err = user.Lookup(name)
		if err != nil {
			return nil, "", fmt.Errorf("user %q: %v", name, err)
		}
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	if hasGroup {
		g, err := strconv.ParseUint(group, 10, 31)
		if err != nil {
			return nil, "", fmt.Errorf("user %q: the group after ':' must be a gid", spec)
		}
		gid = g
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	if !hasGroup {
		if ids, err := u.GroupIds(); err == nil {
			for _, id := range ids {
				if n, err := strconv.ParseUint(id, 10, 32); err == nil && uint32(n) != uint32(gid) {
					cred.Groups = append(cred.Groups, uint32(n))
				}
			}
		}
	}
	return cred, u.HomeDir, nil
}

// openPTY returns a new pseudo-terminal's master and slave.
func openPTY(rows, cols uint16) (master, slave *os.File, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TIOCGPTPEER, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
	sfd := int(r)
	if errno != 0 {
		n, nerr := unix.IoctlGetInt(fd, unix.TIOCGPTN)
		if nerr != nil {
			unix.Close(fd)
			return nil, nil, fmt.Errorf("pty number: %w", nerr)
		}
		sfd, err = unix.Open("/dev/pts/"+strconv.Itoa(n), unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
		if err != nil {
			unix.Close(fd)
			return nil, nil, fmt.Errorf("open pty slave: %w", err)
		}
	}
	if rows == 0 || cols == 0 {
		rows, cols = 24, 80
	}
	unix.IoctlSetWinsize(fd, unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	return os.NewFile(uintptr(fd), "ptmx"), os.NewFile(uintptr(sfd), "pts"), nil
}

// frameWriter serialises frames onto the response and flushes each.
type frameWriter struct {
	mu  sync.Mutex
	w   io.Writer
	rc  *http.ResponseController
	err error
}

func (f *frameWriter) write(typ byte, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	if f.err = writeFrame(f.w, typ, p); f.err == nil {
		f.err = f.rc.Flush()
	}
	return f.err
}

// execError answers an exec that did not start. The connection is closed
// after the answer: the rest of the request body (the command's stdin,
// maybe endless) is not read, so the connection cannot serve another
// request.
func execError(w http.ResponseWriter, e *Error) {
	w.Header().Set("Connection", "close")
	writeError(w, e)
}

// handleExec runs a command; see the package documentation.
func (s *Service) handleExec(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	if err := rc.EnableFullDuplex(); err != nil {
		execError(w, errorf(CodeFailed, "full duplex: %v", err))
		return
	}
	dec := json.NewDecoder(r.Body)
	var spec ExecSpec
	if err := dec.Decode(&spec); err != nil {
		execError(w, errorf(CodeBadRequest, "exec body must start with a JSON exec spec: %v", err))
		return
	}
	req := microvm.ExecRequest{Args: spec.Args, Env: spec.Env, Dir: spec.Dir, TTY: spec.TTY, Timeout: time.Duration(spec.TimeoutMS) * time.Millisecond}
	if err := req.Validate(); err != nil {
		execError(w, errorf(CodeBadRequest, "%v", err))
		return
	}
	dir := spec.Dir
	if dir == "" {
		dir = "/"
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		execError(w, errorf(CodeNotFound, "exec dir %s is not a directory in the guest", truncate(dir, 128)))
		return
	}
	var cred *syscall.Credential
	home := ""
	if spec.User != "" {
		c, h, err := credential(spec.User)
		if err != nil {
			execError(w, errorf(CodeNotFound, "exec %v", err))
			return
		}
		cred, home = c, h
	}
	env := s.execEnv(spec.Env, home)
	path, err := lookPath(spec.Args[0], env, dir)
	if err != nil {
		execError(w, errorf(CodeNotFound, "exec %q: command not found: %v", truncate(spec.Args[0], 128), err))
		return
	}
	stdin := &skipNewline{r: io.MultiReader(dec.Buffered(), r.Body)}

	cmd := &exec.Cmd{Path: path, Args: spec.Args, Env: env, Dir: dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true}
	var (
		outR, errR *os.File // what the agent reads
		inW        *os.File // what the agent writes stdin to
		closeAfter []*os.File
		pty        *os.File
	)
	cleanup := func() {
		for _, f := range closeAfter {
			f.Close()
		}
	}
	if spec.TTY {
		master, slave, err := openPTY(spec.Rows, spec.Cols)
		if err != nil {
			execError(w, errorf(CodeFailed, "exec: %v", err))
			return
		}
		pty = master
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		cmd.SysProcAttr.Setpgid = false
		cmd.SysProcAttr.Setsid = true
		cmd.SysProcAttr.Setctty = true
		cmd.SysProcAttr.Ctty = 0
		closeAfter = append(closeAfter, slave)
		outR = master
	} else {
		or, ow, err := os.Pipe()
		if err != nil {
			execError(w, errorf(CodeFailed, "exec: pipe: %v", err))
			return
		}
		er, ew, err := os.Pipe()
		if err != nil {
			or.Close()
			ow.Close()
			execError(w, errorf(CodeFailed, "exec: pipe: %v", err))
			return
		}
		growPipe(or)
		cmd.Stdout, cmd.Stderr = ow, ew
		closeAfter = append(closeAfter, ow, ew)
		outR, errR = or, er
		if spec.Stdin {
			ir, iw, err := os.Pipe()
			if err != nil {
				or.Close()
				er.Close()
				cleanup()
				execError(w, errorf(CodeFailed, "exec: pipe: %v", err))
				return
			}
			growPipe(iw)
			cmd.Stdin = ir
			closeAfter = append(closeAfter, ir)
			inW = iw
		}
	}
	var wait <-chan unix.WaitStatus
	var startErr error
	if s.Reaper != nil {
		wait, startErr = s.Reaper.Start(cmd)
	} else {
		startErr = cmd.Start()
	}
	cleanup()
	if startErr != nil {
		outR.Close()
		if errR != nil {
			errR.Close()
		}
		if inW != nil {
			inW.Close()
		}
		code := CodeFailed
		if errors.Is(startErr, unix.ENOENT) || errors.Is(startErr, unix.EACCES) || errors.Is(startErr, unix.ENOEXEC) {
			code = CodeNotFound
		}
		execError(w, errorf(code, "exec %q: %v", truncate(spec.Args[0], 128), startErr))
		return
	}
	if s.Reaper == nil {
		ch := make(chan unix.WaitStatus, 1)
		wait = ch
		go func() {
			cmd.Wait()
			ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
			ch <- unix.WaitStatus(ws)
		}()
	} else {
		cmd.Process.Release()
	}
	p := &execProc{id: strconv.FormatUint(s.nextExec.Add(1), 10), pid: cmd.Process.Pid, pty: pty}
	s.execMu.Lock()
	s.execs[p.id] = p
	s.execMu.Unlock()
	defer func() {
		s.execMu.Lock()
		delete(s.execs, p.id)
		s.execMu.Unlock()
	}()
	s.Log.Info("exec started", "id", p.id, "command", filepath.Base(spec.Args[0]), "pid", p.pid, "tty", spec.TTY)

	w.Header().Set("Content-Type", FramesContentType)
	w.Header().Set(ExecIDHeader, p.id)
	w.Header().Set(ExecPIDHeader, strconv.Itoa(p.pid))
	w.WriteHeader(http.StatusOK)
	fw := &frameWriter{w: w, rc: rc}
	fw.write(FrameStdout, nil) // sends the headers at once

	// dropped is closed when the client is gone (a body or response
	// failure): the command's group is then killed.
	dropped := make(chan struct{})
	var dropOnce sync.Once
	drop := func() { dropOnce.Do(func() { close(dropped) }) }

	// Standard input: copied until the body ends (then the command's
	// stdin is closed); a body that breaks is a dropped client.
	stdinDone := make(chan struct{})
	go func() {
		defer close(stdinDone)
		var dst io.Writer = io.Discard
		if inW != nil {
			dst = inW
		} else if pty != nil {
			dst = pty
		}
		_, err := io.CopyBuffer(dst, stdin, make([]byte, 64<<10))
		if inW != nil {
			inW.Close()
		} else if pty != nil && err == nil {
			pty.Write([]byte{4}) // ^D: end of input on a terminal
		}
		if err != nil && !errors.Is(err, unix.EPIPE) && !errors.Is(err, unix.EIO) && !errors.Is(err, os.ErrClosed) {
			drop()
		}
	}()

	var readers sync.WaitGroup
	pump := func(f *os.File, typ byte) {
		defer readers.Done()
		buf := make([]byte, 256<<10)
		for {
			n, err := f.Read(buf)
			if n > 0 {
				if werr := fw.write(typ, buf[:n]); werr != nil {
					drop()
					io.Copy(io.Discard, f) // keep the command from blocking on a full pipe
					return
				}
			}
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, unix.EIO) && !errors.Is(err, os.ErrDeadlineExceeded) {
					s.Log.Warn("exec output", "id", p.id, "err", err)
				}
				return // EOF, or EIO on a terminal whose last writer closed
			}
		}
	}
	readers.Add(1)
	go pump(outR, FrameStdout)
	if errR != nil {
		readers.Add(1)
		go pump(errR, FrameStderr)
	}
	readersDone := make(chan struct{})
	go func() { readers.Wait(); close(readersDone) }()

	var timeout <-chan time.Time
	if spec.TimeoutMS > 0 {
		t := time.NewTimer(time.Duration(spec.TimeoutMS) * time.Millisecond)
		defer t.Stop()
		timeout = t.C
	}
	var exit ExecExit
	var ws unix.WaitStatus
	ctx := r.Context()
wait:
	for {
		select {
		case ws = <-wait:
			break wait
		case <-timeout:
			exit.TimedOut = true
			p.signal(unix.SIGKILL)
			timeout = nil
		case <-dropped:
			p.signal(unix.SIGKILL)
			dropped = nil
		case <-ctx.Done():
			p.signal(unix.SIGKILL)
			ctx = neverDone{}
		}
	}
	p.finish()
	if exit.TimedOut || dropped == nil {
		unix.Kill(-p.pid, unix.SIGKILL) // what the command left in its group
	}
	// Output the command's leftovers still write is read for a moment;
	// then the pipes are closed so the exec ends.
	select {
	case <-readersDone:
	case <-time.After(outputGrace):
		outR.SetReadDeadline(time.Unix(1, 0))
		if errR != nil {
			errR.SetReadDeadline(time.Unix(1, 0))
		}
		<-readersDone
	}
	outR.Close()
	if errR != nil {
		errR.Close()
	}
	if ws.Signaled() {
		exit.ExitCode = -1
		exit.Signal = unix.SignalName(ws.Signal())
	} else {
		exit.ExitCode = ws.ExitStatus()
	}
	b, _ := json.Marshal(exit)
	fw.write(FrameExit, b)
	// The request body must not be read once the handler returns: the
	// client ends it on the exit frame; one that does not is cut off.
	select {
	case <-stdinDone:
	case <-time.After(stdinGrace):
		rc.SetReadDeadline(time.Unix(1, 0))
		if inW != nil {
			inW.Close()
		}
		<-stdinDone
	}
	s.Log.Info("exec ended", "id", p.id, "pid", p.pid, "exit_code", exit.ExitCode, "signal", exit.Signal, "timed_out", exit.TimedOut)
}

// skipNewline drops the newline that ends the spec line.
type skipNewline struct {
	r    io.Reader
	done bool
}

func (s *skipNewline) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if !s.done && n > 0 {
		s.done = true
		if p[0] == '\n' {
			copy(p, p[1:n])
			n--
		}
	}
	return n, err
}

// stdinGrace is how long the end of the request body is awaited after
// the exit frame.
const stdinGrace = 5 * time.Second

// outputGrace is how long output is still read after the command exits
// while processes it left behind keep its stdout or stderr open.
const outputGrace = 2 * time.Second

type neverDone struct{}

func (neverDone) Deadline() (time.Time, bool) { return time.Time{}, false }
func (neverDone) Done() <-chan struct{}       { return nil }
func (neverDone) Err() error                  { return nil }
func (neverDone) Value(any) any               { return nil }

// growPipe asks for a 1 MiB pipe buffer (fewer wake-ups for bulk output);
// failure is harmless.
func growPipe(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20) })
	}
}

func (s *Service) lookupExec(w http.ResponseWriter, r *http.Request) *execProc {
	id := r.PathValue("id")
	s.execMu.Lock()
	p := s.execs[id]
	s.execMu.Unlock()
	if p == nil {
		writeError(w, errorf(CodeNotFound, "no running exec %q", truncate(id, 32)))
	}
	return p
}

// handleSignal sends ?signal=N to an exec's process group.
func (s *Service) handleSignal(w http.ResponseWriter, r *http.Request) {
	p := s.lookupExec(w, r)
	if p == nil {
		return
	}
	n, err := strconv.Atoi(r.URL.Query().Get("signal"))
	if err != nil || n < 1 || n > 64 {
		writeError(w, errorf(CodeBadRequest, "signal must be a number from 1 to 64 (got %q)", truncate(r.URL.Query().Get("signal"), 16)))
		return
	}
	if err := p.signal(unix.Signal(n)); err != nil {
		writeError(w, errorf(CodeNotFound, "signal exec %s: %v", p.id, err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// handleResize sets an exec's terminal size (?rows=&cols=).
func (s *Service) handleResize(w http.ResponseWriter, r *http.Request) {
	p := s.lookupExec(w, r)
	if p == nil {
		return
	}
	if p.pty == nil {
		writeError(w, errorf(CodeBadRequest, "exec %s has no terminal", p.id))
		return
	}
	rows, err1 := strconv.ParseUint(r.URL.Query().Get("rows"), 10, 16)
	cols, err2 := strconv.ParseUint(r.URL.Query().Get("cols"), 10, 16)
	if err1 != nil || err2 != nil || rows == 0 || cols == 0 {
		writeError(w, errorf(CodeBadRequest, "rows and cols must be numbers from 1 to 65535"))
		return
	}
	rc, err := p.pty.SyscallConn()
	if err == nil {
		rc.Control(func(fd uintptr) {
			err = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(rows), Col: uint16(cols)})
		})
	}
	if err != nil {
		writeError(w, errorf(CodeFailed, "resize exec %s: %v", p.id, err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
