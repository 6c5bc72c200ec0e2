package image

import (
	"bufio"
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
)

// RootFSOptions describes a minimal agent image for BuildRootFS.
type RootFSOptions struct {
	// Agent is the mvm-agent binary, static (CGO_ENABLED=0). Required.
	// It becomes /sbin/init, with /init a link to it.
	Agent string
	// Busybox is a static busybox (Debian: busybox-static); "" looks for
	// /bin/busybox and /usr/bin/busybox. It becomes /bin/busybox, with a
	// link in /bin for each of its applets (sh, ls, mount, ...).
	Busybox string
	// NoBusybox leaves busybox out: the image holds only the agent.
	NoBusybox bool
	// Dir, when set, is a directory whose tree is copied into the image
	// first (regular files, directories and symbolic links, modes kept);
	// the agent, busybox and the files below win over it.
	Dir string
	// Files adds single files: image path (absolute, e.g. "/etc/motd") to
	// host file. They win over Dir.
	Files map[string]string
	// Hostname is written to /etc/hostname; default "mvm".
	Hostname string
	// SizeMiB and Label are as in Ext4Options.
	SizeMiB int
	Label   string
	// Mke2fs is as in Ext4Options.
	Mke2fs string
}

// Busybox locations tried when RootFSOptions.Busybox is empty.
var busyboxPaths = []string{"/bin/busybox", "/usr/bin/busybox"}

// mountPoints are the directories the agent mounts on, plus the usual
// empty top-level directories.
var mountPoints = []string{"bin", "dev", "etc", "proc", "root", "run", "sbin", "sys", "tmp", "var"}

// BuildRootFS builds the minimal agent image described by opts and writes it
// to out atomically (see BuildExt4). The staging directory is a temporary
// directory beside out, removed afterwards.
func BuildRootFS(ctx context.Context, opts RootFSOptions, out string) error {
	bb, err := opts.check()
	if err != nil {
		return err
	}
	if out == "" {
		return fmt.Errorf("%w: out: the output path is required", ErrInvalidOptions)
	}
	stage, err := os.MkdirTemp(filepath.Dir(out), "."+filepath.Base(out)+".stage-*")
	if err != nil {
		return fmt.Errorf("image: create staging directory beside %s: %w", out, err)
	}
	defer os.RemoveAll(stage)
	if err := os.Chmod(stage, 0o755); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if opts.Dir != "" {
		if err := copyTree(opts.Dir, stage); err != nil {
			return err
		}
	}
	for _, d := range mountPoints {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return fmt.Errorf("image: staging: %w", err)
		}
	}
	if err := os.Chmod(filepath.Join(stage, "tmp"), 0o777|fs.ModeSticky); err != nil {
		return fmt.Errorf("image: staging: %w", err)
	}
	if err := os.Chmod(filepath.Join(stage, "root"), 0o700); err != nil {
		return fmt.Errorf("image: staging: %w", err)
	}
	if err := installFile(opts.Agent, filepath.Join(stage, "sbin", "init"), 0o755); err != nil {
		return err
	}
	if err := replaceSymlink("/sbin/init", filepath.Join(stage, "init")); err != nil {
		return err
	}
	if bb != "" {
		if err := installBusybox(ctx, bb, stage); err != nil {
			return err
		}
	}
	host := opts.Hostname
	if host == "" {
		host = "mvm"
	}
	etc := map[string]string{
		"hostname": host + "\n",
		"hosts":    "127.0.0.1\tlocalhost\n127.0.1.1\t" + host + "\n",
		"passwd":   "root:x:0:0:root:/root:/bin/sh\n",
		"group":    "root:x:0:\n",
	}
	for name, content := range etc {
		p := filepath.Join(stage, "etc", name)
		os.Remove(p) // a symlink from Dir must not be followed
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return fmt.Errorf("image: staging: %w", err)
		}
	}
	names := make([]string, 0, len(opts.Files))
	for name := range opts.Files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		dst := filepath.Join(stage, filepath.FromSlash(path.Clean(name)))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("image: staging: %w", err)
		}
		fi, err := os.Stat(opts.Files[name])
		if err != nil {
			return fmt.Errorf("%w: files[%s]: %w", ErrInvalidOptions, name, err)
		}
		if err := installFile(opts.Files[name], dst, fi.Mode()&modeBits); err != nil {
			return err
		}
	}
	return BuildExt4(ctx, stage, out, &Ext4Options{SizeMiB: opts.SizeMiB, Label: opts.Label, Mke2fs: opts.Mke2fs})
}

