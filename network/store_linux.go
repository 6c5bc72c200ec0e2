//go:build linux

package network

import (
	"context"

	"github.com/mvm-dev/microvm/internal/registry"
)

// FileStore is the Store mvm uses: records as JSON files under one
// directory, each write atomic and fsynced (a crash leaves every record
// whole, old or new), and locks that exclude other goroutines and other
// processes alike and that the kernel drops when their holder dies. Any
// number of processes may open the same directory. It is safe for
// concurrent use. Obtain one with OpenStore.
type FileStore struct {
	reg *registry.Registry
}

// OpenStore opens the FileStore in dir, creating dir (mode 0700, parents
// as needed) when missing. It fails when dir is not a writable directory.
// Open it once per process and Close it after the Manager using it.
func OpenStore(dir string) (*FileStore, error) {
	reg, err := registry.Open(dir)
	if err != nil {
		return nil, err
	}
	return &FileStore{reg: reg}, nil
}

// Close releases the locks still held through s; later calls fail.
// Closing twice is not an error.
func (s *FileStore) Close() error { return s.reg.Close() }

// Create stores v as record kind/id, failing with an error wrapping
// ErrRecordExists when the record exists; of racing creators, in any
// processes, exactly one succeeds.
func (s *FileStore) Create(kind, id string, v any) error { return s.reg.Create(kind, id, v) }

// Put stores v as record kind/id, replacing it atomically.
func (s *FileStore) Put(kind, id string, v any) error { return s.reg.Put(kind, id, v) }

// Get decodes record kind/id into v (a pointer, as for json.Unmarshal),
// failing with an error wrapping ErrRecordNotFound when there is none.
func (s *FileStore) Get(kind, id string, v any) error { return s.reg.Get(kind, id, v) }

// Delete removes record kind/id; a missing record is not an error.
func (s *FileStore) Delete(kind, id string) error { return s.reg.Delete(kind, id) }

// List returns the ids of kind's records, sorted.
func (s *FileStore) List(kind string) ([]string, error) { return s.reg.List(kind) }

// Lock takes the exclusive lock called name, waiting until it is free or
// ctx is done; unlock releases it (calling it again does nothing).
func (s *FileStore) Lock(ctx context.Context, name string) (unlock func(), err error) {
	return s.reg.Lock(ctx, name)
}

// TempIDs lists the ids of kind that have temporary files (writes in
// progress, or left by a killed writer); see TempSweeper.
func (s *FileStore) TempIDs(kind string) ([]string, error) { return s.reg.TempIDs(kind) }

// RemoveTemps removes the temporary files of record kind/id and returns
// how many it removed. The caller holds the lock under which every write
// of that record is made; see TempSweeper.
func (s *FileStore) RemoveTemps(kind, id string) (int, error) { return s.reg.RemoveTemps(kind, id) }
