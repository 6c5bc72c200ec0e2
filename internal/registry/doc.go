// Package registry is the durable on-disk record of VMs, snapshots and
// network leases kept under a state directory, so that a new process sees
// what an earlier one made. It stores intent and bookkeeping (specs, ids,
// paths, pids, start times), never liveness: a record says a VM was started,
// not that it still runs.
//
// Who it is for: the firecracker runtime, which keeps its VM records and
// locks in it, and package network, whose FileStore (the network.Store
// embedders get from network.OpenStore) is a Registry. It is internal
// because its API follows the runtime's needs (Prepare, PutUnsynced,
// RemoveLock exist for them); embedders see records only through those
// packages.
//
// # Layout
//
//	<dir>/                      mode 0700, created by Open
//	├── locks/
//	│   └── table               the lock table: Lock(ctx, name) holds one byte of it, mode 0600
//	└── <kind>/                 one directory per kind, created on first write
//	    ├── <id>.json           one record, mode 0600
//	    └── .tmp-<id>-<random>  a write in progress, or left by a crash
//
// Every directory and file the registry creates is mode 0700 or 0600,
// whatever the umask; the mode of a directory that already exists is kept.
//
// # Names
//
// A kind is 1-32 lowercase ASCII letters ("vm", "snapshot", "lease"); "locks"
// is reserved. An id, and a lock name, is 1-128 characters of
// [A-Za-z0-9._-] not starting with '.' or '-', so it is always one
// non-hidden path element. Every method validates its names before building
// a path and rejects bad ones with an error wrapping ErrInvalidName.
//
// # Record schema
//
// A record file holds one JSON object, the envelope (schema 1):
//
//	{
//	  "schema":  1,                                 // envelope version, SchemaVersion
//	  "kind":    "vm",                              // must match the directory
//	  "id":      "web-1",                           // must match the file name
//	  "updated": "2026-01-02T03:04:05.123456789Z",  // RFC 3339, UTC, time of the write
//	  "data":    {...}                              // the caller's value, encoded by encoding/json
//	}
//
// Get rejects a record whose schema is newer than SchemaVersion with an
// error wrapping ErrSchema and leaves it untouched, so an older build never
// damages what a newer one wrote. Older schemas are lifted one version at a
// time by an ordered table of migrations, in memory; the file is rewritten
// in the current schema only by the next Put. Schema 1 is the first format,
// so the table is empty today, and a file without a "schema" field is
// corrupt. Unknown envelope fields are ignored.
//
// # Durability and atomicity
//
// Put writes the envelope to a temporary file in the record's directory,
// fsyncs it, renames it over the record and fsyncs the directory. Prepare
// does the first half ahead of time (the temporary file, fsynced) and its
// Commit or CommitNew the rest, so a caller can overlap the slow fsync with
// other work. PutUnsynced skips both fsyncs: still atomic, and kept through
// a crash of the writer, but not through a crash of the host. Create
// does the same but hard-links the temporary file to the record name, which
// fails if the record exists, so exactly one of racing creators wins, even
// across processes. Delete unlinks the record and fsyncs the directory. A
// crash (or SIGKILL) at any moment therefore leaves each record either
// complete in its old version or complete in its new one, never torn.
//
// Directory fsyncs are group-committed within a process: writers that
// need the same directory synced at the same time share one fsync. A
// writer waits for an fsync that began after its own rename, link or
// unlink (one already running when it arrives does not count; the next
// covers every writer that arrived meanwhile), so each write is as durable
// when it returns as with an fsync of its own, and a failed fsync fails
// every write it covered. Under concurrent writes fewer directory fsyncs
// run than records are written (100 concurrent VM Creates, then Destroys:
// about one for every two or three records).
//
// A crash may leave a temporary file behind. List and Get ignore hidden
// files, and Open removes temporary files older than StaleTempAge (one
// minute). Younger ones are kept because they may belong to a write in
// progress in another process; if such a write stalls for longer than that,
// its rename fails and its Put returns an error, so nothing is corrupted.
//
// Get reports a record that exists but cannot be used (unreadable, invalid
// JSON, not an envelope, naming another kind or id, data not decodable into
// the caller's value) as a *CorruptError naming the file; other records are
// unaffected and List still lists it.
//
// # Locks
//
// Lock takes an exclusive open file description lock (fcntl(2)
// F_OFD_SETLK) on one byte of <dir>/locks/table, chosen by a 62-bit hash of
// the lock's name, through a file description of its own, so it excludes
// other processes and other goroutines alike, and the kernel releases it
// when the holder exits. Taking a lock creates no file and leaves none.
// Record operations take no lock themselves: Put and Create are atomic per
// record, and callers that read, modify and write a record, or keep several
// records consistent, hold a Lock around the sequence (for example one per
// VM id plus one for allocations such as leases). TryLock does not wait.
// RemoveLock deletes the per-name lock file earlier versions made.
//
// A Registry is safe for concurrent use; any number of processes may open
// the same directory.
package registry
