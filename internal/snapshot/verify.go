package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"syscall"
)

// Verify checks every file a restore of snapshot id reads: the state file
// and the memory file exist, are regular files, have the size and the
// SHA-256 recorded in the manifest. A missing, truncated or altered file,
// or a missing, invalid or newer-format manifest, gives a [*CorruptError]
// (matching [microvm.ErrSnapshotCorrupt]) naming the file; an unknown id
// gives [microvm.ErrSnapshotNotFound]; a done ctx stops it with ctx's
// error.
//
// A diff snapshot is verified on its own files only: Commit stored its
// memory already merged with the parent chain, so the parents are not read
// by a restore (and may even have been force-deleted). Hashing reads data
// extents and hashes holes as zeros without reading them; its cost is
// bounded by SHA-256 on one core (about 1.5 GiB/s with SHA-NI: some 170 ms
// per 256 MiB of memory; see the package's benchmarks). Verify does not check Firecracker version
// compatibility: see [Manifest.LoadableBy].
func (s *Store) Verify(ctx context.Context, id string) error {
	m, err := s.Get(id)
	if err != nil {
		return err
	}
	dir := s.snapDir(id)
	for _, f := range m.Files {
		if err := verifyFile(ctx, id, filepath.Join(dir, f.Name), f); err != nil {
			return err
		}
	}
	return nil
}

func verifyFile(ctx context.Context, id, path string, want File) error {
	corrupt := func(reason string, err error) error {
		return &CorruptError{ID: id, File: path, Reason: reason, Err: err}
	}
	f, err := openNoFollow(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return corrupt("file is missing", nil)
	case errors.Is(err, syscall.ELOOP):
		return corrupt("is a symbolic link, not the file written at commit", nil)
	case err != nil:
		return corrupt("cannot open", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return corrupt("cannot stat", err)
	}
	if !fi.Mode().IsRegular() {
		return corrupt(fmt.Sprintf("not a regular file (%s)", fi.Mode().Type()), nil)
	}
	if fi.Size() != want.Size {
		return corrupt(sizeReason(fi.Size(), want.Size), nil)
	}
	d, err := hashFile(ctx, f, fi.Size())
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) {
			return fmt.Errorf("snapshot %q: verify: %w", id, err)
		}
		return corrupt("cannot read", err)
	}
	if d.SHA256 != want.SHA256 {
		return corrupt(fmt.Sprintf("checksum mismatch: content has sha256 %s, the manifest says %s", d.SHA256, want.SHA256), nil)
	}
	return nil
}
