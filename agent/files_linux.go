package agent

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	if dir == "/" {
		return true
	}
	return path == dir || strings.HasPrefix(path, dir+"/")
}

// allowed checks a cleaned absolute path against FileRoots, FileDeny and
// SecretsDir.
func (s *Service) allowed(path string) *Error {
	in := false
	for _, r := range s.FileRoots {
		if within(path, filepath.Clean(r)) {
			in = true
			break
		}
	}
	if !in {
		return errorf(CodeNotAllowed, "path %q is outside what the agent may access (%s)", truncate(path, 128), strings.Join(s.FileRoots, ", "))
	}
	for _, d := range append([]string{s.SecretsDir}, s.FileDeny...) {
		if within(path, filepath.Clean(d)) {
			return errorf(CodeNotAllowed, "path %q is under %s, which the agent may not access", truncate(path, 128), d)
		}
	}
	return nil
}

// checkPath checks a requested path: absolute, clean, not a root, allowed.
func (s *Service) checkPath(path string) *Error {
	switch {
	case path == "":
		return errorf(CodeBadRequest, "path is required")
	case strings.ContainsRune(path, 0):
		return errorf(CodeBadRequest, "path must not contain a NUL byte")
	case !filepath.IsAbs(path):
		return errorf(CodeBadRequest, "path %q must be absolute", truncate(path, 128))
	case filepath.Clean(path) != path:
		return errorf(CodeBadRequest, "path %q must be clean (no '..', '.', '//' or trailing '/'); did you mean %q?", truncate(path, 128), truncate(filepath.Clean(path), 128))
	case path == "/":
		return errorf(CodeBadRequest, "path must name a file, not /")
	}
	return s.allowed(path)
}

// openDir opens path's parent directory (O_PATH) and checks that the
// directory it really is, symbolic links resolved, is allowed too.
func (s *Service) openDir(path string) (int, *Error) {
	dir := filepath.Dir(path)
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return -1, errorf(CodeNotFound, "directory %s does not exist", truncate(dir, 128))
		}
		return -1, errorf(CodeFailed, "open directory %s: %v", truncate(dir, 128), err)
	}
	real, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		unix.Close(fd)
		return -1, errorf(CodeFailed, "resolve directory %s: %v", truncate(dir, 128), err)
	}
	if e := s.allowed(filepath.Join(real, filepath.Base(path))); e != nil {
		unix.Close(fd)
		e.Message += fmt.Sprintf(" (%s resolves to %s)", truncate(dir, 128), truncate(real, 128))
		return -1, e
	}
	return fd, nil
}

func fileErr(op, path string, err error) *Error {
	switch {
	case errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) || errors.Is(err, unix.EFBIG):
		return errorf(CodeNoSpace, "%s %s: %v", op, truncate(path, 128), err)
	case errors.Is(err, unix.ENOENT):
		return errorf(CodeNotFound, "%s %s: no such file", op, truncate(path, 128))
	case errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.EROFS):
		return errorf(CodeNotAllowed, "%s %s: %v", op, truncate(path, 128), err)
	}
	return errorf(CodeFailed, "%s %s: %v", op, truncate(path, 128), err)
}

