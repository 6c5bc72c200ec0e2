package image

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrUnsafeEntry: an archive entry would escape the image root (an
// absolute path, "..", a write through a symbolic link, a hard link to
// outside), is a device node, or breaks a size limit. The error names the
// entry and the rule.
var ErrUnsafeEntry = errors.New("image: unsafe archive entry")

// ErrBadArchive: an archive or layer cannot be read (corrupt compression,
// truncated tar, missing layer).
var ErrBadArchive = errors.New("image: bad archive")

// Limits of what an unpacked tree may hold; the zero values mean the
// defaults.
type Limits struct {
	// MaxBytes bounds the total size of regular files written (default
	// 64 GiB). An entry declaring more than what remains fails before
	// anything of it is written.
	MaxBytes int64
	// MaxEntries bounds the number of archive entries (default 4 Mi).
	MaxEntries int
}

const (
	defaultMaxBytes   = 64 << 30
	defaultMaxEntries = 4 << 20
	maxPathLen        = 4096
	whiteoutPrefix    = ".wh."
	opaqueWhiteout    = ".wh..wh..opq"
)

// fixup is what the staging directory could not hold for an image path
// (ownership when not root, xattrs the staging file system refuses); it is
// applied to the built image with debugfs.
type fixup struct {
	uid, gid int
	owner    bool
	mode     uint32 // full st_mode to set, or 0
	xattrs   map[string]string
}

// unpacker applies tar streams (plain archives or OCI layers) to a private
// staging directory, one after another.
type unpacker struct {
	root     string // staging root; its parent is private (0700)
	limits   Limits
	asRoot   bool // chown works; else ownership goes to fixups
	written  int64
	entries  int
	created  map[string]bool // image paths created by the current layer
	dirMeta  map[string]dirMeta
	fixups   map[string]*fixup
	layerTag string // "layer 2" in errors
}

type dirMeta struct {
	mode  uint32
	mtime time.Time
}

// forceFixups makes the unpacker behave as when not root (tests).
var forceFixups = false

func newUnpacker(root string, l Limits) *unpacker {
	if l.MaxBytes <= 0 {
		l.MaxBytes = defaultMaxBytes
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = defaultMaxEntries
	}
	return &unpacker{
		root: root, limits: l, asRoot: os.Geteuid() == 0 && !forceFixups,
		dirMeta: map[string]dirMeta{}, fixups: map[string]*fixup{},
	}
}

// openArchive returns a reader of the tar stream in r, gunzipping it when
// it starts with the gzip magic. finish must be called after the tar end
// to check the rest of the compressed stream (its checksum).
func openArchive(r io.Reader) (tr io.Reader, finish func() error, err error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, _ := br.Peek(2)
	if len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: gzip: %w", ErrBadArchive, err)
		}
		return zr, func() error {
			if _, err := io.Copy(io.Discard, zr); err != nil {
				return fmt.Errorf("%w: gzip: %w", ErrBadArchive, err)
			}
			return zr.Close()
		}, nil
	}
	return br, func() error {
		// Read to the end, so that a verifying reader below sees all.
		if _, err := io.Copy(io.Discard, br); err != nil {
			return fmt.Errorf("%w: %w", ErrBadArchive, err)
		}
		return nil
	}, nil
}

// apply unpacks one tar stream (gzip detected) onto the tree. With
// whiteouts, OCI whiteout entries delete what earlier layers made.
func (u *unpacker) apply(ctx context.Context, r io.Reader, tag string, whiteouts bool) error {
	u.layerTag = tag
	u.created = map[string]bool{}
	ar, finish, err := openArchive(r)
	if err != nil {
		return fmt.Errorf("%s: %w", tag, err)
	}
	tr := tar.NewReader(ar)
	for {
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w: tar: %w", tag, ErrBadArchive, err)
		}
		u.entries++
		if u.entries > u.limits.MaxEntries {
			return fmt.Errorf("%s: %w: more than %d entries", tag, ErrUnsafeEntry, u.limits.MaxEntries)
		}
		if err := u.entry(hdr, tr, whiteouts); err != nil {
			return fmt.Errorf("%s: %w", tag, err)
		}
	}
	if err := finish(); err != nil {
		return fmt.Errorf("%s: %w", tag, err)
	}
	return nil
}

// clean turns an archive name into an image path ("/a/b"), refusing
// absolute names and "..".
func clean(name string) (string, error) {
	if len(name) > maxPathLen || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: %.80q: name longer than %d bytes or holds NUL", ErrUnsafeEntry, name, maxPathLen)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: %q: absolute path", ErrUnsafeEntry, name)
	}
	for _, c := range strings.Split(name, "/") {
		if c == ".." {
			return "", fmt.Errorf("%w: %q: \"..\" in path", ErrUnsafeEntry, name)
		}
	}
	return path.Clean("/" + name), nil
}

