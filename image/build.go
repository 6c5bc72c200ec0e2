package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// BuildOptions tunes BuildFromDir, BuildFromTar and BuildFromLayers. The
// zero value is valid.
type BuildOptions struct {
	// SizeMiB, Label and Mke2fs are as in Ext4Options (SizeMiB 0: the
	// content plus headroom).
	SizeMiB int
	Label   string
	Mke2fs  string
	// Agent, when set, is a static mvm-agent binary installed as
	// /sbin/init (following a /sbin symbolic link inside the image, as
	// in merged-/usr images), with the mount points it uses created when
	// missing, so that an ordinary container image boots with the agent
	// as PID 1.
	Agent string
	// Limits bound what the sources may unpack to.
	Limits Limits
}

func (o BuildOptions) ext4() *Ext4Options {
	return &Ext4Options{SizeMiB: o.SizeMiB, Label: o.Label, Mke2fs: o.Mke2fs}
}

func (o BuildOptions) check() error {
	if err := o.ext4().check(); err != nil {
		return err
	}
	if o.Agent != "" {
		if err := checkRegular("agent", o.Agent); err != nil {
			return err
		}
		if err := checkStatic("agent", o.Agent, "build mvm-agent with CGO_ENABLED=0"); err != nil {
			return err
		}
	}
	return nil
}

// Layer opens one tar stream of an image: a plain or gzip-compressed tar
// (detected by its first bytes). Layers are applied in order.
type Layer struct {
	// Name names the layer in errors (a digest, a file name).
	Name string
	// Open opens the stream; it is called once.
	Open func() (io.ReadCloser, error)
}

// BuildFromDir writes an ext4 image of the tree of dir to out (see
// BuildExt4: modes, ownership, symbolic and hard links and xattrs kept).
// With opts.Agent the tree is copied to a private staging directory first
// and the agent installed there; dir is never changed.
func BuildFromDir(ctx context.Context, dir, out string, opts BuildOptions) error {
	if err := opts.check(); err != nil {
		return err
	}
	if opts.Agent == "" {
		return BuildExt4(ctx, dir, out, opts.ext4())
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("%w: dir: %w", ErrInvalidOptions, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: dir: %s is not a directory", ErrInvalidOptions, dir)
	}
	// Names starting with ".wh." are ordinary files here, not whiteouts.
	return buildLayers(ctx, []Layer{{Name: dir, Open: func() (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(dirTar(ctx, dir, pw)) }()
		return pr, nil
	}}}, out, opts, false)
}

// BuildFromTar writes an ext4 image of the tar archive (plain or gzip) at
// tarPath to out. Entries are checked like layers (see BuildFromLayers);
// OCI whiteout names are ordinary names here.
func BuildFromTar(ctx context.Context, tarPath, out string, opts BuildOptions) error {
	if err := checkRegular("tar", tarPath); err != nil {
		return err
	}
	return buildLayers(ctx, []Layer{{Name: filepath.Base(tarPath), Open: func() (io.ReadCloser, error) { return os.Open(tarPath) }}}, out, opts, false)
}

// BuildFromLayers applies the tar streams of layers in order, as an OCI
// image's layers (whiteouts ".wh.NAME" delete NAME of earlier layers,
// ".wh..wh..opq" empties its directory of earlier layers' entries), to a
// private staging directory beside out, and writes an ext4 image of the
// result to out atomically. No mount, loop device or root privilege is
// used: without root, ownership (and modes and xattrs the staging
// directory cannot hold) is set in the image with debugfs afterwards.
//
// Hostile input fails with ErrUnsafeEntry and nothing written at out:
// absolute names, "..", writes through symbolic links, hard links out of
// the tree, device nodes, sizes over opts.Limits; unreadable input (corrupt
// gzip, truncated tar, a layer that cannot be opened) with ErrBadArchive.
func BuildFromLayers(ctx context.Context, layers []Layer, out string, opts BuildOptions) error {
	return buildLayers(ctx, layers, out, opts, true)
}