// handleWriteFile writes the body to ?path= atomically: a temporary file in
// the same directory, the whole body, fsync, owner and mode, rename. The
// temporary file is removed on any failure, a body cut short included.
func (s *Service) handleWriteFile(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	path := q.Get("path")
	if e := s.checkPath(path); e != nil {
		writeError(w, e)
		return
	}
	mode, uid, gid := uint32(0o644), 0, 0
	var e *Error
	if v := q.Get("mode"); v != "" {
		if mode, e = parseOctal("mode", v); e != nil {
			writeError(w, e)
			return
		}
	}
	if v := q.Get("uid"); v != "" {
		if uid, e = parseID("uid", v); e != nil {
			writeError(w, e)
			return
		}
	}
	if v := q.Get("gid"); v != "" {
		if gid, e = parseID("gid", v); e != nil {
			writeError(w, e)
			return
		}
	}
	dfd, e := s.openDir(path)
	if e != nil {
		writeError(w, e)
		return
	}
	defer unix.Close(dfd)
	base := filepath.Base(path)
	if st, err := statAt(dfd, base); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		writeError(w, errorf(CodeBadRequest, "path %s is a directory", truncate(path, 128)))
		return
	}
	var tmp string
	var fd int
	for i := 0; ; i++ {
		tmp = fmt.Sprintf(".%s.mvm-%d-%d", truncate(base, 200), os.Getpid(), s.nextExec.Add(1))
		var err error
		fd, err = unix.Openat(dfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EEXIST) || i > 10 {
			writeError(w, fileErr("create a temporary file for", path, err))
			return
		}
	}
	f := os.NewFile(uintptr(fd), tmp)
	done := false
	defer func() {
		if !done {
			f.Close()
			unix.Unlinkat(dfd, tmp, 0)
		}
	}()
	if r.ContentLength > 0 {
		if err := unix.Fallocate(fd, 0, 0, r.ContentLength); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
			writeError(w, fileErr("make room for", path, fmt.Errorf("%d bytes: %w", r.ContentLength, err)))
			return
		}
	}
	buf := make([]byte, 1<<20)
	n, err := io.CopyBuffer(onlyWriter{f}, r.Body, buf)
	if err != nil {
		// A write error is the guest's; a read error is the body's.
		var we *writeErr
		if errors.As(err, &we) {
			writeError(w, fileErr("write", path, we.err))
		} else {
			writeError(w, errorf(CodeBadRequest, "write %s: the body ended early after %d bytes: %v", truncate(path, 128), n, err))
		}
		return
	}
	if r.ContentLength > 0 && n < r.ContentLength {
		if err := f.Truncate(n); err != nil {
			writeError(w, fileErr("truncate", path, err))
			return
		}
	}
	if err := f.Chown(uid, gid); err != nil {
		writeError(w, fileErr("chown", path, err))
		return
	}
	if err := f.Chmod(os.FileMode(mode) & os.ModePerm); err != nil {
		writeError(w, fileErr("chmod", path, err))
		return
	}
	if mode&^0o777 != 0 {
		if err := unix.Fchmod(fd, mode); err != nil {
			writeError(w, fileErr("chmod", path, err))
			return
		}
	}
	if err := f.Sync(); err != nil {
		writeError(w, fileErr("sync", path, err))
		return
	}
	if err := f.Close(); err != nil {
		writeError(w, fileErr("close", path, err))
		return
	}
	if err := unix.Renameat(dfd, tmp, dfd, base); err != nil {
		writeError(w, fileErr("rename into", path, err))
		return
	}
	done = true
	unix.Fsync(dfd)
	s.Log.Info("file written", "path", path, "bytes", n)
	writeJSON(w, map[string]int64{"size": n})
}

type writeErr struct{ err error }

func (e *writeErr) Error() string { return e.err.Error() }

// onlyWriter hides the file's ReadFrom (io.CopyBuffer would use it and
// blur whose error a failure is).
type onlyWriter struct{ f *os.File }

func (o onlyWriter) Write(p []byte) (int, error) {
	n, err := o.f.Write(p)
	if err != nil {
		return n, &writeErr{err}
	}
	return n, nil
}

func statAt(dfd int, name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	return st, err
}

// handleReadFile streams the regular file ?path=.
func (s *Service) handleReadFile(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Query().Get("path")
	if e := s.checkPath(path); e != nil {
		writeError(w, e)
		return
	}
	dfd, e := s.openDir(path)
	if e != nil {
		writeError(w, e)
		return
	}
	defer unix.Close(dfd)
	fd, err := unix.Openat(dfd, filepath.Base(path), unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if errors.Is(err, unix.ELOOP) {
		writeError(w, errorf(CodeBadRequest, "path %s is a symbolic link; read its target", truncate(path, 128)))
		return
	}
	if err != nil {
		writeError(w, fileErr("open", path, err))
		return
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		writeError(w, fileErr("stat", path, err))
		return
	}
	if !st.Mode().IsRegular() {
		writeError(w, errorf(CodeBadRequest, "path %s is not a regular file (%s)", truncate(path, 128), st.Mode().Type()))
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(st.Size(), 10))
	w.Header().Set(FileModeHeader, strconv.FormatUint(uint64(st.Mode().Perm()), 8))
	w.WriteHeader(http.StatusOK)
	n, err := io.CopyN(w, f, st.Size())
	s.Log.Info("file read", "path", path, "bytes", n, "err", err)
}