// host returns the staging path of image path p.
func (u *unpacker) host(p string) string { return filepath.Join(u.root, filepath.FromSlash(p)) }

// parents makes sure every parent of image path p is a real directory in
// the tree (creating missing ones, 0755), never a symbolic link.
func (u *unpacker) parents(p, name string) error {
	_, err := u.walkParents(p, name, true)
	return err
}

// walkParents checks the parents of p as parents does; without create it
// reports false, creating nothing, when one is missing.
func (u *unpacker) walkParents(p, name string, create bool) (bool, error) {
	dir := path.Dir(p)
	if dir == "/" {
		return true, nil
	}
	cur := "/"
	for _, c := range strings.Split(strings.TrimPrefix(dir, "/"), "/") {
		cur = path.Join(cur, c)
		fi, err := os.Lstat(u.host(cur))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if !create {
				return false, nil
			}
			if err := os.Mkdir(u.host(cur), 0o755); err != nil {
				return false, fmt.Errorf("%s: %w", name, err)
			}
			u.created[cur] = true
		case err != nil:
			return false, fmt.Errorf("%s: %w", name, err)
		case fi.Mode()&fs.ModeSymlink != 0:
			return false, fmt.Errorf("%w: %q: parent %s is a symbolic link (writing through it is refused)", ErrUnsafeEntry, name, cur)
		case !fi.IsDir():
			return false, fmt.Errorf("%w: %q: parent %s is not a directory", ErrUnsafeEntry, name, cur)
		}
	}
	return true, nil
}

func (u *unpacker) entry(hdr *tar.Header, r io.Reader, whiteouts bool) error {
	name := hdr.Name
	p, err := clean(name)
	if err != nil {
		return err
	}
	base := path.Base(p)
	if whiteouts && strings.HasPrefix(base, whiteoutPrefix) {
		// A whiteout creates nothing: under a missing directory it has
		// nothing to delete.
		if ok, err := u.walkParents(p, name, false); err != nil || !ok {
			return err
		}
		dir := path.Dir(p)
		if base == opaqueWhiteout {
			ents, err := os.ReadDir(u.host(dir))
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			for _, e := range ents {
				c := path.Join(dir, e.Name())
				if !u.created[c] {
					if err := os.RemoveAll(u.host(c)); err != nil {
						return fmt.Errorf("%s: %w", name, err)
					}
				}
			}
			return nil
		}
		target := path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix))
		if target == dir || strings.Contains(strings.TrimPrefix(base, whiteoutPrefix), "/") {
			return fmt.Errorf("%w: %q: bad whiteout", ErrUnsafeEntry, name)
		}
		if err := os.RemoveAll(u.host(target)); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	}
	if p == "/" {
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("%w: %q: the root must be a directory", ErrUnsafeEntry, name)
		}
		return u.meta(p, hdr, true)
	}
	if err := u.parents(p, name); err != nil {
		return err
	}
	hp := u.host(p)
	old, err := os.Lstat(hp)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", name, err)
	}
	// Replace what is there, except a directory by a directory (merged).
	if exists && !(old.IsDir() && hdr.Typeflag == tar.TypeDir) {
		if err := os.RemoveAll(hp); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	u.created[p] = true
	if !(exists && old.IsDir() && hdr.Typeflag == tar.TypeDir) {
		delete(u.fixups, p)
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		if !exists || !old.IsDir() {
			if err := os.Mkdir(hp, 0o700); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
		return u.meta(p, hdr, true)
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		if hdr.Size < 0 || hdr.Size > u.limits.MaxBytes-u.written {
			return fmt.Errorf("%w: %q: declares %d bytes, over the limit of %d bytes for the whole tree (%d used)", ErrUnsafeEntry, name, hdr.Size, u.limits.MaxBytes, u.written)
		}
		f, err := os.OpenFile(hp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		n, err := io.CopyN(f, r, hdr.Size)
		u.written += n
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: %q: truncated (%d of %d bytes)", ErrBadArchive, name, n, hdr.Size)
			}
			return fmt.Errorf("%s: %w", name, err)
		}
		return u.meta(p, hdr, false)
	case tar.TypeSymlink:
		if hdr.Linkname == "" || strings.ContainsRune(hdr.Linkname, 0) || len(hdr.Linkname) > maxPathLen {
			return fmt.Errorf("%w: %q: bad symbolic link target", ErrUnsafeEntry, name)
		}
		// The target is kept as it is: it is resolved in the guest, not
		// here, and nothing here follows it.
		if err := os.Symlink(hdr.Linkname, hp); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return u.meta(p, hdr, false)
	case tar.TypeLink:
		tp, err := clean(hdr.Linkname)
		if err != nil {
			return fmt.Errorf("%w: hard link %q to %q: %w", ErrUnsafeEntry, name, hdr.Linkname, err)
		}
		if err := u.parents(tp, hdr.Linkname); err != nil {
			return fmt.Errorf("hard link %q: %w", name, err)
		}
		tfi, err := os.Lstat(u.host(tp))
		if err != nil {
			return fmt.Errorf("%w: hard link %q: target %q: %w", ErrBadArchive, name, hdr.Linkname, err)
		}
		if tfi.IsDir() {
			return fmt.Errorf("%w: hard link %q: target %q is a directory", ErrUnsafeEntry, name, hdr.Linkname)
		}
		if err := os.Link(u.host(tp), hp); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	case tar.TypeFifo:
		if err := syscall.Mkfifo(hp, 0o600); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return u.meta(p, hdr, false)
	case tar.TypeChar, tar.TypeBlock:
		return fmt.Errorf("%w: %q: device node (%d:%d) refused: the guest's devtmpfs provides /dev", ErrUnsafeEntry, name, hdr.Devmajor, hdr.Devminor)
	default:
		return fmt.Errorf("%w: %q: unsupported entry type %q", ErrUnsafeEntry, name, hdr.Typeflag)
	}
}

