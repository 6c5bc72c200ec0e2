package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	microvm "github.com/mvm-dev/microvm"
)

// Pending is a snapshot being created: a hidden directory that Firecracker
// writes into, invisible to Get and List until [Pending.Commit]. A Pending
// is used by one caller; its methods are safe to call concurrently but
// Commit and Abort each end it.
type Pending struct {
	s     *Store
	id    string
	dir   string
	lockf *os.File // the pending directory, flock(2)ed while it is ours

	mu   sync.Mutex
	done bool
}

// testHook, when set by tests, is called at each step of Commit (see the
// crash tests).
var testHook func(step string)

func hook(step string) {
	if testHook != nil {
		testHook(step)
	}
}

// ID returns the id of the snapshot being created.
func (p *Pending) ID() string { return p.id }

// Dir returns the pending directory (absolute).
func (p *Pending) Dir() string { return p.dir }

// StatePath is the absolute path where Firecracker must write the microVM
// state file (snapshot_path of PUT /snapshot/create).
func (p *Pending) StatePath() string { return filepath.Join(p.dir, StateFileName) }

// MemPath is the absolute path where Firecracker must write the guest
// memory file (mem_file_path of PUT /snapshot/create); for a diff snapshot,
// the sparse diff memory file.
func (p *Pending) MemPath() string { return filepath.Join(p.dir, MemoryFileName) }

// Import moves a state file and a memory file made elsewhere (for example
// inside a jailer's chroot) to [Pending.StatePath] and [Pending.MemPath]:
// by rename when on the same filesystem, else by a sparse-preserving copy
// after which the source is removed. Either path may be "" to leave that
// file alone.
func (p *Pending) Import(statePath, memPath string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return p.endedErr()
	}
	for _, mv := range []struct{ src, dst string }{{statePath, p.StatePath()}, {memPath, p.MemPath()}} {
		if mv.src == "" {
			continue
		}
		if err := moveFile(mv.src, mv.dst); err != nil {
			return fmt.Errorf("snapshot %q: import %s: %w", p.id, mv.src, err)
		}
	}
	return nil
}

// Commit is [Pending.CommitContext] with a background context.
func (p *Pending) Commit(m Manifest) (Manifest, error) {
	return p.CommitContext(context.Background(), m)
}

// CommitContext registers the snapshot: once it returns nil the snapshot
// is complete, durable and visible; on any error (including ctx being
// done) nothing is registered and the pending directory is removed. Either
// way the Pending is ended.
//
// m describes the snapshot. VMID and FirecrackerVersion are required;
// Spec is stored as given (the VM's defaulted spec); Type (default full),
// Parent (diff only), CreatedAt (default now), SnapshotFormatVersion and
// MemoryMiB (default Spec.MemoryMiB, else the memory file's size) are
// optional; ID, if set, must be the id given to Begin; FormatVersion, if
// set, must be [FormatVersion]. Files and Diff are filled in. The complete
// manifest is returned. Bad values give [microvm.ErrInvalidArgument], a
// missing parent [microvm.ErrSnapshotNotFound].
//
// Commit, in order: checks that Firecracker wrote both files (regular,
// non-empty); for a diff snapshot, checks that the parent exists and has a
// memory file of the same size, and merges the diff onto the parent's
// memory like [MergeSparse], hashing the result as it is written (the
// stored memory is then self-contained and the diff itself is not kept;
// the parent's memory is trusted, not re-hashed: Verify it first if in
// doubt); hashes the other files; makes them read-only (0400: Firecracker
// maps memory MAP_PRIVATE, the files must never change) and fsyncs them;
// writes manifest.json (temporary file, fsync, rename); fsyncs the
// directory; renames it to <dir>/<id> (atomic, never replacing anything)
// and fsyncs the store directory. A process killed at any point leaves
// either no snapshot (the pending directory is removed by the next Open)
// or the complete one.
func (p *Pending) CommitContext(ctx context.Context, m Manifest) (Manifest, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return Manifest{}, p.endedErr()
	}
	p.done = true
	out, err := p.commit(ctx, m)
	if err != nil {
		p.discard()
		return Manifest{}, fmt.Errorf("snapshot %q: commit: %w", p.id, err)
	}
	p.lockf.Close()
	return out, nil
}

// Abort drops the pending snapshot and its directory. It may be deferred
// right after Begin: after Commit or a previous Abort it does nothing and
// returns nil.
func (p *Pending) Abort() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return nil
	}
	p.done = true
	if err := p.discard(); err != nil {
		return fmt.Errorf("snapshot %q: abort: %w", p.id, err)
	}
	return nil
}

// discard removes the pending directory, then releases its lock.
func (p *Pending) discard() error {
	err := os.RemoveAll(p.dir)
	p.lockf.Close()
	return err
}

func (p *Pending) endedErr() error {
	return fmt.Errorf("snapshot %q: already committed or aborted: %w", p.id, microvm.ErrInvalidArgument)
}

