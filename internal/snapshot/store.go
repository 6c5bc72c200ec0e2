package snapshot

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"

	microvm "github.com/mvm-dev/microvm"
)

// Names in the store directory. Snapshot ids never start with '.', so
// hidden names never collide with snapshots and are skipped by List.
const (
	lockFileName  = ".lock"
	pendingPrefix = ".pending-"
	trashPrefix   = ".trash-"
	probePrefix   = ".probe-"
)

// Store is a directory of snapshots. Its methods are safe for concurrent
// use, also by several processes opening the same directory (they
// coordinate with flock(2); the directory must be on a local filesystem).
type Store struct {
	dir string

	sparseMu sync.Mutex
	sparseOK bool // the filesystem reports holes (probed once, lazily)
	probed   bool
}

// Open opens the snapshot store in dir, creating it (mode 0700) when
// missing. An existing dir with group or other permissions is restricted to
// 0700: snapshots hold guest memory.
//
// Open sweeps leftovers of crashed processes (see [Store.Cleanup]):
// pending snapshots whose creator is gone, and half-deleted snapshots.
// Failures of that sweep do not fail Open; they are retried by the next
// Open or Cleanup.
func Open(dir string) (*Store, error) {
	if dir == "" {
		return nil, fmt.Errorf("snapshot store: dir is required: %w", microvm.ErrInvalidArgument)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("snapshot store %s: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("snapshot store: %w", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("snapshot store: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("snapshot store %s: not a directory: %w", abs, microvm.ErrInvalidArgument)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(abs, 0o700); err != nil {
			return nil, fmt.Errorf("snapshot store: %w", err)
		}
	}
	s := &Store{dir: abs}
	if _, err := os.ReadDir(abs); err != nil {
		return nil, fmt.Errorf("snapshot store: %w", err)
	}
	_ = s.Cleanup()
	return s, nil
}

// Dir returns the store's directory (absolute).
func (s *Store) Dir() string { return s.dir }

func (s *Store) snapDir(id string) string    { return filepath.Join(s.dir, id) }
func (s *Store) pendingDir(id string) string { return filepath.Join(s.dir, pendingPrefix+id) }

// lock takes the store lock: flock(LOCK_EX) on <dir>/.lock through a file
// description of its own, so it excludes other goroutines and other
// processes alike. It guards the short steps that make snapshots appear and
// disappear (Begin, the final rename of Commit, Delete, Cleanup), never
// hashing or copying.
func (s *Store) lock() (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(s.dir, lockFileName), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("snapshot store lock: %w", err)
	}
	if err := flock(f, syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("snapshot store lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil // closing drops the flock
}

// Cleanup removes what crashed processes left in the store:
//
//   - pending snapshots (".pending-<id>") whose creator is gone. Every
//     pending directory is flock(2)ed by its [Pending] from Begin until
//     Commit or Abort, and the kernel drops the lock when the holder exits,
//     even by SIGKILL; so a pending directory whose lock can be taken is
//     abandoned, whatever its age, and one being written by a live process
//     (this one or another) is left alone. No age threshold is needed.
//   - snapshots half-way through Delete (".trash-*"), and probe files.
//
// It returns the problems it met, joined; what it could not remove is
// retried by the next Cleanup. Open calls it.
func (s *Store) Cleanup() error {
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("snapshot store cleanup: %w", err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(s.dir, name)
		switch {
		case strings.HasPrefix(name, pendingPrefix):
			if _, err := s.reclaimPending(path); err != nil {
				errs = append(errs, err)
			}
		case strings.HasPrefix(name, trashPrefix), strings.HasPrefix(name, probePrefix):
			if err := os.RemoveAll(path); err != nil {
				errs = append(errs, fmt.Errorf("snapshot store cleanup: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// reclaimPending removes the pending directory path if its creator is
// gone, and reports whether it did (or it had vanished). The caller holds
// the store lock, which every pending directory is created and locked
// under, so a directory that is not locked now is abandoned.
func (s *Store) reclaimPending(path string) (bool, error) {
	d, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return true, nil // its owner committed or aborted meanwhile
	}
	if err != nil {
		return false, fmt.Errorf("snapshot store: %w", err)
	}
	defer d.Close()
	if err := flock(d, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil // alive
		}
		return false, fmt.Errorf("snapshot store: lock %s: %w", path, err)
	}
	if err := os.RemoveAll(path); err != nil {
		return false, fmt.Errorf("snapshot store: remove abandoned %s: %w", path, err)
	}
	return true, nil
}

// Begin starts snapshot id: it creates the hidden directory
// <dir>/.pending-<id>, into which Firecracker writes the state and memory
// files ([Pending.StatePath], [Pending.MemPath]); then [Pending.Commit]
// registers the snapshot or [Pending.Abort] drops it. Until then the
// snapshot is invisible to Get and List.
//
// id must be a valid snapshot id ([microvm.ValidateSnapshotID]). Begin
// fails with an error matching [microvm.ErrSnapshotExists] when a snapshot
// with that id is committed or being created by a live Pending in any
// process: of concurrent Begins of one id exactly one wins. A pending
// snapshot left by a crashed process is removed and does not block.
func (s *Store) Begin(id string) (*Pending, error) {
	if err := microvm.ValidateSnapshotID(id); err != nil {
		return nil, err
	}
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := os.Lstat(s.snapDir(id)); err == nil {
		return nil, fmt.Errorf("snapshot %q: %w", id, microvm.ErrSnapshotExists)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("snapshot %q: %w", id, err)
	}
	dir := s.pendingDir(id)
	err = os.Mkdir(dir, 0o700)
	if errors.Is(err, fs.ErrExist) {
		var gone bool
		if gone, err = s.reclaimPending(dir); err == nil {
			if !gone {
				return nil, fmt.Errorf("snapshot %q: being created by another caller: %w", id, microvm.ErrSnapshotExists)
			}
			err = os.Mkdir(dir, 0o700)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("snapshot %q: begin: %w", id, err)
	}
	d, err := os.Open(dir)
	if err == nil {
		if err = flock(d, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			d.Close()
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("snapshot %q: begin: lock %s: %w", id, dir, err)
	}
	return &Pending{s: s, id: id, dir: dir, lockf: d}, nil
}

// Get returns the manifest of snapshot id. It fails with an error matching
// [microvm.ErrSnapshotNotFound] when there is no such snapshot, and with a
// [*CorruptError] (matching [microvm.ErrSnapshotCorrupt]) naming the
// manifest when it is missing, unreadable, invalid or of a newer format
// ("incompatible"). Get reads the manifest only; [Store.Verify] checks the
// files.
func (s *Store) Get(id string) (Manifest, error) {
	if err := microvm.ValidateSnapshotID(id); err != nil {
		return Manifest{}, err
	}
	return readManifest(s.snapDir(id), id)
}

// List returns the manifests of every snapshot, oldest first (by
// CreatedAt, then id).
//
// A snapshot whose manifest cannot be read is left out of the list and
// reported: the error is then non-nil, joins one [*CorruptError] per such
// snapshot (errors.Is(err, microvm.ErrSnapshotCorrupt) holds), and the
// returned list is still valid and complete for every other snapshot. This
// way one damaged snapshot does not hide the others, nor is it hidden.
// Other errors (the directory cannot be read) return a nil list.
func (s *Store) List() ([]Manifest, error) {
	list, bad, err := s.list()
	if err != nil {
		return nil, err
	}
	return list, errors.Join(bad...)
}

// list returns the readable manifests, sorted, and the corrupt ones'
// errors.
func (s *Store) list() (list []Manifest, bad []error, err error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, nil, fmt.Errorf("snapshot store: %w", err)
	}
	for _, e := range entries {
		id := e.Name()
		if strings.HasPrefix(id, ".") || microvm.ValidateSnapshotID(id) != nil {
			continue // store bookkeeping, or not ours
		}
		m, err := readManifest(s.snapDir(id), id)
		switch {
		case err == nil:
			list = append(list, m)
		case errors.Is(err, microvm.ErrSnapshotNotFound):
			// deleted meanwhile
		case errors.Is(err, microvm.ErrSnapshotCorrupt):
			bad = append(bad, err)
		default:
			return nil, nil, err
		}
	}
	slices.SortFunc(list, func(a, b Manifest) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.ID, b.ID))
	})
	return list, bad, nil
}

// Children returns the ids of the diff snapshots whose Parent is id, oldest
// first. It fails with [microvm.ErrSnapshotNotFound] when id does not
// exist. Snapshots with an unreadable manifest are not considered.
func (s *Store) Children(id string) ([]string, error) {
	if err := microvm.ValidateSnapshotID(id); err != nil {
		return nil, err
	}
	if _, err := os.Lstat(s.snapDir(id)); errors.Is(err, fs.ErrNotExist) {
		return nil, notFound(id)
	} else if err != nil {
		return nil, fmt.Errorf("snapshot %q: %w", id, err)
	}
	return s.children(id)
}

func (s *Store) children(id string) ([]string, error) {
	list, _, err := s.list()
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, m := range list {
		if m.Parent == id {
			ids = append(ids, m.ID)
		}
	}
	return ids, nil
}

// Paths returns the state and memory files of snapshot id. For a diff
// snapshot the memory file is already merged with its parents (see the
// package documentation), so it is what Firecracker loads; [Store.MemoryFile]
// returns the same path after checking the file is there.
func (s *Store) Paths(id string) (statePath, memPath string, err error) {
	if _, err := s.Get(id); err != nil {
		return "", "", err
	}
	dir := s.snapDir(id)
	return filepath.Join(dir, StateFileName), filepath.Join(dir, MemoryFileName), nil
}

// MemoryFile returns the memory file to load for snapshot id: its own
// memory for a full snapshot, and for a diff snapshot the memory of its
// whole chain merged, which Commit stored in the snapshot itself. It checks
// that the file exists with its recorded size (cheap); [Store.Verify]
// checks the content. The file must not be modified: Firecracker maps it
// MAP_PRIVATE for the lifetime of the VMs restored from it (it is mode
// 0400).
func (s *Store) MemoryFile(ctx context.Context, id string) (string, error) {
	m, err := s.Get(id)
	if err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("snapshot %q: %w", id, err)
	}
	path := filepath.Join(s.snapDir(id), MemoryFileName)
	want, _ := m.File(MemoryFileName)
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", &CorruptError{ID: id, File: path, Reason: "memory file is missing"}
	case err != nil:
		return "", &CorruptError{ID: id, File: path, Reason: "cannot stat the memory file", Err: err}
	case !fi.Mode().IsRegular():
		return "", &CorruptError{ID: id, File: path, Reason: fmt.Sprintf("not a regular file (%s)", fi.Mode().Type())}
	case fi.Size() != want.Size:
		return "", &CorruptError{ID: id, File: path, Reason: sizeReason(fi.Size(), want.Size)}
	}
	return path, nil
}

// Snapshot returns the [microvm.Snapshot] view of m, a manifest of this
// store.
func (s *Store) Snapshot(m Manifest) microvm.Snapshot {
	return microvm.Snapshot{
		ID:                m.ID,
		VMID:              m.VMID,
		Type:              m.Type,
		Parent:            m.Parent,
		CreatedAt:         m.CreatedAt,
		Spec:              m.Spec.Clone(),
		Size:              m.Size(),
		HypervisorVersion: m.FirecrackerVersion,
		Dir:               s.snapDir(m.ID),
	}
}

// Delete removes snapshot id and its files. It refuses with an error
// matching [microvm.ErrSnapshotInUse], naming them, while diff snapshots
// have id as their Parent, unless force. (Diff snapshots are
// self-contained, so forcing never breaks a child; the refusal keeps
// lineage from disappearing by accident.) Whether VMs restored from the
// snapshot still map its memory is the runtime's to check: on Linux their
// mappings keep the deleted file's data alive until they exit.
//
// The directory is first renamed to a hidden name (atomic; the snapshot is
// gone from then on, also after a crash), then removed; a crash during the
// removal leaves a hidden directory that the next Open deletes. A snapshot
// with a corrupt manifest can be deleted. Unknown ids give
// [microvm.ErrSnapshotNotFound].
func (s *Store) Delete(id string, force bool) error {
	if err := microvm.ValidateSnapshotID(id); err != nil {
		return err
	}
	trash, err := s.unlink(id, force)
	if err != nil {
		return err
	}
	_ = os.RemoveAll(trash) // a failure is retried by the next Cleanup
	return nil
}

// unlink renames snapshot id out of sight under the store lock and returns
// its new path.
func (s *Store) unlink(id string, force bool) (string, error) {
	unlock, err := s.lock()
	if err != nil {
		return "", err
	}
	defer unlock()
	dir := s.snapDir(id)
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return "", notFound(id)
	} else if err != nil {
		return "", fmt.Errorf("snapshot %q: delete: %w", id, err)
	}
	if !force {
		kids, err := s.children(id)
		if err != nil {
			return "", fmt.Errorf("snapshot %q: delete: %w", id, err)
		}
		if len(kids) > 0 {
			return "", fmt.Errorf("snapshot %q: delete: it is the parent of diff snapshot(s) %s (delete them first, or force): %w",
				id, strings.Join(kids, ", "), microvm.ErrSnapshotInUse)
		}
	}
	trash := filepath.Join(s.dir, trashPrefix+id+"-"+randomSuffix())
	if err := os.Rename(dir, trash); err != nil {
		return "", fmt.Errorf("snapshot %q: delete: %w", id, err)
	}
	if err := syncDir(s.dir); err != nil {
		return "", fmt.Errorf("snapshot %q: delete: %w", id, err)
	}
	return trash, nil
}

// sparseSupported reports whether the store's filesystem reports holes
// through SEEK_DATA/SEEK_HOLE, which merging a diff relies on. It probes
// once, with a file holding a hole then 4 KiB of data, under the store lock.
func (s *Store) sparseSupported() (bool, error) {
	s.sparseMu.Lock()
	defer s.sparseMu.Unlock()
	if s.probed {
		return s.sparseOK, nil
	}
	unlock, err := s.lock()
	if err != nil {
		return false, err
	}
	defer unlock()
	f, err := os.CreateTemp(s.dir, probePrefix+"*")
	if err != nil {
		return false, fmt.Errorf("snapshot store: probe for sparse files: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	const size, at = 1 << 20, 512 << 10
	if err := f.Truncate(size); err != nil {
		return false, fmt.Errorf("snapshot store: probe for sparse files: %w", err)
	}
	if _, err := f.WriteAt(make([]byte, 4096), at); err != nil {
		return false, fmt.Errorf("snapshot store: probe for sparse files: %w", err)
	}
	first := int64(-1)
	if err := dataExtents(f, 0, size, func(off, n int64) error {
		if first < 0 {
			first = off
		}
		return nil
	}); err != nil {
		return false, fmt.Errorf("snapshot store: probe for sparse files: %w", err)
	}
	s.sparseOK, s.probed = first > 0, true
	return s.sparseOK, nil
}

func randomSuffix() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func sizeReason(got, want int64) string {
	if got < want {
		return fmt.Sprintf("truncated: %d bytes, the manifest says %d", got, want)
	}
	return fmt.Sprintf("size changed: %d bytes, the manifest says %d", got, want)
}
