package firecracker

// SetRenameStepHook sets the hook run at each step of a rename, for the
// external tests; it returns the function that removes it.
func SetRenameStepHook(f func(step string) error) (restore func()) {
	renameStepHook = f
	return func() { renameStepHook = nil }
}