func (p *Pending) commit(ctx context.Context, m Manifest) (Manifest, error) {
	if err := p.fill(&m); err != nil {
		return Manifest{}, err
	}
	state, err := p.openOutput(StateFileName)
	if err != nil {
		return Manifest{}, err
	}
	defer state.Close()
	mem, err := p.openOutput(MemoryFileName)
	if err != nil {
		return Manifest{}, err
	}
	defer func() { mem.Close() }()

	var parent Manifest
	var memSum *digest // known when merging computed it
	if m.Type == microvm.SnapshotDiff {
		parent, err = p.parentOf(m)
		if err != nil {
			return Manifest{}, err
		}
		var d digest
		if mem, d, err = p.merge(ctx, &m, parent, mem); err != nil {
			return Manifest{}, err
		}
		memSum = &d
		hook("merged")
	}
	memInfo, err := mem.Stat()
	if err != nil {
		return Manifest{}, err
	}
	if m.MemoryMiB == 0 {
		m.MemoryMiB = int((memInfo.Size() + 1<<20 - 1) >> 20)
	}

	m.Files = m.Files[:0]
	for _, f := range []*os.File{state, mem} {
		var d digest
		if f == mem && memSum != nil {
			d = *memSum
		} else {
			fi, err := f.Stat()
			if err != nil {
				return Manifest{}, err
			}
			if d, err = hashFile(ctx, f, fi.Size()); err != nil {
				return Manifest{}, fmt.Errorf("hash %s: %w", f.Name(), err)
			}
		}
		m.Files = append(m.Files, File{Name: filepath.Base(f.Name()), Size: d.Size, SHA256: d.SHA256})
		if err := f.Chmod(0o400); err != nil {
			return Manifest{}, err
		}
		if err := fsync(f); err != nil {
			return Manifest{}, fmt.Errorf("fsync %s: %w", f.Name(), err)
		}
	}
	hook("hashed")
	if err := m.check(p.id); err != nil {
		return Manifest{}, fmt.Errorf("manifest: %v: %w", err, microvm.ErrInvalidArgument)
	}
	raw, err := encodeManifest(m)
	if err != nil {
		return Manifest{}, fmt.Errorf("encode manifest: %w", err)
	}
	if err := writeAtomic(filepath.Join(p.dir, ManifestFileName), 0o400, func(f *os.File) error {
		_, err := f.Write(raw)
		return err
	}); err != nil {
		return Manifest{}, fmt.Errorf("write manifest: %w", err)
	}
	hook("manifest")
	if err := ctx.Err(); err != nil {
		return Manifest{}, err
	}
	if err := p.publish(m, parent); err != nil {
		return Manifest{}, err
	}
	hook("published")
	return m, nil
}

// fill checks m and fills in its defaults.
func (p *Pending) fill(m *Manifest) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("manifest: "+format+": %w", append(args, microvm.ErrInvalidArgument)...)
	}
	switch m.FormatVersion {
	case 0:
		m.FormatVersion = FormatVersion
	case FormatVersion:
	default:
		return bad("format_version must be 0 or %d (got %d)", FormatVersion, m.FormatVersion)
	}
	switch m.ID {
	case "":
		m.ID = p.id
	case p.id:
	default:
		return bad("id %q differs from the id %q given to Begin", truncate(m.ID, 80), p.id)
	}
	if m.Type == "" {
		m.Type = microvm.SnapshotFull
	}
	if err := checkTypeParent(p.id, m.Type, m.Parent); err != nil {
		return bad("%v", err)
	}
	if err := microvm.ValidateID(m.VMID); err != nil {
		return bad("vm_id: %v", err)
	}
	if _, err := parseFCVersion(m.FirecrackerVersion); err != nil {
		return bad("firecracker_version is required: %v", err)
	}
	if m.SnapshotFormatVersion != "" {
		if _, err := parseFormatVersion(m.SnapshotFormatVersion); err != nil {
			return bad("snapshot_format_version: %v", err)
		}
	}
	if m.MemoryMiB < 0 {
		return bad("memory_mib must be >= 0 (got %d)", m.MemoryMiB)
	}
	if m.MemoryMiB == 0 {
		m.MemoryMiB = m.Spec.MemoryMiB
	}
	if m.CreatedAt.IsZero() {
		m.CreatedAt = time.Now()
	}
	m.CreatedAt = m.CreatedAt.UTC().Round(0)
	m.Spec = m.Spec.Clone()
	m.Files = nil
	m.Diff = nil
	return nil
}

// openOutput opens a file Firecracker wrote into the pending directory.
func (p *Pending) openOutput(name string) (*os.File, error) {
	path := filepath.Join(p.dir, name)
	f, size, err := openRegular(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s is missing: Firecracker must write it before Commit", path)
	}
	if err != nil {
		return nil, err
	}
	if size == 0 {
		f.Close()
		return nil, fmt.Errorf("%s is empty", path)
	}
	return f, nil
}

