package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/image"
	"github.com/mvm-dev/microvm/image/store"
	"github.com/mvm-dev/microvm/internal/registry"
)

// This file gives each VM whose drives name an image (Drive.Image) its own
// copy-on-write clone of it. Create leases the image in the store
// (store.Use, one lease per VM id), clones it into the VM directory as
// disk-<drive id>.ext4 (grown to Drive.SizeBytes) and records the clone as
// the drive's Path. The lease is named in the record (ImageLeases) before
// it is taken, and released with the VM (see held); leases whose VM has no
// record are released at Open. A snapshot keeps a clone of each such disk
// beside its memory, and a restored VM gets its own clone of that copy:
// no two VMs share a writable clone.

// diskFile is the name of a drive's clone in a VM or snapshot directory.
func diskFile(driveID string) string { return "disk-" + driveID + ".ext4" }

// usesImages reports whether a drive of spec names an image.
func usesImages(spec microvm.Spec) bool {
	for _, d := range specDriveList(spec) {
		if d.Image != "" {
			return true
		}
	}
	return false
}

// imageDrives calls fn with each drive of spec that names an image.
func imageDrives(spec *microvm.Spec, fn func(field string, d *microvm.Drive) error) error {
	if spec.RootDrive.Image != "" {
		if err := fn("root_drive", &spec.RootDrive); err != nil {
			return err
		}
	}
	for i := range spec.Drives {
		if spec.Drives[i].Image != "" {
			if err := fn(fmt.Sprintf("drives[%d]", i), &spec.Drives[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// checkImageDrives refuses a Create spec that gives an image drive a
// path as well: the path is the runtime's (the VM's clone).
func checkImageDrives(spec microvm.Spec) error {
	var problems []microvm.FieldError
	imageDrives(&spec, func(field string, d *microvm.Drive) error {
		if d.Path != "" {
			problems = append(problems, microvm.FieldError{Field: field + ".path",
				Rule: "must be empty when image is set (the VM runs from its own clone of the image)"})
		}
		return nil
	})
	if len(problems) > 0 {
		return &microvm.SpecError{Problems: problems}
	}
	return nil
}

// cloneImages leases and clones the images rec's drives name (see the
// file comment). rec's record exists; on error what was made is released
// with the VM (the lease through the record, the clone with the VM
// directory).
func (r *Runtime) cloneImages(ctx context.Context, rec *vmRecord) error {
	return imageDrives(&rec.Spec, func(field string, d *microvm.Drive) error {
		if !slices.Contains(rec.ImageLeases, d.Image) {
			rec.ImageLeases = append(rec.ImageLeases, d.Image)
			if err := r.save(rec); err != nil {
				return err
			}
		}
		img, err := r.images.Use(d.Image, rec.ID)
		if err != nil {
			return fmt.Errorf("%s.image: %w", field, err)
		}
		if d.SizeBytes != 0 && d.SizeBytes < img.SizeBytes {
			return invalidArg("%s.size_bytes: %d is smaller than image %q (%d bytes); a clone can only grow", field, d.SizeBytes, d.Image, img.SizeBytes)
		}
		return r.cloneDisk(ctx, rec, field, d, img.Path)
	})
}

// cloneDisk clones src into rec's VM directory as d's disk and makes it
// d's Path.
func (r *Runtime) cloneDisk(ctx context.Context, rec *vmRecord, field string, d *microvm.Drive, src string) error {
	dir := r.paths(rec.ID).dir
	if err := mkdirPrivate(dir); err != nil {
		return fmt.Errorf("create vm directory: %w", err)
	}
	dst := filepath.Join(dir, diskFile(d.ID))
	if err := removeIfExists(dst); err != nil {
		return err
	}
	if _, err := image.Clone(ctx, src, dst, image.CloneOptions{SizeBytes: d.SizeBytes}); err != nil {
		return fmt.Errorf("%s: clone image %q: %w", field, d.Image, err)
	}
	d.Path = dst
	return nil
}

// snapshotDisks keeps, in a pending snapshot's directory, a clone of each
// image drive's disk of rec (whose vCPUs are paused).
func (r *Runtime) snapshotDisks(ctx context.Context, rec *vmRecord, pendingDir string) error {
	spec := rec.Spec
	return imageDrives(&spec, func(field string, d *microvm.Drive) error {
		if _, err := image.Clone(ctx, d.Path, filepath.Join(pendingDir, diskFile(d.ID)), image.CloneOptions{}); err != nil {
			return fmt.Errorf("%s: keep a copy of the disk: %w", field, err)
		}
		return nil
	})
}

// forgetClonePaths clears the paths of a snapshot spec's image drives:
// they name the clones of the VM the snapshot was taken from.
func forgetClonePaths(spec *microvm.Spec) {
	imageDrives(spec, func(_ string, d *microvm.Drive) error {
		d.Path = ""
		return nil
	})
}

// restoreDisks gives a VM restored from snapshot snapID its own clone of
// each image drive's disk the snapshot kept.
func (r *Runtime) restoreDisks(ctx context.Context, rec *vmRecord, snapID string) error {
	snapDir := filepath.Join(r.snaps.Dir(), snapID)
	return imageDrives(&rec.Spec, func(field string, d *microvm.Drive) error {
		src := filepath.Join(snapDir, diskFile(d.ID))
		if _, err := os.Stat(src); err != nil {
			return fmt.Errorf("%s: snapshot %q has no copy of the disk of image %q (%s): %w", field, snapID, d.Image, src, microvm.ErrSnapshotCorrupt)
		}
		size := d.SizeBytes
		d.SizeBytes = 0 // the copy already has the VM's size
		err := r.cloneDisk(ctx, rec, field, d, src)
		d.SizeBytes = size
		return err
	})
}

// fcDrive is firecracker's view of drive d's file. A clone in the VM
// directory is given by its name, relative to firecracker's working
// directory (the VM directory): a snapshot then records that name, and a
// VM restored from it opens its own clone.
func (p vmPaths) fcDrive(d microvm.Drive) string {
	if p.root == "" && d.Image != "" && filepath.Dir(d.Path) == p.dir {
		return filepath.Base(d.Path)
	}
	return p.fcFile(d.Path)
}

// openImages opens the runtime's image store.
func openImages(cfg Config, state string) (*store.Store, error) {
	if cfg.Images != nil {
		return cfg.Images, nil
	}
	s, err := store.Open(filepath.Join(state, "images"))
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	return s, nil
}

// sweepLeases releases image leases held by VMs that have no record (a
// Destroy or an undone Create cut short after the lease was taken, or a
// record removed by hand), under each VM's lock.
func (r *Runtime) sweepLeases() {
	imgs, err := r.images.List()
	if err != nil {
		r.log.Warn("list images", "err", err)
		return
	}
	for _, img := range imgs {
		users, err := r.images.Users(img.Name)
		if err != nil {
			continue
		}
		for _, id := range users {
			if microvm.ValidateID(id) != nil {
				continue
			}
			unlock, ok := r.tryLockVM(id)
			if !ok {
				continue
			}
			err := r.reg.Get(kindVM, id, nil)
			if errors.Is(err, registry.ErrNotFound) {
				if rerr := r.images.Release(img.Name, id); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
					r.log.Warn("release orphan image lease", "image", img.Name, "vm", id, "err", rerr)
				} else {
					r.log.Info("released image lease of a vm without a record", "image", img.Name, "vm", id)
				}
				r.reg.RemoveLock("vm-" + id) // while held (see RemoveLock)
				unlock()
				continue
			}
			unlock()
		}
	}
}

// moveClonePaths points spec's image drives whose clones are in fromDir
// to the same names in toDir.
func moveClonePaths(spec *microvm.Spec, fromDir, toDir string) {
	imageDrives(spec, func(_ string, d *microvm.Drive) error {
		if filepath.Dir(d.Path) == fromDir {
			d.Path = filepath.Join(toDir, filepath.Base(d.Path))
		}
		return nil
	})
}

// leaseImages takes rec's leases (named in its record, written) under
// its id; on error the leases taken are released.
func (r *Runtime) leaseImages(rec *vmRecord) error {
	for i, name := range rec.ImageLeases {
		if _, err := r.images.Use(name, rec.ID); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				continue // removed by force: the clone does not need it
			}
			r.releaseImages(rec.ImageLeases[:i], rec.ID)
			return fmt.Errorf("lease image %q for vm %q: %w", name, rec.ID, err)
		}
	}
	return nil
}

// releaseImages releases id's leases on names, logging failures (a lease
// left is released at the next Open, its VM having no record).
func (r *Runtime) releaseImages(names []string, id string) {
	for _, name := range names {
		if err := r.images.Release(name, id); err != nil {
			r.log.Warn("release image lease", "image", name, "vm", id, "err", err)
		}
	}
}
