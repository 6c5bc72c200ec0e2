// Package store keeps named, immutable root file system templates (ext4
// images) in a directory, usually <state dir>/images. It is for embedders
// that keep images the firecracker runtime runs VMs from (Drive.Image;
// firecracker.Config.Images) and for `mvm image`.
//
// Each image is a directory <dir>/<name> holding the image file
// (rootfs.ext4) and its manifest (manifest.json: format version, source,
// size, sha256, creation time and what built it). An image appears only
// when complete: [Store.Create] builds into a hidden directory
// ".pending-<name>", flock(2)ed by the builder for the whole build, and
// renames it to <name> after the image and manifest are written and
// fsynced. A builder killed at any instant (even by SIGKILL) leaves only a
// pending directory whose lock the kernel has dropped; [Open] and
// [Store.Cleanup] remove it. Removal renames the image to ".trash-*" first,
// so a removal cut short leaves nothing visible either.
//
// VMs that run from an image hold a lease on it ([Store.Use],
// [Store.Release]): a file <dir>/<name>/users/<vm id>. [Store.Users]
// lists them, and [Store.Remove] refuses an image in use unless forced.
// The runtime calls Use when it clones the image for a VM, Release when the
// VM is destroyed, and its garbage collector releases leases of VMs it no
// longer knows.
package store

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Names in the store directory and in each image's directory.
const (
	lockFileName     = ".lock"
	pendingPrefix    = ".pending-"
	trashPrefix      = ".trash-"
	tmpPrefix        = ".tmp-"
	ImageFileName    = "rootfs.ext4"   // the image file in an image's directory
	ManifestFileName = "manifest.json" // the manifest in an image's directory
	usersDirName     = "users"
)

// FormatVersion is the manifest format this package writes and reads.
const FormatVersion = 1

// Sentinel errors; the concrete errors wrap them.
var (
	// ErrInvalidName: an image name breaks the naming rule.
	ErrInvalidName = errors.New("image store: invalid image name")
	// ErrNotFound: no image of that name.
	ErrNotFound = errors.New("image store: image not found")
	// ErrExists: an image of that name exists or is being built.
	ErrExists = errors.New("image store: image already exists")
	// ErrInUse: the image has users (VMs) and removal was not forced.
	ErrInUse = errors.New("image store: image in use")
	// ErrCorrupt: an image's manifest is unreadable or does not match
	// its file.
	ErrCorrupt = errors.New("image store: image corrupt")
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)

// ValidateName checks an image name: 1 to 128 characters of letters,
// digits, '.', '_', ':' and '-', starting with a letter or digit.
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: %q: must be 1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit", ErrInvalidName, name)
	}
	return nil
}

// userRE is the rule for lease holders (VM ids).
var userRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Source says what an image was built from.
type Source struct {
	// Kind is "dir", "tar", "oci" or another builder's word.
	Kind string `json:"kind"`
	// Path is the source on the host (absolute).
	Path string `json:"path"`
	// Digest identifies the source when it has one (an OCI manifest
	// digest), else "".
	Digest string `json:"digest,omitempty"`
}

// Manifest describes an image.
type Manifest struct {
	// FormatVersion is the manifest format ([FormatVersion]).
	FormatVersion int `json:"format_version"`
	// Name is the image's name.
	Name string `json:"name"`
	// Source is what the image was built from.
	Source Source `json:"source"`
	// SizeBytes is the size of the image file (the file system size).
	SizeBytes int64 `json:"size_bytes"`
	// SHA256 is the hex sha256 of the image file.
	SHA256 string `json:"sha256"`
	// Created is when the image was committed (UTC).
	Created time.Time `json:"created"`
	// Builder names what built the image (e.g. "mvm image build
	// --from-oci, agent injected").
	Builder string `json:"builder"`
}

// Image is a committed image.
type Image struct {
	Manifest
	// Path is the image file; it must not be written (clone it).
	Path string `json:"path"`
}

// Store is a directory of images. Its methods are safe for concurrent use,
// also by several processes opening the same directory.
type Store struct {
	dir string
}

