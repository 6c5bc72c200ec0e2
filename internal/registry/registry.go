package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	dirPerm  = 0o700
	filePerm = 0o600

	recordExt = ".json"
	tmpPrefix = ".tmp-"

	// StaleTempAge is how old a temporary file must be before Open removes
	// it. Younger ones may belong to a write in progress in another process.
	StaleTempAge = time.Minute
)

// Registry is a handle on a state directory. It is safe for concurrent use
// by multiple goroutines, and several processes may open the same directory
// at once. Obtain one with Open.
type Registry struct {
	dir    string
	closed atomic.Bool
	kinds  sync.Map // kind -> struct{}: kind directory exists and its entry was synced
	// syncers: directory -> *dirSyncer, the group commit of its fsyncs
	// (see groupsync.go).
	syncers sync.Map

	mu   sync.Mutex
	held map[*heldLock]struct{} // locks to release on Close
}

// Open opens the registry rooted at dir, creating dir (mode 0700, parents
// as needed) and its locks directory if missing. It fails with a clear error
// when dir is not a directory or is not writable. Open removes temporary
// files older than StaleTempAge left by writers that crashed; younger ones
// are left alone (List and Get ignore them).
func Open(dir string) (*Registry, error) {
	if dir == "" {
		return nil, errors.New("registry: open: empty directory path")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("registry: open %q: %w", dir, err)
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.MkdirAll(abs, dirPerm); err != nil {
			return nil, fmt.Errorf("registry: open %q: create directory: %w", abs, err)
		}
		// MkdirAll's mode is filtered by the umask; set it exactly.
		if err := os.Chmod(abs, dirPerm); err != nil {
			return nil, fmt.Errorf("registry: open %q: %w", abs, err)
		}
		if err := syncDir(filepath.Dir(abs)); err != nil {
			return nil, fmt.Errorf("registry: open %q: %w", abs, err)
		}
	case err != nil:
		return nil, fmt.Errorf("registry: open %q: %w", abs, err)
	case !fi.IsDir():
		return nil, fmt.Errorf("registry: open %q: exists and is not a directory", abs)
	}
	if err := unix.Access(abs, unix.W_OK|unix.X_OK); err != nil {
		return nil, fmt.Errorf("registry: open %q: directory is not writable: %w", abs, err)
	}
	if err := ensureDir(filepath.Join(abs, locksDir)); err != nil {
		return nil, fmt.Errorf("registry: open %q: %w", abs, err)
	}
	if err := ensureLockTable(filepath.Join(abs, locksDir, lockTable)); err != nil {
		return nil, fmt.Errorf("registry: open %q: %w", abs, err)
	}
	removeStaleTemps(abs, time.Now().Add(-StaleTempAge))
	return &Registry{dir: abs, held: make(map[*heldLock]struct{})}, nil
}

// Dir returns the absolute path of the registry's root directory.
func (r *Registry) Dir() string {
	if r == nil {
		return ""
	}
	return r.dir
}

// Put stores v, encoded as JSON, as the record kind/id, replacing any
// previous record. The replacement is atomic and durable: the envelope is
// written to a temporary file in the same directory, fsynced, renamed over
// the record, and the directory is fsynced (an fsync shared with
// concurrent writers of the same directory, begun after the rename; see
// the package doc). A crash at any point leaves either the old or the new
// record.
func (r *Registry) Put(kind, id string, v any) error {
	return r.write("put", kind, id, v, false)
}

// Create is Put that fails with an error wrapping ErrExists if the record
// already exists. It is atomic across goroutines and processes: the fsynced
// temporary file is hard-linked to the record name, which fails if the name
// exists, so exactly one of several racing Creates succeeds.
func (r *Registry) Create(kind, id string, v any) error {
	return r.write("create", kind, id, v, true)
}

// PutUnsynced is Put without the fsyncs: the replacement is atomic, and
// survives a crash or SIGKILL of the writer (the kernel's page cache keeps
// it), but not a crash of the host. It is for records whose content only
// matters while processes of the current boot live (for example a mark of
// an operation in progress on a running process); a later Put makes the
// record durable again.
func (r *Registry) PutUnsynced(kind, id string, v any) error {
	w, err := r.prepare("put", kind, id, v, false)
	if err != nil {
		return err
	}
	return w.commit(false, false)
}

// Pending is a record write prepared by [Registry.Prepare]: its envelope
// is written and fsynced to a temporary file, and nothing is visible until
// Commit or CommitNew. Exactly one of Commit, CommitNew and Discard must
// be called; a Pending is not safe for concurrent use.
type Pending struct {
	r            *Registry
	op, kind, id string
	kdir, tmp    string
	done         bool
}

// Prepare does the slow part of a Put or Create ahead of time: it encodes
// v and writes and fsyncs the temporary file, so that the commit (a rename
// or link and the directory's fsync) is all that remains. A caller can
// thus overlap the file's fsync with other work and make the record appear
// only when that work succeeded.
func (r *Registry) Prepare(kind, id string, v any) (*Pending, error) {
	return r.prepare("put", kind, id, v, true)
}