// meta sets ownership, xattrs, mode and mtime of image path p from hdr.
// Directory modes and times are set at the end (finish), so that a
// read-only directory can still be filled.
func (u *unpacker) meta(p string, hdr *tar.Header, dir bool) error {
	hp := u.host(p)
	link := hdr.Typeflag == tar.TypeSymlink
	if hdr.Uid < 0 || hdr.Gid < 0 || hdr.Uid > 1<<31 || hdr.Gid > 1<<31 {
		return fmt.Errorf("%w: %q: uid/gid out of range", ErrUnsafeEntry, hdr.Name)
	}
	if u.asRoot {
		if err := os.Lchown(hp, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
	} else {
		fx := u.fix(p)
		fx.owner, fx.uid, fx.gid = true, hdr.Uid, hdr.Gid
	}
	var keys []string
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		attr, val := strings.TrimPrefix(k, "SCHILY.xattr."), hdr.PAXRecords[k]
		if err := unix.Lsetxattr(hp, attr, []byte(val), 0); err != nil || forceFixups {
			fx := u.fix(p)
			if fx.xattrs == nil {
				fx.xattrs = map[string]string{}
			}
			fx.xattrs[attr] = val
		}
	}
	mode := uint32(hdr.Mode) & 0o7777
	if dir {
		u.dirMeta[p] = dirMeta{mode: mode, mtime: hdr.ModTime}
		return nil
	}
	if !link {
		if !u.asRoot && mode&0o600 != 0o600 {
			// mke2fs, not root, must read it: the image gets the mode.
			u.fix(p).mode = syscall.S_IFREG | mode
			if hdr.Typeflag == tar.TypeFifo {
				u.fix(p).mode = syscall.S_IFIFO | mode
			}
			mode |= 0o600
		}
		if err := syscall.Chmod(hp, mode); err != nil {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
	}
	if !hdr.ModTime.IsZero() {
		ts := []unix.Timespec{unix.NsecToTimespec(hdr.ModTime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
		unix.UtimesNanoAt(unix.AT_FDCWD, hp, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	return nil
}

func (u *unpacker) fix(p string) *fixup {
	fx := u.fixups[p]
	if fx == nil {
		fx = &fixup{}
		u.fixups[p] = fx
	}
	return fx
}

// finish sets the directory modes and times, deepest first.
func (u *unpacker) finish() error {
	paths := make([]string, 0, len(u.dirMeta))
	for p := range u.dirMeta {
		paths = append(paths, p)
	}
	sort.Slice(paths, func(i, j int) bool { return len(paths[i]) > len(paths[j]) })
	for _, p := range paths {
		m := u.dirMeta[p]
		hp := u.host(p)
		fi, err := os.Lstat(hp)
		if err != nil || !fi.IsDir() {
			continue // removed by a later layer
		}
		mode := m.mode
		if !u.asRoot && mode&0o700 != 0o700 {
			u.fix(p).mode = syscall.S_IFDIR | mode
			mode |= 0o700
		}
		if err := syscall.Chmod(hp, mode); err != nil {
			return fmt.Errorf("image: %s: %w", p, err)
		}
		if !m.mtime.IsZero() {
			ts := []unix.Timespec{unix.NsecToTimespec(m.mtime.UnixNano()), unix.NsecToTimespec(m.mtime.UnixNano())}
			unix.UtimesNanoAt(unix.AT_FDCWD, hp, ts, unix.AT_SYMLINK_NOFOLLOW)
		}
	}
	return nil
}