// check validates opts and returns the busybox to install ("" for none).
func (o RootFSOptions) check() (string, error) {
	if err := (Ext4Options{SizeMiB: o.SizeMiB, Label: o.Label}).check(); err != nil {
		return "", err
	}
	if o.Agent == "" {
		return "", fmt.Errorf("%w: agent: the mvm-agent binary is required (build it with CGO_ENABLED=0 go build ./cmd/mvm-agent)", ErrInvalidOptions)
	}
	if err := checkRegular("agent", o.Agent); err != nil {
		return "", err
	}
	if err := checkStatic("agent", o.Agent, "build it with CGO_ENABLED=0"); err != nil {
		return "", err
	}
	if strings.ContainsAny(o.Hostname, " \t\n/\x00") || len(o.Hostname) > 64 {
		return "", fmt.Errorf("%w: hostname must be at most 64 bytes without spaces or '/' (got %q)", ErrInvalidOptions, o.Hostname)
	}
	for name, src := range o.Files {
		if !path.IsAbs(name) || path.Clean(name) == "/" || strings.ContainsRune(name, 0) {
			return "", fmt.Errorf("%w: files[%q]: the image path must be absolute and name a file", ErrInvalidOptions, name)
		}
		if err := checkRegular("files["+name+"]", src); err != nil {
			return "", err
		}
	}
	if o.Dir != "" {
		if fi, err := os.Stat(o.Dir); err != nil || !fi.IsDir() {
			return "", fmt.Errorf("%w: dir: %s is not a directory", ErrInvalidOptions, o.Dir)
		}
	}
	if o.NoBusybox {
		if o.Busybox != "" {
			return "", fmt.Errorf("%w: busybox is set and no_busybox too", ErrInvalidOptions)
		}
		return "", nil
	}
	bb := o.Busybox
	if bb == "" {
		for _, p := range busyboxPaths {
			if _, err := os.Stat(p); err == nil {
				bb = p
				break
			}
		}
		if bb == "" {
			return "", fmt.Errorf("%w: busybox not found at %s: install busybox-static (or set NoBusybox)", ErrToolNotFound, strings.Join(busyboxPaths, ", "))
		}
	}
	if err := checkRegular("busybox", bb); err != nil {
		return "", err
	}
	if err := checkStatic("busybox", bb, "install busybox-static, not busybox"); err != nil {
		return "", err
	}
	return bb, nil
}

func checkRegular(field, p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrInvalidOptions, field, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%w: %s: %s is not a regular file", ErrInvalidOptions, field, p)
	}
	return nil
}

// installFile copies src to dst with mode perm, replacing whatever dst is
// (a symbolic link from Dir is replaced, not followed).
func installFile(src, dst string, perm fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	defer in.Close()
	if err := os.RemoveAll(dst); err != nil {
		return fmt.Errorf("image: staging: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("image: staging: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("image: copy %s: %w", src, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("image: copy %s: %w", src, err)
	}
	if err := os.Chmod(dst, perm); err != nil { // not reduced by the umask
		return fmt.Errorf("image: staging: %w", err)
	}
	return nil
}

func replaceSymlink(target, link string) error {
	if err := os.RemoveAll(link); err != nil {
		return fmt.Errorf("image: staging: %w", err)
	}
	if err := os.Symlink(target, link); err != nil {
		return fmt.Errorf("image: staging: %w", err)
	}
	return nil
}

// installBusybox copies busybox to /bin/busybox and links its applets
// (from `busybox --list-full`, e.g. "sbin/ifconfig") to it, without
// replacing files already staged.
func installBusybox(ctx context.Context, bb, stage string) error {
	if err := installFile(bb, filepath.Join(stage, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bb, "--list-full")
	cmd.Stdout = &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("image: %s --list-full: %w", bb, err)
	}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		rel := path.Clean(strings.TrimSpace(sc.Text()))
		if rel == "." || path.IsAbs(rel) || strings.HasPrefix(rel, "..") || rel == "bin/busybox" {
			continue
		}
		dst := filepath.Join(stage, filepath.FromSlash(rel))
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("image: staging: %w", err)
		}
		if err := os.Symlink("/bin/busybox", dst); err != nil {
			return fmt.Errorf("image: staging: %w", err)
		}
	}
	return sc.Err()
}

// copyTree copies the tree of src into dst: directories, regular files and
// symbolic links, with their permission bits. Other file types (devices,
// sockets, fifos) are refused: an unprivileged build cannot make them.
func copyTree(src, dst string) error {
	// Directory modes are applied last, deepest first, so a read-only
	// directory can still be filled.
	type dirMode struct {
		path string
		mode fs.FileMode
	}
	var dirs []dirMode
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("image: dir: %w", err)
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return fmt.Errorf("image: dir: %w", err)
		}
		switch {
		case d.IsDir():
			if rel == "." {
				return nil
			}
			if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("image: staging: %w", err)
			}
			dirs = append(dirs, dirMode{target, fi.Mode() & modeBits})
			return nil
		case d.Type()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("image: dir: %w", err)
			}
			return replaceSymlink(link, target)
		case d.Type().IsRegular():
			return installFile(p, target, fi.Mode()&modeBits)
		default:
			return fmt.Errorf("%w: dir: %s is a %s; only directories, regular files and symbolic links can be copied", ErrInvalidOptions, p, fi.Mode().Type())
		}
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Chmod(dirs[i].path, dirs[i].mode); err != nil {
			return fmt.Errorf("image: staging: %w", err)
		}
	}
	return nil
}

// modeBits are the mode bits a copy keeps.
const modeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky
