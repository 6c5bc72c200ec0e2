// Package snapshot is mvm's on-disk store of Firecracker snapshots. It is
// separate from VM directories, so a snapshot outlives the VM it was taken
// from, and many VMs can be restored from one snapshot.
//
// Who it is for: the firecracker runtime, which keeps its snapshots here.
// It is internal because its API follows the runtime's needs; embedders
// use snapshots through microvm.Runtime (Snapshot, Restore, Snapshots,
// DeleteSnapshot), which describes one with microvm.Snapshot, not with
// this package's Manifest.
//
// # Layout
//
//	<dir>/                      mode 0700
//	  .lock                     flock(2)ed for the short steps that make snapshots appear or vanish
//	  <id>/                     a committed snapshot
//	    manifest.json           Manifest (JSON), written last
//	    vmstate                 Firecracker's microVM state file       (0400)
//	    memory                  guest memory, self-contained            (0400)
//	  .pending-<id>/            a snapshot being created (Begin .. Commit/Abort)
//	  .trash-<id>-<random>/     a snapshot being deleted
//
// Hidden names are never snapshots: snapshot ids cannot start with '.'.
//
// # Creating and restoring
//
// A runtime creating a snapshot calls [Store.Begin], points Firecracker's
// PUT /snapshot/create at [Pending.StatePath] and [Pending.MemPath], then
// calls [Pending.Commit] with a [Manifest] describing the snapshot, or
// [Pending.Abort] when anything failed (Abort may simply be deferred).
// Commit can run after the VM has been resumed: it only reads the files
// Firecracker has finished writing.
//
// To restore, it calls [Store.Verify] (unless the caller skips
// verification), checks [Manifest.LoadableBy] against the Firecracker it
// will run, and loads [Store.Paths] / [Store.MemoryFile] with PUT
// /snapshot/load. The memory file must stay unchanged while VMs map it;
// the store never writes into a committed snapshot, and the files are
// read-only (0400).
//
// # Diff snapshots: merged at Commit
//
// Firecracker writes a diff snapshot's memory as a sparse file as large as
// guest memory that holds only the pages dirtied since the parent, at
// their offsets, with holes elsewhere; loading it needs it merged onto the
// parent's memory in creation order (Firecracker's `snapshot-editor
// edit-memory rebase`). This store merges at Commit: the diff is applied
// to a copy of the parent's (already self-contained) memory with
// [MergeSparse] and the result is stored as the diff snapshot's memory
// file. Every snapshot is therefore self-contained and restoring a diff
// snapshot costs the same as restoring a full one. Why at Commit rather
// than lazily when first restored:
//
//   - restore latency is what matters most (a sandbox is a resumed
//     snapshot); a lazy merge would put a copy of the whole guest memory
//     on the first restore, plus the verification of every parent;
//   - committed snapshots stay immutable: there is no cache file to build,
//     lock, validate or clean up inside a snapshot that VMs may be mapping;
//   - a chain never has to be walked: each merge is one step onto the
//     parent's merged memory, Verify reads only the snapshot's own files,
//     and a force-deleted parent breaks no child.
//
// The cost is disk space and Commit time: a diff snapshot takes as much
// disk as the parent's memory (its data extents), except on filesystems
// with reflinks (XFS, btrfs), where the parent is cloned (FICLONE) and only
// the dirty pages take new space. Elsewhere the copy runs in the kernel
// (copy_file_range). The raw diff is not kept; the manifest records its
// size and how many bytes were dirty ([DiffInfo]). Merging needs a
// filesystem that reports holes (lseek SEEK_DATA/SEEK_HOLE: ext4, XFS,
// btrfs, tmpfs); on one that does not, diff commits fail with
// [microvm.ErrUnsupported] instead of silently treating holes as zero
// pages.
//
// # Integrity and crash safety
//
// Commit records each file's size and SHA-256 (the same as `sha256sum`;
// holes are hashed as zeros without being read). Everything is fsynced and
// the manifest is written atomically before the pending directory is
// renamed to its final name, atomically and without replacing anything,
// and the store directory is fsynced. So a process killed at any point of
// Commit leaves either no snapshot or a complete one that verifies.
//
// Every pending directory is flock(2)ed by its [Pending] from Begin to
// Commit or Abort. The kernel drops that lock when the process dies, so
// [Open] (and [Store.Cleanup]) remove exactly the pending directories whose
// creator is gone, whatever their age, and never one another live process
// is writing. Delete renames a snapshot to a hidden name before removing
// it, so a crash during removal never leaves a snapshot that looks valid.
//
// All errors match the root package's sentinels: [microvm.ErrSnapshotExists],
// [microvm.ErrSnapshotNotFound], [microvm.ErrSnapshotInUse], and
// [microvm.ErrSnapshotCorrupt] through [*CorruptError], which names the
// file at fault.
package snapshot
