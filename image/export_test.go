package image

// SetForceFixups makes builds behave as when not root: ownership, and the
// modes and xattrs the staging directory cannot hold, are set in the image
// with debugfs. It returns a function restoring the default.
func SetForceFixups(on bool) func() {
	old := forceFixups
	forceFixups = on
	return func() { forceFixups = old }
}