// Commit makes the prepared record visible and durable, replacing any
// previous record: Put's rename and directory fsync.
func (w *Pending) Commit() error { return w.commit(false, true) }

// CommitNew is Commit that fails with an error wrapping ErrExists if the
// record exists: Create's link.
func (w *Pending) CommitNew() error { w.op = "create"; return w.commit(true, true) }

// Discard removes the temporary file of a write that will not be
// committed. Discarding a committed or discarded write does nothing.
func (w *Pending) Discard() {
	if !w.done {
		w.done = true
		os.Remove(w.tmp)
	}
}

func (r *Registry) write(op, kind, id string, v any, exclusive bool) error {
	w, err := r.prepare(op, kind, id, v, true)
	if err != nil {
		return err
	}
	return w.commit(exclusive, true)
}

// prepare validates, encodes and writes v to a temporary file of the
// kind's directory, fsynced when sync is set.
func (r *Registry) prepare(op, kind, id string, v any, sync bool) (*Pending, error) {
	if err := r.check(kind, id); err != nil {
		return nil, err
	}
	fail := func(err error) error { return fmt.Errorf("registry: %s %s/%s: %w", op, kind, id, err) }
	buf, err := encode(kind, id, time.Now().UTC().Format(time.RFC3339Nano), v)
	if err != nil {
		return nil, fail(err)
	}
	kdir, err := r.kindDir(kind)
	if err != nil {
		return nil, fail(err)
	}
	tmp, err := writeTemp(kdir, tmpPrefix+id+"-*", buf, sync)
	if err != nil {
		return nil, fail(err)
	}
	return &Pending{r: r, op: op, kind: kind, id: id, kdir: kdir, tmp: tmp}, nil
}

// commit renames (or, exclusive, links) the temporary file to the record
// name, then fsyncs the directory when sync is set.
func (w *Pending) commit(exclusive, sync bool) error {
	if w.done {
		return fmt.Errorf("registry: %s %s/%s: write already committed or discarded", w.op, w.kind, w.id)
	}
	w.done = true
	fail := func(err error) error { return fmt.Errorf("registry: %s %s/%s: %w", w.op, w.kind, w.id, err) }
	final := filepath.Join(w.kdir, w.id+recordExt)
	var err error
	if exclusive {
		err = os.Link(w.tmp, final)
		// Once linked the record exists; a temp file that cannot be
		// removed is harmless and a later Open sweeps it.
		os.Remove(w.tmp)
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s/%s", ErrExists, w.kind, w.id)
		}
	} else if err = os.Rename(w.tmp, final); err != nil {
		os.Remove(w.tmp)
	}
	if err != nil {
		return fail(err)
	}
	if !sync {
		return nil
	}
	if err := w.r.syncDirGrouped(w.kdir); err != nil {
		return fail(err)
	}
	return nil
}

// Get decodes the record kind/id into v, which must be a pointer as for
// json.Unmarshal; a nil v only checks that the record is readable.
// It returns an error wrapping ErrNotFound if there is no record, a
// *CorruptError (matching ErrCorrupt) if the file is unreadable, not a valid
// envelope, names another kind or id, or does not decode into v, and an
// error wrapping ErrSchema if the record's schema is newer than
// SchemaVersion. Older schemas are migrated in memory.
func (r *Registry) Get(kind, id string, v any) error {
	if err := r.check(kind, id); err != nil {
		return err
	}
	path := r.path(kind, id)
	raw, err := readFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s/%s", ErrNotFound, kind, id)
	}
	if err != nil {
		return &CorruptError{Path: path, Err: err}
	}
	env, err := decode(path, kind, id, raw, SchemaVersion, migrations)
	if err != nil {
		return err
	}
	if v == nil {
		return nil
	}
	if err := json.Unmarshal(env.Data, v); err != nil {
		var invalid *json.InvalidUnmarshalError
		if errors.As(err, &invalid) {
			return fmt.Errorf("registry: get %s/%s: %w", kind, id, err)
		}
		return &CorruptError{Path: path, Err: fmt.Errorf("decode data: %w", err)}
	}
	return nil
}

// Delete removes the record kind/id and fsyncs its directory. Deleting a
// record that does not exist is not an error.
func (r *Registry) Delete(kind, id string) error {
	if err := r.check(kind, id); err != nil {
		return err
	}
	err := os.Remove(r.path(kind, id))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("registry: delete %s/%s: %w", kind, id, err)
	}
	// Sync even when the record was already gone: an earlier Delete may
	// have unlinked it and then failed to sync.
	if err := r.syncDirGrouped(filepath.Join(r.dir, kind)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("registry: delete %s/%s: %w", kind, id, err)
	}
	return nil
}