func buildLayers(ctx context.Context, layers []Layer, out string, opts BuildOptions, whiteouts bool) error {
	if err := opts.check(); err != nil {
		return err
	}
	if out == "" {
		return fmt.Errorf("%w: out: the output path is required", ErrInvalidOptions)
	}
	if len(layers) == 0 {
		return fmt.Errorf("%w: layers: at least one is required", ErrInvalidOptions)
	}
	debugfs, err := findTool("", "debugfs", "e2fsprogs")
	if err != nil {
		return err
	}
	// The staging parent is private (0700): the tree may hold setuid
	// files owned by anyone.
	stage, err := os.MkdirTemp(filepath.Dir(out), "."+filepath.Base(out)+".stage-*")
	if err != nil {
		return fmt.Errorf("image: create staging directory beside %s: %w", out, err)
	}
	defer removeTree(stage)
	root := filepath.Join(stage, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	u := newUnpacker(root, opts.Limits)
	for i, l := range layers {
		tag := fmt.Sprintf("layer %d (%s)", i+1, l.Name)
		if l.Open == nil {
			return fmt.Errorf("%s: %w: no way to open it", tag, ErrBadArchive)
		}
		rc, err := l.Open()
		if err != nil {
			return fmt.Errorf("%s: %w: %w", tag, ErrBadArchive, err)
		}
		err = u.apply(ctx, rc, tag, whiteouts)
		if cerr := rc.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("%s: %w: %w", tag, ErrBadArchive, cerr)
		}
		if err != nil {
			return fmt.Errorf("image: %w", err)
		}
	}
	if err := u.finish(); err != nil {
		return err
	}
	if opts.Agent != "" {
		if err := u.injectAgent(opts.Agent); err != nil {
			return err
		}
	}
	var post func(context.Context, string) error
	if len(u.fixups) > 0 {
		post = func(ctx context.Context, img string) error { return u.applyFixups(ctx, debugfs, img) }
	}
	return buildExt4(ctx, root, out, opts.ext4(), post)
}

// removeTree removes a staging tree, making read-only directories
// writable first (a tree unpacked without root may hold some).
func removeTree(dir string) {
	if os.RemoveAll(dir) == nil {
		return
	}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o700)
		}
		return nil
	})
	os.RemoveAll(dir)
}

// resolveDir returns the staging path of image directory p, following
// symbolic links inside the tree (absolute targets from the tree's root,
// never out of it) and creating missing directories.
func (u *unpacker) resolveDir(p string) (string, error) {
	rest := strings.Split(strings.Trim(p, "/"), "/")
	cur := "/"
	for hops := 0; len(rest) > 0; {
		c := rest[0]
		rest = rest[1:]
		if c == "" || c == "." {
			continue
		}
		if c == ".." {
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, c)
		fi, err := os.Lstat(u.host(next))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := os.Mkdir(u.host(next), 0o755); err != nil {
				return "", err
			}
			cur = next
		case err != nil:
			return "", err
		case fi.Mode()&fs.ModeSymlink != 0:
			if hops++; hops > 40 {
				return "", fmt.Errorf("%w: %s: too many symbolic links", ErrUnsafeEntry, p)
			}
			t, err := os.Readlink(u.host(next))
			if err != nil {
				return "", err
			}
			if strings.HasPrefix(t, "/") {
				cur = "/"
			}
			rest = append(strings.Split(strings.Trim(t, "/"), "/"), rest...)
		case fi.IsDir():
			cur = next
		default:
			return "", fmt.Errorf("%w: %s: %s is not a directory", ErrUnsafeEntry, p, next)
		}
	}
	return cur, nil
}

// injectAgent installs agent as /sbin/init and makes the mount points the
// agent uses.
func (u *unpacker) injectAgent(agent string) error {
	sbin, err := u.resolveDir("/sbin")
	if err != nil {
		return fmt.Errorf("image: install the agent: %w", err)
	}
	// installFile replaces whatever the layers put there.
	if err := installFile(agent, u.host(path.Join(sbin, "init")), 0o755); err != nil {
		return err
	}
	delete(u.fixups, path.Join(sbin, "init"))
	if !u.asRoot {
		u.fix(path.Join(sbin, "init")).owner = true // root:root
	}
	for _, d := range []string{"dev", "proc", "sys", "tmp", "run"} {
		hp := u.host("/" + d)
		if _, err := os.Lstat(hp); errors.Is(err, fs.ErrNotExist) {
			mode := uint32(0o755)
			if d == "tmp" {
				mode = 0o1777
			}
			if err := os.Mkdir(hp, 0o755); err != nil {
				return fmt.Errorf("image: %w", err)
			}
			if err := syscall.Chmod(hp, mode); err != nil {
				return fmt.Errorf("image: %w", err)
			}
			if !u.asRoot {
				u.fix("/" + d).owner = true
			}
		}
	}
	return nil
}