// Open opens the image store in dir, creating it (mode 0700) when missing,
// and sweeps what crashed builders and removals left ([Store.Cleanup];
// failures of the sweep do not fail Open).
func Open(dir string) (*Store, error) {
	if dir == "" {
		return nil, fmt.Errorf("image store: dir is required")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("image store %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("image store %s: not a directory", abs)
	}
	s := &Store{dir: abs}
	_ = s.Cleanup()
	return s, nil
}

// Dir returns the store's directory (absolute).
func (s *Store) Dir() string { return s.dir }

func (s *Store) imageDir(name string) string { return filepath.Join(s.dir, name) }

// lock takes the store lock (flock on <dir>/.lock), which guards the steps
// that make images appear and disappear and the leases; never building or
// hashing.
func (s *Store) lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(s.dir, lockFileName), os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("image store lock: %w", err)
	}
	if err := flockRetry(f, syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("image store lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

func flockRetry(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if err != syscall.EINTR {
			return err
		}
	}
}

// Cleanup removes pending builds whose builder is gone (their flock is
// free), half-removed images (".trash-*") and temporary files. Builds in
// progress in live processes are left alone.
func (s *Store) Cleanup() error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("image store cleanup: %w", err)
	}
	var errs []error
	for _, e := range ents {
		p := filepath.Join(s.dir, e.Name())
		switch {
		case strings.HasPrefix(e.Name(), pendingPrefix):
			if _, err := reclaimPending(p); err != nil {
				errs = append(errs, err)
			}
		case strings.HasPrefix(e.Name(), trashPrefix), strings.HasPrefix(e.Name(), tmpPrefix):
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, fmt.Errorf("image store cleanup: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// reclaimPending removes the pending directory p unless a live builder
// holds its lock, and reports whether it is gone.
func reclaimPending(p string) (bool, error) {
	d, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("image store: %w", err)
	}
	defer d.Close()
	if err := flockRetry(d, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil
		}
		return false, fmt.Errorf("image store: lock %s: %w", p, err)
	}
	if err := os.RemoveAll(p); err != nil {
		return false, fmt.Errorf("image store: remove abandoned build %s: %w", p, err)
	}
	return true, nil
}

// BuildFunc writes the image file at path (which does not exist yet). It
// must write nothing else outside the directory of path.
type BuildFunc func(ctx context.Context, path string) error

// Create builds image name with build and commits it with a manifest
// naming *src and builder; build may complete *src (say, a Digest only
// known once the source is read), which is recorded after it returns. The image appears (in Get, List) only once it is
// complete and durable; on any failure, cancellation or crash nothing is
// left. Of concurrent Creates of one name exactly one can win; the others
// fail with [ErrExists].
func (s *Store) Create(ctx context.Context, name string, src *Source, builder string, build BuildFunc) (Image, error) {
	if err := ValidateName(name); err != nil {
		return Image{}, err
	}
	if src == nil {
		src = &Source{}
	}
	if build == nil {
		return Image{}, fmt.Errorf("image store: create %q: build function is nil", name)
	}
	pending, lockf, err := s.begin(name)
	if err != nil {
		return Image{}, err
	}
	defer lockf.Close() // drops the flock after the pending dir is gone or renamed
	done := false
	defer func() {
		if !done {
			os.RemoveAll(pending)
		}
	}()
	imgPath := filepath.Join(pending, ImageFileName)
	if err := build(ctx, imgPath); err != nil {
		return Image{}, fmt.Errorf("image %q: build: %w", name, err)
	}
	if err := ctx.Err(); err != nil {
		return Image{}, fmt.Errorf("image %q: %w", name, context.Cause(ctx))
	}
	sum, size, err := hashFile(ctx, imgPath)
	if err != nil {
		return Image{}, fmt.Errorf("image %q: %w", name, err)
	}
	if size == 0 {
		return Image{}, fmt.Errorf("image %q: build wrote an empty image", name)
	}
	if err := syncPath(imgPath); err != nil {
		return Image{}, fmt.Errorf("image %q: %w", name, err)
	}
	os.Chmod(imgPath, 0o444)
	m := Manifest{
		FormatVersion: FormatVersion,
		Name:          name,
		Source:        *src,
		SizeBytes:     size,
		SHA256:        sum,
		Created:       time.Now().UTC().Truncate(time.Second),
		Builder:       builder,
	}
	if err := writeJSONFile(filepath.Join(pending, ManifestFileName), m); err != nil {
		return Image{}, fmt.Errorf("image %q: %w", name, err)
	}
	if err := os.Mkdir(filepath.Join(pending, usersDirName), 0o700); err != nil {
		return Image{}, fmt.Errorf("image %q: %w", name, err)
	}
	if err := syncPath(pending); err != nil {
		return Image{}, fmt.Errorf("image %q: %w", name, err)
	}
	unlock, err := s.lock()
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	if _, err := os.Lstat(s.imageDir(name)); err == nil {
		return Image{}, fmt.Errorf("image %q: %w", name, ErrExists)
	}
	if err := os.Rename(pending, s.imageDir(name)); err != nil {
		return Image{}, fmt.Errorf("image %q: commit: %w", name, err)
	}
	done = true
	if err := syncPath(s.dir); err != nil {
		return Image{}, fmt.Errorf("image %q: %w", name, err)
	}
	return Image{Manifest: m, Path: filepath.Join(s.imageDir(name), ImageFileName)}, nil
}

// begin creates and locks the pending directory of name.
func (s *Store) begin(name string) (string, *os.File, error) {
	unlock, err := s.lock()
	if err != nil {
		return "", nil, err
	}
	defer unlock()
	if _, err := os.Lstat(s.imageDir(name)); err == nil {
		return "", nil, fmt.Errorf("image %q: %w", name, ErrExists)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", nil, fmt.Errorf("image %q: %w", name, err)
	}
	p := filepath.Join(s.dir, pendingPrefix+name)
	err = os.Mkdir(p, 0o700)
	if errors.Is(err, fs.ErrExist) {
		gone, rerr := reclaimPending(p)
		if rerr != nil {
			return "", nil, rerr
		}
		if !gone {
			return "", nil, fmt.Errorf("image %q: being built by another caller: %w", name, ErrExists)
		}
		err = os.Mkdir(p, 0o700)
	}
	if err != nil {
		return "", nil, fmt.Errorf("image %q: %w", name, err)
	}
	f, err := os.Open(p)
	if err == nil {
		err = flockRetry(f, syscall.LOCK_EX|syscall.LOCK_NB)
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		os.RemoveAll(p)
		return "", nil, fmt.Errorf("image %q: lock build directory: %w", name, err)
	}
	return p, f, nil
}

// Get returns image name. A manifest that cannot be read, or names another
// image or format, fails with [ErrCorrupt]; the file's hash is not checked
// (see [Store.Verify]).
func (s *Store) Get(name string) (Image, error) {
	if err := ValidateName(name); err != nil {
		return Image{}, err
	}
	dir := s.imageDir(name)
	b, err := os.ReadFile(filepath.Join(dir, ManifestFileName))
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Lstat(dir); serr != nil {
			return Image{}, fmt.Errorf("image %q: %w", name, ErrNotFound)
		}
		return Image{}, fmt.Errorf("image %q: %s is missing: %w", name, ManifestFileName, ErrCorrupt)
	}
	if err != nil {
		return Image{}, fmt.Errorf("image %q: %w", name, err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Image{}, fmt.Errorf("image %q: %s: %v: %w", name, ManifestFileName, err, ErrCorrupt)
	}
	switch {
	case m.FormatVersion != FormatVersion:
		return Image{}, fmt.Errorf("image %q: %s: format_version %d, this mvm reads %d: %w", name, ManifestFileName, m.FormatVersion, FormatVersion, ErrCorrupt)
	case m.Name != name:
		return Image{}, fmt.Errorf("image %q: %s: names image %q: %w", name, ManifestFileName, m.Name, ErrCorrupt)
	}
	p := filepath.Join(dir, ImageFileName)
	fi, err := os.Stat(p)
	if err != nil {
		return Image{}, fmt.Errorf("image %q: %w: %w", name, err, ErrCorrupt)
	}
	if fi.Size() != m.SizeBytes {
		return Image{}, fmt.Errorf("image %q: %s is %d bytes, manifest says %d: %w", name, ImageFileName, fi.Size(), m.SizeBytes, ErrCorrupt)
	}
	return Image{Manifest: m, Path: p}, nil
}

// Verify re-hashes image name and fails with [ErrCorrupt] when the file
// does not match its manifest.
func (s *Store) Verify(ctx context.Context, name string) error {
	img, err := s.Get(name)
	if err != nil {
		return err
	}
	sum, _, err := hashFile(ctx, img.Path)
	if err != nil {
		return fmt.Errorf("image %q: %w", name, err)
	}
	if sum != img.SHA256 {
		return fmt.Errorf("image %q: sha256 %s, manifest says %s: %w", name, sum, img.SHA256, ErrCorrupt)
	}
	return nil
}

// List returns the committed images, sorted by name. Images whose
// manifest is unreadable are returned in the joined error (with
// [ErrCorrupt]) and left out of the list.
func (s *Store) List() ([]Image, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	var imgs []Image
	var errs []error
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") || !e.IsDir() {
			continue
		}
		img, err := s.Get(e.Name())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		imgs = append(imgs, img)
	}
	slices.SortFunc(imgs, func(a, b Image) int { return cmp.Compare(a.Name, b.Name) })
	return imgs, errors.Join(errs...)
}

