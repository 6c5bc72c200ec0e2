package image

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// Sentinel errors; the concrete errors wrap them.
var (
	// ErrToolNotFound: a program the build needs (mke2fs) is not
	// installed; the error names the package that provides it.
	ErrToolNotFound = errors.New("image: tool not found")
	// ErrInvalidOptions: an option or input file breaks a rule; the error
	// names the field or file and the rule.
	ErrInvalidOptions = errors.New("image: invalid options")
)

// Ext4Options tunes BuildExt4. The zero value is valid.
type Ext4Options struct {
	// SizeMiB is the size of the file system in MiB; 0 means the
	// content's size plus headroom (a quarter more, plus 16 MiB for
	// metadata and the journal).
	SizeMiB int
	// Label is the file system label, at most 16 bytes.
	Label string
	// Mke2fs is the mke2fs program; "" looks for mke2fs on PATH and in
	// /sbin and /usr/sbin.
	Mke2fs string
}

// MaxSizeMiB bounds Ext4Options.SizeMiB (1 TiB).
const MaxSizeMiB = 1 << 20

// BuildExt4 writes an ext4 file system holding the tree of dir to out,
// atomically: out is replaced only when the image is complete. File modes,
// ownership, symbolic links and hard links of dir are kept (mke2fs -d).
func BuildExt4(ctx context.Context, dir, out string, opts *Ext4Options) error {
	return buildExt4(ctx, dir, out, opts, nil)
}

// buildExt4 is BuildExt4 with a step run on the finished temporary image
// before it is synced and renamed to out (post may be nil).
func buildExt4(ctx context.Context, dir, out string, opts *Ext4Options, post func(ctx context.Context, tmp string) error) error {
	var o Ext4Options
	if opts != nil {
		o = *opts
	}
	if err := o.check(); err != nil {
		return err
	}
	if out == "" {
		return fmt.Errorf("%w: out: the output path is required", ErrInvalidOptions)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("%w: dir: %w", ErrInvalidOptions, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: dir: %s is not a directory", ErrInvalidOptions, dir)
	}
	if ofi, err := os.Stat(out); err == nil && ofi.IsDir() {
		return fmt.Errorf("%w: out: %s is a directory", ErrInvalidOptions, out)
	}
	mke2fs, err := findTool(o.Mke2fs, "mke2fs", "e2fsprogs")
	if err != nil {
		return err
	}
	size := int64(o.SizeMiB) << 20
	if size == 0 {
		content, err := treeSize(dir)
		if err != nil {
			return fmt.Errorf("image: measure %s: %w", dir, err)
		}
		size = roundMiB(content + content/4 + 16<<20)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return fmt.Errorf("image: create temporary image beside %s: %w", out, err)
	}
	tmpPath := tmp.Name()
	tmp.Close()
	done := false
	defer func() {
		if !done {
			os.Remove(tmpPath)
		}
	}()
	args := []string{"-q", "-F", "-t", "ext4", "-b", "4096", "-m", "0", "-d", dir}
	if o.Label != "" {
		args = append(args, "-L", o.Label)
	}
	args = append(args, tmpPath, strconv.FormatInt(size>>10, 10)+"k")
	cmd := exec.CommandContext(ctx, mke2fs, args...)
	var outBuf bytes.Buffer
	cmd.Stdout = &outBuf
	cmd.Stderr = &outBuf
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("image: mke2fs of %s: %w", dir, context.Cause(ctx))
		}
		return fmt.Errorf("image: %s %s: %w: %s", mke2fs, strings.Join(args, " "), err, lastLines(outBuf.String(), 5))
	}
	if post != nil {
		if err := post(ctx, tmpPath); err != nil {
			return err
		}
	}
	f, err := os.Open(tmpPath)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return fmt.Errorf("image: sync %s: %w", tmpPath, err)
	}
	if err := os.Chmod(tmpPath, 0o644); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if err := os.Rename(tmpPath, out); err != nil {
		return fmt.Errorf("image: %w", err)
	}
	done = true
	if d, err := os.Open(filepath.Dir(out)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

func (o Ext4Options) check() error {
	switch {
	case o.SizeMiB < 0 || o.SizeMiB > MaxSizeMiB:
		return fmt.Errorf("%w: size_mib must be between 0 and %d (got %d)", ErrInvalidOptions, MaxSizeMiB, o.SizeMiB)
	case o.SizeMiB > 0 && o.SizeMiB < 2:
		return fmt.Errorf("%w: size_mib must be at least 2 (got %d)", ErrInvalidOptions, o.SizeMiB)
	case len(o.Label) > 16:
		return fmt.Errorf("%w: label must be at most 16 bytes (got %d)", ErrInvalidOptions, len(o.Label))
	case strings.ContainsRune(o.Label, 0):
		return fmt.Errorf("%w: label must not contain NUL", ErrInvalidOptions)
	}
	return nil
}

// findTool returns the path of a program: explicit when given, else found
// on PATH or in the sbin directories (which a non-root PATH often lacks).
func findTool(explicit, name, pkg string) (string, error) {
	if explicit != "" {
		if _, err := exec.LookPath(explicit); err != nil {
			return "", fmt.Errorf("%w: %s %s: %w (install %s)", ErrToolNotFound, name, explicit, err, pkg)
		}
		return explicit, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"} {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s not found on PATH or in /usr/sbin, /sbin: install %s", ErrToolNotFound, name, pkg)
}

// treeSize adds up what the files of dir take: each file rounded up to
// 4 KiB, plus 4 KiB per entry for inodes and directory blocks.
func treeSize(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		total += 4096
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			total += (fi.Size() + 4095) &^ 4095
		}
		return nil
	})
	return total, err
}

func roundMiB(n int64) int64 { return (n + 1<<20 - 1) &^ (1<<20 - 1) }

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

// checkStatic fails unless path is an executable ELF file without a
// dynamic loader (a static binary, which runs in an image without libc).
func checkStatic(field, path, hint string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%w: %s: %s is not an ELF executable: %w", ErrInvalidOptions, field, path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%w: %s: %s is dynamically linked; the image has no libc (%s)", ErrInvalidOptions, field, path, hint)
		}
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("%w: %s: %s is not an executable (ELF type %s)", ErrInvalidOptions, field, path, f.Type)
	}
	return nil
}
