package registry

import "os"

// SetFsync replaces the registry's fsync for a test and returns a function
// that restores it.
func SetFsync(fn func(*os.File) error) (restore func()) {
	old := fsync
	fsync = fn
	return func() { fsync = old }
}
