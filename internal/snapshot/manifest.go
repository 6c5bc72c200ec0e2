package snapshot

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	microvm "github.com/mvm-dev/microvm"
)

// FormatVersion is the version of the store's on-disk format (the layout
// and manifest.json) that this package writes. It reads this version and
// older ones; a snapshot written in a newer format is refused as
// incompatible ([microvm.ErrSnapshotCorrupt]) rather than misread.
const FormatVersion = 1

// Names of the files in a snapshot's directory.
const (
	// ManifestFileName describes the snapshot (a [Manifest], JSON).
	ManifestFileName = "manifest.json"
	// StateFileName is Firecracker's microVM state file (snapshot_path).
	StateFileName = "vmstate"
	// MemoryFileName is the guest memory file (mem_file_path). For a diff
	// snapshot it is the merged, self-contained memory (see the package
	// documentation).
	MemoryFileName = "memory"
)

// maxManifestSize bounds what is read of a manifest.
const maxManifestSize = 16 << 20

// Manifest describes a committed snapshot. It is stored as
// <store>/<id>/manifest.json, written last and atomically, so a snapshot
// directory with a valid manifest is complete.
type Manifest struct {
	// FormatVersion is the store format the snapshot was written in;
	// Commit sets it to [FormatVersion].
	FormatVersion int `json:"format_version"`
	// ID is the snapshot's id; Commit fills it in from Begin.
	ID string `json:"id"`
	// VMID is the VM the snapshot was taken from. Required.
	VMID string `json:"vm_id"`
	// Type is full or diff; empty means full.
	Type microvm.SnapshotType `json:"type"`
	// Parent is the snapshot a diff snapshot was taken on top of: the
	// snapshot the VM was restored from, or an earlier snapshot of the
	// same VM. Required for diff snapshots, refused for full ones.
	Parent string `json:"parent,omitempty"`
	// CreatedAt is when the snapshot was taken; Commit sets it to the
	// current time when zero. Stored in UTC.
	CreatedAt time.Time `json:"created_at"`
	// FirecrackerVersion is the version of the Firecracker that made the
	// snapshot, e.g. "1.10.1" (GET / vmm_version, or `firecracker
	// --version`). Required: it decides where the snapshot may be loaded
	// (see [Compatible]).
	FirecrackerVersion string `json:"firecracker_version"`
	// SnapshotFormatVersion is the snapshot data format version of the
	// state file ("MAJOR.MINOR.PATCH", `firecracker --snapshot-version`),
	// when known. Optional; with it [Manifest.LoadableBy] applies
	// Firecracker's exact load rule.
	SnapshotFormatVersion string `json:"snapshot_format_version,omitempty"`
	// Spec is the VM's spec when the snapshot was taken.
	Spec microvm.Spec `json:"spec"`
	// MemoryMiB is the guest memory in MiB; Commit takes Spec.MemoryMiB
	// when zero, else the memory file's size rounded up.
	MemoryMiB int `json:"memory_mib"`
	// Files lists the snapshot's files, state file first, then memory;
	// Commit fills it in (any value given is replaced).
	Files []File `json:"files"`
	// Diff describes the diff memory Firecracker wrote, for a diff
	// snapshot; Commit fills it in.
	Diff *DiffInfo `json:"diff,omitempty"`
}

// File is one file of a snapshot.
type File struct {
	// Name is the file's name in the snapshot's directory.
	Name string `json:"name"`
	// Size is its size in bytes.
	Size int64 `json:"size"`
	// SHA256 is the hex SHA-256 of its content (holes read as zeros; the
	// same as `sha256sum`).
	SHA256 string `json:"sha256"`
}

// DiffInfo records how a diff snapshot's memory was made.
type DiffInfo struct {
	// Size is the size of the diff memory file Firecracker wrote.
	Size int64 `json:"size"`
	// DataBytes is how much of it was data (dirty pages); the rest were
	// holes.
	DataBytes int64 `json:"data_bytes"`
	// ParentMemorySHA256 is the SHA-256 of the parent's memory the diff
	// was merged onto, as recorded in the parent's manifest.
	ParentMemorySHA256 string `json:"parent_memory_sha256"`
}

// File returns the snapshot's file called name.
func (m Manifest) File(name string) (File, bool) {
	for _, f := range m.Files {
		if f.Name == name {
			return f, true
		}
	}
	return File{}, false
}