// Use records that user (a VM id) runs from image name, and returns the
// image. It is idempotent.
func (s *Store) Use(name, user string) (Image, error) {
	if !userRE.MatchString(user) {
		return Image{}, fmt.Errorf("image %q: user %q: must be 1-128 letters, digits, '.', '_' or '-'", name, user)
	}
	unlock, err := s.lock()
	if err != nil {
		return Image{}, err
	}
	defer unlock()
	img, err := s.Get(name)
	if err != nil {
		return Image{}, err
	}
	users := filepath.Join(s.imageDir(name), usersDirName)
	if err := os.MkdirAll(users, 0o700); err != nil {
		return Image{}, fmt.Errorf("image %q: %w", name, err)
	}
	if err := writeFileSync(filepath.Join(users, user), nil); err != nil {
		return Image{}, fmt.Errorf("image %q: lease for %q: %w", name, user, err)
	}
	return img, syncPath(users)
}

// Release drops user's lease on image name. Releasing a lease that does not
// exist, or of an image that is gone, is not an error.
func (s *Store) Release(name, user string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if !userRE.MatchString(user) {
		return fmt.Errorf("image %q: user %q: must be 1-128 letters, digits, '.', '_' or '-'", name, user)
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	err = os.Remove(filepath.Join(s.imageDir(name), usersDirName, user))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("image %q: release %q: %w", name, user, err)
	}
	return nil
}