// parentOf returns the manifest of a diff snapshot's parent.
func (p *Pending) parentOf(m Manifest) (Manifest, error) {
	parent, err := p.s.Get(m.Parent)
	if errors.Is(err, microvm.ErrSnapshotNotFound) {
		return Manifest{}, fmt.Errorf("parent snapshot %q does not exist: %w", m.Parent, microvm.ErrSnapshotNotFound)
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("parent: %w", err)
	}
	return parent, nil
}

// merge applies the diff memory file (diff, the pending memory file) onto
// the parent's memory, atomically replaces the pending memory file with
// the result and returns the result open, with its digest. diff is closed
// unless an error is returned.
func (p *Pending) merge(ctx context.Context, m *Manifest, parent Manifest, diff *os.File) (*os.File, digest, error) {
	ok, err := p.s.sparseSupported()
	if err != nil {
		return diff, digest{}, err
	}
	if !ok {
		return diff, digest{}, fmt.Errorf("the filesystem of %s does not report holes (SEEK_DATA/SEEK_HOLE), "+
			"so the data of a diff memory file cannot be told from its holes: %w", p.s.dir, microvm.ErrUnsupported)
	}
	fi, err := diff.Stat()
	if err != nil {
		return diff, digest{}, err
	}
	pmem, _ := parent.File(MemoryFileName)
	if fi.Size() != pmem.Size {
		return diff, digest{}, fmt.Errorf("diff memory file %s is %d bytes but parent %q's memory is %d bytes: "+
			"a diff must cover the same guest memory as its parent: %w",
			diff.Name(), fi.Size(), parent.ID, pmem.Size, microvm.ErrInvalidArgument)
	}
	parentPath := filepath.Join(p.s.snapDir(parent.ID), MemoryFileName)
	pf, psize, err := openRegular(parentPath)
	if err != nil {
		return diff, digest{}, fmt.Errorf("parent %q: %w", parent.ID, err)
	}
	defer pf.Close()
	if psize != pmem.Size {
		return diff, digest{}, &CorruptError{ID: parent.ID, File: parentPath, Reason: sizeReason(psize, pmem.Size)}
	}
	var applied int64
	var sum digest
	if err := writeAtomic(p.MemPath(), 0o600, func(out *os.File) error {
		var err error
		applied, sum, err = mergeAndHash(ctx, out, pf, psize, diff, fi.Size())
		return err
	}); err != nil {
		return diff, digest{}, fmt.Errorf("merge the diff onto parent %q's memory: %w", parent.ID, err)
	}
	m.Diff = &DiffInfo{Size: fi.Size(), DataBytes: applied, ParentMemorySHA256: pmem.SHA256}
	merged, _, err := openRegular(p.MemPath())
	if err != nil {
		return diff, digest{}, err
	}
	diff.Close()
	return merged, sum, nil
}

// publish makes the snapshot visible: under the store lock it checks that
// a diff's parent is still the one merged onto, renames the pending
// directory to its final name and fsyncs the store directory.
func (p *Pending) publish(m Manifest, parent Manifest) error {
	unlock, err := p.s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	if m.Type == microvm.SnapshotDiff {
		now, err := p.s.Get(parent.ID)
		if err != nil {
			return fmt.Errorf("parent snapshot %q was deleted during commit: %w", parent.ID, err)
		}
		if now.CreatedAt != parent.CreatedAt || now.Files[1].SHA256 != parent.Files[1].SHA256 {
			return fmt.Errorf("parent snapshot %q was replaced during commit: %w", parent.ID, microvm.ErrSnapshotNotFound)
		}
	}
	final := p.s.snapDir(p.id)
	if err := syncDir(p.dir); err != nil {
		return err
	}
	hook("rename")
	if err := renameNoReplace(p.dir, final); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s appeared meanwhile: %w", final, microvm.ErrSnapshotExists)
		}
		return err
	}
	if err := syncDir(p.s.dir); err != nil {
		// Not durable: take it back rather than report a failure for a
		// visible snapshot.
		if os.Rename(final, p.dir) == nil {
			return err
		}
		return fmt.Errorf("%w (and the snapshot could not be taken back: %s is visible)", err, final)
	}
	return nil
}

// moveFile moves src to dst: rename, or copy (holes preserved) and remove
// when they are on different filesystems.
func moveFile(src, dst string) error {
	err := os.Rename(src, dst)
	var le *os.LinkError
	if err == nil || !errors.As(err, &le) || !errors.Is(le.Err, syscall.EXDEV) {
		return err
	}
	in, size, err := openRegular(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := writeAtomic(dst, 0o600, func(out *os.File) error {
		return copySparse(context.Background(), out, in, size)
	}); err != nil {
		return err
	}
	return os.Remove(src)
}