// Size is the total size of the snapshot's files, in bytes.
func (m Manifest) Size() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// check validates a manifest read from disk for snapshot id; the error
// text is the rule broken.
func (m *Manifest) check(id string) error {
	switch {
	case m.FormatVersion < 1:
		return fmt.Errorf("format_version must be at least 1 (got %d)", m.FormatVersion)
	case m.ID != id:
		return fmt.Errorf("id %q does not match the directory name %q", truncate(m.ID, 80), id)
	case m.CreatedAt.IsZero():
		return errors.New("created_at is missing")
	}
	if err := microvm.ValidateID(m.VMID); err != nil {
		return fmt.Errorf("vm_id: %v", err)
	}
	if err := checkTypeParent(m.ID, m.Type, m.Parent); err != nil {
		return err
	}
	if _, err := parseFCVersion(m.FirecrackerVersion); err != nil {
		return fmt.Errorf("firecracker_version: %v", err)
	}
	if m.SnapshotFormatVersion != "" {
		if _, err := parseFormatVersion(m.SnapshotFormatVersion); err != nil {
			return fmt.Errorf("snapshot_format_version: %v", err)
		}
	}
	if len(m.Files) != 2 || m.Files[0].Name != StateFileName || m.Files[1].Name != MemoryFileName {
		return fmt.Errorf("files must list %q and %q, in that order", StateFileName, MemoryFileName)
	}
	for i, f := range m.Files {
		if f.Size < 0 {
			return fmt.Errorf("files[%d].size must be >= 0 (got %d)", i, f.Size)
		}
		if !isHexSHA256(f.SHA256) {
			return fmt.Errorf("files[%d].sha256 must be 64 lowercase hex digits", i)
		}
	}
	if m.MemoryMiB < 1 {
		return fmt.Errorf("memory_mib must be at least 1 (got %d)", m.MemoryMiB)
	}
	if (m.Type == microvm.SnapshotDiff) != (m.Diff != nil) {
		return errors.New("diff must be present exactly for diff snapshots")
	}
	if m.Diff != nil && !isHexSHA256(m.Diff.ParentMemorySHA256) {
		return errors.New("diff.parent_memory_sha256 must be 64 lowercase hex digits")
	}
	return nil
}

// checkTypeParent checks the type and parent of snapshot id.
func checkTypeParent(id string, typ microvm.SnapshotType, parent string) error {
	switch typ {
	case microvm.SnapshotFull:
		if parent != "" {
			return fmt.Errorf("parent must be empty for a %s snapshot (got %q)", typ, truncate(parent, 80))
		}
	case microvm.SnapshotDiff:
		if parent == "" {
			return fmt.Errorf("parent is required for a %s snapshot", typ)
		}
		if err := microvm.ValidateSnapshotID(parent); err != nil {
			return fmt.Errorf("parent: %v", err)
		}
		if parent == id {
			return fmt.Errorf("parent must not be the snapshot itself (%q)", id)
		}
	default:
		return fmt.Errorf("type must be %q or %q (got %q)", microvm.SnapshotFull, microvm.SnapshotDiff, truncate(string(typ), 40))
	}
	return nil
}

func isHexSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// readManifest reads and validates the manifest of snapshot id in dir (the
// snapshot's directory). A missing directory is ErrSnapshotNotFound;
// anything wrong with the manifest is a *CorruptError.
func readManifest(dir, id string) (Manifest, error) {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return Manifest{}, notFound(id)
	}
	if err != nil {
		return Manifest{}, fmt.Errorf("snapshot %q: %w", id, err)
	}
	if !fi.IsDir() {
		return Manifest{}, &CorruptError{ID: id, File: dir, Reason: fmt.Sprintf("not a directory (%s)", fi.Mode().Type())}
	}
	path := filepath.Join(dir, ManifestFileName)
	corrupt := func(reason string, err error) (Manifest, error) {
		return Manifest{}, &CorruptError{ID: id, File: path, Reason: reason, Err: err}
	}
	f, err := openNoFollow(path)
	if errors.Is(err, fs.ErrNotExist) {
		return corrupt("manifest is missing", nil)
	}
	if err != nil {
		return corrupt("cannot open the manifest", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return corrupt("cannot read the manifest", err)
	}
	if len(raw) > maxManifestSize {
		return corrupt(fmt.Sprintf("manifest is larger than %d bytes", maxManifestSize), nil)
	}
	var probe struct {
		FormatVersion *int `json:"format_version"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return corrupt("manifest is not valid JSON", err)
	}
	if probe.FormatVersion == nil {
		return corrupt("manifest has no format_version", nil)
	}
	if v := *probe.FormatVersion; v > FormatVersion {
		return corrupt(fmt.Sprintf("incompatible: written in store format %d, newer than the %d this build reads", v, FormatVersion), nil)
	}
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return corrupt("manifest does not decode", err)
	}
	if err := m.check(id); err != nil {
		return corrupt("invalid manifest: "+err.Error(), nil)
	}
	return m, nil
}

// encodeManifest is the manifest's file content.
func encodeManifest(m Manifest) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(m); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}