// List returns the ids of all records of kind, sorted. It ignores temporary
// and other hidden files and names that are not valid record ids; a corrupt
// record is still listed (Get reports it). A kind with no records gives an
// empty slice.
func (r *Registry) List(kind string) ([]string, error) {
	ents, err := r.kindEntries(kind, "list")
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(ents))
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), recordExt)
		if ok && ValidateID(id) == nil {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids) // file-name order differs from id order ("a-b.json" < "a.json")
	return ids, nil
}

// kindEntries validates kind and reads its directory; a kind with no
// directory yet has no entries. what names the operation in the error.
func (r *Registry) kindEntries(kind, what string) ([]os.DirEntry, error) {
	if err := ValidateKind(kind); err != nil {
		return nil, err
	}
	if err := r.usable(); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(filepath.Join(r.dir, kind))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("registry: %s %s: %w", what, kind, err)
	}
	return ents, nil
}

// Close releases any locks still held through this Registry and makes
// further calls fail with ErrClosed. Unlock functions stay safe to call.
// Closing twice is not an error.
func (r *Registry) Close() error {
	if r == nil || !r.closed.CompareAndSwap(false, true) {
		return nil
	}
	r.mu.Lock()
	held := r.held
	r.held = nil
	r.mu.Unlock()
	var errs []error
	for h := range held {
		errs = append(errs, h.release())
	}
	return errors.Join(errs...)
}

// check validates kind and id, then that r is usable.
func (r *Registry) check(kind, id string) error {
	if err := ValidateKind(kind); err != nil {
		return err
	}
	if err := ValidateID(id); err != nil {
		return err
	}
	return r.usable()
}

func (r *Registry) usable() error {
	if r == nil || r.dir == "" || r.closed.Load() {
		return ErrClosed
	}
	return nil
}

// path returns the record file of a validated kind and id.
func (r *Registry) path(kind, id string) string {
	return filepath.Join(r.dir, kind, id+recordExt)
}

// kindDir returns the directory of a validated kind, creating it durably the
// first time this Registry needs it.
func (r *Registry) kindDir(kind string) (string, error) {
	kdir := filepath.Join(r.dir, kind)
	if _, ok := r.kinds.Load(kind); ok {
		return kdir, nil
	}
	if err := ensureDir(kdir); err != nil {
		return "", err
	}
	r.kinds.Store(kind, struct{}{})
	return kdir, nil
}

// ensureDir creates path with mode 0700 if missing and makes its entry in
// the parent durable. An existing directory is accepted as is.
func ensureDir(path string) error {
	err := os.Mkdir(path, dirPerm)
	switch {
	case err == nil:
		if err := os.Chmod(path, dirPerm); err != nil { // umask-independent
			return err
		}
	case errors.Is(err, fs.ErrExist):
		fi, err := os.Stat(path)
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", path)
		}
	default:
		return err
	}
	// Sync the parent even if another process created the directory: its
	// entry may not be durable yet.
	return syncDir(filepath.Dir(path))
}

// writeTemp writes buf to a new file (mode 0600) in dir named after
// pattern (see os.CreateTemp), fsyncs it when sync is set, closes it, and
// returns its path. On error nothing is left behind.
func writeTemp(dir, pattern string, buf []byte, sync bool) (name string, err error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(filePerm); err != nil { // umask-independent
		return "", err
	}
	if _, err := f.Write(buf); err != nil {
		return "", err
	}
	if sync {
		if err := fsync(f); err != nil {
			return "", err
		}
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return f.Name(), nil
}

// readFile is os.ReadFile with plain system calls: a record is read in one
// or two reads, without the runtime poller's set-up for the descriptor,
// which costs more system calls than the read itself (List-heavy callers
// read every record).
func readFile(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	buf := make([]byte, 0, 4096)
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := unix.Read(fd, buf[len(buf):cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			return buf, nil
		}
		buf = buf[:len(buf)+n]
	}
}

// ensureLockTable creates the lock table (mode 0600) if missing.
func ensureLockTable(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, filePerm)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	err = f.Chmod(filePerm) // umask-independent
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// fsync flushes a file or directory to stable storage. Every fsync of the
// registry goes through it, so that tests can count fsyncs and make them
// fail (see export_test.go): a skipped fsync is otherwise invisible.
var fsync = (*os.File).Sync

// syncDir fsyncs a directory so that entries created, renamed or removed in
// it survive a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = fsync(d)
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// removeStaleTemps removes temporary files last modified before cutoff
// from every kind directory under root. It is best effort: a file it cannot
// stat or remove is left for a later Open, and is ignored by List and Get.
func removeStaleTemps(root string, cutoff time.Time) {
	kinds, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, k := range kinds {
		if !k.IsDir() || ValidateKind(k.Name()) != nil {
			continue
		}
		kdir := filepath.Join(root, k.Name())
		ents, err := os.ReadDir(kdir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), tmpPrefix) || !e.Type().IsRegular() {
				continue
			}
			if info, err := e.Info(); err == nil && info.ModTime().Before(cutoff) {
				os.Remove(filepath.Join(kdir, e.Name()))
			}
		}
	}
}