// applyFixups sets in the image img what the staging tree could not hold,
// with a debugfs request file: ownership (unpacked without root), modes
// that would have hidden files from mke2fs, and xattrs.
func (u *unpacker) applyFixups(ctx context.Context, debugfs, img string) error {
	dir, err := os.MkdirTemp(filepath.Dir(img), ".fixups-*")
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	defer os.RemoveAll(dir)
	paths := make([]string, 0, len(u.fixups))
	for p := range u.fixups {
		if _, err := os.Lstat(u.host(p)); err == nil {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	var req bytes.Buffer
	for i, p := range paths {
		if strings.ContainsAny(p, "\n\r") {
			return fmt.Errorf("%w: %q: a name with a line break cannot be fixed up without root (build as root)", ErrUnsafeEntry, p)
		}
		q := `"` + strings.ReplaceAll(p, `"`, `""`) + `"`
		fx := u.fixups[p]
		if fx.owner {
			fmt.Fprintf(&req, "sif %s uid %d\nsif %s gid %d\n", q, fx.uid, q, fx.gid)
		}
		if fx.mode != 0 {
			fmt.Fprintf(&req, "sif %s mode 0%o\n", q, fx.mode)
		}
		names := make([]string, 0, len(fx.xattrs))
		for n := range fx.xattrs {
			names = append(names, n)
		}
		sort.Strings(names)
		for j, n := range names {
			if strings.ContainsAny(n, "\n\r\" ") {
				return fmt.Errorf("%w: %q: xattr name %q cannot be set without root", ErrUnsafeEntry, p, n)
			}
			vf := filepath.Join(dir, fmt.Sprintf("v%d-%d", i, j))
			if err := os.WriteFile(vf, []byte(fx.xattrs[n]), 0o600); err != nil {
				return fmt.Errorf("image: %w", err)
			}
			fmt.Fprintf(&req, "ea_set -f %s %s %s\n", vf, q, n)
		}
	}
	reqFile := filepath.Join(dir, "request")
	if err := os.WriteFile(reqFile, req.Bytes(), 0o600); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	cmd := exec.CommandContext(ctx, debugfs, "-w", "-f", reqFile, img)
	outb, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("image: debugfs fixups: %w: %s", err, lastLines(string(outb), 5))
	}
	// debugfs exits 0 whatever its requests did; it echoes each request
	// ("debugfs: ...") and anything else is a complaint.
	for _, l := range strings.Split(string(outb), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "debugfs ") && !strings.HasPrefix(l, "debugfs:") {
			return fmt.Errorf("image: debugfs fixups: %s", l)
		}
	}
	return nil
}

// dirTar writes the tree of dir as a tar stream: modes, ownership,
// symbolic links, hard links (by inode) and xattrs kept.
func dirTar(ctx context.Context, dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	links := map[[2]uint64]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		var target string
		if fi.Mode()&fs.ModeSymlink != 0 {
			if target, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, target)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		st, _ := fi.Sys().(*syscall.Stat_t)
		if st != nil && fi.Mode().IsRegular() && st.Nlink > 1 {
			key := [2]uint64{uint64(st.Dev), st.Ino}
			if first, ok := links[key]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				links[key] = hdr.Name
			}
		}
		if xs, err := listXattrs(p); err == nil && len(xs) > 0 {
			hdr.PAXRecords = map[string]string{}
			for k, v := range xs {
				hdr.PAXRecords["SCHILY.xattr."+k] = v
			}
			hdr.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.CopyN(tw, f, hdr.Size)
			f.Close()
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

func listXattrs(p string) (map[string]string, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return nil, err
	}
	out := map[string]string{}
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		vb := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, vb)
		if err != nil {
			continue
		}
		out[name] = string(vb[:m])
	}
	return out, nil
}