// Users returns the holders of leases on image name, sorted: the in-use
// check. An image with no users is not in use.
func (s *Store) Users(name string) ([]string, error) {
	if _, err := s.Get(name); err != nil {
		return nil, err
	}
	return s.users(name)
}

func (s *Store) users(name string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(s.imageDir(name), usersDirName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", name, err)
	}
	var out []string
	for _, e := range ents {
		if userRE.MatchString(e.Name()) {
			out = append(out, e.Name())
		}
	}
	slices.Sort(out)
	return out, nil
}

// Remove deletes image name. While VMs hold leases on it ([Store.Use]) it
// fails with [ErrInUse], naming them, unless force is set. The image
// vanishes at once (renamed aside, then deleted); a removal cut short is
// finished by the next Open or Cleanup. Clones already made from the image
// are separate files and are not affected.
func (s *Store) Remove(name string, force bool) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	dir := s.imageDir(name)
	if _, err := os.Lstat(dir); err != nil {
		unlock()
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("image %q: %w", name, ErrNotFound)
		}
		return fmt.Errorf("image %q: %w", name, err)
	}
	users, err := s.users(name)
	if err != nil {
		unlock()
		return err
	}
	if len(users) > 0 && !force {
		unlock()
		return fmt.Errorf("image %q: used by %s (remove them first, or force): %w", name, strings.Join(users, ", "), ErrInUse)
	}
	trash := filepath.Join(s.dir, trashPrefix+name+"-"+randHex())
	err = os.Rename(dir, trash)
	if err == nil {
		err = syncPath(s.dir)
	}
	unlock()
	if err != nil {
		return fmt.Errorf("image %q: remove: %w", name, err)
	}
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("image %q: removed, but deleting its files failed (the next Open retries): %w", name, err)
	}
	return nil
}

func randHex() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// hashFile returns the hex sha256 and size of path, honouring ctx.
func hashFile(ctx context.Context, path string) (string, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return "", 0, context.Cause(ctx)
		}
		k, err := f.Read(buf)
		h.Write(buf[:k])
		n += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", 0, fmt.Errorf("hash %s: %w", path, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// writeJSONFile writes v to path durably: a temporary file beside it,
// fsynced, renamed over it.
func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileSync(path, append(b, '\n'))
}

func writeFileSync(path string, b []byte) error {
	tmp := filepath.Join(filepath.Dir(path), tmpPrefix+filepath.Base(path)+"-"+randHex())
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}

func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return fmt.Errorf("sync %s: %w", p, err)
	}
	return nil
}
